//! A committed document, held compactly: its JSON text, shared, decoded when needed.
//!
//! Fifty thousand documents as `serde_json` values take about 4.7 KB each (a map, a table
//! and a key allocation per mapping); as text they take about their size. The pipeline
//! decodes a document only where it needs one: to render an object for a write or a
//! comparison, or to diff it. Validation and the graph use the typed view parsed once.

use std::sync::Arc;

use serde_json::Value;

/// One document (its JSON text). Clones share it; two manifests from the same parse of the
/// same file are the same document ([`Manifest::same_document`]).
#[derive(Clone)]
pub struct Manifest(Arc<str>);

impl Manifest {
    /// The manifest of `value`.
    pub fn new(value: &Value) -> Self {
        Self(Arc::from(
            serde_json::to_string(value).expect("invariant: JSON values serialize"),
        ))
    }

    /// A manifest from JSON text [`Manifest::json`] gave, kept in a store whose integrity
    /// the caller checked (see `model::stored`). `None` for text that is not an object.
    pub(crate) fn from_json(json: String) -> Option<Self> {
        (json.starts_with('{') && json.ends_with('}')).then(|| Self(Arc::from(json)))
    }

    /// An empty manifest (`null`): objects parsed back from a target for their references
    /// only, whose caller holds the document already.
    pub fn null() -> Self {
        Self(Arc::from("null"))
    }

    /// The document, decoded (in document order).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).expect("invariant: the text was written by Manifest::new")
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// True when both are the same document (one parse of one file), not merely equal: a
    /// cheap proof that nothing changed.
    pub fn same_document(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

/// Equal documents, whatever the order of their keys.
impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.value() == other.value()
    }
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_manifest_gives_back_its_document_in_document_order() {
        let v =
            json!({"kind": "X", "apiVersion": "v1", "spec": {"b": 1.5, "a": [true, null, "s"]}});
        let m = Manifest::new(&v);
        let back = m.value();
        assert_eq!(back, v);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["kind", "apiVersion", "spec"]);
    }

    #[test]
    fn equality_is_of_documents_and_identity_of_parses() {
        let a = Manifest::new(&json!({"a": 1, "b": 2}));
        let b = Manifest::new(&json!({"b": 2, "a": 1}));
        let c = Manifest::new(&json!({"a": 1, "b": 3}));
        assert_eq!(a, b, "key order does not make another document");
        assert_ne!(a, c);
        assert!(Manifest::same_document(&a, &a.clone()));
        assert!(!Manifest::same_document(&a, &b));
    }
}
