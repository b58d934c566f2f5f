//! The YAML documents tests write into repositories, as text.
//!
//! Each builder returns one document, ending in a newline, without a `---` separator;
//! [`stream`] puts documents into one file, each followed by `---`, so streams concatenate
//! with `+`. [`app`] and [`shared`] are such streams: the Application bundle with a
//! WorkloadProfile of its own, and the ComponentDefinition `web` with the HelmRepositories
//! the bundles name, that the cluster tests build most repositories from.
//!
//! The text is part of what tests assert (line numbers in messages, `str::replace` edits
//! such as `interval: 1h` → `interval: 2h`): change it only together with the tests.

use std::fmt;

/// `docs` as one YAML stream, each document followed by `---`.
pub fn stream<S: AsRef<str>>(docs: impl IntoIterator<Item = S>) -> String {
    docs.into_iter()
        .map(|d| format!("{}---\n", d.as_ref()))
        .collect()
}

/// A ProfileBundle, in block style. Build it with [`profile_bundle`] and the setters; its
/// text is its [`Display`](fmt::Display) (`.to_string()`). Fields left empty are left out.
#[derive(Debug, Clone)]
pub struct ProfileBundle<'a> {
    namespace: &'a str,
    name: &'a str,
    bundle_type: &'a str,
    deletion_policy: Option<&'a str>,
    cluster_profiles: &'a [&'a str],
    workload_profiles: &'a [&'a str],
    helm_repositories: &'a [&'a str],
}

/// A ProfileBundle `namespace/name` of type `bundle_type` (`Application`,
/// `Infrastructure`, `Fullstack`) and nothing else yet.
pub fn profile_bundle<'a>(
    namespace: &'a str,
    name: &'a str,
    bundle_type: &'a str,
) -> ProfileBundle<'a> {
    ProfileBundle {
        namespace,
        name,
        bundle_type,
        deletion_policy: None,
        cluster_profiles: &[],
        workload_profiles: &[],
        helm_repositories: &[],
    }
}

impl<'a> ProfileBundle<'a> {
    /// `spec.deletionPolicy` (`delete`, `orphan`).
    pub fn deletion_policy(mut self, policy: &'a str) -> Self {
        self.deletion_policy = Some(policy);
        self
    }

    /// `spec.clusterProfiles`, each given as `name@version`.
    pub fn cluster_profiles(mut self, profiles: &'a [&'a str]) -> Self {
        self.cluster_profiles = profiles;
        self
    }

    /// `spec.workloadProfiles`, by name.
    pub fn workload_profiles(mut self, names: &'a [&'a str]) -> Self {
        self.workload_profiles = names;
        self
    }

    /// `spec.workloadProfileDependencies.helmRepositories`, by name.
    pub fn helm_repositories(mut self, names: &'a [&'a str]) -> Self {
        self.helm_repositories = names;
        self
    }
}

impl fmt::Display for ProfileBundle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |f: &mut fmt::Formatter<'_>, indent: &str, names: &[&str]| {
            names
                .iter()
                .try_for_each(|n| writeln!(f, "{indent}- name: {n}"))
        };
        write!(
            f,
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  type: {}\n",
            self.name, self.namespace, self.bundle_type
        )?;
        if let Some(policy) = self.deletion_policy {
            writeln!(f, "  deletionPolicy: {policy}")?;
        }
        if !self.cluster_profiles.is_empty() {
            writeln!(f, "  clusterProfiles:")?;
            for p in self.cluster_profiles {
                let (name, version) = p
                    .split_once('@')
                    .expect("a cluster profile as name@version");
                writeln!(f, "    - name: {name}\n      version: {version}")?;
            }
        }
        if !self.workload_profiles.is_empty() {
            writeln!(f, "  workloadProfiles:")?;
            names(f, "    ", self.workload_profiles)?;
        }
        if !self.helm_repositories.is_empty() {
            writeln!(f, "  workloadProfileDependencies:\n    helmRepositories:")?;
            names(f, "      ", self.helm_repositories)?;
        }
        Ok(())
    }
}

/// An Infrastructure bundle with the deletion policy `policy` that names the cluster
/// profiles `cluster_profiles` (`name@version`) and nothing else.
pub fn infrastructure_bundle(
    namespace: &str,
    name: &str,
    cluster_profiles: &[&str],
    policy: &str,
) -> String {
    profile_bundle(namespace, name, "Infrastructure")
        .deletion_policy(policy)
        .cluster_profiles(cluster_profiles)
        .to_string()
}

/// An Application WorkloadProfile with one component, `main`, of type `component_type`
/// (a ComponentDefinition's name) and the property `chart`.
pub fn workload_profile(namespace: &str, name: &str, component_type: &str, chart: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  type: Application\n  workload:\n    components:\n      - name: main\n        type: {component_type}\n        properties:\n          chart: {chart}\n"
    )
}

/// A ComponentDefinition whose workload is a Deployment, with an empty CUE template.
pub fn component_definition(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  workload:\n    definition:\n      apiVersion: apps/v1\n      kind: Deployment\n  schematic:\n    cue:\n      template: |\n        output: {{}}\n"
    )
}

/// A Flux HelmRepository.
pub fn helm_repository(namespace: &str, name: &str, url: &str, interval: &str) -> String {
    format!(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  url: {url}\n  interval: {interval}\n"
    )
}

/// A ComputePool `namespace/name` deployed from the bundle `bundle` of the same namespace,
/// with the cluster variant `variant` (`shared`, `dedicated`).
pub fn compute_pool(namespace: &str, name: &str, bundle: &str, variant: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1alpha1\nkind: ComputePool\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  profileBundleRef: {{name: {bundle}, namespace: {namespace}}}\n  clusterVariant: {{{variant}: {{}}}}\n"
    )
}

/// A ClusterProfile in pbsync's envelope (`pbsync.dev/v1`), of the default scope, with no
/// packs: the smallest valid one.
pub fn cluster_profile(name: &str, version: &str, profile_type: &str) -> String {
    format!(
        "apiVersion: pbsync.dev/v1\nkind: ClusterProfile\nmetadata:\n  name: {name}\nspec:\n  version: {version}\n  template:\n    type: {profile_type}\n    cloudType: edge-native\n    packs: []\n"
    )
}

/// A project-scoped ClusterProfile in pbsync's envelope with everything the Palette API
/// has an endpoint for: the label `team: platform`, a Kubernetes pack `edge-k8s` whose
/// values are `k8s_values`, a manifest add-on pack `extras`, and a required variable `vip`.
pub fn full_cluster_profile(
    name: &str,
    version: &str,
    profile_type: &str,
    k8s_values: &str,
) -> String {
    format!(
        r#"apiVersion: pbsync.dev/v1
kind: ClusterProfile
metadata:
  name: {name}
  scope: project
  labels: {{team: platform}}
spec:
  version: {version}
  template:
    type: {profile_type}
    cloudType: edge-native
    packs:
      - name: edge-k8s
        tag: 1.32.3
        layer: k8s
        values: "{k8s_values}"
      - name: extras
        tag: 1.0.0
        type: manifest
        layer: addon
        manifests:
          - {{name: config, content: "kind: ConfigMap"}}
  variables:
    - {{name: vip, displayName: VIP, format: ipv4, required: true}}
"#
    )
}

/// The stream of an Application bundle `name` (policy `policy`) with a WorkloadProfile of
/// its own, `<name>-wp` (one component of type `web`, chart `name`), and the
/// HelmRepositories `helm_repositories` as dependencies.
pub fn app(namespace: &str, name: &str, policy: &str, helm_repositories: &[&str]) -> String {
    let wp = format!("{name}-wp");
    let bundle = profile_bundle(namespace, name, "Application")
        .deletion_policy(policy)
        .workload_profiles(&[&wp])
        .helm_repositories(helm_repositories)
        .to_string();
    stream([bundle, workload_profile(namespace, &wp, "web", name)])
}

/// The stream of what [`app`] bundles use: the ComponentDefinition `web` and a
/// HelmRepository `r` at `https://<r>.example.com` (interval 1h) for each of `repositories`.
pub fn shared(namespace: &str, repositories: &[&str]) -> String {
    let mut docs = vec![component_definition(namespace, "web")];
    docs.extend(
        repositories
            .iter()
            .map(|r| helm_repository(namespace, r, &format!("https://{r}.example.com"), "1h")),
    );
    stream(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_and_what_it_shares_are_the_documents_the_cluster_tests_were_written_against() {
        assert_eq!(
            app("ns", "a", "delete", &["charts"]),
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: a\n  namespace: ns\nspec:\n  type: Application\n  deletionPolicy: delete\n  workloadProfiles:\n    - name: a-wp\n  workloadProfileDependencies:\n    helmRepositories:\n      - name: charts\n---\napiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata:\n  name: a-wp\n  namespace: ns\nspec:\n  type: Application\n  workload:\n    components:\n      - name: main\n        type: web\n        properties:\n          chart: a\n---\n"
        );
        assert_eq!(
            app("ns", "b", "orphan", &[]).lines().nth(9),
            Some("    - name: b-wp")
        );
        assert!(!app("ns", "b", "orphan", &[]).contains("workloadProfileDependencies"));
        assert_eq!(
            shared("ns", &["charts"]),
            "apiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata:\n  name: web\n  namespace: ns\nspec:\n  workload:\n    definition:\n      apiVersion: apps/v1\n      kind: Deployment\n  schematic:\n    cue:\n      template: |\n        output: {}\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: charts\n  namespace: ns\nspec:\n  url: https://charts.example.com\n  interval: 1h\n---\n"
        );
    }

    #[test]
    fn an_infrastructure_bundle_names_its_cluster_profiles_by_name_and_version() {
        assert_eq!(
            profile_bundle("ns", "edge", "Infrastructure")
                .cluster_profiles(&["edge-infra@1.0.0"])
                .to_string(),
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: edge\n  namespace: ns\nspec:\n  type: Infrastructure\n  clusterProfiles:\n    - name: edge-infra\n      version: 1.0.0\n"
        );
    }

    #[test]
    fn a_compute_pool_refers_to_its_bundle_in_its_own_namespace() {
        assert_eq!(
            compute_pool("team-a", "gpu-pool", "b", "shared"),
            "apiVersion: spectrocloud.com/v1alpha1\nkind: ComputePool\nmetadata: {name: gpu-pool, namespace: team-a}\nspec:\n  profileBundleRef: {name: b, namespace: team-a}\n  clusterVariant: {shared: {}}\n"
        );
    }
}
