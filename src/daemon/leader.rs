//! Leader election on a `coordination.k8s.io/v1` Lease, so two hosts can run pbsync for the
//! same repository and exactly one applies.
//!
//! client-go's rules: the holder renews every `duration / 3`; another candidate takes the
//! lease only when its record has not changed for a whole `duration` by the candidate's own
//! clock (no clock comparison between hosts); a holder that could not renew for
//! `2/3 duration` stops applying before anyone may take over; a holder that stops gracefully
//! releases the lease so the other takes over at its next try. Writes carry the
//! resourceVersion read, so two candidates can never both win.
//!
//! A standby reads the lease every `duration / 6` (so it sees the last renewal soon after
//! it happened) and wakes exactly when the record it saw expires: a holder that dies is
//! replaced about `duration` after its last renewal, at worst `duration / 6` later.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::scheduler::{Trigger, send};
use crate::config::LeaderConfig;

/// Errors of reaching the Lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be used.
    #[error("cannot build a Kubernetes client for leader election")]
    ClientFailed {
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

/// Builds a client from a kubeconfig file and context (or the usual inference).
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Client, Error> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| Error::ClientFailed { source: e };
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|e| boxed(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| boxed(Box::new(e)))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| boxed(Box::new(e)))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| boxed(Box::new(e)))?,
    };
    kube::Client::try_from(config).map_err(|e| boxed(Box::new(e)))
}

/// A lease record as seen (holder, renew time).
type Record = (Option<String>, Option<String>);

/// One candidate.
struct Candidate {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// The lease record last seen (holder, renew time) and when it was first seen.
    observed: Option<(Record, Instant)>,
}

impl Candidate {
    /// When the record this standby saw expires (by its own clock).
    fn expiry(&self) -> Option<Instant> {
        self.observed
            .as_ref()
            .map(|(_, at)| *at + self.cfg.duration)
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
    async fn try_lead(&mut self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let name = self.cfg.lease_name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await.map_err(self.err("get"))? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(self.err("create")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        if !mine && holder.is_some() {
            let record = (
                holder.clone(),
                spec.renew_time.as_ref().map(|t| t.0.to_string()),
            );
            let since = match &self.observed {
                Some((seen, at)) if *seen == record => *at,
                _ => {
                    self.observed = Some((record, Instant::now()));
                    return Ok(false);
                }
            };
            if since.elapsed() < self.cfg.duration {
                return Ok(false);
            }
            tracing::info!(previous = ?holder, "lease expired; taking over");
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
            Ok(_) => Ok(true),
            // Someone else wrote first: they lead.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(self.err("replace")(e)),
        }
    }

    /// Gives the lease up so another candidate takes over at once.
    async fn release(&self) {
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
            tracing::info!("lease released");
        }
    }
}

/// Runs the election until `stop`; the receiver says whether this daemon leads. Becoming
/// leader sends a [`Trigger::Start`], so the new leader applies at once.
pub fn spawn(
    client: kube::Client,
    cfg: LeaderConfig,
    triggers: mpsc::Sender<Trigger>,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api = Api::<Lease>::namespaced(client, &cfg.namespace);
    let retry = (cfg.duration / 3).max(Duration::from_millis(500));
    let standby_poll = (cfg.duration / 6).max(Duration::from_millis(250));
    let deadline = cfg.duration * 2 / 3;
    let mut c = Candidate {
        api,
        cfg,
        observed: None,
    };
    let task = tokio::spawn(async move {
        let mut renewed: Option<Instant> = None;
        loop {
            let was = *tx.borrow();
            let now_leader = match c.try_lead().await {
                Ok(true) => {
                    renewed = Some(Instant::now());
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(error = %pbsync_core::error_chain(&e), "leader election");
                    // Keep leading only while the last renewal is recent enough that nobody
                    // else may have taken over.
                    was && renewed.is_some_and(|r| r.elapsed() < deadline)
                }
            };
            if now_leader != was {
                tracing::info!(identity = %c.cfg.identity, leader = now_leader, "leadership changed");
                let _ = tx.send(now_leader);
                if now_leader {
                    send(&triggers, Trigger::Start);
                }
            }
            // A standby wakes when the record it saw expires, or to look again.
            let wait = if now_leader {
                retry
            } else {
                let poll = Instant::now() + standby_poll;
                let at = c.expiry().map_or(poll, |e| e.min(poll));
                at.saturating_duration_since(Instant::now())
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {
                    if *tx.borrow() {
                        let _ = tx.send(false);
                        c.release().await;
                    }
                    return;
                }
            }
        }
    });
    (rx, task)
}
