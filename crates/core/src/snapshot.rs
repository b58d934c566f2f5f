//! What the source stage hands the pure stages: one commit's YAML files, as bytes with their
//! paths and blob ids. Pure: no I/O (the source reads them from Git).

use std::sync::Arc;

/// The content of one file: its bytes, or only its size when over the limit (so a 50 MB
/// file is never loaded into memory just to be rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The file's bytes.
    Bytes(Vec<u8>),
    /// Size in bytes of a file over the limit.
    TooLarge(u64),
}

/// One YAML file of the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Repository-relative path.
    pub path: Arc<str>,
    /// Git blob id (hex): identical content has an identical id, which makes it a cache key.
    pub blob: String,
    /// Content.
    pub content: Content,
}

/// The YAML files of one commit under the configured path.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Full commit id.
    pub revision: String,
    /// Files, sorted by path.
    pub files: Vec<SourceFile>,
}
