//! The daemon (`pbsync run`): when to reconcile, and everything around it. The lifecycle
//! follows linkerd2-proxy's: load the config, bind the listener, spawn the endpoints and the
//! trigger sources, tell systemd `READY=1`, run the loop until a signal, drain with a
//! deadline.
//!
//! The loop itself is [`scheduler`]; one pass is [`pass`]; the endpoints are [`http`].

pub mod board;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod pass;
pub mod report;
pub mod scheduler;
pub mod signal;
pub mod systemd;
pub mod watch;
pub mod webhook;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch as channel};

use crate::config::{Config, Settings};
use crate::engine::{Context, ParseCache};
use crate::source::remote::{Location, Remote};
use http::{Shared, WebhookSettings};
use metrics::Metrics;
use pass::{Origin, Parts, Reconciler};
use pbsync_target::{RunOptions, Target};
use scheduler::{Scheduler, Timing, Trigger};
use systemd::Notifier;

/// Errors of starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    BindFailed {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers or threads could not be set up.
    #[error("cannot start the daemon")]
    StartFailed(#[source] std::io::Error),
    /// Leader election could not start.
    #[error("cannot start leader election")]
    Leader(#[source] Box<pbsync_target::kubernetes::lease::Error>),
}

/// How a configuration's run ended.
#[derive(Debug)]
pub enum Exit {
    /// Stop the process (exit 0).
    Stop,
    /// Run again with this configuration (SIGHUP with a valid new one).
    Reload(Box<Config>),
}

/// The parts that live across reloads: endpoints, metrics, signals, the trigger channel.
pub struct Daemon {
    shared: Arc<Shared>,
    notifier: Notifier,
    triggers: Option<mpsc::Receiver<Trigger>>,
    trigger_tx: mpsc::Sender<Trigger>,
    signals: mpsc::Receiver<signal::Event>,
    stop_tx: channel::Sender<bool>,
    http: Option<std::thread::JoinHandle<()>>,
    /// The flags given on the command line, laid over the file again on reload.
    flags: Settings,
    /// Whether a configuration's target can be built (the command line builds targets; a
    /// reload that could not is refused and the running configuration kept).
    check_target: TargetCheck,
    cache: Arc<ParseCache>,
    listen: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Binds the listener, starts the endpoints and signal handlers, and tells systemd the
    /// daemon is ready (configuration loaded, listener bound).
    pub fn start(
        config: &Config,
        flags: Settings,
        check_target: TargetCheck,
    ) -> Result<Self, Error> {
        let notifier = Notifier::from_env();
        // Capacity 1: a queued trigger already means "a pass is pending"; more coalesce.
        let (trigger_tx, triggers) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            health: health::Health::default(),
            board: board::Board::default(),
            metrics: Metrics::new(),
            triggers: trigger_tx.clone(),
            webhook: Mutex::new(webhook_settings(config)),
            page: Mutex::new(page_settings(config)),
            reporter: report::Reporter::default(),
        });
        let (stop_tx, stop_rx) = channel::channel(false);
        let mut listen = None;
        let http = match config.daemon.listen {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .map_err(|source| Error::BindFailed { addr, source })?;
                let bound = listener.local_addr().map_err(Error::StartFailed)?;
                listen = Some(bound);
                tracing::info!(addr = %bound, "listening");
                Some(http::spawn(listener, shared.clone(), stop_rx).map_err(Error::StartFailed)?)
            }
            None => None,
        };
        let signals = signal::spawn().map_err(Error::StartFailed)?;
        notifier.ready(&format!(
            "watching {}",
            crate::source::remote::redact(&config.source.repo)
        ));
        Ok(Self {
            shared,
            notifier,
            triggers: Some(triggers),
            trigger_tx,
            signals,
            stop_tx,
            http,
            flags,
            check_target,
            cache: Arc::new(ParseCache::default()),
            listen,
        })
    }

    /// Runs `config` against `target` until a stop signal (→ [`Exit::Stop`]) or a reload
    /// with a valid new configuration (→ [`Exit::Reload`]).
    pub async fn serve<T: Target + 'static>(
        &mut self,
        target: T,
        config: &Config,
    ) -> Result<Exit, Error> {
        *self
            .shared
            .webhook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = webhook_settings(config);
        *self
            .shared
            .page
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = page_settings(config);
        let origin = origin(config);
        let mut ctx = Context::new(origin.repo_dir(), "HEAD", &config.source.path);
        ctx.plan = config.plan_options();
        // Signed commits only, when configured: every pass checks the commit it fetched.
        ctx.verify.clone_from(&config.source.verify);
        if let Some(v) = &ctx.verify {
            tracing::info!(keys = ?v, "applying only commits signed by these keys");
        }
        // Its passes take the instance's Lease as the leader it is (or as this process), and
        // wait only briefly for a one-shot apply to finish: the scheduler retries.
        if let Some(leader) = &config.daemon.leader {
            ctx.holder.clone_from(&leader.identity);
        }
        ctx.lock_wait = std::time::Duration::from_secs(10);

        // Per-configuration tasks stop when this run ends.
        let (run_stop_tx, run_stop_rx) = channel::channel(false);
        self.shared
            .reporter
            .replace(report::spawn(config, &self.shared, &run_stop_rx));
        let _watch = match origin.clone() {
            Origin::Local { repo, .. } if config.source.watch => {
                match watch::RefWatch::start(&repo, self.trigger_tx.clone()) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %pbsync_core::error_chain(&e), "not watching the repository; polling only");
                        None
                    }
                }
            }
            _ => None,
        };
        let (leader, leader_task) = match &config.daemon.leader {
            Some(cfg) => {
                let s = &config.settings;
                let candidate = pbsync_target::kubernetes::lease::Candidate::connect(
                    s.kubeconfig.as_deref(),
                    s.context.as_deref(),
                    cfg.clone(),
                )
                .await
                .map_err(|e| Error::Leader(Box::new(e)))?;
                let (rx, task) =
                    leader::spawn(candidate, self.trigger_tx.clone(), run_stop_rx.clone());
                (Some(rx), Some(task))
            }
            None => (None, None),
        };
        // The health board follows what each pass applied, until this run ends.
        let target = Arc::new(target);
        let (graphs, graphs_rx) = channel::channel(None);
        let board_task = tokio::spawn(board::follow(
            Arc::clone(&target),
            graphs_rx,
            self.shared.clone(),
            run_stop_rx.clone(),
        ));
        let mut reconciler = Reconciler::new(
            target,
            Parts {
                graphs,
                origin,
                ctx,
                shared: self.shared.clone(),
                notifier: self.notifier.clone(),
                leader,
                opts: RunOptions {
                    allow_mass_deletion: config.daemon.allow_mass_deletion,
                    // The daemon follows its branch as Git has it (as Flux does); a move back is
                    // planned with reasons that say so, under the mass-deletion guard.
                    allow_rollback: true,
                    deletion_timeout: config.daemon.deletion_timeout,
                },
                cache: self.cache.clone(),
            },
        );
        let timing = Timing {
            interval: config.daemon.interval,
            resync: config.daemon.resync_interval,
            backoff_min: config.daemon.backoff_min,
            backoff_max: config.daemon.backoff_max,
            pass_timeout: config.daemon.reconcile_timeout,
            shutdown_timeout: config.daemon.shutdown_timeout,
        };
        let triggers = self.triggers.take().unwrap_or_else(|| {
            // Unreachable: serve gives the receiver back before returning.
            let (tx, rx) = mpsc::channel(1);
            self.trigger_tx = tx;
            rx
        });
        let mut scheduler = Scheduler::new(timing, triggers, self.notifier.clone());
        let (loop_stop_tx, mut loop_stop_rx) = channel::channel(false);

        // Signals steer the loop from here.
        let exit = {
            let run = scheduler.run(&mut reconciler, &mut loop_stop_rx);
            tokio::pin!(run);
            let mut decided: Option<Exit> = None;
            loop {
                tokio::select! {
                    _ = &mut run => break,
                    ev = self.signals.recv(), if decided.is_none() => match ev {
                        Some(signal::Event::ReconcileNow) => {
                            tracing::info!("SIGUSR1: reconcile requested");
                            scheduler::send(&self.trigger_tx, Trigger::Manual);
                        }
                        Some(signal::Event::Reload) => {
                            self.notifier.reloading();
                            match reload(config, &self.flags, self.check_target) {
                                Ok(new) => {
                                    tracing::info!("SIGHUP: configuration reloaded");
                                    decided = Some(Exit::Reload(Box::new(new)));
                                    let _ = loop_stop_tx.send(true);
                                }
                                Err(message) => {
                                    tracing::error!(error = %message, "SIGHUP: new configuration rejected; keeping the running one");
                                    self.notifier.status(&format!("reload rejected: {message}"));
                                }
                            }
                        }
                        Some(signal::Event::Stop) | None => {
                            tracing::info!("stopping");
                            self.notifier.stopping();
                            decided = Some(Exit::Stop);
                            let _ = loop_stop_tx.send(true);
                        }
                    },
                }
            }
            decided.unwrap_or(Exit::Stop)
        };
        self.triggers = Some(scheduler.into_triggers());
        let _ = run_stop_tx.send(true);
        self.shared.reporter.replace(Vec::new());
        let _ = board_task.await;
        if let Some(task) = leader_task {
            // Releasing the lease is bounded by the client's own timeouts.
            let _ = tokio::time::timeout(config.daemon.shutdown_timeout, task).await;
        }
        if matches!(exit, Exit::Stop) {
            let _ = self.stop_tx.send(true);
            if let Some(h) = self.http.take() {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        }
        Ok(exit)
    }
}

fn page_settings(config: &Config) -> (String, bool) {
    (config.plan_options().instance, config.daemon.ui)
}

fn webhook_settings(config: &Config) -> WebhookSettings {
    WebhookSettings {
        secret: config.daemon.webhook_secret.clone(),
        header: config.daemon.webhook_header.to_ascii_lowercase(),
    }
}

/// Where `config`'s commits come from.
pub fn origin(config: &Config) -> Origin {
    let s = &config.source;
    match Location::of(&s.repo) {
        Location::Path(repo) => Origin::Local {
            repo,
            reference: s.reference.clone().unwrap_or_else(|| "HEAD".into()),
        },
        Location::Url(url) => Origin::Remote(Remote::new(
            &url,
            s.reference.clone(),
            s.auth.clone(),
            s.shallow,
            &s.state_dir,
        )),
    }
}

/// Checks that a configuration's target can be built.
pub type TargetCheck = fn(&Config) -> Result<(), String>;

/// Reads the configuration again for SIGHUP; any problem keeps the running one.
fn reload(running: &Config, flags: &Settings, check_target: TargetCheck) -> Result<Config, String> {
    let new =
        Config::load(running.file.as_deref(), flags).map_err(|e| pbsync_core::error_chain(&e))?;
    check_target(&new)?;
    if new.daemon.listen != running.daemon.listen {
        tracing::warn!("listen changes take effect at the next restart");
    }
    Ok(new)
}
