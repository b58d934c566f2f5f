//! The local-directory target on a real temp directory.
