//! Object identity: the kinds pbsync understands and the key that names one object. Pure: no I/O.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Every kind pbsync reads from the repository (domain contract §1).
///
/// The declaration order is the creation rank: definitions and repositories first, then the
/// profiles that use them, then bundles, then pools and workloads. Deriving `Ord` from it keeps
/// every sorted listing in dependency order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// KubeVela `core.oam.dev` ComponentDefinition.
    ComponentDefinition,
    /// KubeVela `core.oam.dev` TraitDefinition.
    TraitDefinition,
    /// KubeVela `core.oam.dev` PolicyDefinition.
    PolicyDefinition,
    /// Flux `source.toolkit.fluxcd.io` HelmRepository.
    HelmRepository,
    /// Flux `source.toolkit.fluxcd.io` OCIRepository.
    #[serde(rename = "OCIRepository")]
    OciRepository,
    /// PaletteAI WorkloadProfile.
    WorkloadProfile,
    /// A Palette cluster profile (the pbsync envelope; lives in Palette, not Kubernetes).
    ClusterProfile,
    /// PaletteAI ProfileBundle.
    ProfileBundle,
    /// PaletteAI ComputePool.
    ComputePool,
    /// PaletteAI AIWorkload (App or Model Deployment).
    #[serde(rename = "AIWorkload")]
    AiWorkload,
}

impl Kind {
    /// All kinds, in creation order.
    pub const ALL: [Self; 10] = [
        Self::ComponentDefinition,
        Self::TraitDefinition,
        Self::PolicyDefinition,
        Self::HelmRepository,
        Self::OciRepository,
        Self::WorkloadProfile,
        Self::ClusterProfile,
        Self::ProfileBundle,
        Self::ComputePool,
        Self::AiWorkload,
    ];

    /// The kind as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ComponentDefinition => "ComponentDefinition",
            Self::TraitDefinition => "TraitDefinition",
            Self::PolicyDefinition => "PolicyDefinition",
            Self::HelmRepository => "HelmRepository",
            Self::OciRepository => "OCIRepository",
            Self::WorkloadProfile => "WorkloadProfile",
            Self::ClusterProfile => "ClusterProfile",
            Self::ProfileBundle => "ProfileBundle",
            Self::ComputePool => "ComputePool",
            Self::AiWorkload => "AIWorkload",
        }
    }

    /// Parses `kind:`; `None` for a kind pbsync does not manage.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The apiVersions accepted for this kind; the first is the one pbsync writes.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Self::ComponentDefinition | Self::TraitDefinition | Self::PolicyDefinition => {
                &["core.oam.dev/v1beta1"]
            }
            Self::HelmRepository => &["source.toolkit.fluxcd.io/v1"],
            Self::OciRepository => &[
                "source.toolkit.fluxcd.io/v1",
                "source.toolkit.fluxcd.io/v1beta2",
            ],
            Self::WorkloadProfile | Self::ProfileBundle => &["spectrocloud.com/v1beta1"],
            Self::ClusterProfile => &["pbsync.dev/v1"],
            Self::ComputePool | Self::AiWorkload => &["spectrocloud.com/v1alpha1"],
        }
    }

    /// True for the kinds that exist because bundles need them (domain §2): they are created
    /// only when some root's closure reaches them, and deleted by reference count.
    pub(crate) fn is_shared(self) -> bool {
        !self.is_root()
    }

    /// True for the kinds the desired set starts from: bundles, pools and workloads.
    pub fn is_root(self) -> bool {
        matches!(
            self,
            Self::ProfileBundle | Self::ComputePool | Self::AiWorkload
        )
    }

    /// True for the kind that lives in Palette rather than on the hub.
    pub fn is_palette(self) -> bool {
        self == Self::ClusterProfile
    }

    /// True for kinds a reference may name without the repository declaring them: they must
    /// then exist live (domain §3 rule 6), whoever owns them: cluster profiles and definitions
    /// that bundles and workload profiles use, and the bundles and pools that pools and
    /// deployments are built on (platform teams create pools; applications deploy onto them).
    pub(crate) fn may_be_external(self) -> bool {
        matches!(
            self,
            Self::ClusterProfile
                | Self::ComponentDefinition
                | Self::TraitDefinition
                | Self::PolicyDefinition
                | Self::ProfileBundle
                | Self::ComputePool
        )
    }

    /// Lower-case name used in directory layouts.
    pub fn dir_name(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of one object: `namespace/name` on the hub, `scope/name@version` in Palette.
///
/// For a ClusterProfile, `namespace` holds the Palette scope (`project` or `tenant`).
/// A map keyed by object identity, with a fast hasher: the index of tens of thousands of
/// objects is built and probed several times a pass, and SipHash (the standard library's
/// default) showed in profiles. foldhash is seeded per process, so keys from a repository
/// cannot be chosen to collide.
pub type KeyMap<V> = std::collections::HashMap<ObjectKey, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// Kubernetes namespace, or Palette scope for cluster profiles.
    pub namespace: Arc<str>,
    /// The object's name.
    pub name: Arc<str>,
    /// Palette version (cluster profiles only).
    pub version: Option<Arc<str>>,
}

impl ObjectKey {
    /// A namespaced hub object.
    pub fn new(kind: Kind, namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            version: None,
        }
    }

    /// A Palette cluster profile.
    pub fn cluster_profile(
        scope: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        version: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            kind: Kind::ClusterProfile,
            namespace: scope.into(),
            name: name.into(),
            version: Some(version.into()),
        }
    }

    /// `namespace/name` or `scope/name@version`, without the kind.
    pub fn short(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/{}@{}", self.namespace, self.name, v),
            None => format!("{}/{}", self.namespace, self.name),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_sort_in_creation_order() {
        let mut kinds = Kind::ALL.to_vec();
        kinds.reverse();
        kinds.sort();
        assert_eq!(kinds, Kind::ALL.to_vec());
        assert!(Kind::ComponentDefinition < Kind::WorkloadProfile);
        assert!(Kind::WorkloadProfile < Kind::ProfileBundle);
        assert!(Kind::ProfileBundle < Kind::ComputePool);
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("Deployment"), None);
    }

    #[test]
    fn keys_display_with_scope_and_version() {
        let k = ObjectKey::cluster_profile("project", "edge", "1.2.0");
        assert_eq!(k.to_string(), "ClusterProfile project/edge@1.2.0");
        let k = ObjectKey::new(Kind::ProfileBundle, "ns", "b");
        assert_eq!(k.to_string(), "ProfileBundle ns/b");
    }
}
