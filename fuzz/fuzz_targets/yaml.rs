//! Arbitrary bytes as one repository file: the YAML loader (`yaml::load_all`) and the
//! whole-file parser (`model::parse_file_detailed`), which is what every file of a pushed
//! commit goes through.
//!
//! Checked, besides "never panics, never overflows the stack, never hangs":
//! - a file that loads respects the limits it was given: no more nodes than `max_nodes`
//!   (aliases expanded) and no collection nested deeper than `max_depth`;
//! - the parser agrees with the loader: a file the loader refuses is one YAML violation at
//!   the loader's line, and every violation is on a 1-based line of this file;
//! - `yaml::to_string` keeps its promise: every loaded document, written back out, loads to
//!   exactly the same value (`pbsync import` writes its files that way).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pbsync_core::model::{self, Rule, yaml};
use pbsync_core::snapshot::{Content, SourceFile};

/// The default depth, and a node budget small enough that an alias bomb costs a fuzzing run
/// a millisecond rather than a second: the checks are the same at any size.
fn limits() -> model::Limits {
    model::Limits {
        yaml: yaml::Limits {
            max_nodes: 50_000,
            ..yaml::Limits::default()
        },
        ..model::Limits::default()
    }
}

/// Nodes (aliases expanded) and the deepest nesting of collections, counted iteratively.
fn size_and_depth(root: &yaml::Node) -> (usize, usize) {
    let (mut nodes, mut deepest) = (0, 0);
    let mut todo = vec![(root, 0usize)];
    while let Some((node, depth)) = todo.pop() {
        nodes += 1;
        match &node.value {
            yaml::Value::Seq(items) => {
                deepest = deepest.max(depth + 1);
                todo.extend(items.iter().map(|n| (n, depth + 1)));
            }
            yaml::Value::Map(entries) => {
                deepest = deepest.max(depth + 1);
                todo.extend(entries.iter().map(|(_, n)| (n, depth + 1)));
            }
            _ => {}
        }
    }
    (nodes, deepest)
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    let file = SourceFile {
        path: Arc::from("fuzz.yaml"),
        blob: String::new(),
        content: Content::Bytes(data.to_vec()),
    };
    let parsed = model::parse_file_detailed(&file, &limits);
    for v in &parsed.violations {
        assert!(v.line >= 1, "violation on line 0: {v}");
        assert_eq!(&*v.path, "fuzz.yaml", "violation names another file: {v}");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(
            parsed.objects.is_empty()
                && matches!(&parsed.violations[..], [v] if v.rule == Rule::Encoding),
            "a file that is not UTF-8 must be one encoding violation: {:?}",
            parsed.violations
        );
        return;
    };

    let docs = match yaml::load_all(text, limits.yaml) {
        Ok(docs) => docs,
        Err(e) => {
            assert!(e.line >= 1, "YAML error on line 0: {e}");
            assert!(
                parsed.objects.is_empty()
                    && matches!(&parsed.violations[..],
                        [v] if v.rule == Rule::Yaml && v.line == e.line && v.message == e.message),
                "the loader refused the file ({e}) but the parser said {:?}",
                parsed.violations
            );
            return;
        }
    };
    assert!(
        parsed.violations.iter().all(|v| v.rule != Rule::Yaml),
        "the loader read the file but the parser reported a YAML violation: {:?}",
        parsed.violations
    );

    let mut total = 0;
    for doc in &docs {
        assert!(doc.line >= 1 && doc.root.line >= 1, "document on line 0");
        let (nodes, depth) = size_and_depth(&doc.root);
        total += nodes;
        assert!(
            depth <= limits.yaml.max_depth,
            "a document loaded nested {depth} deep, over the limit of {}",
            limits.yaml.max_depth
        );
    }
    assert!(
        total <= limits.yaml.max_nodes,
        "the file loaded to {total} nodes, over the limit of {}",
        limits.yaml.max_nodes
    );

    // Written back out, each document reads back to the same value. Read back without a node
    // budget: the written text spells out every alias and counts keys too.
    let reread = yaml::Limits {
        max_nodes: usize::MAX,
        ..limits.yaml
    };
    for doc in &docs {
        let json = doc.root.to_json();
        let written = yaml::to_string(&json);
        let back = yaml::load_all(&written, reread).unwrap_or_else(|e| {
            panic!("yaml::to_string wrote YAML that does not load ({e}):\n{written}")
        });
        let back: Vec<_> = back.iter().map(|d| d.root.to_json()).collect();
        assert!(
            back == [json.clone()],
            "yaml::to_string does not read back to the same value:\n\
             value:   {json}\nwritten:\n{written}\nread:    {back:?}"
        );
    }
});
