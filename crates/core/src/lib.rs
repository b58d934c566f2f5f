//! pbsync's pure core: what a commit declares, who needs whom, what to change and why, and
//! the one guard that permits a deletion. No I/O: no tokio, git2, kube, reqwest or clap in
//! this crate's dependencies, so nothing here can read a server or a repository by accident.
//!
//! ```text
//! snapshot (one commit's files, read by the source)
//!   -> model (parse + validate -> DesiredState)
//!   -> graph (petgraph: references, closure, order)
//!   -> plan  (desired x observed -> Plan, with reasons; cannot fail)
//!   -> guard (the one place that permits a delete, a release or an adoption)
//! ```
//!
//! Glossary: a *Snapshot* is one commit's YAML files; the *DesiredState* the typed objects in
//! them; the *ResourceGraph* who needs whom; *Observed* what a target holds; the *Plan* what
//! to change and why.

pub mod graph;
pub mod guard;
pub mod health;
pub mod live;
pub mod model;
pub mod ownership;
pub mod plan;
pub mod snapshot;

/// Formats an error and its sources once, as `a: b: c`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        // Some library errors repeat their source's text in their own; print it once.
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = e.source();
    }
    out
}
