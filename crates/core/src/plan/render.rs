//! Rendering a plan for people (text, Markdown) and machines (JSON). Pure: no I/O.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Action, Change, Executor, Plan};
use crate::model::{DeploymentParts, Kind, ObjectKey, PartRef};

fn identity(c: &Change) -> (Value, Value, Value) {
    let (ns, scope) = if c.key.kind == Kind::ClusterProfile {
        (Value::Null, Value::String(c.key.namespace.to_string()))
    } else {
        (Value::String(c.key.namespace.to_string()), Value::Null)
    };
    let version = c
        .key
        .version
        .as_deref()
        .map_or(Value::Null, |v| Value::String(v.to_string()));
    (ns, scope, version)
}

/// The JSON document of `pbsync plan --format json` (schema in the README).
pub fn render_json(plan: &Plan) -> Value {
    let changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|c| {
            let (namespace, scope, version) = identity(c);
            json!({
                "action": c.action,
                "kind": c.key.kind,
                "namespace": namespace,
                "scope": scope,
                "name": &*c.key.name,
                "version": version,
                "references": c.references,
                "reasons": c.reasons,
                "source": c.source.as_ref().map(ToString::to_string),
                "executor": c.executor,
                "diff": c.diff,
            })
        })
        .collect();
    let mut doc = json!({
        "revision": plan.revision,
        "changes": changes,
        "summary": plan.summary(),
        "warnings": plan.warnings,
        "guard": plan.guard,
        "readAt": plan.read_at,
        "impact": plan.impact.iter().map(super::Impact::to_json).collect::<Vec<_>>(),
        "violations": plan.violations,
    });
    // Present only when some deployment uses a Fullstack bundle, so plans without one keep
    // their shape.
    if !plan.deployments.is_empty() {
        doc["deployments"] = plan.deployments.iter().map(deployment_json).collect();
    }
    // Present only when some reference resolved outside the repository.
    if !plan.references.is_empty() {
        doc["references"] = plan
            .references
            .iter()
            .map(|r| {
                let mut v = key_json(&r.key);
                v["action"] = json!(r.action);
                v["reason"] = json!(r.reason);
                v["usedBy"] = r.used_by.iter().map(key_json).collect();
                v
            })
            .collect();
    }
    // Present only when the hub lacks a namespace the commit writes into.
    if !plan.missing_namespaces.is_empty() {
        doc["missingNamespaces"] = json!(plan.missing_namespaces);
    }
    doc
}

fn key_json(k: &ObjectKey) -> Value {
    if k.kind == Kind::ClusterProfile {
        json!({"kind": k.kind, "scope": &*k.namespace, "name": &*k.name, "version": k.version.as_deref()})
    } else {
        json!({"kind": k.kind, "namespace": &*k.namespace, "name": &*k.name})
    }
}

/// One Fullstack bundle of one deployment: its parts, deployed and ignored.
fn deployment_json(d: &DeploymentParts) -> Value {
    let parts = |list: &[PartRef]| -> Vec<Value> {
        list.iter()
            .map(|p| {
                let mut v = key_json(&p.key);
                v["part"] = json!(p.part);
                v
            })
            .collect()
    };
    json!({
        "deployment": key_json(&d.deployment),
        "workflow": d.workflow,
        "pool": d.pool,
        "bundle": key_json(&d.bundle),
        "primary": d.primary,
        "deployed": parts(&d.deployed),
        "ignored": parts(&d.ignored),
    })
}

/// The Fullstack section of the text plan: per deployment and Fullstack bundle, each part
/// that deploys and each part PaletteAI ignores in that workflow.
fn render_deployments(out: &mut String, plan: &Plan) {
    if plan.deployments.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nFullstack bundles in deployments:");
    for d in &plan.deployments {
        let role = if d.primary {
            "its primary workflow"
        } else {
            "outside its primary workflow"
        };
        let _ = writeln!(
            out,
            "  {} uses {} ({}, {:?} pool: {role})",
            d.deployment, d.bundle, d.workflow, d.pool
        );
        for (verb, list) in [("deploy", &d.deployed), ("ignore", &d.ignored)] {
            for p in list {
                let _ = writeln!(out, "      {verb}  {} {}", p.part.label(), p.key.short());
            }
        }
    }
}

/// References outside the repository: where each was found, and who uses it.
fn render_references(out: &mut String, plan: &Plan) {
    if plan.references.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nReferences outside the repository (never created, changed or deleted by this instance):"
    );
    for r in &plan.references {
        let used_by: Vec<String> = r.used_by.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  {:<9} {}", r.action.as_str(), r.key);
        let _ = writeln!(out, "      - {}", r.reason);
        let _ = writeln!(out, "      - used by {}", used_by.join(", "));
    }
}

fn paint(color: bool, action: Action, text: &str) -> String {
    if !color {
        return text.to_string();
    }
    let code = match action {
        Action::Create => "32",
        Action::Update => "33",
        Action::Delete => "31",
        Action::Orphan => "35",
        Action::Unchanged => "2",
        Action::Blocked | Action::Unknown => "1;31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A commit id shortened to 12 characters; other revision labels (the merge of a pull
/// request) are shown whole.
pub(crate) fn short_rev(rev: &str) -> &str {
    if rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        rev.get(..12).unwrap_or(rev)
    } else {
        rev
    }
}

/// Terminal rendering: one aligned line per change, reasons beneath; unchanged objects are
/// counted but not listed unless `verbose`.
pub fn render_text(plan: &Plan, color: bool, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan for revision {}", short_rev(&plan.revision));
    let shown: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| {
            verbose
                || c.action != Action::Unchanged
                || c.reasons.iter().any(|r| r.starts_with("kept"))
        })
        .collect();
    let kind_w = shown
        .iter()
        .map(|c| c.key.kind.as_str().len())
        .max()
        .unwrap_or(4);
    let name_w = shown.iter().map(|c| c.key.short().len()).max().unwrap_or(4);
    for c in &shown {
        let refs = c
            .references
            .map_or_else(String::new, |r| format!("refs={r}"));
        let action = format!("{:<9}", c.action.as_str());
        let by = if c.executor == Executor::Server {
            " (by server)"
        } else {
            ""
        };
        let line = format!(
            "  {} {:<kind_w$}  {:<name_w$}  {refs}{by}",
            paint(color, c.action, &action),
            c.key.kind.as_str(),
            c.key.short(),
        );
        let _ = writeln!(out, "{}", line.trim_end());
        for r in &c.reasons {
            let _ = writeln!(out, "      - {r}");
        }
    }
    render_deployments(&mut out, plan);
    render_references(&mut out, plan);
    let s = plan.summary();
    let _ = writeln!(
        out,
        "\nSummary: {} to create, {} to update, {} to delete, {} to orphan, {} unchanged, {} blocked, {} unknown",
        s.create, s.update, s.delete, s.orphan, s.unchanged, s.blocked, s.unknown
    );
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
