//! Development only, never shipped in the `pbsync` binary: the Palette API simulator (the
//! server the Palette target's tests run against, and `pbsync-palette-sim` for trying it by
//! hand), synthetic repositories for scale tests and benchmarks, and the test kit every test
//! binary shares ([`testkit`]).

pub mod palette_sim;
pub mod synthetic;
pub mod testkit;
