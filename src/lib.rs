//! pbsync: a GitOps reconciliation daemon for PaletteAI Profile Bundles and everything they
//! reference.
//!
//! One pipeline, pure in the middle and I/O at the edges:
//!
//! ```text
//! source (git2: a commit's tree -> Snapshot)            I/O
//!   -> model (parse + validate -> DesiredState)          pure
//!   -> graph (petgraph: references, closure, order)      pure
//!   -> plan  (desired x observed -> Plan, with reasons)  pure, cannot fail
//!   -> apply (Target: local dir | kubernetes | palette)  I/O -> ChangeSet
//! reconcile: the one function that runs the stages in order
//! ```
//!
//! Glossary: a *Snapshot* is one commit's YAML files; the *DesiredState* the typed objects in
//! them; the *ResourceGraph* who needs whom; *Observed* what a target holds; the *Plan* what
//! to change and why; the *ChangeSet* what was done.

pub mod apply;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod graph;
pub mod import;
pub mod live;
pub mod model;
pub mod ownership;
pub mod palette_sim;
pub mod plan;
pub mod reconcile;
pub mod review;
pub mod source;
pub mod synthetic;

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
