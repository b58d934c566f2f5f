//! Masking secret values in what a plan prints: field diffs go into pull-request comments and
//! CI logs, which are far less protected than the hub. Pure: no I/O.
//!
//! The rule, in one place so it can be reviewed and tested:
//! - a key is secret when its name (case, `-`, `_` and `.` ignored) *ends* in password,
//!   passwd, passphrase, token, secret, secrets, apikey, privatekey, credential(s),
//!   accesskey or secretkey, or *starts* with password, secret, credential, apikey or
//!   privatekey, unless it ends in ref, refs, name, names, namespace, path or file (those
//!   point at a secret, they do not hold one: `secretRef`, `tokenSecretName`). Suffix rather
//!   than substring matching keeps `maxTokens` and `tokenizer` visible;
//! - everything under a secret key is masked, whatever its type;
//! - the `data` and `stringData` of a Kubernetes Secret are masked;
//! - inside string values (Helm values, pack values: YAML or `key=value` text), a line whose
//!   key is secret has its value masked.

use serde_json::{Map, Value};

use super::{FieldChange, Plan};

/// What a masked value is replaced with.
pub(crate) const MASK: &str = "(masked)";

const SECRET_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "secrets",
    "apikey",
    "privatekey",
    "credential",
    "credentials",
    "accesskey",
    "secretkey",
];
const SECRET_PREFIXES: &[&str] = &["password", "secret", "credential", "apikey", "privatekey"];
const POINTER_SUFFIXES: &[&str] = &["ref", "refs", "name", "names", "namespace", "path", "file"];

/// True when a value under `key` is a secret (see the module documentation).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    if POINTER_SUFFIXES.iter().any(|s| k.ends_with(s)) && !SECRET_SUFFIXES.contains(&k.as_str()) {
        return false;
    }
    SECRET_SUFFIXES.iter().any(|s| k.ends_with(s))
        || SECRET_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// True when the field at the dotted `path` (as in [`FieldChange::path`]) of an object of
/// `kind` holds a secret: a secret key on the way, or the data of a Kubernetes Secret.
pub(crate) fn is_secret_path(kind: &str, path: &str) -> bool {
    let mut segments = path
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())
        .peekable();
    if kind == "Secret"
        && segments
            .peek()
            .is_some_and(|s| matches!(*s, "data" | "stringData"))
    {
        return true;
    }
    segments.any(is_secret_key)
}

/// `v` with every secret inside it masked: values under secret keys, the data of embedded
/// Kubernetes Secrets, and secret lines of string values.
pub(crate) fn mask_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let secret_kind = m.get("kind").and_then(Value::as_str) == Some("Secret");
            let out: Map<String, Value> = m
                .iter()
                .map(|(k, x)| {
                    let hide = is_secret_key(k)
                        || (secret_kind && matches!(k.as_str(), "data" | "stringData"));
                    let masked = if hide {
                        Value::String(MASK.into())
                    } else {
                        mask_value(x)
                    };
                    (k.clone(), masked)
                })
                .collect();
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(mask_value).collect()),
        Value::String(s) => Value::String(mask_text(s)),
        other => other.clone(),
    }
}

/// `text` with the value of every `key: value` or `key=value` line whose key is secret
/// masked; other lines unchanged.
pub(crate) fn mask_text(text: &str) -> String {
    if !text.contains(':') && !text.contains('=') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&mask_line(line));
    }
    out
}

fn mask_line(line: &str) -> String {
    let Some(sep) = line.find([':', '=']) else {
        return line.to_string();
    };
    let (head, rest) = line.split_at(sep);
    let key = head
        .trim_start()
        .trim_start_matches("- ")
        .trim_start_matches("--")
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    let value = &rest[1..];
    if key.is_empty() || key.contains(' ') || value.trim().is_empty() || !is_secret_key(key) {
        return line.to_string();
    }
    let space = if value.starts_with(' ') { " " } else { "" };
    format!("{head}{}{space}{MASK}", &rest[..1])
}

/// Masks one field change of an object of `kind`.
pub(crate) fn mask_change(kind: &str, change: &FieldChange) -> FieldChange {
    let whole = is_secret_path(kind, &change.path);
    let hide = |v: &Option<Value>| {
        v.as_ref().map(|v| {
            if whole {
                Value::String(MASK.into())
            } else {
                mask_value(v)
            }
        })
    };
    FieldChange {
        path: change.path.clone(),
        before: hide(&change.before),
        after: hide(&change.after),
    }
}

/// Masks every field diff of `plan` in place.
pub fn mask_plan(plan: &mut Plan) {
    for c in &mut plan.changes {
        let kind = c.key.kind.as_str();
        for d in &mut c.diff {
            *d = mask_change(kind, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_recognised_by_their_ending_or_beginning() {
        for k in [
            "password",
            "adminPassword",
            "db_password",
            "token",
            "hfToken",
            "HF_TOKEN",
            "bearer-token",
            "clientSecret",
            "secret",
            "apiKey",
            "api_key",
            "privateKey",
            "ssh-privatekey",
            "credentials",
            "awsAccessKey",
            "secretData",
            "passwordHash",
            "tls.secret",
        ] {
            assert!(is_secret_key(k), "{k} is secret");
        }
    }

    #[test]
    fn keys_that_only_point_at_a_secret_or_merely_mention_tokens_stay_visible() {
        for k in [
            "secretRef",
            "tokenSecretName",
            "passwordFile",
            "credentialsPath",
            "secretNamespace",
            "maxTokens",
            "max_tokens",
            "tokenizer",
            "model",
            "name",
            "replicas",
            "keyId",
        ] {
            assert!(!is_secret_key(k), "{k} is not secret");
        }
    }

    #[test]
    fn paths_through_a_secret_key_or_into_secret_data_are_secret() {
        assert!(is_secret_path(
            "WorkloadProfile",
            "spec.workload.components[0].properties.apiKey"
        ));
        assert!(is_secret_path("HelmRepository", "spec.auth.password"));
        assert!(is_secret_path("Secret", "data.anything"));
        assert!(is_secret_path("Secret", "stringData"));
        assert!(!is_secret_path("ConfigMap", "data.anything"));
        assert!(!is_secret_path(
            "WorkloadProfile",
            "spec.workload.components[0].properties.model"
        ));
    }

    #[test]
    fn values_are_masked_deeply_and_kept_otherwise() {
        let v = json!({
            "model": "llama",
            "auth": {"username": "me", "password": "hunter2"},
            "list": [{"token": "t"}, {"tokenizer": "x"}],
            "embedded": {"kind": "Secret", "data": {"a": "YWJj"}, "metadata": {"name": "s"}},
            "credentials": {"user": "u", "pass": "p"}
        });
        let m = mask_value(&v);
        assert_eq!(m["model"], "llama");
        assert_eq!(m["auth"]["username"], "me");
        assert_eq!(m["auth"]["password"], MASK);
        assert_eq!(m["list"][0]["token"], MASK);
        assert_eq!(m["list"][1]["tokenizer"], "x");
        assert_eq!(m["embedded"]["data"], MASK);
        assert_eq!(m["embedded"]["metadata"]["name"], "s");
        assert_eq!(m["credentials"], MASK);
        assert!(!m.to_string().contains("hunter2"));
    }

    #[test]
    fn secret_lines_of_embedded_values_text_are_masked() {
        let text = "replicas: 2\nauth:\n  password: hunter2\n  user: me\n--api-key=abc\nHF_TOKEN=xyz\nmaxTokens: 10\n";
        let masked = mask_text(text);
        assert_eq!(
            masked,
            "replicas: 2\nauth:\n  password: (masked)\n  user: me\n--api-key=(masked)\nHF_TOKEN=(masked)\nmaxTokens: 10\n"
        );
        assert_eq!(mask_text("a plain sentence"), "a plain sentence");
    }

    #[test]
    fn a_change_at_a_secret_path_hides_both_sides() {
        let c = FieldChange {
            path: "spec.values.adminPassword".into(),
            before: Some(json!("old")),
            after: Some(json!("new")),
        };
        let m = mask_change("HelmRepository", &c);
        assert_eq!(m.before, Some(json!(MASK)));
        assert_eq!(m.after, Some(json!(MASK)));
        let added = FieldChange {
            path: "spec.credentials".into(),
            before: None,
            after: Some(json!({"user": "u"})),
        };
        assert_eq!(mask_change("X", &added).before, None);
        assert_eq!(mask_change("X", &added).after, Some(json!(MASK)));
    }
}
