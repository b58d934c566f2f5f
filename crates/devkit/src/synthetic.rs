//! Synthetic repositories for scale tests and benchmarks: N bundles sharing M objects, in the
//! layout of `examples/repo-layout`. Deterministic: the same parameters give the same bytes.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Number of ProfileBundles.
    pub bundles: usize,
    /// Number of shared objects of each shared kind (workload profiles, repositories,
    /// definitions, cluster profiles) that bundles draw from.
    pub shared: usize,
    /// Bundles per namespace.
    pub per_namespace: usize,
    /// Cluster profiles (Palette) in the repository and Fullstack bundles using them; without
    /// them every bundle is an Application bundle and the repository is the hub's alone
    /// (`--target kube` without a Palette side).
    pub cluster_profiles: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            bundles: 1000,
            shared: 50,
            per_namespace: 500,
            cluster_profiles: true,
        }
    }
}

impl Params {
    /// Objects the repository will hold: each bundle brings four objects of its own (a
    /// workload profile, its component definition, a Helm and an OCI repository); the shared
    /// pool adds five kinds per namespace plus the cluster profiles.
    pub fn object_count(&self) -> usize {
        let namespaces = self.bundles.div_ceil(self.per_namespace.max(1));
        let profiles = if self.cluster_profiles {
            self.shared * 2
        } else {
            0
        };
        self.bundles * 5 + namespaces * self.shared * 4 + profiles
    }
}

fn namespace(i: usize, p: &Params) -> String {
    format!("team-{:03}", i / p.per_namespace.max(1))
}

/// Repository sizes (bundles) a benchmark runs at: 1,000 and 10,000 under `cargo bench`;
/// only 1,000 when `cargo test --all-targets` runs the benchmark once as a smoke test
/// (without `--bench`), so CI does not generate the large repository.
pub fn bench_sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &[1_000, 10_000]
    } else {
        &[1_000]
    }
}

/// Writes the repository's files under `dir` (which must exist).
pub fn write_repo(dir: &Path, p: &Params) -> io::Result<()> {
    let shared = p.shared.max(1);
    let namespaces = p.bundles.div_ceil(p.per_namespace.max(1));
    // Cluster profiles: one infrastructure and one add-on profile per shared slot.
    let mut text = String::new();
    for s in 0..shared {
        for (name, kind) in [("infra", "infra"), ("addon", "add-on")] {
            let _ = write!(
                text,
                "---\napiVersion: pbsync.dev/v1\nkind: ClusterProfile\nmetadata:\n  name: {name}-{s}\nspec:\n  version: 1.0.{s}\n  template:\n    type: {kind}\n    cloudType: edge-native\n    packs:\n      - {{name: pack-{s}, tag: 1.0.0, type: spectro, layer: addon, values: \"replicas: {s}\"}}\n"
            );
        }
    }
    if p.cluster_profiles {
        write(dir, "shared/cluster-profiles.yaml", &text)?;
    }
    for n in 0..namespaces {
        let ns = format!("team-{n:03}");
        let mut text = String::new();
        for s in 0..shared {
            let _ = write!(
                text,
                "---\napiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata: {{name: shared-comp-{s}, namespace: {ns}}}\nspec:\n  workload: {{type: autodetects.core.oam.dev}}\n  schematic: {{cue: {{template: \"output: {{}}\"}}}}\n---\napiVersion: core.oam.dev/v1beta1\nkind: TraitDefinition\nmetadata: {{name: shared-trait-{s}, namespace: {ns}}}\nspec:\n  schematic: {{cue: {{template: \"patch: {{}}\"}}}}\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {{name: shared-charts-{s}, namespace: {ns}}}\nspec: {{url: \"https://charts-{s}.example.com\", interval: 1h}}\n---\napiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata: {{name: shared-infra-{s}, namespace: {ns}}}\nspec:\n  type: Infrastructure\n  workload:\n    components:\n      - {{name: agent, type: shared-comp-{s}, traits: [{{type: shared-trait-{s}}}]}}\n"
            );
        }
        write(dir, &format!("shared/{ns}.yaml"), &text)?;
    }
    for i in 0..p.bundles {
        let ns = namespace(i, p);
        let s = i % shared;
        let (bundle_type, cluster_profiles, extra_wp) = match i % 3 {
            _ if !p.cluster_profiles => ("Application", String::new(), String::new()),
            0 => ("Application", String::new(), String::new()),
            1 => (
                "Fullstack",
                format!(
                    "  clusterProfiles:\n    - {{name: infra-{s}, version: 1.0.{s}}}\n    - {{name: addon-{s}, version: 1.0.{s}}}\n"
                ),
                format!("    - name: shared-infra-{s}\n"),
            ),
            _ => (
                "Fullstack",
                format!("  clusterProfiles:\n    - {{name: infra-{s}, version: 1.0.{s}}}\n"),
                String::new(),
            ),
        };
        let text = format!(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: bundle-{i}\n  namespace: {ns}\nspec:\n  type: {bundle_type}\n{cluster_profiles}  workloadProfiles:\n    - name: app-{i}\n{extra_wp}  workloadProfileDependencies:\n    helmRepositories:\n      - name: charts-{i}\n      - name: shared-charts-{s}\n    ociRepositories:\n      - name: model-{i}\n---\napiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata:\n  name: app-{i}\n  namespace: {ns}\nspec:\n  type: Application\n  workload:\n    components:\n      - name: main\n        type: comp-{i}\n        properties: {{image: \"registry.example.com/app:{i}\", replicas: 2}}\n        traits:\n          - type: shared-trait-{s}\n      - name: sidecar\n        type: shared-comp-{s}\n---\napiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata:\n  name: comp-{i}\n  namespace: {ns}\nspec:\n  workload: {{type: autodetects.core.oam.dev}}\n  schematic:\n    cue:\n      template: |\n        output: {{\n          apiVersion: \"apps/v1\"\n          kind: \"Deployment\"\n        }}\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: charts-{i}\n  namespace: {ns}\nspec:\n  url: https://charts.example.com/{i}\n  interval: 1h\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: OCIRepository\nmetadata:\n  name: model-{i}\n  namespace: {ns}\nspec:\n  url: oci://registry.example.com/models/{i}\n  interval: 10m\n  ref: {{tag: v1}}\n"
        );
        write(dir, &format!("bundles/{ns}/bundle-{i}.yaml"), &text)?;
    }
    Ok(())
}

fn write(dir: &Path, rel: &str, text: &str) -> io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

/// Commits everything under `dir` (initialising a repository there if needed), as a fixed
/// author at a fixed time so the commit id is reproducible.
pub fn commit_all(dir: &Path, message: &str) -> Result<git2::Oid, git2::Error> {
    let repo = git2::Repository::open(dir).or_else(|_| git2::Repository::init(dir))?;
    let mut index = repo.index()?;
    index.add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)?;
    index.update_all(["*"].iter(), None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::new(
        "pbsync gen-repo",
        "gen@pbsync.invalid",
        &git2::Time::new(1_700_000_000, 0),
    )?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
}
