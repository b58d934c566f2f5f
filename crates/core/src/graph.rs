//! The reference graph (domain §2): which object needs which, the desired set as the closure
//! from the roots, reference counts, cycles, and the order to create and delete in.
//! Pure: no I/O. `petgraph` indices never leave this module.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::model::{
    Catalog, DesiredState, Found, KeyMap, Kind, Location, Object, ObjectKey, Resolution, Rule,
    Violation, resolve,
};

/// One node: an object of the repository, or a live object the repository only references.
#[derive(Debug, Clone)]
pub struct Node {
    /// Identity.
    pub key: ObjectKey,
    /// Position in the desired state's objects; `None` for external (live-only) nodes.
    pub object: Option<usize>,
    /// True when some root's closure reaches it, i.e. pbsync wants it to exist.
    pub desired: bool,
    /// Number of ProfileBundles whose closure contains it.
    pub references: u32,
    /// The ProfileBundles whose closure contains it, sorted.
    pub referrers: Vec<ObjectKey>,
    /// The other roots (pools, workloads) whose closure contains it, sorted; see
    /// [`Node::dependents`]. Kept apart so the bundles, most roots, are not listed twice.
    pub other_dependents: Vec<ObjectKey>,
    /// For an external node: where the reference was found (live, and who holds it), or that
    /// no live state was read to look for it. `None` for declared objects.
    pub found: Option<Found>,
}

impl Node {
    /// Every root (bundle, pool, workload) whose closure contains it, sorted.
    pub fn dependents(&self) -> Vec<ObjectKey> {
        let mut all: Vec<ObjectKey> = self
            .referrers
            .iter()
            .chain(&self.other_dependents)
            .cloned()
            .collect();
        all.sort();
        all
    }
}

/// The graph of one commit.
#[derive(Debug, Clone)]
pub struct ResourceGraph {
    desired: DesiredState,
    nodes: Vec<Node>,
    graph: DiGraph<(), ()>,
    index: KeyMap<NodeIndex>,
    order: Vec<usize>,
    waves: Vec<usize>,
    warnings: Vec<String>,
}

/// A node of the graph as rendered in `pbsync graph --format json`.
#[derive(Debug, Serialize)]
pub struct NodeView<'a> {
    /// Kind.
    pub kind: Kind,
    /// Namespace or Palette scope.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Palette version.
    pub version: Option<&'a str>,
    /// Bundles referencing it.
    pub references: u32,
    /// In the desired set.
    pub desired: bool,
    /// Only live, not declared.
    pub external: bool,
    /// `path:line`, for declared objects.
    pub source: Option<String>,
    /// Keys of the objects it needs.
    pub needs: Vec<String>,
}

impl ResourceGraph {
    /// Builds the graph. References that do not resolve are left out (validation reports
    /// them); cycles are returned as violations naming every member.
    pub fn build(desired: DesiredState, catalog: &Catalog) -> (Self, Vec<Violation>) {
        let mut graph =
            DiGraph::<(), ()>::with_capacity(desired.objects.len(), desired.objects.len() * 2);
        let mut nodes: Vec<Node> = Vec::with_capacity(desired.objects.len());
        let mut index: KeyMap<NodeIndex> =
            KeyMap::with_capacity_and_hasher(desired.objects.len(), Default::default());
        let new_node = |key: ObjectKey, object: Option<usize>| Node {
            key,
            object,
            desired: false,
            references: 0,
            referrers: Vec::new(),
            other_dependents: Vec::new(),
            found: None,
        };
        for (i, obj) in desired.objects.iter().enumerate() {
            let n = graph.add_node(());
            nodes.push(new_node(obj.key.clone(), Some(i)));
            index.insert(obj.key.clone(), n);
        }
        let mut edges = Vec::new();
        for obj in &desired.objects {
            let from = index[&obj.key];
            for r in obj.refs() {
                let (target, found) = match resolve(&desired, r, catalog) {
                    Resolution::Repo(o) => (o.key.clone(), None),
                    Resolution::Live(k, _) => {
                        let holder = catalog.holder(&k).to_string();
                        (k, Some(Found::Live { holder }))
                    }
                    Resolution::Unchecked(k) => (k, Some(Found::Unchecked)),
                    Resolution::Missing => continue,
                };
                let to = *index.entry(target.clone()).or_insert_with(|| {
                    nodes.push(Node {
                        found,
                        ..new_node(target, None)
                    });
                    graph.add_node(())
                });
                edges.push((from, to));
            }
        }
        for (a, b) in edges {
            graph.update_edge(a, b, ());
        }
        let mut g = Self {
            desired,
            nodes,
            graph,
            index,
            order: Vec::new(),
            waves: Vec::new(),
            warnings: Vec::new(),
        };
        let violations = g.cycles();
        g.close();
        g.count_references();
        g.order = g.compute_order();
        g.waves = g.compute_waves();
        (g, violations)
    }

    fn cycles(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            let is_cycle = scc.len() > 1 || self.graph.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            let mut members: Vec<&Node> = scc.iter().map(|n| &self.nodes[n.index()]).collect();
            members.sort_by(|a, b| a.key.cmp(&b.key));
            let names: Vec<String> = members.iter().map(|n| n.key.to_string()).collect();
            let loc = members
                .iter()
                .find_map(|n| n.object.map(|i| self.desired.objects[i].location.clone()))
                .unwrap_or(Location {
                    path: "".into(),
                    line: 0,
                });
            let message = if let [only] = names.as_slice() {
                format!("dependency cycle: {only} depends on itself")
            } else {
                format!(
                    "dependency cycle between {} objects: {}",
                    names.len(),
                    names.join(", ")
                )
            };
            out.push(Violation::at(&loc, Rule::Cycle, message));
        }
        out
    }

    /// Marks the closure of the roots as desired and warns about unused shared objects.
    fn close(&mut self) {
        let mut stack: Vec<NodeIndex> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.object.is_some() && n.key.kind.is_root())
            .map(|(i, _)| NodeIndex::new(i))
            .collect();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut self.nodes[n.index()].desired, true) {
                continue;
            }
            stack.extend(self.graph.neighbors_directed(n, Direction::Outgoing));
        }
        for node in &self.nodes {
            if let (Some(i), false) = (node.object, node.desired) {
                let obj = &self.desired.objects[i];
                self.warnings.push(format!(
                    "{} ({}) is not used by any bundle, pool or workload; it will not be created",
                    node.key, obj.location
                ));
            }
        }
    }

    fn count_references(&mut self) {
        // One visit stamp per node instead of a fresh set per root keeps this linear in the
        // size of the closures.
        let mut stamp = vec![usize::MAX; self.nodes.len()];
        let roots: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].object.is_some() && self.nodes[i].key.kind.is_root())
            .collect();
        for root in roots {
            let root_key = self.nodes[root].key.clone();
            let is_bundle = root_key.kind == Kind::ProfileBundle;
            let mut stack = vec![NodeIndex::new(root)];
            stamp[root] = root;
            while let Some(n) = stack.pop() {
                for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                    if stamp[m.index()] == root {
                        continue;
                    }
                    stamp[m.index()] = root;
                    let node = &mut self.nodes[m.index()];
                    if is_bundle {
                        node.references += 1;
                        node.referrers.push(root_key.clone());
                    } else {
                        node.other_dependents.push(root_key.clone());
                    }
                    stack.push(m);
                }
            }
        }
        for node in &mut self.nodes {
            node.referrers.sort();
            node.other_dependents.sort();
        }
    }

    /// Dependency order of the desired, declared objects: everything an object needs comes
    /// before it; ties break by kind rank, namespace, name.
    fn compute_order(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let mut pending = vec![0usize; n];
        for (i, node) in self.nodes.iter().enumerate() {
            if node.desired {
                pending[i] = self
                    .graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
                    .filter(|m| self.nodes[m.index()].desired)
                    .count();
            }
        }
        let mut ready: BinaryHeap<Reverse<(&ObjectKey, usize)>> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, node)| node.desired && pending[*i] == 0)
            .map(|(i, node)| Reverse((&node.key, i)))
            .collect();
        let mut order = Vec::new();
        let mut done = vec![false; n];
        while let Some(Reverse((_, i))) = ready.pop() {
            done[i] = true;
            if self.nodes[i].object.is_some() {
                order.push(i);
            }
            for m in self
                .graph
                .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            {
                let m = m.index();
                if self.nodes[m].desired {
                    pending[m] -= 1;
                    if pending[m] == 0 {
                        ready.push(Reverse((&self.nodes[m].key, m)));
                    }
                }
            }
        }
        // Members of a cycle never become ready; the cycle is a violation, but keep the
        // order total so rendering the graph still shows them.
        let mut rest: Vec<usize> = (0..n)
            .filter(|&i| self.nodes[i].desired && !done[i] && self.nodes[i].object.is_some())
            .collect();
        rest.sort_by(|&a, &b| self.nodes[a].key.cmp(&self.nodes[b].key));
        order.extend(rest);
        order
    }

    /// Wave of each node: 0 for objects that need nothing pbsync creates, else one more than
    /// the deepest thing they need. Objects of one wave can be written concurrently.
    fn compute_waves(&self) -> Vec<usize> {
        let mut waves = vec![0usize; self.nodes.len()];
        for &i in &self.order {
            waves[i] = self
                .graph
                .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
                .filter(|m| self.nodes[m.index()].desired && self.nodes[m.index()].object.is_some())
                .map(|m| waves[m.index()] + 1)
                .max()
                .unwrap_or(0);
        }
        waves
    }

    /// True when some reference resolved outside the repository (to a live-only object, or
    /// one not checked yet): only then can another catalogue change validation or the graph.
    pub fn has_external(&self) -> bool {
        self.nodes.iter().any(|n| n.object.is_none())
    }

    /// The wave of a declared, desired object (see [`Self::creation_order`]).
    pub fn wave(&self, key: &ObjectKey) -> usize {
        self.index.get(key).map_or(0, |n| self.waves[n.index()])
    }

    /// Gives back the desired state the graph was built from (to build it again against
    /// another catalogue without parsing again).
    pub fn into_desired_state(self) -> DesiredState {
        self.desired
    }

    /// The desired state the graph was built from.
    pub fn desired_state(&self) -> &DesiredState {
        &self.desired
    }

    /// Revision of the commit.
    pub fn revision(&self) -> &str {
        &self.desired.revision
    }

    /// All nodes (declared objects first, in key order, then external ones).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node for a key.
    pub fn node(&self, key: &ObjectKey) -> Option<&Node> {
        self.index.get(key).map(|n| &self.nodes[n.index()])
    }

    /// The declared object of a node.
    pub fn object(&self, node: &Node) -> Option<&Object> {
        node.object.map(|i| &self.desired.objects[i])
    }

    /// Declared objects of the desired set, in creation order.
    pub(crate) fn creation_order(&self) -> impl Iterator<Item = &Node> {
        self.order.iter().map(|&i| &self.nodes[i])
    }

    /// Keys of what `key` needs directly.
    pub fn needs(&self, key: &ObjectKey) -> Vec<&ObjectKey> {
        let Some(&n) = self.index.get(key) else {
            return Vec::new();
        };
        let mut v: Vec<&ObjectKey> = self
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .map(|m| &self.nodes[m.index()].key)
            .collect();
        v.sort();
        v
    }

    /// Keys of the declared objects that need `key` directly.
    pub fn needed_by(&self, key: &ObjectKey) -> Vec<&ObjectKey> {
        let Some(&n) = self.index.get(key) else {
            return Vec::new();
        };
        let mut v: Vec<&ObjectKey> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|m| &self.nodes[m.index()].key)
            .collect();
        v.sort();
        v
    }

    /// Warnings found while building (unused objects, merged duplicates).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.desired.warnings.clone();
        w.extend(self.warnings.iter().cloned());
        w
    }

    /// JSON-ready view of every node.
    pub fn views(&self) -> Vec<NodeView<'_>> {
        self.nodes
            .iter()
            .map(|n| NodeView {
                kind: n.key.kind,
                namespace: &n.key.namespace,
                name: &n.key.name,
                version: n.key.version.as_deref(),
                references: n.references,
                desired: n.desired,
                external: n.object.is_none(),
                source: self.object(n).map(|o| o.location.to_string()),
                needs: self.needs(&n.key).iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// Graphviz rendering: roots as boxes, external objects dashed, unused ones grey.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph pbsync {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n",
        );
        let mut sorted: Vec<usize> = (0..self.nodes.len()).collect();
        sorted.sort_by(|&a, &b| self.nodes[a].key.cmp(&self.nodes[b].key));
        for &i in &sorted {
            let n = &self.nodes[i];
            let mut attrs = vec![format!(
                "label=\"{}\\n{}{}\"",
                n.key.kind,
                n.key.short(),
                if n.key.kind.is_shared() && n.object.is_some() {
                    format!("\\nrefs: {}", n.references)
                } else {
                    String::new()
                }
            )];
            attrs.push(if n.key.kind.is_root() {
                "shape=box".into()
            } else {
                "shape=ellipse".into()
            });
            if n.object.is_none() {
                attrs.push("style=dashed".into());
            } else if !n.desired {
                attrs.push("color=grey, fontcolor=grey".into());
            }
            out.push_str(&format!("  n{i} [{}];\n", attrs.join(", ")));
        }
        let mut edges: Vec<(usize, usize)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        edges.sort_by(|a, b| {
            (&self.nodes[a.0].key, &self.nodes[a.1].key)
                .cmp(&(&self.nodes[b.0].key, &self.nodes[b.1].key))
        });
        for (a, b) in edges {
            out.push_str(&format!("  n{a} -> n{b};\n"));
        }
        out.push_str("}\n");
        out
    }

    /// Terminal rendering: each root with the tree of what it needs.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut roots: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.object.is_some() && n.key.kind.is_root())
            .collect();
        roots.sort_by(|a, b| b.key.kind.cmp(&a.key.kind).then_with(|| a.key.cmp(&b.key)));
        for root in roots {
            out.push_str(&format!("{}\n", root.key));
            self.text_children(&root.key, 1, &mut out, &mut Vec::new());
        }
        let unused: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.object.is_some() && !n.desired)
            .collect();
        if !unused.is_empty() {
            out.push_str("\nunused (not created):\n");
            for n in unused {
                out.push_str(&format!("  {}\n", n.key));
            }
        }
        out
    }

    fn text_children(
        &self,
        key: &ObjectKey,
        depth: usize,
        out: &mut String,
        path: &mut Vec<ObjectKey>,
    ) {
        path.push(key.clone());
        for child in self.needs(key) {
            let node = self
                .node(child)
                .expect("invariant: needs() returns graph nodes");
            let mut notes = Vec::new();
            if child.kind.is_shared() {
                notes.push(format!("refs {}", node.references));
            }
            if node.object.is_none() {
                notes.push("external".to_string());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            };
            out.push_str(&format!("{}{}{}\n", "  ".repeat(depth), child, notes));
            if !path.contains(child) {
                self.text_children(child, depth + 1, out, path);
            }
        }
        path.pop();
    }
}
