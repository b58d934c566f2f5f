//! The impact of a plan: for each changed shared object, every bundle, Compute Pool and
//! deployment that depends on it, whether or not their own files changed (a WorkloadProfile
//! edit touches every bundle that uses it). Pure: no I/O.
//!
//! Dependents come from the graph's closures (`Node::dependents`): of the commit being
//! planned for objects it keeps, and of the commit before it (the pull request's base) for
//! objects it deletes or orphans, since those are no longer in the new graph.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};

use super::{Action, Plan};
use crate::graph::ResourceGraph;
use crate::model::{Kind, ObjectKey};

/// A root that depends on a changed object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependent {
    /// The bundle, pool or workload.
    pub key: ObjectKey,
    /// What the plan does to the dependent itself (`None` when the plan does not list it:
    /// it exists only in the commit before).
    pub action: Option<Action>,
}

/// One changed object and who depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Impact {
    /// The changed object.
    pub key: ObjectKey,
    /// What happens to it.
    pub action: Action,
    /// Every root whose closure contains it, sorted by kind, namespace, name.
    pub dependents: Vec<Dependent>,
}

impl Impact {
    /// The dependents of one kind.
    pub(crate) fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Dependent> {
        self.dependents.iter().filter(move |d| d.key.kind == kind)
    }

    /// The JSON form: identity as in the plan's changes, dependents grouped by kind.
    pub fn to_json(&self) -> Value {
        let names = |kind: Kind| -> Vec<Value> {
            self.of_kind(kind)
                .map(|d| {
                    json!({
                        "namespace": &*d.key.namespace,
                        "name": &*d.key.name,
                        "action": d.action,
                    })
                })
                .collect()
        };
        let (namespace, scope) = if self.key.kind == Kind::ClusterProfile {
            (Value::Null, Value::String(self.key.namespace.to_string()))
        } else {
            (Value::String(self.key.namespace.to_string()), Value::Null)
        };
        json!({
            "action": self.action,
            "kind": self.key.kind,
            "namespace": namespace,
            "scope": scope,
            "name": &*self.key.name,
            "version": self.key.version.as_deref(),
            "bundles": names(Kind::ProfileBundle),
            "computePools": names(Kind::ComputePool),
            "deployments": names(Kind::AiWorkload),
        })
    }
}

/// The impact of `plan`, made from `graph` (the commit planned) and `before` (the commit it
/// replaces, when known). Objects whose dependents are all unknown are left out.
pub fn compute(plan: &Plan, graph: &ResourceGraph, before: Option<&ResourceGraph>) -> Vec<Impact> {
    let actions: HashMap<&ObjectKey, Action> =
        plan.changes.iter().map(|c| (&c.key, c.action)).collect();
    let closure_of = |g: &ResourceGraph, key: &ObjectKey| -> Vec<ObjectKey> {
        g.node(key)
            .filter(|n| n.desired)
            .map(crate::graph::Node::dependents)
            .unwrap_or_default()
    };
    let mut out: Vec<Impact> = plan
        .changes
        .iter()
        .filter(|c| c.action.is_change() && c.key.kind.is_shared())
        .filter_map(|c| {
            let mut keys: BTreeSet<ObjectKey> = closure_of(graph, &c.key).into_iter().collect();
            if let Some(before) = before {
                keys.extend(closure_of(before, &c.key));
            }
            if keys.is_empty() {
                return None;
            }
            let dependents = keys
                .into_iter()
                .map(|key| Dependent {
                    action: actions.get(&key).copied(),
                    key,
                })
                .collect();
            Some(Impact {
                key: c.key.clone(),
                action: c.action,
                dependents,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{LiveObject, Observed};
    use crate::model::{Catalog, DesiredState, parse_file};
    use crate::ownership::{self, Ownership, Stamp};
    use crate::plan::{History, Options, plan};
    use crate::snapshot::{Content, SourceFile};

    fn graph(yaml: &str) -> ResourceGraph {
        let file = SourceFile {
            path: "repo.yaml".into(),
            blob: String::new(),
            content: Content::Bytes(yaml.as_bytes().to_vec()),
        };
        let (objects, _) = parse_file(&file, &crate::model::Limits::default());
        let mut violations = Vec::new();
        let desired = DesiredState::from_objects("rev".into(), objects, &mut violations);
        assert!(violations.is_empty(), "{violations:?}");
        ResourceGraph::build(desired, &Catalog::default()).0
    }

    fn applied(g: &ResourceGraph) -> Observed {
        let stamp = Stamp {
            instance: "default",
            revision: g.revision(),
            adopted: false,
        };
        let mut observed = Observed::default();
        for node in g.creation_order() {
            let obj = g.object(node).expect("declared");
            observed.objects.insert(
                node.key.clone(),
                LiveObject::new(ownership::render(obj, &stamp), Ownership::Managed),
            );
        }
        observed
    }

    const DEFS: &str = "apiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata: {name: web, namespace: a}\nspec: {workload: {type: autodetects.core.oam.dev}}\n";

    fn profile(model: &str) -> String {
        format!(
            "---\napiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata: {{name: shared, namespace: a}}\nspec:\n  type: Application\n  workload:\n    components:\n      - {{name: main, type: web, properties: {{model: {model}}}}}\n"
        )
    }

    fn bundle(name: &str) -> String {
        format!(
            "---\napiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  type: Application\n  workloadProfiles: [{{name: shared}}]\n"
        )
    }

    fn pool() -> &'static str {
        "---\napiVersion: spectrocloud.com/v1alpha1\nkind: ComputePool\nmetadata: {name: gpus, namespace: a}\nspec:\n  profileBundleRef: {name: one, namespace: a}\n  clusterVariant: {shared: {}}\n"
    }

    #[test]
    fn shared_profile_edit_touches_every_bundle_and_pool_that_uses_it() {
        let before = graph(&format!(
            "{DEFS}{}{}{}{}",
            profile("x"),
            bundle("one"),
            bundle("two"),
            pool()
        ));
        let after = graph(&format!(
            "{DEFS}{}{}{}{}",
            profile("y"),
            bundle("one"),
            bundle("two"),
            pool()
        ));
        let p = plan(
            &after,
            &applied(&before),
            &History::default(),
            &Options::default(),
        );
        let impact = compute(&p, &after, Some(&before));
        assert_eq!(impact.len(), 1, "{impact:?}");
        let i = &impact[0];
        assert_eq!(i.key.name.as_ref(), "shared");
        assert_eq!(i.action, Action::Update);
        let names: Vec<String> = i.dependents.iter().map(|d| d.key.to_string()).collect();
        assert_eq!(
            names,
            [
                "ProfileBundle a/one",
                "ProfileBundle a/two",
                "ComputePool a/gpus"
            ]
        );
        assert!(
            i.dependents
                .iter()
                .all(|d| d.action == Some(Action::Unchanged)),
            "their own files did not change: {i:?}"
        );
    }

    #[test]
    fn deleted_profile_names_the_leaving_bundle_from_the_commit_before() {
        let before = graph(&format!("{DEFS}{}{}", profile("x"), bundle("one")));
        let after = graph(DEFS);
        let p = plan(
            &after,
            &applied(&before),
            &History::default(),
            &Options::default(),
        );
        let impact = compute(&p, &after, Some(&before));
        let shared: Vec<&Impact> = impact
            .iter()
            .filter(|i| i.key.kind == Kind::WorkloadProfile)
            .collect();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].action, Action::Delete);
        assert_eq!(shared[0].dependents.len(), 1);
        assert_eq!(shared[0].dependents[0].action, Some(Action::Delete));
        assert!(
            compute(&p, &after, None)
                .iter()
                .all(|i| i.key.kind != Kind::WorkloadProfile),
            "without the commit before, a deleted object's dependents are unknown"
        );
    }
}
