//! The `coordination.k8s.io/v1` Lease `pbsync-<instance>` in the status namespace: the one
//! lock of an instance on a hub. The daemon's leader election holds it (so two hosts can run
//! pbsync for the same repository and exactly one applies), and every applying pass takes it
//! (so a one-shot `pbsync apply` never runs beside the daemon or another apply).
//!
//! client-go's rules: the holder renews every `duration / 3`; another candidate takes the
//! lease only when its record has not changed for a whole `duration` by the candidate's own
//! clock (no clock comparison between hosts); a holder that stops gracefully releases the
//! lease so the other takes over at its next try. Writes carry the resourceVersion read, so
//! two candidates can never both win. One addition: a holder on this very host whose process
//! is gone (a `pbsync apply` killed mid-pass) is taken over at once instead of after a whole
//! `duration`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::time::Instant;

/// Errors of reaching the Lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be used.
    #[error("cannot build a Kubernetes client for the lease")]
    ClientFailed(#[source] crate::Error),
    /// A request for the Lease failed.
    #[error("cannot {verb} lease {namespace}/{name}")]
    RequestFailed {
        /// get, create, replace.
        verb: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// Which Lease, for how long, held by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name (`pbsync-<instance>`).
    pub lease_name: String,
    /// Its namespace (the status namespace).
    pub namespace: String,
    /// How long a record holds without renewal.
    pub duration: Duration,
    /// This holder's identity (`<host>-<pid>` by default).
    pub identity: String,
}

/// The name of the Lease of `instance`, which the daemon and every apply take.
pub fn lease_name(instance: &str) -> String {
    format!("{}{instance}", pbsync_core::guard::LEASE_PREFIX)
}

/// The identity of this process: `<host>-<pid>`.
pub fn process_identity() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "pbsync".into())
}

/// True when `holder` names a process of this host (`<host>-<pid>`) that no longer runs.
fn holder_is_gone(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once('-') else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok()
        && !std::path::Path::new("/proc").join(pid).exists()
}

/// A lease record as seen (holder, renew time).
type Record = (Option<String>, Option<String>);

/// One candidate for the Lease.
pub struct Candidate {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The lease record last seen (holder, renew time) and when it was first seen.
    observed: Option<(Record, Instant)>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Candidate {
    /// A candidate reaching the hub of `kubeconfig`/`context` (the usual inference without).
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
        cfg: LeaseConfig,
    ) -> Result<Self, Error> {
        let client = super::connect(kubeconfig, context)
            .await
            .map_err(Error::ClientFailed)?;
        Ok(Self::new(client, cfg))
    }

    pub(super) fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// When the record this standby saw expires (by its own clock).
    pub fn expiry(&self) -> Option<Instant> {
        self.observed
            .as_ref()
            .map(|(_, at)| *at + self.cfg.duration)
    }

    /// The holder of the record last seen, if another one holds it.
    pub(crate) fn other_holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|((holder, _), _)| holder.as_deref())
            .filter(|h| *h != self.cfg.identity)
    }

    fn err(&self, verb: &'static str) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::RequestFailed {
            verb,
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.lease_name.clone(),
            source,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32, renew: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(renew))),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; `Ok(true)` when this candidate holds it now.
    pub async fn try_lead(&mut self) -> Result<bool, Error> {
        Ok(self.try_take().await?.is_some())
    }

    /// Takes or renews the lease: `Some(true)` when this candidate held it already, `Some(false)`
    /// when it just took it, `None` when another holds it.
    async fn try_take(&mut self) -> Result<Option<bool>, Error> {
        let now = Timestamp::now();
        let name = self.cfg.lease_name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await.map_err(self.err("get"))? else {
            let name = name.clone();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Some(false)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(self.err("create")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        if let Some(other) = holder.as_deref().filter(|_| !mine) {
            let record = (
                holder.clone(),
                spec.renew_time.as_ref().map(|t| t.0.to_string()),
            );
            if holder_is_gone(other) {
                tracing::info!(
                    previous = other,
                    "the lease holder's process is gone; taking over"
                );
            } else {
                let since = match &self.observed {
                    Some((seen, at)) if *seen == record => *at,
                    _ => {
                        self.observed = Some((record, Instant::now()));
                        return Ok(None);
                    }
                };
                if since.elapsed() < self.cfg.duration {
                    return Ok(None);
                }
                tracing::info!(previous = other, "lease expired; taking over");
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(acquired, transitions, now));
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Some(mine)),
            // Someone else wrote first. It may be this very holder renewing from another task
            // (the daemon's election and its pass both renew the one Lease): then it still
            // holds it.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let now = self.api.get_opt(&name).await.map_err(self.err("get"))?;
                let holder = now.and_then(|l| l.spec).and_then(|s| s.holder_identity);
                Ok((holder.as_deref() == Some(self.cfg.identity.as_str())).then_some(mine))
            }
            Err(e) => Err(self.err("replace")(e)),
        }
    }

    /// Gives the lease up so another candidate takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %pbsync_core::error_chain(&e), "cannot release the lease");
        } else {
            tracing::debug!("lease released");
        }
    }
}

/// The Lease held for one pass: renewed in the background until released.
#[derive(Debug)]
pub struct Held {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Stops renewing and gives the lease up (unless it was held before this pass took it:
    /// a daemon's leadership stays with the daemon).
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Takes the Lease for one pass, waiting up to `wait` for another holder to let go (or for
/// its record to expire). `Ok(Err(holder))` when it is still held by `holder` after `wait`.
pub(super) async fn hold(
    mut candidate: Candidate,
    wait: Duration,
) -> Result<Result<Held, String>, Error> {
    let deadline = Instant::now() + wait;
    let poll =
        (candidate.cfg.duration / 6).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let held_before = loop {
        if let Some(held_before) = candidate.try_take().await? {
            break held_before;
        }
        let now = Instant::now();
        if now >= deadline {
            let holder = candidate
                .other_holder()
                .unwrap_or("another holder")
                .to_string();
            return Ok(Err(holder));
        }
        let next = candidate
            .expiry()
            .map_or(now + poll, |e| e.min(now + poll))
            .min(deadline);
        tokio::time::sleep_until(next.max(now + Duration::from_millis(50))).await;
    };
    let renew = (candidate.cfg.duration / 3).max(Duration::from_millis(500));
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(renew) => {
                    if let Err(e) = candidate.try_lead().await {
                        tracing::warn!(error = %pbsync_core::error_chain(&e), "cannot renew the lease");
                    }
                }
                _ = &mut stopped => {
                    if !held_before {
                        candidate.release().await;
                    }
                    return;
                }
            }
        }
    });
    Ok(Ok(Held { stop, task }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_of_this_host_whose_process_is_gone_is_recognised() {
        let me = process_identity();
        assert!(!holder_is_gone(&me), "this process runs");
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(holder_is_gone(&format!("{}-{}", hostname(), 9_999_999)));
        assert!(!holder_is_gone("another-host-1"));
        assert!(!holder_is_gone("no-pid-here"));
        assert_eq!(lease_name("team-a"), "pbsync-team-a");
    }
}
