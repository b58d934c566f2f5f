//! The simulator's in-memory Palette: cluster profiles with uids, name+version uniqueness,
//! draft and published templates, variables, pack manifests, scopes and `inUseClusters`, and
//! the JSON shapes Palette answers with. Pure: no I/O (bodies arrive already schema-checked).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Page size Palette never exceeds.
pub const MAX_LIMIT: usize = 50;

/// An error answer: HTTP status plus the `v1Error` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `code`.
    pub code: &'static str,
    /// `message`.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn not_found(uid: &str) -> Self {
        Self::new(
            404,
            "ResourceNotFound",
            format!("cluster profile {uid} not found"),
        )
    }
}

/// Where a profile lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A project's profile.
    Project,
    /// The tenant's profile, visible from every project.
    Tenant,
    /// Palette's own, read-only.
    System,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Tenant => "tenant",
            Self::System => "system",
        }
    }
}

/// Who asks: the `ProjectUid` header (absent = tenant scope).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The project, if any.
    pub project: Option<String>,
}

/// One cluster profile as the simulator stores it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Palette uid.
    pub uid: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Scope.
    pub scope: Scope,
    /// Owning project (project scope).
    pub project_uid: Option<String>,
    /// Labels (Palette tags).
    pub labels: Map<String, Value>,
    /// Annotations, including the server-owned `scope`.
    pub annotations: Map<String, Value>,
    /// Draft template (entity form: type, cloudType, packs with manifests' content).
    pub draft: Option<Value>,
    /// Published template.
    pub published: Option<Value>,
    /// Variables.
    pub variables: Vec<Value>,
    /// `status.inUseClusters`.
    pub in_use_clusters: Vec<Value>,
    created: u64,
    modified: u64,
}

impl Profile {
    /// The published template's type, else the draft's.
    pub fn profile_type(&self) -> Option<&str> {
        self.published
            .as_ref()
            .or(self.draft.as_ref())
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str)
    }
}

/// A profile in a seed file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedProfile {
    /// Uid to use (generated when absent).
    #[serde(default)]
    pub uid: Option<String>,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Scope (default tenant).
    #[serde(default)]
    pub scope: Option<Scope>,
    /// Project of a project-scope profile.
    #[serde(default)]
    pub project_uid: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Map<String, Value>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Map<String, Value>,
    /// Template (`v1ClusterProfileTemplateDraft`); published unless `draftOnly`.
    pub template: Value,
    /// Leave it unpublished.
    #[serde(default)]
    pub draft_only: bool,
    /// Variables (`v1Variable`).
    #[serde(default)]
    pub variables: Vec<Value>,
    /// Clusters using it: `{name, uid}`.
    #[serde(default)]
    pub in_use_clusters: Vec<Value>,
}

/// Filter and page of the summary list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `limit` query parameter.
    pub limit: Option<i64>,
    /// `offset` query parameter.
    pub offset: Option<i64>,
    /// `continue` query parameter.
    pub continue_token: Option<String>,
}

/// The store.
#[derive(Debug, Clone, Default)]
pub struct Store {
    profiles: BTreeMap<String, Profile>,
    next_id: u64,
    clock: u64,
    /// Largest page the summary list returns (≤ 50; smaller in tests to force paging).
    pub page_cap: usize,
}

const PACK_LAYERS: &[&str] = &["kernel", "os", "k8s", "cni", "csi", "addon"];

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// A short stable hash for synthesised uids.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// RFC 3339 for seconds since the epoch (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Start of the simulator's logical clock (2025-01-01T00:00:00Z): timestamps are
/// deterministic, one second per change.
const EPOCH: u64 = 1_735_689_600;

impl Store {
    /// An empty store with Palette's page size.
    pub fn new() -> Self {
        Self {
            page_cap: MAX_LIMIT,
            ..Self::default()
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        EPOCH + self.clock
    }

    fn new_uid(&mut self) -> String {
        self.next_id += 1;
        format!("6a{:022x}", self.next_id)
    }

    /// Every profile, by uid.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// Sets `status.inUseClusters` of a profile (`{name, uid}` objects).
    pub fn set_in_use(&mut self, uid: &str, clusters: Vec<Value>) -> Result<(), ApiError> {
        let p = self
            .profiles
            .get_mut(uid)
            .ok_or_else(|| ApiError::not_found(uid))?;
        p.in_use_clusters = clusters;
        Ok(())
    }

    /// Adds a seed profile.
    pub fn seed(&mut self, seed: SeedProfile) -> Result<String, ApiError> {
        let scope = seed.scope.unwrap_or(Scope::Tenant);
        if scope == Scope::Project && seed.project_uid.is_none() {
            return Err(ApiError::bad_request(format!(
                "seed profile {}@{}: a project profile needs projectUid",
                seed.name, seed.version
            )));
        }
        let template = self.normalize_template(&seed.template, None)?;
        let uid = match seed.uid {
            Some(u) if self.profiles.contains_key(&u) => {
                return Err(ApiError::bad_request(format!("seed uid {u} is used twice")));
            }
            Some(u) => u,
            None => self.new_uid(),
        };
        self.check_unique(
            scope,
            seed.project_uid.as_deref(),
            &seed.name,
            &seed.version,
            None,
        )?;
        let mut annotations = seed.annotations;
        annotations.insert("scope".into(), scope.as_str().into());
        let now = self.tick();
        let variables = normalize_variables(&seed.variables)?;
        self.profiles.insert(
            uid.clone(),
            Profile {
                uid: uid.clone(),
                name: seed.name,
                version: seed.version,
                scope,
                project_uid: seed.project_uid,
                labels: seed.labels,
                annotations,
                published: (!seed.draft_only).then(|| template.clone()),
                draft: Some(template),
                variables,
                in_use_clusters: seed.in_use_clusters,
                created: now,
                modified: now,
            },
        );
        Ok(uid)
    }

    fn visible(p: &Profile, caller: &Caller) -> bool {
        match p.scope {
            Scope::Project => p.project_uid.is_some() && p.project_uid == caller.project,
            Scope::Tenant | Scope::System => true,
        }
    }

    fn get(&self, caller: &Caller, uid: &str) -> Result<&Profile, ApiError> {
        self.profiles
            .get(uid)
            .filter(|p| Self::visible(p, caller))
            .ok_or_else(|| ApiError::not_found(uid))
    }

    /// A profile the caller may change: project profiles from their project, tenant profiles
    /// from tenant scope (no `ProjectUid`), system profiles never.
    fn get_mut(&mut self, caller: &Caller, uid: &str) -> Result<&mut Profile, ApiError> {
        self.get(caller, uid)?;
        let p = self
            .profiles
            .get_mut(uid)
            .ok_or_else(|| ApiError::not_found(uid))?;
        let allowed = match p.scope {
            Scope::Project => true,
            Scope::Tenant => caller.project.is_none(),
            Scope::System => false,
        };
        if !allowed {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "cluster profile {uid} is a {} profile and cannot be changed in this scope",
                    p.scope.as_str()
                ),
            ));
        }
        Ok(p)
    }

    fn check_unique(
        &self,
        scope: Scope,
        project: Option<&str>,
        name: &str,
        version: &str,
        except: Option<&str>,
    ) -> Result<(), ApiError> {
        let dup = self.profiles.values().find(|p| {
            p.scope == scope
                && p.project_uid.as_deref() == project
                && p.name == name
                && p.version == version
                && Some(p.uid.as_str()) != except
        });
        match dup {
            Some(p) => Err(ApiError::new(
                409,
                "ClusterProfileAlreadyExists",
                format!(
                    "cluster profile {name} version {version} already exists (uid {})",
                    p.uid
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks and completes a template: type defaults to `cluster`, pack names are unique,
    /// layers are Palette's, manifests get uids (kept from `previous` by name).
    fn normalize_template(
        &mut self,
        template: &Value,
        previous: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut out = Map::new();
        out.insert(
            "type".into(),
            template
                .get("type")
                .cloned()
                .unwrap_or_else(|| "cluster".into()),
        );
        let cloud = template
            .get("cloudType")
            .or_else(|| previous.and_then(|p| p.get("cloudType")))
            .cloned()
            .unwrap_or_else(|| "all".into());
        out.insert("cloudType".into(), cloud);
        let mut packs = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for pack in template
            .get("packs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let name = str_at(pack, "/name").unwrap_or_default();
            if name.is_empty() {
                return Err(ApiError::bad_request("pack name must not be empty"));
            }
            if names.contains(&name) {
                return Err(ApiError::new(
                    400,
                    "DuplicateClusterPacksForbidden",
                    format!("pack {name} appears more than once in the profile"),
                ));
            }
            names.push(name);
            if let Some(layer) = str_at(pack, "/layer")
                && !PACK_LAYERS.contains(&layer)
            {
                return Err(ApiError::bad_request(format!(
                    "pack {name}: layer {layer:?} is not one of {}",
                    PACK_LAYERS.join(", ")
                )));
            }
            let mut p = pack.as_object().cloned().unwrap_or_default();
            let old_manifests: Vec<Value> = previous
                .and_then(|t| t.get("packs"))
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().find(|p| str_at(p, "/name") == Some(name)))
                .and_then(|p| p.get("manifests"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(manifests) = pack.get("manifests").and_then(Value::as_array) {
                let mut list = Vec::new();
                for m in manifests {
                    let mname = str_at(m, "/name").unwrap_or_default();
                    if mname.is_empty() {
                        return Err(ApiError::bad_request(format!(
                            "pack {name}: manifest name must not be empty"
                        )));
                    }
                    let old = old_manifests
                        .iter()
                        .find(|o| str_at(o, "/name") == Some(mname));
                    let content = match (m.get("content"), old.and_then(|o| o.get("content"))) {
                        (Some(c), _) | (None, Some(c)) => c.clone(),
                        (None, None) => {
                            return Err(ApiError::bad_request(format!(
                                "pack {name}: manifest {mname} has no content"
                            )));
                        }
                    };
                    let uid = match old.and_then(|o| str_at(o, "/uid")) {
                        Some(u) => u.to_string(),
                        None => self.new_uid(),
                    };
                    list.push(json!({"name": mname, "content": content, "uid": uid}));
                }
                p.insert("manifests".into(), Value::Array(list));
            }
            packs.push(Value::Object(p));
        }
        out.insert("packs".into(), Value::Array(packs));
        Ok(Value::Object(out))
    }

    /// `POST /v1/clusterprofiles`: body is a `v1ClusterProfileEntity`.
    pub fn create(
        &mut self,
        caller: &Caller,
        body: &Value,
        publish: bool,
    ) -> Result<String, ApiError> {
        let name = str_at(body, "/metadata/name")
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("metadata.name is required"));
        }
        let version = str_at(body, "/spec/version").unwrap_or("1.0.0").to_string();
        if version.trim().is_empty() {
            return Err(ApiError::bad_request("spec.version must not be empty"));
        }
        let scope = if caller.project.is_some() {
            Scope::Project
        } else {
            Scope::Tenant
        };
        self.check_unique(scope, caller.project.as_deref(), &name, &version, None)?;
        let template =
            self.normalize_template(body.pointer("/spec/template").unwrap_or(&Value::Null), None)?;
        let variables = normalize_variables(
            body.pointer("/spec/variables")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )?;
        let meta = |k: &str| {
            body.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut annotations = meta("annotations");
        annotations.insert("scope".into(), scope.as_str().into());
        let uid = self.new_uid();
        let now = self.tick();
        self.profiles.insert(
            uid.clone(),
            Profile {
                uid: uid.clone(),
                name,
                version,
                scope,
                project_uid: caller.project.clone(),
                labels: meta("labels"),
                annotations,
                published: publish.then(|| template.clone()),
                draft: Some(template),
                variables,
                in_use_clusters: Vec::new(),
                created: now,
                modified: now,
            },
        );
        Ok(uid)
    }

    /// `PUT /v1/clusterprofiles/{uid}`: writes the draft from a `v1ClusterProfileUpdateEntity`.
    /// Metadata is not changed here (that is `PATCH …/metadata`).
    pub fn update(&mut self, caller: &Caller, uid: &str, body: &Value) -> Result<(), ApiError> {
        let current = self.get(caller, uid)?.clone();
        if let Some(name) = str_at(body, "/metadata/name")
            && name != current.name
        {
            return Err(ApiError::bad_request(format!(
                "metadata.name {name:?} does not match the profile's name {:?}",
                current.name
            )));
        }
        if let Some(version) = str_at(body, "/spec/version")
            && version != current.version
        {
            return Err(ApiError::bad_request(format!(
                "spec.version {version:?} does not match the profile's version {:?}; clone the profile to make a new version",
                current.version
            )));
        }
        let previous = current.draft.clone().or(current.published.clone());
        let mut template = body
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        if template.get("type").is_none()
            && let (Some(t), Some(obj)) = (current.profile_type(), template.as_object_mut())
        {
            obj.insert("type".into(), t.into());
        }
        let template = self.normalize_template(&template, previous.as_ref())?;
        let now = self.tick();
        let p = self.get_mut(caller, uid)?;
        p.draft = Some(template);
        p.modified = now;
        Ok(())
    }

    /// `PATCH /v1/clusterprofiles/{uid}/publish`.
    pub fn publish(&mut self, caller: &Caller, uid: &str) -> Result<(), ApiError> {
        let now = self.tick();
        let p = self.get_mut(caller, uid)?;
        let Some(draft) = p.draft.clone() else {
            return Err(ApiError::bad_request("the profile has no draft to publish"));
        };
        p.published = Some(draft);
        p.modified = now;
        Ok(())
    }

    /// `PATCH /v1/clusterprofiles/{uid}/metadata`: a `v1ProfileMetaEntity`. Labels and
    /// annotations given replace the old ones (the server keeps `scope`).
    pub fn update_metadata(
        &mut self,
        caller: &Caller,
        uid: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        let current = self.get(caller, uid)?.clone();
        if let Some(name) = str_at(body, "/metadata/name")
            && name != current.name
        {
            return Err(ApiError::bad_request(format!(
                "metadata.name {name:?} cannot be changed (the profile is {:?})",
                current.name
            )));
        }
        let version = str_at(body, "/spec/version").map(str::to_string);
        if let Some(v) = &version {
            if v.trim().is_empty() {
                return Err(ApiError::bad_request("spec.version must not be empty"));
            }
            self.check_unique(
                current.scope,
                current.project_uid.as_deref(),
                &current.name,
                v,
                Some(uid),
            )?;
        }
        let now = self.tick();
        let p = self.get_mut(caller, uid)?;
        if let Some(labels) = body.pointer("/metadata/labels").and_then(Value::as_object) {
            p.labels = labels.clone();
        }
        if let Some(annotations) = body
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            let mut a = annotations.clone();
            a.insert("scope".into(), p.scope.as_str().into());
            p.annotations = a;
        }
        if let Some(v) = version {
            p.version = v;
        }
        p.modified = now;
        Ok(())
    }

    /// `DELETE /v1/clusterprofiles/{uid}`: refused while clusters use the profile.
    pub fn delete(&mut self, caller: &Caller, uid: &str) -> Result<(), ApiError> {
        let p = self.get_mut(caller, uid)?;
        if !p.in_use_clusters.is_empty() {
            let names: Vec<&str> = p
                .in_use_clusters
                .iter()
                .filter_map(|c| str_at(c, "/name"))
                .collect();
            return Err(ApiError::new(
                409,
                "ClusterProfileInUse",
                format!(
                    "cluster profile {uid} is in use by cluster(s) {}",
                    names.join(", ")
                ),
            ));
        }
        self.profiles.remove(uid);
        Ok(())
    }

    /// `GET /v1/clusterprofiles/{uid}/variables`.
    pub fn variables(&self, caller: &Caller, uid: &str) -> Result<Value, ApiError> {
        let p = self.get(caller, uid)?;
        Ok(json!({"variables": p.variables}))
    }

    /// `PUT /v1/clusterprofiles/{uid}/variables`: replaces them (`v1Variables`).
    pub fn put_variables(
        &mut self,
        caller: &Caller,
        uid: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        let vars = normalize_variables(
            body.get("variables")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )?;
        let now = self.tick();
        let p = self.get_mut(caller, uid)?;
        p.variables = vars;
        p.modified = now;
        Ok(())
    }

    /// `GET /v1/clusterprofiles/{uid}/packs/{packName}/manifests` (`v1ManifestEntities`).
    pub fn pack_manifests(
        &self,
        caller: &Caller,
        uid: &str,
        pack: &str,
    ) -> Result<Value, ApiError> {
        let p = self.get(caller, uid)?;
        let find = |t: &Option<Value>| -> Option<Vec<Value>> {
            t.as_ref()?
                .get("packs")?
                .as_array()?
                .iter()
                .find(|x| str_at(x, "/name") == Some(pack))
                .map(|x| {
                    x.get("manifests")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
        };
        let (draft, published) = (find(&p.draft), find(&p.published));
        if draft.is_none() && published.is_none() {
            return Err(ApiError::new(
                404,
                "ResourceNotFound",
                format!("pack {pack} not found in cluster profile {uid}"),
            ));
        }
        let mut names: Vec<(String, String)> = Vec::new();
        for m in draft.iter().chain(published.iter()).flatten() {
            let n = str_at(m, "/name").unwrap_or_default().to_string();
            if !names.iter().any(|(x, _)| *x == n) {
                names.push((n, str_at(m, "/uid").unwrap_or_default().to_string()));
            }
        }
        let content = |list: &Option<Vec<Value>>, name: &str| -> Value {
            list.iter()
                .flatten()
                .find(|m| str_at(m, "/name") == Some(name))
                .map_or(
                    Value::Null,
                    |m| json!({"content": m.get("content").cloned().unwrap_or_default()}),
                )
        };
        let items: Vec<Value> = names
            .iter()
            .map(|(n, u)| {
                let mut spec = Map::new();
                let d = content(&draft, n);
                if !d.is_null() {
                    spec.insert("draft".into(), d);
                }
                let pbl = content(&published, n);
                if !pbl.is_null() {
                    spec.insert("published".into(), pbl);
                }
                json!({"metadata": {"name": n, "uid": u}, "spec": spec})
            })
            .collect();
        Ok(json!({"items": items}))
    }

    /// `GET /v1/clusterprofiles/{uid}` (`v1ClusterProfile`).
    pub fn get_json(&self, caller: &Caller, uid: &str) -> Result<Value, ApiError> {
        let p = self.get(caller, uid)?;
        let mut spec = Map::new();
        if let Some(d) = &p.draft {
            spec.insert("draft".into(), render_template(p, d));
        }
        if let Some(t) = &p.published {
            spec.insert("published".into(), render_template(p, t));
        }
        spec.insert("version".into(), p.version.clone().into());
        spec.insert("versions".into(), self.versions(caller, p));
        let in_use_uids: Vec<Value> = p
            .in_use_clusters
            .iter()
            .filter_map(|c| c.get("uid").cloned())
            .collect();
        Ok(json!({
            "apiVersion": "v1",
            "kind": "ClusterProfile",
            "metadata": self.metadata(p),
            "spec": spec,
            "status": {
                "hasUserMacros": false,
                "inUseClusterUids": in_use_uids,
                "inUseClusters": p.in_use_clusters,
                "isPublished": p.published.is_some(),
            },
        }))
    }

    fn metadata(&self, p: &Profile) -> Value {
        json!({
            "name": p.name,
            "uid": p.uid,
            "labels": p.labels,
            "annotations": p.annotations,
            "creationTimestamp": rfc3339(p.created),
            "lastModifiedTimestamp": rfc3339(p.modified),
        })
    }

    fn versions(&self, caller: &Caller, p: &Profile) -> Value {
        let mut list: Vec<(&str, &str)> = self
            .profiles
            .values()
            .filter(|o| o.name == p.name && o.scope == p.scope && Self::visible(o, caller))
            .map(|o| (o.version.as_str(), o.uid.as_str()))
            .collect();
        list.sort_unstable();
        Value::Array(
            list.into_iter()
                .map(|(v, u)| json!({"uid": u, "version": v}))
                .collect(),
        )
    }

    fn visible_sorted(&self, caller: &Caller) -> Vec<&Profile> {
        let mut list: Vec<&Profile> = self
            .profiles
            .values()
            .filter(|p| Self::visible(p, caller))
            .collect();
        list.sort_by(|a, b| (&a.name, &a.version, &a.uid).cmp(&(&b.name, &b.version, &b.uid)));
        list
    }

    /// `GET /v1/dashboard/clusterprofiles/metadata` (`v1ClusterProfilesMetadata`, unpaged).
    pub fn list_metadata(&self, caller: &Caller) -> Value {
        let items: Vec<Value> = self
            .visible_sorted(caller)
            .into_iter()
            .map(|p| {
                let cloud = p
                    .published
                    .as_ref()
                    .or(p.draft.as_ref())
                    .and_then(|t| t.get("cloudType"))
                    .cloned()
                    .unwrap_or_default();
                json!({"metadata": {"name": p.name, "uid": p.uid},
                       "spec": {"cloudType": cloud, "version": p.version}})
            })
            .collect();
        json!({"items": items})
    }

    /// `POST /v1/dashboard/clusterprofiles` (`v1ClusterProfilesSummary`), filtered and paged
    /// with `continue` tokens.
    pub fn list_summary(
        &self,
        caller: &Caller,
        filter: &Value,
        q: &ListQuery,
    ) -> Result<Value, ApiError> {
        let limit = match q.limit {
            None | Some(0) => MAX_LIMIT,
            Some(n) if n < 0 => return Err(ApiError::bad_request("limit must not be negative")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "limit {limit} is greater than the maximum {MAX_LIMIT}"
            )));
        }
        let page = limit.min(self.page_cap.max(1));
        let offset = match &q.continue_token {
            Some(t) if !t.is_empty() => decode_continue(t).ok_or_else(|| {
                ApiError::bad_request(format!("continue token {t:?} is not valid"))
            })?,
            _ => usize::try_from(q.offset.unwrap_or(0).max(0)).unwrap_or(0),
        };
        let mut matching: Vec<&Profile> = self
            .visible_sorted(caller)
            .into_iter()
            .filter(|p| matches_filter(p, filter.get("filter").unwrap_or(&Value::Null)))
            .collect();
        sort_profiles(&mut matching, filter.get("sort"));
        let total = matching.len();
        let items: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(page)
            .map(|p| self.summary(caller, p))
            .collect();
        let next = offset + items.len();
        let continue_token = if next < total {
            encode_continue(next)
        } else {
            String::new()
        };
        Ok(json!({
            "items": items,
            "listmeta": {"continue": continue_token, "count": items.len(), "limit": page, "offset": offset},
        }))
    }

    fn summary(&self, caller: &Caller, p: &Profile) -> Value {
        let tmpl = |t: &Value| {
            let packs: Vec<Value> = t
                .get("packs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|pk| {
                    json!({
                        "name": pk.get("name").cloned().unwrap_or_default(),
                        "tag": pk.get("tag").cloned().unwrap_or_default(),
                        "type": pk.get("type").cloned().unwrap_or_else(|| "spectro".into()),
                        "layer": pk.get("layer").cloned().unwrap_or_else(|| "addon".into()),
                    })
                })
                .collect();
            json!({"cloudType": t.get("cloudType").cloned().unwrap_or_default(),
                   "type": t.get("type").cloned().unwrap_or_default(), "packs": packs})
        };
        let mut spec = Map::new();
        if let Some(d) = &p.draft {
            spec.insert("draft".into(), tmpl(d));
        }
        if let Some(t) = &p.published {
            spec.insert("published".into(), tmpl(t));
        }
        spec.insert("version".into(), p.version.clone().into());
        spec.insert("versions".into(), self.versions(caller, p));
        let in_use: Vec<Value> = p
            .in_use_clusters
            .iter()
            .map(|c| json!({"name": c.get("name").cloned().unwrap_or_default(), "uid": c.get("uid").cloned().unwrap_or_default()}))
            .collect();
        json!({
            "metadata": self.metadata(p),
            "specSummary": spec,
            "status": {"isPublished": p.published.is_some(), "inUseClusters": in_use},
        })
    }
}

/// A template as `GET` shows it (`v1ClusterProfileTemplate`, packs as `v1PackRef`: manifests
/// by reference only, their content is a separate call).
fn render_template(p: &Profile, t: &Value) -> Value {
    let packs: Vec<Value> = t
        .get("packs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|pk| {
            let name = str_at(pk, "/name").unwrap_or_default();
            let tag = str_at(pk, "/tag").unwrap_or_default();
            let synth = |what: &str| format!("{what}{:016x}", fnv(&[what, name, tag]));
            let manifests: Vec<Value> = pk
                .get("manifests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|m| json!({"kind": "Manifest", "name": m.get("name").cloned().unwrap_or_default(), "uid": m.get("uid").cloned().unwrap_or_default()}))
                .collect();
            let mut out = json!({
                "name": name,
                "tag": tag,
                "version": tag,
                "type": pk.get("type").cloned().unwrap_or_else(|| "spectro".into()),
                "layer": pk.get("layer").cloned().unwrap_or_else(|| "addon".into()),
                "values": pk.get("values").cloned().unwrap_or_else(|| "".into()),
                "packUid": pk.get("uid").cloned().unwrap_or_else(|| synth("pack").into()),
                "registryUid": pk.get("registryUid").cloned().unwrap_or_else(|| synth("reg").into()),
            });
            if !manifests.is_empty() {
                out["manifests"] = Value::Array(manifests);
            }
            out
        })
        .collect();
    json!({
        "name": p.name,
        "uid": format!("{}-{}", p.uid, if p.published.as_ref() == Some(t) { "published" } else { "draft" }),
        "type": t.get("type").cloned().unwrap_or_default(),
        "cloudType": t.get("cloudType").cloned().unwrap_or_default(),
        "profileVersion": p.version,
        "packs": packs,
    })
}

/// Variables as Palette keeps them: unique names, and the fields the API never omits
/// (`x-omitempty: false`) filled with their zero values, as Go serialises them.
fn normalize_variables(vars: &[Value]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for v in vars {
        let name = str_at(v, "/name").unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::bad_request("variable name must not be empty"));
        }
        if names.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "variable {name} is defined more than once"
            )));
        }
        names.push(name);
        let mut m = v.as_object().cloned().unwrap_or_default();
        for (k, zero) in [
            ("defaultValue", Value::from("")),
            ("format", Value::from("string")),
            ("hidden", Value::Bool(false)),
            ("immutable", Value::Bool(false)),
            ("inputType", Value::from("text")),
            ("isSensitive", Value::Bool(false)),
            ("required", Value::Bool(false)),
        ] {
            m.entry(k).or_insert(zero);
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

fn encode_continue(offset: usize) -> String {
    format!("c{:x}.{:08x}", offset, fnv(&[&offset.to_string()]) as u32)
}

fn decode_continue(token: &str) -> Option<usize> {
    let (off, check) = token.strip_prefix('c')?.split_once('.')?;
    let offset = usize::from_str_radix(off, 16).ok()?;
    (encode_continue(offset).ends_with(check)).then_some(offset)
}

fn text_matches(filter: &Value, value: &str) -> bool {
    let ignore_case = filter
        .get("ignoreCase")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let norm = |s: &str| {
        if ignore_case {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let v = norm(value);
    let op = |k: &str| filter.get(k).and_then(Value::as_str).map(norm);
    op("eq").is_none_or(|x| v == x)
        && op("ne").is_none_or(|x| v != x)
        && op("contains").is_none_or(|x| v.contains(&x))
        && op("beginsWith").is_none_or(|x| v.starts_with(&x))
}

fn matches_filter(p: &Profile, f: &Value) -> bool {
    if let Some(name) = f.get("profileName").filter(|v| v.is_object())
        && !text_matches(name, &p.name)
    {
        return false;
    }
    if let Some(version) = f.get("version").filter(|v| v.is_object()) {
        let mut v = version.clone();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ignoreCase".into(), false.into());
        }
        if !text_matches(&v, &p.version) {
            return false;
        }
    }
    if let Some(scope) = f.get("scope").and_then(Value::as_str)
        && scope != p.scope.as_str()
    {
        return false;
    }
    if let Some(types) = f.get("profileType").and_then(Value::as_array)
        && !types.is_empty()
        && !types.iter().any(|t| t.as_str() == p.profile_type())
    {
        return false;
    }
    if let Some(tags) = f.pointer("/tags/eq").and_then(Value::as_array) {
        let has = |tag: &str| {
            let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
            p.labels.get(k).and_then(Value::as_str) == Some(v)
        };
        if !tags.iter().filter_map(Value::as_str).all(has) {
            return false;
        }
    }
    true
}

fn sort_profiles(list: &mut [&Profile], sort: Option<&Value>) {
    let Some(specs) = sort.and_then(Value::as_array) else {
        return;
    };
    // Stable sorts applied last-first give the first field priority.
    for s in specs.iter().rev() {
        let desc = s.get("order").and_then(Value::as_str) == Some("desc");
        let field = s.get("field").and_then(Value::as_str).unwrap_or_default();
        list.sort_by(|a, b| {
            let ord = match field {
                "profileName" => a.name.cmp(&b.name),
                "profileType" => a.profile_type().cmp(&b.profile_type()),
                "creationTimestamp" => a.created.cmp(&b.created),
                "lastModifiedTimestamp" => a.modified.cmp(&b.modified),
                _ => std::cmp::Ordering::Equal,
            };
            if desc { ord.reverse() } else { ord }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(name: &str, version: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"team": "a"}},
               "spec": {"version": version, "template": {"type": "infra", "cloudType": "aws",
                 "packs": [{"name": "k8s", "tag": "1.32", "layer": "k8s", "values": "a: 1",
                            "manifests": [{"name": "m", "content": "x"}]}]},
                 "variables": [{"name": "vip"}]}})
    }

    fn project() -> Caller {
        Caller {
            project: Some("p1".into()),
        }
    }

    #[test]
    fn name_and_version_are_unique_per_scope() {
        let mut s = Store::new();
        s.create(&project(), &entity("a", "1"), false)
            .expect("create");
        let err = s
            .create(&project(), &entity("a", "1"), false)
            .expect_err("dup");
        assert_eq!(err.status, 409);
        s.create(&project(), &entity("a", "2"), false)
            .expect("other version");
        s.create(&Caller::default(), &entity("a", "1"), false)
            .expect("tenant scope");
    }

    #[test]
    fn put_writes_the_draft_and_publish_promotes_it() {
        let mut s = Store::new();
        let uid = s
            .create(&project(), &entity("a", "1"), true)
            .expect("create");
        let update = json!({"spec": {"template": {"packs": [{"name": "k8s", "tag": "1.33",
            "manifests": [{"name": "m"}]}]}}});
        s.update(&project(), &uid, &update).expect("update");
        let got = s.get_json(&project(), &uid).expect("get");
        assert_eq!(
            got.pointer("/spec/published/packs/0/tag"),
            Some(&json!("1.32"))
        );
        assert_eq!(got.pointer("/spec/draft/packs/0/tag"), Some(&json!("1.33")));
        // A manifest named without content keeps its content and uid.
        let m = s
            .pack_manifests(&project(), &uid, "k8s")
            .expect("manifests");
        assert_eq!(m.pointer("/items/0/spec/draft/content"), Some(&json!("x")));
        s.publish(&project(), &uid).expect("publish");
        let got = s.get_json(&project(), &uid).expect("get");
        assert_eq!(
            got.pointer("/spec/published/packs/0/tag"),
            Some(&json!("1.33"))
        );
        assert_eq!(
            got.pointer("/spec/published/cloudType"),
            Some(&json!("aws"))
        );
    }

    #[test]
    fn project_profiles_are_invisible_elsewhere_and_tenant_ones_read_only_from_projects() {
        let mut s = Store::new();
        let uid = s
            .create(&project(), &entity("a", "1"), true)
            .expect("create");
        let other = Caller {
            project: Some("p2".into()),
        };
        assert_eq!(s.get_json(&other, &uid).expect_err("hidden").status, 404);
        let t = s
            .create(&Caller::default(), &entity("t", "1"), true)
            .expect("tenant");
        assert!(s.get_json(&project(), &t).is_ok());
        assert_eq!(s.delete(&project(), &t).expect_err("read-only").status, 403);
        s.delete(&Caller::default(), &t)
            .expect("tenant deletes its own");
    }

    #[test]
    fn profiles_in_use_are_not_deleted() {
        let mut s = Store::new();
        let uid = s
            .create(&project(), &entity("a", "1"), true)
            .expect("create");
        s.set_in_use(&uid, vec![json!({"name": "edge-1", "uid": "c1"})])
            .expect("in use");
        let err = s.delete(&project(), &uid).expect_err("in use");
        assert_eq!(err.status, 409);
        assert!(err.message.contains("edge-1"));
    }

    #[test]
    fn summary_pages_with_continue_tokens() {
        let mut s = Store::new();
        s.page_cap = 2;
        for i in 0..5 {
            s.create(&project(), &entity(&format!("p{i}"), "1"), true)
                .expect("create");
        }
        let mut names = Vec::new();
        let mut q = ListQuery::default();
        loop {
            let page = s.list_summary(&project(), &json!({}), &q).expect("page");
            let items = page["items"].as_array().expect("items");
            assert!(items.len() <= 2);
            names.extend(items.iter().map(|i| i["metadata"]["name"].clone()));
            let next = page["listmeta"]["continue"].as_str().expect("continue");
            if next.is_empty() {
                break;
            }
            q.continue_token = Some(next.to_string());
        }
        assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
        q.continue_token = Some("bogus".into());
        assert_eq!(
            s.list_summary(&project(), &json!({}), &q)
                .expect_err("token")
                .status,
            400
        );
        q.continue_token = None;
        q.limit = Some(51);
        assert_eq!(
            s.list_summary(&project(), &json!({}), &q)
                .expect_err("limit")
                .status,
            400
        );
    }

    #[test]
    fn variables_get_their_zero_values() {
        let mut s = Store::new();
        let uid = s
            .create(&project(), &entity("a", "1"), true)
            .expect("create");
        let v = s.variables(&project(), &uid).expect("vars");
        assert_eq!(v.pointer("/variables/0/required"), Some(&json!(false)));
        assert_eq!(v.pointer("/variables/0/defaultValue"), Some(&json!("")));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(EPOCH), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
