//! The one place pbsync reads YAML: a multi-document loader that keeps the line of every node
//! and refuses hostile input (alias bombs, deep nesting). Pure: no I/O.
//!
//! It is built on `saphyr-parser`'s event stream rather than on a serde YAML deserializer
//! because pbsync reports every rule violation at the line of the offending field, not just
//! syntax errors, and because expanding aliases ourselves lets us count nodes as we go, so a
//! "billion laughs" document fails after a bounded amount of work instead of exhausting memory.
//! Plain scalar values resolve the way kubectl (go-yaml v2) resolves them, including the
//! YAML 1.1 booleans `yes`/`no`/`on`/`off`, so a manifest means the same thing here as under
//! `kubectl apply`; two deliberate differences: mapping keys are always the text written (a
//! key `y:` or `on:` stays a string), and the single letters `y`/`n` are strings.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Bounds on what one file may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of collections.
    pub max_depth: usize,
    /// Most nodes a file may produce, counting alias expansions.
    pub max_nodes: usize,
    /// Most bytes of keys and scalar values a file may produce, counting alias expansions:
    /// an alias copies its anchor's text, so few nodes can still mean a lot of memory.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_nodes: 1_000_000,
            max_bytes: 64 << 20,
        }
    }
}

/// What an anchored node adds when an alias repeats it.
#[derive(Debug, Clone, Copy, Default)]
struct Weight {
    /// Nodes in it.
    nodes: usize,
    /// Collection levels in it (a scalar: 0).
    height: usize,
    /// Bytes of keys and scalars in it.
    bytes: usize,
}

/// A YAML syntax or limit error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Error {
    /// 1-based line.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

/// A YAML value with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line the node is written on: its first character, or for a mapping value
    /// the line of its key (a block value starts on the next line, but a message about
    /// `spec.workloadProfiles` belongs on the line that says `workloadProfiles:`).
    pub line: u32,
    /// The value.
    pub value: Value,
}

/// A resolved YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or empty.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with string keys, in document order.
    Map(Vec<(String, Node)>),
}

/// One document of a multi-document file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The line of the document's first node.
    pub line: u32,
    /// The document's root node.
    pub root: Node,
}

enum Frame {
    Seq {
        line: u32,
        col: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map(MapFrame),
}

struct MapFrame {
    line: u32,
    col: usize,
    anchor: usize,
    entries: Vec<(String, Node)>,
    /// Keys seen, built only once a mapping grows large: most mappings are small, and a
    /// linear scan over them is cheaper than hashing and copying every key.
    index: Option<HashSet<String>>,
    pending_key: Option<(String, u32, bool)>,
    merges: Vec<Node>,
}

/// Loads every non-empty document of `text`.
pub fn load_all(text: &str, limits: Limits) -> Result<Vec<Document>, Error> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Node, Weight)> = HashMap::new();
    let mut nodes = 0usize;
    let mut bytes = 0usize;
    let mut root: Option<Node> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            let line = to_line(e.marker().line());
            let mut message = match e.info() {
                // The scanner counts flow levels in a u8 and gives up past 255, before our
                // own depth limit sees the events.
                "recursion limit exceeded" => {
                    "flow collections nest deeper than the parser allows (recursion limit exceeded)"
                        .to_string()
                }
                info => info.to_string(),
            };
            // An unclosed `[` or `{` is noticed lines later; name where it was opened.
            if let Some((what, start)) = open_flow(text, &stack).filter(|(_, l)| *l < line) {
                message.push_str(&format!(
                    " (in the flow {what} that starts at line {start})"
                ));
            }
            Error { line, message }
        })?;
        let line = to_line(span.start.line());
        let complete = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                root = None;
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take().filter(|n| n.value != Value::Null) {
                    docs.push(Document {
                        line: node.line,
                        root: node,
                    });
                }
                None
            }
            Event::Alias(id) => {
                let (node, weight) = anchors.get(&id).ok_or_else(|| Error {
                    line,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                nodes = nodes.saturating_add(weight.nodes);
                check_nodes(nodes, limits, line)?;
                bytes = bytes.saturating_add(weight.bytes);
                check_bytes(bytes, limits, line)?;
                // The depth is checked as collections open; an alias pastes a whole subtree
                // at once, so its own height counts here.
                if stack.len() + weight.height > limits.max_depth {
                    return Err(Error {
                        line,
                        message: format!(
                            "alias expands deeper than {} levels of nesting",
                            limits.max_depth
                        ),
                    });
                }
                let mut node = node.clone();
                node.line = line;
                Some((node, 0usize))
            }
            Event::Scalar(value, style, anchor, tag) => {
                nodes += 1;
                check_nodes(nodes, limits, line)?;
                bytes = bytes.saturating_add(value.len());
                check_bytes(bytes, limits, line)?;
                if let Some(Frame::Map(map)) = stack.last_mut()
                    && map.pending_key.is_none()
                {
                    // Keys stay the text written: a key `y` or `on` is never a boolean.
                    let is_merge_key = style == ScalarStyle::Plain && value == "<<";
                    map.pending_key = Some((value.to_string(), line, is_merge_key));
                    continue;
                }
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                let value = resolve_scalar(&value, style, tag.as_deref(), line)?;
                Some((Node { line, value }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                nodes += 1;
                check_nodes(nodes, limits, line)?;
                push_frame(
                    &mut stack,
                    Frame::Seq {
                        line,
                        col: span.start.col(),
                        anchor,
                        items: Vec::new(),
                    },
                    limits,
                )?;
                None
            }
            Event::MappingStart(anchor, _) => {
                nodes += 1;
                check_nodes(nodes, limits, line)?;
                let frame = Frame::Map(MapFrame {
                    line,
                    col: span.start.col(),
                    anchor,
                    entries: Vec::new(),
                    index: None,
                    pending_key: None,
                    merges: Vec::new(),
                });
                push_frame(&mut stack, frame, limits)?;
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    line,
                    anchor,
                    items,
                    ..
                }) => Some((
                    Node {
                        line,
                        value: Value::Seq(items),
                    },
                    anchor,
                )),
                _ => {
                    return Err(Error {
                        line,
                        message: "unbalanced sequence end".into(),
                    });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(map)) => Some(finish_map(map)?),
                _ => {
                    return Err(Error {
                        line,
                        message: "unbalanced mapping end".into(),
                    });
                }
            },
        };
        let Some((mut node, anchor)) = complete else {
            continue;
        };
        if anchor != 0 {
            // Measured only for anchored nodes: an alias adds this much to the budgets.
            anchors.insert(anchor, (node.clone(), weigh(&node)));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map(map)) => match map.pending_key.take() {
                None => {
                    return Err(Error {
                        line: node.line,
                        message: "mapping keys must be scalars".into(),
                    });
                }
                Some((_, _, true)) => map.merges.push(node),
                Some((key, key_line, false)) => {
                    if !map.insert_key(&key) {
                        return Err(Error {
                            line: key_line,
                            message: format!("duplicate mapping key {key:?}"),
                        });
                    }
                    node.line = key_line;
                    map.entries.push((key, node));
                }
            },
        }
    }
    Ok(docs)
}

/// The innermost open collection when it is a flow one (`[` or `{` where it starts): its
/// kind and line. Flow collections hold only flow collections, so the innermost is enough.
fn open_flow(text: &str, stack: &[Frame]) -> Option<(&'static str, u32)> {
    let (what, line, col) = match stack.last()? {
        Frame::Seq { line, col, .. } => ("sequence", *line, *col),
        Frame::Map(m) => ("mapping", m.line, m.col),
    };
    let first = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let opener = if what == "sequence" { '[' } else { '{' };
    (first.chars().nth(col)? == opener).then_some((what, line))
}

fn to_line(line: usize) -> u32 {
    u32::try_from(line.max(1)).unwrap_or(u32::MAX)
}

fn check_nodes(nodes: usize, limits: Limits, line: u32) -> Result<(), Error> {
    if nodes > limits.max_nodes {
        return Err(Error {
            line,
            message: format!(
                "file expands to more than {} YAML nodes (an alias bomb?); refusing to read further",
                limits.max_nodes
            ),
        });
    }
    Ok(())
}

fn push_frame(stack: &mut Vec<Frame>, frame: Frame, limits: Limits) -> Result<(), Error> {
    if stack.len() >= limits.max_depth {
        let line = match &frame {
            Frame::Seq { line, .. } => *line,
            Frame::Map(m) => m.line,
        };
        return Err(Error {
            line,
            message: format!("document nests deeper than {} levels", limits.max_depth),
        });
    }
    stack.push(frame);
    Ok(())
}

fn check_bytes(bytes: usize, limits: Limits, line: u32) -> Result<(), Error> {
    if bytes > limits.max_bytes {
        return Err(Error {
            line,
            message: format!(
                "file expands to more than {} MiB of text (an alias bomb?); refusing to read further",
                limits.max_bytes >> 20
            ),
        });
    }
    Ok(())
}

fn weigh(node: &Node) -> Weight {
    // Iterative, so that measuring never recurses as deep as the document nests.
    let mut w = Weight::default();
    let mut todo = vec![(node, 0usize)];
    while let Some((n, level)) = todo.pop() {
        w.nodes += 1;
        match &n.value {
            Value::Seq(items) => {
                w.height = w.height.max(level + 1);
                todo.extend(items.iter().map(|i| (i, level + 1)));
            }
            Value::Map(entries) => {
                w.height = w.height.max(level + 1);
                for (k, v) in entries {
                    w.bytes += k.len();
                    todo.push((v, level + 1));
                }
            }
            Value::Str(s) => w.bytes += s.len(),
            _ => w.bytes += 8,
        }
    }
    w
}

impl MapFrame {
    /// Records `key` as seen; false when it already was (a duplicate key).
    fn insert_key(&mut self, key: &str) -> bool {
        const SMALL: usize = 32;
        if self.index.is_none() && self.entries.len() < SMALL {
            return !self.entries.iter().any(|(k, _)| k == key);
        }
        let entries = &self.entries;
        let index = self
            .index
            .get_or_insert_with(|| entries.iter().map(|(k, _)| k.clone()).collect());
        index.insert(key.to_string())
    }
}

fn finish_map(mut map: MapFrame) -> Result<(Node, usize), Error> {
    // YAML merge keys (`<<: *base`): explicit keys win, earlier merges win over later ones.
    for merge in std::mem::take(&mut map.merges) {
        let sources = match merge.value {
            Value::Map(entries) => vec![entries],
            Value::Seq(items) => items
                .into_iter()
                .map(|n| match n.value {
                    Value::Map(entries) => Ok(entries),
                    _ => Err(Error {
                        line: n.line,
                        message: "merge key needs a mapping".into(),
                    }),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(Error {
                    line: merge.line,
                    message: "merge key needs a mapping".into(),
                });
            }
        };
        for entries in sources {
            for (k, v) in entries {
                if map.insert_key(&k) {
                    map.entries.push((k, v));
                }
            }
        }
    }
    Ok((
        Node {
            line: map.line,
            value: Value::Map(map.entries),
        },
        map.anchor,
    ))
}

fn resolve_scalar(
    raw: &str,
    style: ScalarStyle,
    tag: Option<&str>,
    line: u32,
) -> Result<Value, Error> {
    let bad = |what: &str| Error {
        line,
        message: format!("{raw:?} is not a valid {what}"),
    };
    match tag {
        Some("!!str" | "tag:yaml.org,2002:str") => return Ok(Value::Str(raw.to_string())),
        Some("!!int" | "tag:yaml.org,2002:int") => {
            return parse_int(raw).map(Value::Int).ok_or_else(|| bad("integer"));
        }
        Some("!!float" | "tag:yaml.org,2002:float") => {
            return parse_float(raw)
                .map(Value::Float)
                .ok_or_else(|| bad("float"));
        }
        Some("!!bool" | "tag:yaml.org,2002:bool") => {
            return parse_bool(raw)
                .map(Value::Bool)
                .ok_or_else(|| bad("boolean"));
        }
        Some("!!null" | "tag:yaml.org,2002:null") => return Ok(Value::Null),
        _ => {}
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::Str(raw.to_string()));
    }
    if matches!(raw, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(raw) {
        return Ok(Value::Bool(b));
    }
    if let Some(i) = parse_int(raw) {
        return Ok(Value::Int(i));
    }
    if let Some(f) = parse_float(raw) {
        return Ok(Value::Float(f));
    }
    Ok(Value::Str(raw.to_string()))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() {
        return None;
    }
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    // Only the YAML float syntax: digits with a dot and/or an exponent. Rust's parser alone
    // would also accept words like "infinity", which YAML reads as strings.
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let valid = !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && (body.contains('.') || body.contains(['e', 'E']));
    if valid { s.parse().ok() } else { None }
}

impl Node {
    /// Converts to JSON. Non-finite floats become strings, as JSON cannot hold them.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number)
            }
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Self::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The child at `key`, for a mapping.
    pub fn get(&self, key: &str) -> Option<&Self> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The child at `index`, for a sequence.
    pub fn at(&self, index: usize) -> Option<&Self> {
        match &self.value {
            Value::Seq(items) => items.get(index),
            _ => None,
        }
    }

    /// The line of the deepest node along `path` (segments are map keys or sequence indexes);
    /// the path stops where the document does, so a missing field reports the line of its
    /// parent's key.
    pub fn line_of<'a>(&self, path: impl IntoIterator<Item = PathSegment<'a>>) -> u32 {
        let mut node = self;
        for seg in path {
            let next = match seg {
                PathSegment::Key(k) => node.get(k),
                PathSegment::Index(i) => node.at(i),
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.line
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSegment<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

/// Writes a JSON value as block-style YAML that [`load_all`] reads back to exactly the same
/// value: a string is written plain only when it would resolve back to that same string, and
/// multi-line strings become literal blocks, so rendered manifests stay readable.
pub fn to_string(value: &serde_json::Value) -> String {
    let mut out = String::new();
    match value {
        serde_json::Value::Object(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        serde_json::Value::Array(a) if !a.is_empty() => emit_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

/// Longest key written as an implicit `key:` (YAML allows 1024 characters); a longer one
/// is written in the explicit form `? key` / `:`.
const MAX_IMPLICIT_KEY: usize = 1000;

fn emit_map(m: &serde_json::Map<String, serde_json::Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        let key = plain_or_quoted(k);
        if key.chars().count() > MAX_IMPLICIT_KEY {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            out.push_str(&" ".repeat(indent));
        } else {
            out.push_str(&key);
        }
        out.push(':');
        emit_child(v, indent, out);
    }
}

fn emit_seq(a: &[serde_json::Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                // `- key: v` with the rest of the mapping aligned under the first key.
                let mut inner = String::new();
                emit_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            _ => emit_child(v, indent, out),
        }
    }
}

fn emit_child(v: &serde_json::Value, indent: usize, out: &mut String) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn scalar(v: &serde_json::Value, indent: usize) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => string(s, indent),
        serde_json::Value::Object(_) => "{}".into(),
        serde_json::Value::Array(_) => "[]".into(),
    }
}

fn string(s: &str, indent: usize) -> String {
    if s.contains('\n') && literal_safe(s) {
        let body = s.strip_suffix('\n').unwrap_or(s);
        let chomp = if s.ends_with('\n') { "" } else { "-" };
        let pad = " ".repeat(indent);
        let mut out = format!("|{chomp}");
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
                out.push_str(line);
            }
        }
        return out;
    }
    plain_or_quoted(s)
}

/// A literal block reproduces the string exactly only without leading blanks on the first
/// line, carriage returns, tabs or other control characters, trailing blank lines, or lines
/// that are only spaces.
fn literal_safe(s: &str) -> bool {
    !s.starts_with([' ', '\n'])
        && !s.ends_with("\n\n")
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !s.split('\n').any(|l| !l.is_empty() && l.trim().is_empty())
}

fn plain_or_quoted(s: &str) -> String {
    let plain_chars = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@+=~()$%^:".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.')
        && !s.ends_with(':')
        && !s.contains(": ");
    let round_trips = plain_chars
        && matches!(resolve_scalar(s, ScalarStyle::Plain, None, 0), Ok(Value::Str(ref r)) if r == s);
    if round_trips {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = load_all(text, Limits::default()).expect("valid yaml");
        assert_eq!(docs.len(), 1);
        docs.remove(0).root
    }

    #[test]
    fn multi_document_files_keep_each_start_line() {
        let docs = load_all("a: 1\n---\n# c\nb: 2\n---\n", Limits::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[1].line, 4);
    }

    #[test]
    fn lines_follow_paths_into_the_document() {
        let root = one("spec:\n  refs:\n    - name: a\n    - name: b\n");
        let path = [
            PathSegment::Key("spec"),
            PathSegment::Key("refs"),
            PathSegment::Index(1),
        ];
        assert_eq!(root.line_of(path), 4);
        let missing = [PathSegment::Key("spec"), PathSegment::Key("nope")];
        assert_eq!(
            root.line_of(missing),
            1,
            "a missing field reports the line of its parent's key"
        );
        let block_value = [PathSegment::Key("spec"), PathSegment::Key("refs")];
        assert_eq!(
            root.line_of(block_value),
            2,
            "a block value is reported on its key's line, not on the line below"
        );
    }

    #[test]
    fn scalars_resolve_as_kubectl_does() {
        let root = one("a: yes\nb: '1'\nc: 1\nd: 1.5\ne: ~\nf: 1.2.0\ng: infinity\n");
        let json = root.to_json();
        assert_eq!(json["a"], true);
        assert_eq!(json["b"], "1");
        assert_eq!(json["c"], 1);
        assert_eq!(json["d"], 1.5);
        assert!(json["e"].is_null());
        assert_eq!(json["f"], "1.2.0");
        assert_eq!(json["g"], "infinity");
    }

    #[test]
    fn duplicate_keys_are_errors_at_the_second_key() {
        let err = load_all("a: 1\nb: 2\na: 3\n", Limits::default()).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("duplicate"), "{err}");
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let root = one("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\non: yes\n");
        let json = root.to_json();
        assert_eq!(json["thing"]["x"], 1);
        assert_eq!(json["thing"]["y"], 3);
        assert_eq!(json["on"], true, "keys stay strings, values resolve");
    }

    #[test]
    fn alias_bomb_stops_at_the_node_budget() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + (i - 1) as u8) as char;
            let cur = (b'a' + i as u8) as char;
            text.push_str(&format!(
                "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = load_all(&text, Limits::default()).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err}");
    }

    // Found by `scripts/fuzz` (fuzz/README.md): an alias pasted an anchored subtree deeper
    // than the limit, and a chain of them made a 22 KB file nest ~10,000 levels deep, which
    // overflowed the stack when the document was converted.
    #[test]
    fn an_alias_cannot_nest_a_document_deeper_than_the_limit() {
        let mut text = String::from("a0: &a0 1\n");
        for i in 1..160 {
            let open = "[".repeat(62);
            let close = "]".repeat(62);
            text.push_str(&format!(
                "a{i}: &a{i} {open}*a{prev}{close}\n",
                prev = i - 1
            ));
        }
        let err = load_all(&text, Limits::default()).unwrap_err();
        assert!(
            err.message.contains("alias expands deeper than 64"),
            "{err}"
        );
        assert_eq!(err.line, 3, "the first alias that would go too deep");
        // One level of aliasing within the limit is fine.
        let ok = "a: &a [[1]]\nb: [*a]\n";
        assert!(load_all(ok, Limits::default()).is_ok());
    }

    // Found by reading the loader after the fuzzer's report: few nodes can still copy a lot
    // of text, so the text an alias repeats counts against a budget of its own.
    #[test]
    fn aliases_of_long_scalars_stop_at_the_text_budget() {
        let long = "x".repeat(100_000);
        let mut text = format!("a: &a {long}\nb: [");
        text.push_str(&vec!["*a"; 1_000].join(", "));
        text.push_str("]\n");
        let err = load_all(&text, Limits::default()).unwrap_err();
        assert!(err.message.contains("MiB of text"), "{err}");
    }

    // Found by `scripts/fuzz`: a key over YAML's 1024-character limit for implicit keys was
    // written as `key:`, which no YAML parser reads back.
    #[test]
    fn a_key_longer_than_an_implicit_key_may_be_is_written_explicitly() {
        let key = "k".repeat(1_100);
        let value = serde_json::json!({&key: {"inner": 1}, "short": [{&key: 2}]});
        let text = to_string(&value);
        let back = load_all(&text, Limits::default()).expect("reads back");
        assert_eq!(back[0].root.to_json(), value, "{text}");
    }

    #[test]
    fn deep_nesting_is_refused_before_it_gets_deep() {
        let text = "[".repeat(100_000);
        let err = load_all(&text, Limits::default()).unwrap_err();
        assert!(err.message.contains("recursion limit"), "{err}");
        let mut block = String::new();
        for depth in 0..200 {
            block.push_str(&format!("{}k{depth}:\n", "  ".repeat(depth)));
        }
        let err = load_all(&block, Limits::default()).unwrap_err();
        assert!(err.message.contains("nests deeper"), "{err}");
        assert_eq!(err.line, 65);
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let err = load_all("a: 1\nb: [unclosed\nc: 2\n", Limits::default()).unwrap_err();
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn an_unclosed_flow_collection_names_the_line_it_opens_on() {
        let err = load_all("a: 1\nb: [x, y\nc: 2\n", Limits::default()).unwrap_err();
        assert!(err.line > 2, "{err}");
        assert!(
            err.message
                .ends_with("(in the flow sequence that starts at line 2)"),
            "{err}"
        );
        let err = load_all("a:\n  b: c\n   d: e\n", Limits::default()).unwrap_err();
        assert!(!err.message.contains("flow"), "a block error: {err}");
    }

    #[test]
    fn emitted_yaml_reads_back_to_the_same_value() {
        let v = serde_json::json!({
            "apiVersion": "v1", "a": "yes", "b": "1", "c": "1.2.0", "d": "", "e": "null",
            "f": "multi\nline\n", "g": "no trailing\nnewline", "h": " leading", "i": "a: b",
            "j": [1, "two", {"k": true, "l": [null, 1.5]}, []], "m": {}, "n": "https://x.io/a",
            "o": "#comment", "p": "tab\there", "q": "-", "r": "~", "s": "0x1F", "t": "\n",
            "u": "two\n\nblank lines\n", "v": "ends with spaces  \n", "w": "- item",
            "x": [[1, 2], {"y": {"z": "deep"}}], "emoji": "caf\u{e9} \u{1f600}"
        });
        let text = to_string(&v);
        let docs = load_all(&text, Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(docs[0].root.to_json(), v, "\n{text}");
    }
}
