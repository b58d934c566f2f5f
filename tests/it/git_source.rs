//! The git source on real repositories built in temp dirs.
