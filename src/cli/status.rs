//! `pbsync status` and `pbsync reconcile-now`: an operator on the host asks the running
//! daemon what it last did (its `/status` endpoint) and what the target recorded (the
//! directory's inventory, the kube target's status ConfigMap), or asks it to reconcile now.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::target::{KubeArgs, with_target};
use super::{ConfigError, Status, TargetArgs};
use crate::config::{Config, Settings};
use pbsync_target::Target as _;

/// Arguments of `pbsync status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The daemon's configuration file (for its listen address and target)
    #[arg(long, env = "PBSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// The daemon's HTTP address (default: `listen` of the configuration)
    #[arg(long)]
    listen: Option<String>,
    /// The target whose recorded status to read (default: `target` of the configuration)
    #[arg(long)]
    target: Option<String>,
    /// The instance whose status to read
    #[arg(long)]
    instance: Option<String>,
    /// Kubeconfig for a kube target
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the status ConfigMap
    #[arg(long)]
    status_namespace: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Same as --format json (kept for scripts)
    #[arg(long, hide = true)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Arguments of `pbsync reconcile-now`.
#[derive(Debug, Args)]
pub(crate) struct ReconcileNowArgs {
    /// The daemon's configuration file (for its listen address)
    #[arg(long, env = "PBSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// The daemon's HTTP address (default: `listen` of the configuration)
    #[arg(long)]
    listen: Option<String>,
}

/// The settings of the file, if one is given (no validation beyond reading: the daemon
/// validated them when it started).
fn settings(config: Option<&std::path::Path>) -> Settings {
    let Some(path) = config else {
        return Settings::default();
    };
    Config::load(Some(path), &Settings::default())
        .map(|c| c.settings)
        .unwrap_or_default()
}

fn address(flag: Option<&String>, s: &Settings) -> Result<Option<SocketAddr>, ConfigError> {
    match flag.or(s.listen.as_ref()) {
        None => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|_| ConfigError(format!("{a:?} is not an address like 127.0.0.1:8080"))),
    }
}

/// One HTTP/1.0 request to a loopback endpoint; returns (status code, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

pub(super) async fn run(args: &StatusArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let json = args.json || args.format == Format::Json;
    let s = settings(args.config.as_deref());
    let addr = address(args.listen.as_ref(), &s)?;
    let mut found = false;
    let mut doc = serde_json::Map::new();
    if let Some(addr) = addr {
        match tokio::task::spawn_blocking(move || request(addr, "GET", "/status")).await? {
            Ok((200, body)) => {
                found = true;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if !json {
                    println!("daemon ({addr}):");
                    for key in [
                        "result",
                        "revision",
                        "stage",
                        "message",
                        "appliedRevision",
                        "appliedAt",
                        "at",
                    ] {
                        if let Some(val) = v.get(key).filter(|v| !v.is_null()) {
                            let text = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                            println!("  {key}: {text}");
                        }
                    }
                    print!("{}", health_tree(&v["health"], super::color()));
                }
                doc.insert("daemon".into(), v);
            }
            Ok((code, _)) => eprintln!("daemon ({addr}): answered {code}"),
            Err(e) => eprintln!("daemon ({addr}): not reachable: {e}"),
        }
    }
    let target = args.target.clone().or_else(|| s.target.clone());
    let instance = args
        .instance
        .clone()
        .or_else(|| s.instance.clone())
        .unwrap_or_else(|| pbsync_core::ownership::DEFAULT_INSTANCE.into());
    let recorded = match target.as_deref() {
        Some(t) => {
            let targets = TargetArgs {
                target: t.to_string(),
                kube: KubeArgs {
                    kubeconfig: args.kubeconfig.clone().or_else(|| s.kubeconfig.clone()),
                    status_namespace: args
                        .status_namespace
                        .clone()
                        .or_else(|| s.status_namespace.clone())
                        .unwrap_or_else(|| {
                            pbsync_target::kubernetes::DEFAULT_STATUS_NAMESPACE.into()
                        }),
                    ..KubeArgs::default()
                },
                ..TargetArgs::for_validate(&instance)
            };
            match targets.build() {
                Ok(built) => match with_target!(built, t => t.recorded().await) {
                    Ok(r) => r.and_then(|r| serde_json::to_value(r).ok()),
                    Err(e) => {
                        eprintln!("target {t}: {}", pbsync_core::error_chain(&e));
                        None
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    if let Some(rec) = recorded {
        found = true;
        if !json {
            println!(
                "target {} (instance {instance}):",
                target.as_deref().unwrap_or("")
            );
            if let Some(o) = rec.as_object() {
                for (k, v) in o {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    println!("  {k}: {text}");
                }
            }
        }
        doc.insert("target".into(), rec);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(doc)).unwrap_or_default()
        );
    }
    if found {
        Ok(Status::Success)
    } else {
        eprintln!("no status found: give --listen, --target or --config");
        Ok(Status::Failure)
    }
}

/// Paints `text` in the colour of health `state` (on a terminal).
fn paint(state: &str, text: &str, color: bool) -> String {
    if !color {
        return text.to_string();
    }
    let code = match state {
        "current" => "32",
        "in-progress" => "33",
        "failed" => "31",
        _ => "90",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The daemon's `health` section as trees like `pbsync graph`'s: each root with its state,
/// each object it needs below it with its own, the cause of what is not current after it,
/// and the culprits at the end.
fn health_tree(health: &serde_json::Value, color: bool) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut out = String::new();
    let Some(state) = health["state"].as_str() else {
        out.push_str("  health: not read yet\n");
        return out;
    };
    let _ = write!(out, "  health: {}", paint(state, state, color));
    if let Some(r) = health["healthyRevision"].as_str() {
        let at = health["healthyAt"].as_str().unwrap_or("");
        let _ = write!(
            out,
            " (last fully healthy: {} at {at})",
            &r[..r.len().min(12)]
        );
    }
    out.push('\n');
    let objects: BTreeMap<&str, &serde_json::Value> = health["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["id"].as_str()?, o)))
        .collect();
    fn node(
        out: &mut String,
        objects: &BTreeMap<&str, &serde_json::Value>,
        id: &str,
        depth: usize,
        path: &mut Vec<String>,
        color: bool,
    ) {
        let Some(o) = objects.get(id) else { return };
        let state = o["state"].as_str().unwrap_or("unknown");
        let message = o["message"].as_str().unwrap_or("");
        let _ = write!(
            out,
            "{}{id}  {}",
            "  ".repeat(depth + 1),
            paint(state, state, color)
        );
        if state != "current" && !message.is_empty() {
            let _ = write!(out, ": {message}");
        }
        out.push('\n');
        if path.iter().any(|p| p == id) {
            return;
        }
        path.push(id.to_string());
        for next in o["needs"].as_array().into_iter().flatten() {
            if let Some(next) = next.as_str() {
                node(out, objects, next, depth + 1, path, color);
            }
        }
        path.pop();
    }
    for root in health["roots"].as_array().into_iter().flatten() {
        let Some(id) = root["id"].as_str() else {
            continue;
        };
        let state = root["state"].as_str().unwrap_or("unknown");
        let _ = writeln!(out, "  {id}  {}", paint(state, state, color));
        let needs = objects.get(id).map(|o| &o["needs"]);
        for next in needs.and_then(|n| n.as_array()).into_iter().flatten() {
            if let Some(next) = next.as_str() {
                node(
                    &mut out,
                    &objects,
                    next,
                    1,
                    &mut vec![id.to_string()],
                    color,
                );
            }
        }
        for chain in root["chains"].as_array().into_iter().flatten() {
            if let Some(chain) = chain.as_str() {
                let _ = writeln!(out, "    why: {chain}");
            }
        }
    }
    let culprits: Vec<&str> = health["culprits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["line"].as_str())
        .collect();
    if !culprits.is_empty() {
        out.push_str("  held back by:\n");
        for line in culprits {
            let _ = writeln!(out, "    {}", line.replace('\n', "\n    "));
        }
    }
    out
}

pub(super) async fn reconcile_now(
    args: &ReconcileNowArgs,
) -> Result<Status, Box<dyn std::error::Error>> {
    let s = settings(args.config.as_deref());
    let Some(addr) = address(args.listen.as_ref(), &s)? else {
        return Err(ConfigError(
            "no daemon address: give --listen or --config (or send SIGUSR1 to the daemon)".into(),
        )
        .into());
    };
    let (code, body) =
        tokio::task::spawn_blocking(move || request(addr, "POST", "/reconcile")).await??;
    if code == 202 {
        println!("{}", body.trim());
        Ok(Status::Success)
    } else {
        eprintln!("daemon answered {code}: {}", body.trim());
        Ok(Status::Failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_tree_puts_each_object_under_its_root_with_its_state_and_cause() {
        let health = serde_json::json!({
            "state": "failed",
            "healthyRevision": "0123456789abcdef",
            "healthyAt": "2026-12-07T10:00:00Z",
            "roots": [{"id": "ProfileBundle a/chat", "state": "failed",
                       "chains": ["ProfileBundle a/chat not ready: HelmRepository a/charts failed: 404"]}],
            "objects": [
                {"id": "ProfileBundle a/chat", "state": "current", "message": "",
                 "needs": ["HelmRepository a/charts", "WorkloadProfile a/app"]},
                {"id": "HelmRepository a/charts", "state": "failed", "message": "404", "needs": []},
                {"id": "WorkloadProfile a/app", "state": "current", "message": "", "needs": []},
            ],
            "culprits": [{"line": "HelmRepository a/charts failed: 404\n    holds back ProfileBundle a/chat"}],
        });
        assert_eq!(
            health_tree(&health, false),
            "  health: failed (last fully healthy: 0123456789ab at 2026-12-07T10:00:00Z)
  ProfileBundle a/chat  failed
    HelmRepository a/charts  failed: 404
    WorkloadProfile a/app  current
    why: ProfileBundle a/chat not ready: HelmRepository a/charts failed: 404
  held back by:
    HelmRepository a/charts failed: 404
        holds back ProfileBundle a/chat
"
        );
        let painted = health_tree(&health, true);
        assert!(painted.contains("\x1b[31mfailed\x1b[0m"), "{painted}");
        assert!(painted.contains("\x1b[32mcurrent\x1b[0m"), "{painted}");
    }

    #[test]
    fn a_daemon_that_has_not_read_health_yet_says_so() {
        assert_eq!(
            health_tree(&serde_json::json!({"state": null}), false),
            "  health: not read yet\n"
        );
    }
}
