//! Sending notifications: one task per configured sink, fed by the daemon's reporting bus,
//! deciding with [`Deduper`], [`Filter`] and [`RateLimiter`] and posting over HTTP, retrying
//! transient failures (no answer, 429 with its `Retry-After`, 5xx) with backoff. A pass only
//! pushes onto a channel, so a slow or dead endpoint never delays one.
//!
//! The URL is a secret (a Slack webhook's URL is its credential): it is never logged, and
//! errors are stripped of it before they are.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Batch, Deduper, Kind, Notice, RateLimiter, SIGNATURE_HEADER, Settings};
use crate::daemon::http::Shared;
use crate::daemon::report::Event;
use pbsync_target::Secret;

/// Errors of one delivery. None of them carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured URL cannot be posted to.
    #[error("the URL is not an absolute http:// or https:// URL")]
    BadUrl,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    ClientFailed(#[source] reqwest::Error),
    /// The endpoint did not answer.
    #[error("no answer from the endpoint")]
    SendFailed(#[source] reqwest::Error),
    /// The endpoint answered with an error status.
    #[error("the endpoint answered {status}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Its `Retry-After`, in seconds, when it gave one.
        retry_after: Option<Duration>,
    },
}

impl Error {
    /// True for failures worth trying again (no answer, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::SendFailed(_) => true,
            Self::Refused { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            Self::BadUrl | Self::ClientFailed(_) => false,
        }
    }
}

/// Timeout of one delivery.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one notification before it is given up (about five minutes of backoff).
const MAX_ATTEMPTS: u32 = 6;
/// The first retry's wait (doubling up to [`MAX_WAIT`]).
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between attempts, also for a `Retry-After`.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Where a notification's body goes: the endpoint's [`Client`] (and, in tests, a recorder,
/// so the sending loop runs on paused time without a socket).
pub trait Post {
    /// Posts `body` once.
    fn post(&self, body: &[u8]) -> impl std::future::Future<Output = Result<(), Error>> + Send;
}

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    kind: Kind,
    url: Secret,
    secret: Option<Secret>,
    http: reqwest::Client,
}

impl Client {
    /// A client of `settings`' endpoint.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let url = reqwest::Url::parse(settings.url.expose()).map_err(|_| Error::BadUrl)?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(Error::BadUrl);
        }
        let http = pbsync_target::http_client_builder(TIMEOUT)
            // A redirect would carry a signed body (or a Slack message) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::ClientFailed)?;
        Ok(Self {
            kind: settings.kind,
            url: settings.url.clone(),
            secret: settings.secret.clone(),
            http,
        })
    }

    async fn post_once(&self, body: &[u8]) -> Result<(), Error> {
        let content_type = match self.kind {
            Kind::Cloudevents => "application/cloudevents+json; charset=utf-8",
            Kind::Slack => "application/json",
        };
        let mut request = self
            .http
            .post(self.url.expose())
            .header(CONTENT_TYPE, content_type)
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request.header(
                SIGNATURE_HEADER,
                super::signature(secret.expose().as_bytes(), body),
            );
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::SendFailed(e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Error::Refused {
            status,
            retry_after,
        })
    }
}

impl Post for Client {
    fn post(&self, body: &[u8]) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.post_once(body)
    }
}

/// A fresh CloudEvents `id`: 128 random bits, written as a UUID (version 4).
fn event_id(rng: &mut fastrand::Rng) -> String {
    // Version 4 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
    let n = rng.u128(..);
    let n = (n & !(0xf_u128 << 76)) | (0x4 << 76);
    let n = (n & !(0x3_u128 << 62)) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The notification sink: decides on each event and posts what passes, until `stop` or the
/// channel closes.
pub async fn run(
    client: impl Post,
    settings: Settings,
    instance: String,
    mut events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let label = settings.kind.metric_label();
    let mut deduper = Deduper::new(settings.repeat_interval);
    let mut limiter = RateLimiter::new(settings.min_interval);
    let mut rng = fastrand::Rng::new();
    loop {
        let wait = limiter.wait(Instant::now());
        tokio::select! {
            ev = events.recv() => {
                let Some(event) = ev else { return };
                match deduper.observe(&event, Instant::now()) {
                    Some(what) if settings.on.admits(&what) => limiter.offer(Notice {
                        what,
                        event,
                        at: jiff::Timestamp::now(),
                    }),
                    Some(_) => {}
                    None => {
                        if matches!(event, Event::Failed { .. }) {
                            tracing::debug!(sink = %settings.name, "the same failure again; not sent");
                        }
                    }
                }
            }
            _ = stop.changed() => return,
            () = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(batch) = limiter.take(Instant::now()) else {
            continue;
        };
        for _ in 0..batch.suppressed {
            shared.metrics.count_report(label, "suppressed");
        }
        let id = event_id(&mut rng);
        if !deliver(
            &client, &settings, &instance, &id, &batch, &shared, &mut stop,
        )
        .await
        {
            return;
        }
    }
}

/// Posts `batch`, retrying transient failures with backoff; false when `stop` came first.
async fn deliver(
    client: &impl Post,
    settings: &Settings,
    instance: &str,
    id: &str,
    batch: &Batch<Notice>,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let label = settings.kind.metric_label();
    let body = match settings.kind {
        Kind::Cloudevents => super::cloudevent(batch, instance, id),
        Kind::Slack => super::slack(batch, instance),
    };
    let body = body.to_string().into_bytes();
    let what = batch.latest.what.event_type();
    let mut rng = fastrand::Rng::new();
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            r = client.post(&body) => r,
            _ = stop.changed() => return false,
        };
        let e = match result {
            Ok(()) => {
                tracing::debug!(sink = %settings.name, notification = %what, "notification sent");
                shared.metrics.count_report(label, "sent");
                return true;
            }
            Err(e) => e,
        };
        shared.metrics.count_report(label, "failed");
        let error = pbsync_core::error_chain(&e);
        if !e.is_transient() || attempt + 1 >= MAX_ATTEMPTS {
            tracing::warn!(sink = %settings.name, notification = %what, error = %error, "cannot send the notification; giving up on it");
            return true;
        }
        let wait = match &e {
            Error::Refused {
                retry_after: Some(after),
                ..
            } => *after,
            _ => pbsync_target::pace::backoff(attempt, FIRST_WAIT, MAX_WAIT, &mut rng),
        }
        .min(MAX_WAIT);
        attempt += 1;
        tracing::warn!(sink = %settings.name, notification = %what, attempt, error = %error, "cannot send the notification; retrying");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::notify::Filter;
    use std::sync::Mutex;

    /// A status to answer, with its `Retry-After` in seconds.
    type Refusal = (u16, Option<u64>);

    /// Records each body posted; answers `refusals` first, in order.
    #[derive(Clone, Default)]
    struct Recorder {
        bodies: Arc<Mutex<Vec<serde_json::Value>>>,
        refusals: Arc<Mutex<Vec<Refusal>>>,
    }

    impl Post for Recorder {
        fn post(&self, body: &[u8]) -> impl std::future::Future<Output = Result<(), Error>> + Send {
            self.bodies
                .lock()
                .expect("bodies")
                .push(serde_json::from_slice(body).expect("JSON"));
            let mut refusals = self.refusals.lock().expect("refusals");
            let result = if refusals.is_empty() {
                Ok(())
            } else {
                let (code, after) = refusals.remove(0);
                Err(Error::Refused {
                    status: StatusCode::from_u16(code).expect("status"),
                    retry_after: after.map(Duration::from_secs),
                })
            };
            std::future::ready(result)
        }
    }

    impl Recorder {
        fn texts(&self) -> Vec<String> {
            self.bodies
                .lock()
                .expect("bodies")
                .iter()
                .map(|b| b["text"].as_str().unwrap_or_default().to_string())
                .collect()
        }
    }

    fn shared() -> Arc<Shared> {
        let (triggers, _) = mpsc::channel(1);
        Arc::new(Shared {
            health: crate::daemon::health::Health::default(),
            board: crate::daemon::board::Board::default(),
            metrics: crate::daemon::metrics::Metrics::new(),
            triggers,
            webhook: Mutex::new(crate::daemon::http::WebhookSettings {
                secret: None,
                header: String::new(),
            }),
            page: Mutex::new((String::new(), false)),
            reporter: crate::daemon::report::Reporter::default(),
        })
    }

    fn slack_settings(min_interval: Duration) -> Settings {
        Settings {
            name: "chat".into(),
            kind: Kind::Slack,
            url: Secret::new("http://127.0.0.1:9/"),
            secret: None,
            on: Filter::All,
            min_interval,
            repeat_interval: None,
        }
    }

    fn failed(revision: &str, message: &str) -> Event {
        Event::Failed {
            revision: Some(revision.into()),
            stage: "apply".into(),
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// Starts the sink on `recorder`; the sender of its events and its stop switch.
    fn start(
        recorder: &Recorder,
        settings: Settings,
        shared: &Arc<Shared>,
    ) -> (mpsc::UnboundedSender<Event>, watch::Sender<bool>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            recorder.clone(),
            settings,
            "hub".into(),
            rx,
            Arc::clone(shared),
            stop_rx,
        ));
        (tx, stop_tx)
    }

    fn metric(shared: &Shared, line: &str) -> bool {
        shared.metrics.render().lines().any(|l| l == line)
    }

    #[tokio::test(start_paused = true)]
    async fn what_comes_within_the_interval_goes_when_it_ends_folded_into_one() {
        let recorder = Recorder::default();
        let shared = shared();
        let (tx, _stop) = start(&recorder, slack_settings(Duration::from_secs(10)), &shared);
        for e in [
            failed("aaaaaaaaaaaaaaaa", "timeout"),
            failed("aaaaaaaaaaaaaaaa", "403"),
            failed("bbbbbbbbbbbbbbbb", "timeout"),
        ] {
            tx.send(e).expect("send");
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            recorder.texts(),
            ["*pbsync hub* :x: failed at apply aaaaaaaaaaaa: timeout"],
            "only the first goes at once"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let texts = recorder.texts();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(
            texts[1],
            "*pbsync hub* :x: failed at apply bbbbbbbbbbbb: timeout\n\
             _1 earlier held back by the rate limit: failed at apply aaaaaaaaaaaa: 403_"
        );
        assert!(metric(
            &shared,
            "pbsync_reports_total{sink=\"slack\",result=\"suppressed\"} 1"
        ));
        assert!(metric(
            &shared,
            "pbsync_reports_total{sink=\"slack\",result=\"sent\"} 2"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_retried_after_its_retry_after_and_a_404_is_given_up() {
        let recorder = Recorder::default();
        recorder
            .refusals
            .lock()
            .expect("refusals")
            .extend([(429, Some(30)), (404, None)]);
        let shared = shared();
        let (tx, _stop) = start(&recorder, slack_settings(Duration::ZERO), &shared);
        tx.send(failed("aaaaaaaaaaaaaaaa", "timeout"))
            .expect("send");
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(recorder.texts().len(), 1, "waiting for Retry-After");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let texts = recorder.texts();
        // Answered 404 the second time: not tried a third.
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0], texts[1], "the same message again");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(recorder.texts().len(), 2);
        assert!(metric(
            &shared,
            "pbsync_reports_total{sink=\"slack\",result=\"failed\"} 2"
        ));
        // The sink goes on with the next one.
        tx.send(failed("bbbbbbbbbbbbbbbb", "timeout"))
            .expect("send");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(recorder.texts().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_sink_sends_nothing_more() {
        let recorder = Recorder::default();
        let shared = shared();
        let (tx, stop) = start(&recorder, slack_settings(Duration::from_secs(10)), &shared);
        tx.send(failed("aaaaaaaaaaaaaaaa", "timeout"))
            .expect("send");
        tx.send(failed("aaaaaaaaaaaaaaaa", "403")).expect("send");
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send_replace(true);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(recorder.texts().len(), 1, "the held one died with the sink");
    }

    #[test]
    fn event_ids_are_version_4_uuids_and_differ() {
        let mut rng = fastrand::Rng::with_seed(7);
        let a = event_id(&mut rng);
        let b = event_id(&mut rng);
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn only_http_urls_make_a_client_and_the_error_never_shows_the_url() {
        let settings = |url: &str| Settings {
            name: "chat".into(),
            kind: Kind::Slack,
            url: Secret::new(url),
            secret: None,
            on: super::super::Filter::Failures,
            min_interval: Duration::ZERO,
            repeat_interval: None,
        };
        assert!(Client::new(&settings("https://hooks.slack.com/services/T0/B0/s3cr3t")).is_ok());
        for bad in ["ftp://host/s3cr3t", "hooks.slack.com/s3cr3t", "s3cr3t"] {
            let e = Client::new(&settings(bad)).expect_err(bad);
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn no_answer_429_and_5xx_are_transient_other_answers_are_not() {
        let refused = |code: u16| Error::Refused {
            status: StatusCode::from_u16(code).expect("status"),
            retry_after: None,
        };
        assert!(refused(429).is_transient());
        assert!(refused(503).is_transient());
        assert!(!refused(404).is_transient());
        assert!(!refused(400).is_transient());
        assert!(!Error::BadUrl.is_transient());
    }
}
