//! The integration tests of the core pipeline, in one binary (one link, shared support).
//! Target-specific suites against real servers live in `tests/kubernetes.rs` and
//! `tests/palette.rs`.

mod support;

// Golden plans: every deletion rule of domain.md §4 as a fixture, rendered and snapshotted.
mod plans;
// Orchestration: partial failures, no prune after a failed apply, retried deletions.
mod orchestration;
// The one guard on the local-directory target: ownership read at the moment of a change.
mod guard;
// The git source: atomic commits, .pbsyncignore, subdirectories, history look-ups.
mod git_source;
// The local-directory target: layout, atomic writes, idempotence.
mod local_dir;
// Bad input: invalid repositories as fixtures, hostile files; apply of any writes nothing.
mod invalid;
// The built binary end to end: flags, output formats, exit codes.
mod cli;
// Pull-request plans: merges of branches, impact, PR comments and JSON, snapshotted.
mod pr_plans;
// PaletteAI Studio archives: refusals, conflicts, the example archive.
mod import;
// The remote source over Git's smart HTTP protocol with basic auth and tokens, on loopback.
mod remote_http;
// The remote source over SSH (key file, strict known_hosts) against a real sshd on loopback.
mod remote_ssh;
// History of leaving bundles: full, shallow and deepened clones.
mod history;
// Signed commits: keys made in the test, commits signed by the real git (gpg and ssh).
mod verify;
// The real Flux source-controller of the test cluster against a Helm repository and an OCI
// registry on loopback: Ready, and the failures it reports.
mod flux_source;
// Talking back to Git: GitLab's calls against the test kit's simulator, `plan --post`.
mod forge;
// The test Gitea (scripts/gitea): pushes, pull requests, commit statuses, comments and signed
// webhooks through its real API and Git remote.
mod gitea;
