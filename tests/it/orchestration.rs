//! Orchestration with a failing target: what happens when a step of a pass fails.
