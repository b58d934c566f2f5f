//! Parsed files in a compact binary form, for the parse cache kept on disk between runs
//! (`--cache-dir`). Pure: bytes in, bytes out; the caller does the I/O.
//!
//! The store is checksummed (CRC-32), so a torn or damaged file decodes as empty. Only
//! files that parsed without a violation are stored (a file with violations is parsed
//! again, so its messages come from the parser itself). A store written by another build of
//! pbsync (the caller names the build: a parser that changed could find violations an older
//! one did not), another format or other input limits decodes as empty: it is a cache, and
//! a miss only costs a parse.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::{
    AiWorkload, Bundle, BundleType, ClusterProfile, ComputePool, DeletionPolicy, DeploymentType,
    Kind, Limits, Location, Manifest, Object, ObjectKey, PoolVariant, ProfileType, Ref, Spec,
    WorkloadProfile, WorkloadType,
};

/// Bumped whenever the stored shape changes.
const FORMAT: u32 = 1;

/// One parsed file: its path, its blob id and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    /// Repository-relative path.
    pub path: Arc<str>,
    /// Git blob id.
    pub blob: String,
    /// The objects it declares.
    pub objects: Vec<Object>,
}

#[derive(Serialize, Deserialize)]
struct Store {
    format: u32,
    version: String,
    limits: String,
    files: Vec<SFile>,
}

#[derive(Serialize, Deserialize)]
struct SFile {
    path: String,
    blob: String,
    objects: Vec<SObject>,
}

#[derive(Serialize, Deserialize)]
struct SObject {
    key: SKey,
    line: u32,
    manifest: String,
    spec: SSpec,
    depends_on: Vec<SRef>,
}

#[derive(Serialize, Deserialize)]
struct SKey {
    kind: Kind,
    namespace: String,
    name: String,
    version: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SRef {
    candidates: Vec<SKey>,
    line: u32,
    field: String,
    ordering_only: bool,
}

#[derive(Serialize, Deserialize)]
enum SSpec {
    Bundle {
        bundle_type: BundleType,
        deletion_policy: DeletionPolicy,
        cluster_profiles: Vec<SRef>,
        workload_profiles: Vec<SRef>,
        repositories: Vec<SRef>,
        inference_engine: Option<String>,
    },
    WorkloadProfile {
        workload_type: WorkloadType,
        definitions: Vec<SRef>,
    },
    ClusterProfile {
        profile_type: ProfileType,
    },
    ComputePool {
        bundle: SRef,
        variant: PoolVariant,
    },
    AiWorkload {
        deployment_type: DeploymentType,
        bundles: Vec<SRef>,
        pool: Option<SRef>,
    },
    Leaf,
}

fn limits_id(limits: &Limits) -> String {
    format!("{limits:?}")
}

/// Encodes `files` for this build of pbsync (`build`) and these limits.
pub fn encode(files: &[StoredFile], limits: &Limits, build: &str) -> Vec<u8> {
    let store = Store {
        format: FORMAT,
        version: build.to_string(),
        limits: limits_id(limits),
        files: files
            .iter()
            .map(|f| SFile {
                path: f.path.to_string(),
                blob: f.blob.clone(),
                objects: f.objects.iter().map(object_out).collect(),
            })
            .collect(),
    };
    let body = postcard::to_allocvec(&store).expect("invariant: the store serializes");
    let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
    out.extend(body);
    out
}

/// Decodes a store written by [`encode`]; empty when it is unreadable or was written by
/// another build, format or limits.
pub fn decode(bytes: &[u8], limits: &Limits, build: &str) -> Vec<StoredFile> {
    // A checksum first: a torn or damaged store is a miss, never a wrong document.
    let Some((sum, body)) = bytes.split_first_chunk::<4>() else {
        return Vec::new();
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*sum) {
        return Vec::new();
    }
    let Ok(store) = postcard::from_bytes::<Store>(body) else {
        return Vec::new();
    };
    if store.format != FORMAT || store.version != build || store.limits != limits_id(limits) {
        return Vec::new();
    }
    store
        .files
        .into_iter()
        .filter_map(|f| {
            let path: Arc<str> = Arc::from(f.path);
            let objects = f
                .objects
                .into_iter()
                .map(|o| object_in(o, &path))
                .collect::<Option<Vec<_>>>()?;
            Some(StoredFile {
                path,
                blob: f.blob,
                objects,
            })
        })
        .collect()
}

fn key_out(k: &ObjectKey) -> SKey {
    SKey {
        kind: k.kind,
        namespace: k.namespace.to_string(),
        name: k.name.to_string(),
        version: k.version.as_ref().map(ToString::to_string),
    }
}

fn key_in(k: SKey) -> ObjectKey {
    ObjectKey {
        kind: k.kind,
        namespace: Arc::from(k.namespace),
        name: Arc::from(k.name),
        version: k.version.map(Arc::from),
    }
}

fn ref_out(r: &Ref) -> SRef {
    SRef {
        candidates: r.candidates.iter().map(key_out).collect(),
        line: r.line,
        field: r.field.to_string(),
        ordering_only: r.ordering_only,
    }
}

fn ref_in(r: SRef) -> Option<Ref> {
    Some(Ref {
        candidates: r.candidates.into_iter().map(key_in).collect(),
        line: r.line,
        field: intern(&r.field)?,
        ordering_only: r.ordering_only,
    })
}

fn refs_in(refs: Vec<SRef>) -> Option<Vec<Ref>> {
    refs.into_iter().map(ref_in).collect()
}

/// `Ref::field` names what a reference is ("workload profile", ...): a handful of literals
/// in the parser. Decoded ones are interned; a store naming more than a parser ever could
/// is not trusted.
fn intern(field: &str) -> Option<&'static str> {
    const MAX_FIELDS: usize = 64;
    static FIELDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut fields = FIELDS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = fields.get(field) {
        return Some(f);
    }
    if fields.len() >= MAX_FIELDS {
        return None;
    }
    let leaked: &'static str = Box::leak(field.to_string().into_boxed_str());
    fields.insert(leaked);
    Some(leaked)
}

fn object_out(o: &Object) -> SObject {
    let spec = match &o.spec {
        Spec::Bundle(b) => SSpec::Bundle {
            bundle_type: b.bundle_type,
            deletion_policy: b.deletion_policy,
            cluster_profiles: b.cluster_profiles.iter().map(ref_out).collect(),
            workload_profiles: b.workload_profiles.iter().map(ref_out).collect(),
            repositories: b.repositories.iter().map(ref_out).collect(),
            inference_engine: b.inference_engine.clone(),
        },
        Spec::WorkloadProfile(w) => SSpec::WorkloadProfile {
            workload_type: w.workload_type,
            definitions: w.definitions.iter().map(ref_out).collect(),
        },
        Spec::ClusterProfile(c) => SSpec::ClusterProfile {
            profile_type: c.profile_type,
        },
        Spec::ComputePool(p) => SSpec::ComputePool {
            bundle: ref_out(&p.bundle),
            variant: p.variant,
        },
        Spec::AiWorkload(w) => SSpec::AiWorkload {
            deployment_type: w.deployment_type,
            bundles: w.bundles.iter().map(ref_out).collect(),
            pool: w.pool.as_ref().map(ref_out),
        },
        Spec::Leaf => SSpec::Leaf,
    };
    SObject {
        key: key_out(&o.key),
        line: o.location.line,
        manifest: o.manifest.json().to_string(),
        spec,
        depends_on: o.depends_on.iter().map(ref_out).collect(),
    }
}

fn object_in(o: SObject, path: &Arc<str>) -> Option<Object> {
    let spec = match o.spec {
        SSpec::Bundle {
            bundle_type,
            deletion_policy,
            cluster_profiles,
            workload_profiles,
            repositories,
            inference_engine,
        } => Spec::Bundle(Bundle {
            bundle_type,
            deletion_policy,
            cluster_profiles: refs_in(cluster_profiles)?,
            workload_profiles: refs_in(workload_profiles)?,
            repositories: refs_in(repositories)?,
            inference_engine,
        }),
        SSpec::WorkloadProfile {
            workload_type,
            definitions,
        } => Spec::WorkloadProfile(WorkloadProfile {
            workload_type,
            definitions: refs_in(definitions)?,
        }),
        SSpec::ClusterProfile { profile_type } => {
            Spec::ClusterProfile(ClusterProfile { profile_type })
        }
        SSpec::ComputePool { bundle, variant } => Spec::ComputePool(ComputePool {
            bundle: ref_in(bundle)?,
            variant,
        }),
        SSpec::AiWorkload {
            deployment_type,
            bundles,
            pool,
        } => Spec::AiWorkload(AiWorkload {
            deployment_type,
            bundles: refs_in(bundles)?,
            pool: match pool {
                Some(p) => Some(ref_in(p)?),
                None => None,
            },
        }),
        SSpec::Leaf => Spec::Leaf,
    };
    Some(Object {
        key: key_in(o.key),
        location: Location {
            path: Arc::clone(path),
            line: o.line,
        },
        manifest: Manifest::from_json(o.manifest)?,
        spec,
        depends_on: refs_in(o.depends_on)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Content, SourceFile};

    fn parsed(path: &str, text: &str) -> StoredFile {
        let file = SourceFile {
            path: Arc::from(path),
            blob: "b1".into(),
            content: Content::Bytes(text.as_bytes().to_vec()),
        };
        let p = crate::model::parse_file_detailed(&file, &Limits::default());
        assert!(p.violations.is_empty(), "{:?}", p.violations);
        StoredFile {
            path: file.path,
            blob: file.blob,
            objects: p.objects,
        }
    }

    #[test]
    fn every_kind_of_spec_comes_back_as_parsed() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/repo-layout");
        let mut files = Vec::new();
        for entry in walk(&example) {
            let text = std::fs::read_to_string(&entry).unwrap();
            let rel = entry
                .strip_prefix(&example)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel.contains("drafts") || rel.contains("not-valid") {
                continue;
            }
            files.push(parsed(&rel, &text));
        }
        let kinds: HashSet<Kind> = files
            .iter()
            .flat_map(|f| f.objects.iter().map(|o| o.key.kind))
            .collect();
        assert!(kinds.len() >= 9, "the example covers the kinds: {kinds:?}");
        let limits = Limits::default();
        let back = decode(&encode(&files, &limits, "b1"), &limits, "b1");
        assert_eq!(back, files);
    }

    #[test]
    fn another_version_limits_or_garbage_decode_as_empty() {
        let files = vec![parsed(
            "a.yaml",
            "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: r, namespace: ns}\nspec: {url: https://charts.example}\n",
        )];
        let limits = Limits::default();
        let bytes = encode(&files, &limits, "b1");
        assert_eq!(decode(&bytes, &limits, "b1").len(), 1);
        assert!(decode(&bytes, &limits, "b2").is_empty(), "another build");
        let other = Limits {
            max_file_bytes: 1,
            ..Limits::default()
        };
        assert!(decode(&bytes, &other, "b1").is_empty());
        assert!(decode(&bytes[..bytes.len() / 2], &limits, "b1").is_empty());
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x20;
        assert!(
            decode(&flipped, &limits, "b1").is_empty(),
            "a damaged store is a miss"
        );
        assert!(decode(b"not a store", &limits, "b1").is_empty());
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
        out.sort();
        out
    }
}
