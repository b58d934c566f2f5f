//! Validating JSON bodies against the Swagger 2.0 definitions of the vendored Palette API
//! subset: the JSON-schema subset Swagger 2.0 uses (`$ref`, `type`, `properties`, `required`,
//! `additionalProperties`, `enum`, `items`, `uniqueItems`, `format` where cheap,
//! `minimum`/`maximum`, `x-nullable`). Pure: no I/O.
//!
//! One deliberate strictness: an object schema that lists `properties` and says nothing about
//! `additionalProperties` rejects properties it does not list. Palette's Go server would drop
//! them silently, which is exactly how a client that drifts from the API loses data unnoticed.

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The vendored cluster-profile subset of Palette's API (Swagger 2.0).
const SPEC: &str =
    include_str!("../../../../palette-api/palette-apis-v4.8.clusterprofiles-subset.json");
/// The vendored `v1Error` definition.
const ERROR_SPEC: &str = include_str!("../../../../palette-api/error_v1.palette-sdk-go.json");

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vendored document is not JSON or has no `definitions`.
    #[error("cannot read the vendored swagger document {name}")]
    InvalidDocument {
        /// Which document.
        name: &'static str,
        /// Cause, when JSON parsing failed.
        #[source]
        source: Option<serde_json::Error>,
    },
}

/// The first place a value departs from its definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Mismatch {
    /// Where, e.g. `body.spec.template.packs[0].name`.
    pub path: String,
    /// What is wrong, e.g. `required property "name" is missing`.
    pub reason: String,
}

/// The definitions of a Swagger 2.0 document.
#[derive(Debug, Clone)]
pub struct Definitions {
    defs: Map<String, Value>,
}

impl Definitions {
    /// Reads the `definitions` of a Swagger document.
    pub fn parse(name: &'static str, text: &str) -> Result<Self, Error> {
        let doc: Value = serde_json::from_str(text).map_err(|e| Error::InvalidDocument {
            name,
            source: Some(e),
        })?;
        let defs = doc
            .get("definitions")
            .and_then(Value::as_object)
            .cloned()
            .ok_or(Error::InvalidDocument { name, source: None })?;
        Ok(Self { defs })
    }

    /// The vendored Palette subset, with the `v1Error` definition merged in. Parsed once.
    pub fn palette() -> &'static Self {
        static DEFS: OnceLock<Definitions> = OnceLock::new();
        DEFS.get_or_init(|| {
            let mut defs = Self::parse("palette-apis-v4.8.clusterprofiles-subset.json", SPEC)
                .expect("invariant: the vendored swagger subset is valid JSON with definitions");
            let errors = Self::parse("error_v1.palette-sdk-go.json", ERROR_SPEC)
                .expect("invariant: the vendored error definition is valid JSON");
            for (k, v) in errors.defs {
                defs.defs.entry(k).or_insert(v);
            }
            defs
        })
    }

    /// True when a definition of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.defs.contains_key(name)
    }

    /// Checks `value` against definition `name`; `root` names the value in messages.
    pub fn validate(&self, name: &str, value: &Value, root: &str) -> Result<(), Mismatch> {
        let schema = self.defs.get(name).ok_or_else(|| Mismatch {
            path: root.to_string(),
            reason: format!("no definition named {name:?}"),
        })?;
        self.check(schema, value, root, 0)
    }

    fn resolve<'a>(&'a self, schema: &'a Value, path: &str) -> Result<&'a Value, Mismatch> {
        let mut schema = schema;
        // `$ref` chains are short; the bound only guards against a cyclic document.
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                return Ok(schema);
            };
            let name = r.strip_prefix("#/definitions/").unwrap_or(r);
            schema = self.defs.get(name).ok_or_else(|| Mismatch {
                path: path.to_string(),
                reason: format!("the schema refers to a missing definition {r:?}"),
            })?;
        }
        Err(Mismatch {
            path: path.to_string(),
            reason: "the schema's $ref chain does not end".into(),
        })
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), Mismatch> {
        let fail = |reason: String| {
            Err(Mismatch {
                path: path.to_string(),
                reason,
            })
        };
        if depth > 64 {
            return fail("nested too deeply".into());
        }
        let schema = self.resolve(schema, path)?;
        if value.is_null() {
            // Go's decoder turns null into a zero value; only fields marked nullable mean it.
            return if schema.get("x-nullable").and_then(Value::as_bool) == Some(true)
                || schema.get("type").is_none()
            {
                Ok(())
            } else {
                fail(format!(
                    "null is not allowed (expected {})",
                    type_name(schema)
                ))
            };
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                _ => true,
            };
            if !ok {
                return fail(format!("expected {t}, found {}", json_type(value)));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return fail(format!("{value} is not one of {}", list.join(", ")));
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str)
            && let Some(reason) = check_format(format, value)
        {
            return fail(reason);
        }
        if let Some(n) = value.as_f64() {
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                return fail(format!("{n} is greater than the maximum {max}"));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                return fail(format!("{n} is less than the minimum {min}"));
            }
        }
        match value {
            Value::Object(obj) => self.check_object(schema, obj, path, depth),
            Value::Array(items) => self.check_array(schema, items, path, depth),
            _ => Ok(()),
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        obj: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), Mismatch> {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(name) {
                    return Err(Mismatch {
                        path: path.to_string(),
                        reason: format!("required property {name:?} is missing"),
                    });
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, v) in obj {
            let at = format!("{path}.{key}");
            if let Some(sub) = properties.and_then(|p| p.get(key)) {
                self.check(sub, v, &at, depth + 1)?;
                continue;
            }
            match additional {
                Some(Value::Bool(false)) => {
                    return Err(Mismatch {
                        path: at,
                        reason: "additional properties are not allowed".into(),
                    });
                }
                Some(Value::Bool(true)) => {}
                Some(sub @ Value::Object(_)) => self.check(sub, v, &at, depth + 1)?,
                Some(_) => {}
                None if properties.is_some() => {
                    return Err(Mismatch {
                        path: at,
                        reason: "unknown property (not in the Palette API definition)".into(),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }

    fn check_array(
        &self,
        schema: &Value,
        items: &[Value],
        path: &str,
        depth: usize,
    ) -> Result<(), Mismatch> {
        if let Some(item_schema) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                self.check(item_schema, v, &format!("{path}[{i}]"), depth + 1)?;
            }
        }
        if schema.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            for (i, a) in items.iter().enumerate() {
                if let Some(j) = items[..i].iter().position(|b| b == a) {
                    return Err(Mismatch {
                        path: format!("{path}[{i}]"),
                        reason: format!("duplicate of item {j} (items must be unique)"),
                    });
                }
            }
        }
        Ok(())
    }
}

fn type_name(schema: &Value) -> &str {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("a value")
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks the formats that are cheap to check; `None` when the value passes.
fn check_format(format: &str, value: &Value) -> Option<String> {
    match format {
        "int32" => value
            .as_i64()
            .filter(|n| i32::try_from(*n).is_err())
            .map(|n| format!("{n} does not fit in int32")),
        "date-time" => value
            .as_str()
            .filter(|s| !looks_like_rfc3339(s))
            .map(|s| format!("{s:?} is not an RFC 3339 date-time")),
        _ => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, checked by shape only.
fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    matches!(rest, "Z" | "z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(def: &str, v: Value) -> Result<(), Mismatch> {
        Definitions::palette().validate(def, &v, "body")
    }

    #[test]
    fn a_complete_create_entity_passes() {
        let body = json!({
            "metadata": {"name": "edge", "labels": {"team": "ml"}, "annotations": {"a": "b"}},
            "spec": {
                "version": "1.0.0",
                "template": {"type": "infra", "cloudType": "edge-native", "packs": [
                    {"name": "k8s", "tag": "1.32", "type": "spectro", "layer": "k8s",
                     "values": "a: 1", "manifests": [{"name": "m", "content": "x"}]}
                ]},
                "variables": [{"name": "vip", "format": "ipv4", "required": true}]
            }
        });
        assert_eq!(check("v1ClusterProfileEntity", body), Ok(()));
    }

    #[test]
    fn missing_required_property_names_the_path() {
        let body = json!({"spec": {"template": {"packs": [{"tag": "1"}]}}});
        let err = check("v1ClusterProfileEntity", body).expect_err("must fail");
        assert_eq!(err.path, "body.spec.template.packs[0]");
        assert!(err.reason.contains("\"name\""), "{err}");
    }

    #[test]
    fn enum_and_type_mismatches_are_reported() {
        let err = check(
            "v1ClusterProfileEntity",
            json!({"spec": {"template": {"type": "full"}}}),
        )
        .expect_err("enum");
        assert_eq!(err.path, "body.spec.template.type");
        let err =
            check("v1ClusterProfileEntity", json!({"spec": {"version": 1}})).expect_err("type");
        assert_eq!(err.reason, "expected string, found integer");
        let err = check(
            "v1ClusterProfileEntity",
            json!({"metadata": {"labels": {"a": 1}}}),
        )
        .expect_err("additionalProperties schema");
        assert_eq!(err.path, "body.metadata.labels.a");
    }

    #[test]
    fn unknown_properties_are_rejected() {
        // cloudType exists on the create template but not on the update template.
        let body = json!({"spec": {"template": {"cloudType": "aws", "packs": []}}});
        assert_eq!(check("v1ClusterProfileEntity", body.clone()), Ok(()));
        let err = check("v1ClusterProfileUpdateEntity", body).expect_err("unknown");
        assert_eq!(err.path, "body.spec.template.cloudType");
    }

    #[test]
    fn unique_items_and_nulls_are_checked() {
        let pack = json!({"name": "a"});
        let err = check(
            "v1ClusterProfileEntity",
            json!({"spec": {"template": {"packs": [pack.clone(), pack]}}}),
        )
        .expect_err("unique");
        assert_eq!(err.path, "body.spec.template.packs[1]");
        let err =
            check("v1ClusterProfileEntity", json!({"spec": {"version": null}})).expect_err("null");
        assert_eq!(err.path, "body.spec.version");
        // x-nullable fields accept null.
        assert_eq!(
            check(
                "v1ClusterProfilesFilterSpec",
                json!({"filter": {"profileName": {"eq": null}}})
            ),
            Ok(())
        );
    }

    #[test]
    fn formats_are_checked_where_cheap() {
        assert!(looks_like_rfc3339("2024-05-01T10:00:00Z"));
        assert!(looks_like_rfc3339("2024-05-01T10:00:00.123+02:00"));
        assert!(!looks_like_rfc3339("2024-05-01 10:00"));
        let err = check(
            "v1ClusterProfileEntity",
            json!({"metadata": {"creationTimestamp": "yesterday"}}),
        )
        .expect_err("date-time");
        assert_eq!(err.path, "body.metadata.creationTimestamp");
    }

    #[test]
    fn the_error_definition_is_merged() {
        assert!(Definitions::palette().has("v1Error"));
        assert_eq!(
            check(
                "v1Error",
                json!({"code": "ResourceNotFound", "message": "m", "details": {}, "ref": "r"})
            ),
            Ok(())
        );
    }
}
