//! Discovery for the Kubernetes target: which API resource serves each pbsync kind, read
//! from the server's `/apis/<group>` and `/apis/<group>/<version>` documents.
//!
//! A kind the desired state needs but the server does not serve is a configuration error
//! naming the CRD to install, found before anything is written.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::budget::Verb;
use super::client::{self, ApiClient};
use pbsync_core::model::Kind;

/// The API resource of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resource {
    /// API group.
    pub(super) group: String,
    /// Plural resource name, e.g. `profilebundles`.
    pub(super) plural: String,
    /// Versions the server serves for the kind, among those pbsync accepts, preferred first.
    pub(super) versions: Vec<String>,
}

impl Resource {
    /// `<group>/<version>` of the preferred version: what lists are read at.
    pub(super) fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.versions[0])
    }

    /// The collection path of `version` (the preferred one when `None` or not served),
    /// in `namespace` or across all namespaces.
    pub(super) fn collection(&self, version: Option<&str>, namespace: Option<&str>) -> String {
        let version = version
            .filter(|v| self.versions.iter().any(|s| s == v))
            .unwrap_or(&self.versions[0]);
        match namespace {
            Some(ns) => format!(
                "/apis/{}/{version}/namespaces/{ns}/{}",
                self.group, self.plural
            ),
            None => format!("/apis/{}/{version}/{}", self.group, self.plural),
        }
    }
}

/// Why a kind has no resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Missing {
    /// Neither the group nor the kind is served.
    NotInstalled {
        /// `<plural>.<group>`, as the CRD would be named.
        crd: String,
    },
    /// The kind is served, but at none of the versions pbsync accepts.
    WrongVersion {
        /// The CRD.
        crd: String,
        /// Accepted versions.
        wanted: Vec<String>,
        /// Versions served.
        served: Vec<String>,
    },
}

impl Missing {
    /// The sentence the configuration error shows.
    pub(super) fn message(&self, kind: Kind) -> String {
        match self {
            Self::NotInstalled { crd } => format!(
                "CRD {crd} is not installed: the API server serves no {kind}; install it before applying"
            ),
            Self::WrongVersion {
                crd,
                wanted,
                served,
            } => format!(
                "CRD {crd} serves {kind} at version(s) {} but pbsync needs one of {}",
                served.join(", "),
                wanted.join(", ")
            ),
        }
    }
}

/// What discovery found for each kind.
#[derive(Debug, Clone, Default)]
pub(super) struct Resources {
    found: BTreeMap<Kind, Resource>,
    missing: BTreeMap<Kind, Missing>,
}

impl Resources {
    /// The resource of `kind`, when served.
    pub(super) fn get(&self, kind: Kind) -> Option<&Resource> {
        self.found.get(&kind)
    }

    /// Why `kind` is not served, when it is not.
    pub(super) fn missing(&self, kind: Kind) -> Option<&Missing> {
        self.missing.get(&kind)
    }

    /// Served kinds.
    pub(super) fn served(&self) -> impl Iterator<Item = (Kind, &Resource)> {
        self.found.iter().map(|(k, r)| (*k, r))
    }
}

/// `<group>/<version>` strings pbsync accepts for `kind`, in preference order, with the
/// target's override first when there is one.
pub(super) fn accepted(kind: Kind, overrides: &BTreeMap<Kind, String>) -> Vec<(String, String)> {
    let split = |gv: &str| {
        gv.split_once('/')
            .map(|(g, v)| (g.to_string(), v.to_string()))
    };
    match overrides.get(&kind) {
        Some(gv) => split(gv).into_iter().collect(),
        None => kind
            .api_versions()
            .iter()
            .filter_map(|gv| split(gv))
            .collect(),
    }
}

/// The plural resource name Kubernetes conventions give `kind` (for naming a CRD that is
/// not installed, when the server cannot tell).
pub(super) fn plural(kind: Kind) -> String {
    let lower = kind.as_str().to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

/// Reads the discovery documents of every group the hub kinds live in.
pub(super) async fn discover(
    api: &ApiClient,
    overrides: &BTreeMap<Kind, String>,
) -> client::Result<Resources> {
    let hub_kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| !k.is_palette()).collect();
    // Group -> versions pbsync may need from it.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for kind in &hub_kinds {
        for (g, v) in accepted(*kind, overrides) {
            wanted.entry(g).or_default().insert(v);
        }
    }
    // (group, version) -> kind -> plural.
    let mut served: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for (group, versions) in &wanted {
        let Some(doc) = api
            .get_path(Verb::Discovery, &format!("/apis/{group}"))
            .await?
        else {
            continue;
        };
        let offered: BTreeSet<String> = doc
            .get("versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("version").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        for version in versions.intersection(&offered) {
            let Some(list) = api
                .get_path(Verb::Discovery, &format!("/apis/{group}/{version}"))
                .await?
            else {
                continue;
            };
            let kinds = served.entry((group.clone(), version.clone())).or_default();
            for r in list
                .get("resources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(name), Some(kind)) = (
                    r.get("name").and_then(Value::as_str),
                    r.get("kind").and_then(Value::as_str),
                ) else {
                    continue;
                };
                // Subresources (`profilebundles/status`) share the kind; skip them.
                if !name.contains('/') {
                    kinds.insert(kind.to_string(), name.to_string());
                }
            }
        }
    }
    Ok(resolve(&hub_kinds, overrides, &served))
}

/// Matches each kind with what the server serves. Pure, for testing.
fn resolve(
    kinds: &[Kind],
    overrides: &BTreeMap<Kind, String>,
    served: &BTreeMap<(String, String), BTreeMap<String, String>>,
) -> Resources {
    let mut out = Resources::default();
    for &kind in kinds {
        let accepted = accepted(kind, overrides);
        let Some(group) = accepted.first().map(|(g, _)| g.clone()) else {
            continue;
        };
        let mut plural_found = None;
        let mut versions = Vec::new();
        for (g, v) in &accepted {
            if let Some(p) = served
                .get(&(g.clone(), v.clone()))
                .and_then(|m| m.get(kind.as_str()))
            {
                plural_found.get_or_insert_with(|| p.clone());
                versions.push(v.clone());
            }
        }
        if let Some(plural) = plural_found {
            out.found.insert(
                kind,
                Resource {
                    group,
                    plural,
                    versions,
                },
            );
            continue;
        }
        // Served at some other version of the group?
        let other: Vec<String> = served
            .iter()
            .filter(|((g, _), m)| *g == group && m.contains_key(kind.as_str()))
            .map(|((_, v), _)| v.clone())
            .collect();
        let crd = format!("{}.{group}", plural(kind));
        let missing = if other.is_empty() {
            Missing::NotInstalled { crd }
        } else {
            Missing::WrongVersion {
                crd,
                wanted: accepted.into_iter().map(|(_, v)| v).collect(),
                served: other,
            }
        };
        out.missing.insert(kind, missing);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(
        entries: &[(&str, &str, &str, &str)],
    ) -> BTreeMap<(String, String), BTreeMap<String, String>> {
        let mut m: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
        for (g, v, kind, plural) in entries {
            m.entry(((*g).into(), (*v).into()))
                .or_default()
                .insert((*kind).into(), (*plural).into());
        }
        m
    }

    #[test]
    fn plurals_follow_kubernetes_conventions() {
        assert_eq!(plural(Kind::ProfileBundle), "profilebundles");
        assert_eq!(plural(Kind::HelmRepository), "helmrepositories");
        assert_eq!(plural(Kind::OciRepository), "ocirepositories");
        assert_eq!(plural(Kind::AiWorkload), "aiworkloads");
    }

    #[test]
    fn kinds_resolve_to_the_preferred_served_version() {
        let s = served(&[
            (
                "source.toolkit.fluxcd.io",
                "v1beta2",
                "OCIRepository",
                "ocirepositories",
            ),
            (
                "source.toolkit.fluxcd.io",
                "v1",
                "OCIRepository",
                "ocirepositories",
            ),
            (
                "spectrocloud.com",
                "v1beta1",
                "ProfileBundle",
                "profilebundles",
            ),
        ]);
        let r = resolve(
            &[Kind::OciRepository, Kind::ProfileBundle],
            &BTreeMap::new(),
            &s,
        );
        let oci = r.get(Kind::OciRepository).expect("served");
        assert_eq!(oci.versions, ["v1", "v1beta2"]);
        assert_eq!(
            oci.collection(Some("v1beta2"), Some("ns")),
            "/apis/source.toolkit.fluxcd.io/v1beta2/namespaces/ns/ocirepositories"
        );
        assert_eq!(
            oci.collection(Some("v9"), None),
            "/apis/source.toolkit.fluxcd.io/v1/ocirepositories"
        );
        assert_eq!(
            r.get(Kind::ProfileBundle)
                .map(Resource::api_version)
                .as_deref(),
            Some("spectrocloud.com/v1beta1")
        );
    }

    #[test]
    fn a_missing_crd_is_named() {
        let s = served(&[(
            "spectrocloud.com",
            "v1",
            "WorkloadProfile",
            "workloadprofiles",
        )]);
        let r = resolve(
            &[Kind::ProfileBundle, Kind::WorkloadProfile],
            &BTreeMap::new(),
            &s,
        );
        assert_eq!(
            r.missing(Kind::ProfileBundle)
                .map(|m| m.message(Kind::ProfileBundle))
                .as_deref(),
            Some(
                "CRD profilebundles.spectrocloud.com is not installed: the API server serves no ProfileBundle; install it before applying"
            )
        );
        assert_eq!(
            r.missing(Kind::WorkloadProfile)
                .map(|m| m.message(Kind::WorkloadProfile))
                .as_deref(),
            Some(
                "CRD workloadprofiles.spectrocloud.com serves WorkloadProfile at version(s) v1 but pbsync needs one of v1beta1"
            )
        );
    }

    #[test]
    fn overrides_replace_the_accepted_versions() {
        let mut o = BTreeMap::new();
        o.insert(Kind::WorkloadProfile, "missing.pbsync.test/v1".to_string());
        let s = served(&[(
            "spectrocloud.com",
            "v1beta1",
            "WorkloadProfile",
            "workloadprofiles",
        )]);
        let r = resolve(&[Kind::WorkloadProfile], &o, &s);
        assert_eq!(
            r.missing(Kind::WorkloadProfile),
            Some(&Missing::NotInstalled {
                crd: "workloadprofiles.missing.pbsync.test".into()
            })
        );
    }
}
