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
//! engine: the one function that runs the stages in order
//! ```
//!
//! Glossary: a *Snapshot* is one commit's YAML files; the *DesiredState* the typed objects in
//! them; the *ResourceGraph* who needs whom; *Observed* what a target holds; the *Plan* what
//! to change and why; the *ChangeSet* what was done.

pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub mod engine;
pub mod forge;
pub mod review;
pub mod source;

pub use pbsync_core::{error_chain, graph, guard, health, live, model, ownership, plan};
pub use pbsync_studio as import;
pub use pbsync_target as target;
