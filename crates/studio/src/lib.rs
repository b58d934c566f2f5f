//! `pbsync import` (pbsync-studio crate): a PaletteAI Studio archive (`.tar.gz`) unpacked into the repository
//! layout of `examples/repo-layout/`. Every member is checked before anything is read into
//! the model (see [`archive`]), every document is classified by content (see [`convert`]),
//! every object is compared with what the directory already holds, and files are written,
//! each atomically, only when all of that passed: one conflict writes nothing.

pub mod archive;
pub mod convert;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use convert::Doc;
use pbsync_core::model::{self, Kind, ObjectKey, Violation, yaml};
use pbsync_core::snapshot::{Content, SourceFile};

/// A failed import; nothing was written unless the error is [`Error::Write`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The archive file could not be opened.
    #[error("cannot open archive {path}")]
    Open {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a gzip-compressed tar archive, or a damaged one.
    #[error("not a readable .tar.gz archive")]
    NotAnArchive(#[source] std::io::Error),
    /// A member that could escape the target directory or is not a plain file.
    #[error("refusing the archive: member {member:?}: {why}")]
    UnsafeMember {
        /// The member's path.
        member: String,
        /// Why.
        why: String,
    },
    /// A member over the size limit.
    #[error("refusing the archive: member {member:?} is {size} bytes, over the limit of {limit}")]
    MemberTooLarge {
        /// The member's path.
        member: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The members add up to more than the limit.
    #[error("refusing the archive: it unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// More members than the limit.
    #[error("refusing the archive: it has more than {limit} members")]
    TooManyMembers {
        /// The limit.
        limit: usize,
    },
    /// A member that should be a manifest and is not readable as one.
    #[error("archive member {member}: {why}")]
    BadMember {
        /// The member's path.
        member: String,
        /// Why.
        why: String,
    },
    /// The imported objects break the repository format.
    #[error("the imported objects are invalid:\n{}", list(.violations))]
    Invalid {
        /// Every violation, at the path the object would be written to.
        violations: Vec<Violation>,
    },
    /// Objects that differ from what the directory already holds; nothing was written.
    #[error("{} conflict(s) with {}; nothing was written:\n{}", .conflicts.len(), .dir.display(), list(.conflicts))]
    Conflicts {
        /// The directory.
        dir: PathBuf,
        /// One line per conflict.
        conflicts: Vec<String>,
    },
    /// The target directory could not be read.
    #[error("cannot read {path}")]
    ReadDir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (files before it in the report were written).
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Options of one import.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace every hub object is put in.
    pub namespace: String,
    /// Palette scope of the cluster profiles (`project` by default).
    pub scope: String,
    /// Archive limits.
    pub limits: archive::Limits,
    /// Plan only: write nothing.
    pub dry_run: bool,
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A new file is written.
    Written,
    /// The directory already holds the same object; nothing is written.
    Reused,
}

/// One imported object.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Identity.
    pub key: ObjectKey,
    /// Repository-relative path of its file (the existing one when reused).
    pub path: String,
    /// The archive member it came from.
    pub member: String,
    /// Written or reused.
    pub outcome: Outcome,
}

/// The result of an import.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every object, sorted by key.
    pub entries: Vec<Entry>,
    /// Members or documents left out, with why.
    pub skipped: Vec<String>,
    /// Notes (dropped pack fields, unused variables).
    pub notes: Vec<String>,
}

/// Where an object of `kind` goes in the layout of `examples/repo-layout/`.
fn layout_path(key: &ObjectKey) -> String {
    let name = &key.name;
    match key.kind {
        Kind::ProfileBundle => format!("bundles/{name}.yaml"),
        Kind::WorkloadProfile => format!("shared/workload-profiles/{name}.yaml"),
        Kind::ClusterProfile => format!(
            "shared/cluster-profiles/{name}-{}.yaml",
            key.version.as_deref().unwrap_or("0")
        ),
        Kind::HelmRepository => format!("shared/repositories/{name}.helm.yaml"),
        Kind::OciRepository => format!("shared/repositories/{name}.oci.yaml"),
        Kind::ComponentDefinition => format!("shared/definitions/{name}.component.yaml"),
        Kind::TraitDefinition => format!("shared/definitions/{name}.trait.yaml"),
        Kind::PolicyDefinition => format!("shared/definitions/{name}.policy.yaml"),
        Kind::ComputePool => format!("pools/{name}.yaml"),
        Kind::AiWorkload => format!("deployments/{name}.yaml"),
    }
}

/// True for a name or version that is safe as one path component.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+'))
}

/// An object ready to be written.
struct Prepared {
    key: ObjectKey,
    member: String,
    text: String,
    manifest: Value,
}

/// Reads `archive` and imports it into `dir`.
pub fn import_file(archive: &Path, dir: &Path, opts: &Options) -> Result<Report, Error> {
    let file = std::fs::File::open(archive).map_err(|source| Error::Open {
        path: archive.to_path_buf(),
        source,
    })?;
    let members = archive::read(std::io::BufReader::new(file), &opts.limits)?;
    let label = archive
        .file_name()
        .map_or_else(|| "archive".into(), |n| n.to_string_lossy().into_owned());
    import(&members, &label, dir, opts)
}

/// Imports already-read members into `dir`.
pub fn import(
    members: &[archive::Member],
    label: &str,
    dir: &Path,
    opts: &Options,
) -> Result<Report, Error> {
    let mut report = Report::default();
    let prepared = prepare(members, label, opts, &mut report)?;
    let existing = scan(dir)?;
    let mut conflicts = Vec::new();
    let mut writes: Vec<(String, &Prepared)> = Vec::new();
    for p in &prepared {
        match existing.objects.get(&p.key) {
            Some((path, manifest)) if *manifest == p.manifest => report.entries.push(Entry {
                key: p.key.clone(),
                path: path.clone(),
                member: p.member.clone(),
                outcome: Outcome::Reused,
            }),
            Some((path, _)) => conflicts.push(format!(
                "{} (from {}) differs from the one in {path}",
                p.key, p.member
            )),
            None => {
                let path = layout_path(&p.key);
                if existing.files.contains_key(&path) || dir.join(&path).exists() {
                    conflicts.push(format!(
                        "{} (from {}) would be written to {path}, which exists and holds other objects",
                        p.key, p.member
                    ));
                } else {
                    writes.push((path, p));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflicts {
            dir: dir.to_path_buf(),
            conflicts,
        });
    }
    for (path, p) in writes {
        if !opts.dry_run {
            write_atomically(&dir.join(&path), &p.text)?;
        }
        report.entries.push(Entry {
            key: p.key.clone(),
            path,
            member: p.member.clone(),
            outcome: Outcome::Written,
        });
    }
    report.entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(report)
}

/// Classifies and converts every document; checks the result parses as the repository
/// format; merges identical duplicates.
fn prepare(
    members: &[archive::Member],
    label: &str,
    opts: &Options,
    report: &mut Report,
) -> Result<Vec<Prepared>, Error> {
    let mut objects: Vec<(String, Value)> = Vec::new();
    let mut envelopes: Vec<(String, Value)> = Vec::new();
    let mut variable_sets = Vec::new();
    for m in members {
        let strict = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| m.path.to_ascii_lowercase().ends_with(ext));
        let Ok(text) = std::str::from_utf8(&m.bytes) else {
            if strict {
                return Err(Error::BadMember {
                    member: m.path.clone(),
                    why: "not UTF-8 text".into(),
                });
            }
            report.skipped.push(format!("{}: not text", m.path));
            continue;
        };
        let docs = match yaml::load_all(text, yaml::Limits::default()) {
            Ok(docs) => docs.into_iter().map(|d| d.root.to_json()).collect(),
            Err(e) => match serde_json::from_str::<Value>(text) {
                Ok(v) => vec![v],
                Err(_) if strict => {
                    return Err(Error::BadMember {
                        member: m.path.clone(),
                        why: format!("neither YAML nor JSON: {e}"),
                    });
                }
                Err(_) => {
                    report
                        .skipped
                        .push(format!("{}: neither YAML nor JSON", m.path));
                    continue;
                }
            },
        };
        // A JSON export may hold several profiles in one list.
        let docs: Vec<Value> = docs
            .into_iter()
            .flat_map(|d| match d {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                other => vec![other],
            })
            .collect();
        for (i, doc) in docs.iter().enumerate() {
            match convert::classify(doc) {
                Doc::Object(Kind::ClusterProfile, v) => envelopes.push((m.path.clone(), v)),
                Doc::Object(_, v) => objects.push((m.path.clone(), v)),
                Doc::ProfileExport(v) => {
                    let (env, mut notes) = convert::envelope(&v, &opts.scope);
                    report.notes.append(&mut notes);
                    envelopes.push((m.path.clone(), env));
                }
                Doc::VariableSet { targets, variables } => {
                    variable_sets.push((m.path.clone(), targets, variables));
                }
                Doc::Other(why) => {
                    report
                        .skipped
                        .push(format!("{} (document {}): {why}", m.path, i + 1));
                }
            }
        }
    }
    // Variable sets join the envelopes they name, or else every envelope that uses them.
    for (member, targets, variables) in &variable_sets {
        for var in variables {
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            let mut used = false;
            for (_, env) in &mut envelopes {
                let env_name = env
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from);
                let env_version = env
                    .pointer("/spec/version")
                    .and_then(Value::as_str)
                    .map(String::from);
                let wanted = if targets.is_empty() {
                    convert::uses_variable(env, name)
                } else {
                    targets.iter().any(|(n, v)| {
                        Some(n) == env_name.as_ref()
                            && v.as_ref().is_none_or(|v| Some(v) == env_version.as_ref())
                    })
                };
                if wanted {
                    used = true;
                    convert::add_variable(env, var).map_err(|why| Error::BadMember {
                        member: member.clone(),
                        why: format!(
                            "cluster profile {}: {why}",
                            env_name.as_deref().unwrap_or("?")
                        ),
                    })?;
                }
            }
            if !used {
                report.notes.push(format!(
                    "{member}: variable {name} is used by no cluster profile of the archive; not imported"
                ));
            }
        }
    }
    let mut by_key: BTreeMap<ObjectKey, Prepared> = BTreeMap::new();
    let mut violations = Vec::new();
    let all = objects
        .into_iter()
        .map(|(m, v)| (m, convert::set_namespace(&v, &opts.namespace)))
        .chain(envelopes);
    for (member, doc) in all {
        let header = format!("# Imported by pbsync from {label}: {member}\n");
        let text = format!("{header}{}", yaml::to_string(&doc));
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = doc
            .pointer("/spec/version")
            .and_then(Value::as_str)
            .unwrap_or("0");
        if !safe_component(name) || !safe_component(version) {
            return Err(Error::BadMember {
                member,
                why: format!(
                    "name {name:?} (version {version:?}) cannot name a file; names are RFC 1123"
                ),
            });
        }
        // The repository's own parser is the judge of the result.
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::parse);
        let probe = ObjectKey {
            kind: kind.unwrap_or(Kind::ProfileBundle),
            namespace: Arc::from(opts.namespace.as_str()),
            name: Arc::from(name),
            version: (kind == Some(Kind::ClusterProfile)).then(|| Arc::from(version)),
        };
        let file = SourceFile {
            path: Arc::from(layout_path(&probe).as_str()),
            blob: String::new(),
            content: Content::Bytes(text.clone().into_bytes()),
        };
        let (objs, mut v) = model::parse_file(&file, &model::Limits::default());
        violations.append(&mut v);
        let Some(obj) = objs.into_iter().next() else {
            continue;
        };
        match by_key.get(&obj.key) {
            Some(first) if first.manifest == obj.manifest.value() => {}
            Some(first) => {
                return Err(Error::BadMember {
                    member,
                    why: format!("{} is also in {}, differently", obj.key, first.member),
                });
            }
            None => {
                by_key.insert(
                    obj.key.clone(),
                    Prepared {
                        key: obj.key,
                        member,
                        text,
                        manifest: obj.manifest.value(),
                    },
                );
            }
        }
    }
    if !violations.is_empty() {
        violations.sort();
        return Err(Error::Invalid { violations });
    }
    Ok(by_key.into_values().collect())
}

/// What the target directory already holds.
#[derive(Default)]
struct Existing {
    /// Objects by key: the file and the manifest.
    objects: HashMap<ObjectKey, (String, Value)>,
    /// Every YAML file, relative.
    files: HashMap<String, ()>,
}

/// Reads every `*.yaml`/`*.yml` under `dir` (a missing directory holds nothing).
fn scan(dir: &Path) -> Result<Existing, Error> {
    let mut out = Existing::default();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| Error::ReadDir {
            path: d.clone(),
            source,
        })?;
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let p = e.path();
            if e.file_name() == ".git" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Some(rel) = p.strip_prefix(dir).ok().and_then(Path::to_str) else {
                continue;
            };
            if !(rel.ends_with(".yaml") || rel.ends_with(".yml")) {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(|source| Error::ReadDir {
                path: p.clone(),
                source,
            })?;
            let file = SourceFile {
                path: Arc::from(rel),
                blob: String::new(),
                content: Content::Bytes(bytes),
            };
            let (objs, _) = model::parse_file(&file, &model::Limits::default());
            for o in objs {
                out.objects
                    .entry(o.key)
                    .or_insert((rel.to_string(), o.manifest.value()));
            }
            out.files.insert(rel.to_string(), ());
        }
    }
    Ok(out)
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so
/// a reader sees the old file or the whole new one.
fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist_noclobber(path).map_err(|e| err(e.error))?;
    Ok(())
}
