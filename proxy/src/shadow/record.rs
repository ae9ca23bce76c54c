//! What is kept of one comparison, redacted, and the per-route summary built from many.
//!
//! The same [`Summary`] is fed live (admin API `/shadow`) and from the store (`strangler
//! report`), so both always agree. Secrets never reach a record: credential headers are
//! replaced, and JSON fields whose names look like secrets (password, token, secret, code,
//! otp, authorization, cookie, api key) are replaced wherever they appear, in request bodies and
//! in reported values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::diff::{DiffKind, Difference};

pub const REDACTED: &str = "[redacted]";

const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"];

/// Whether a JSON key or query parameter names a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['_', '-'], "");
    ["password", "passwd", "token", "secret", "otp", "authorization", "cookie", "apikey", "privatekey", "signature"]
        .iter()
        .any(|s| n.contains(s))
        || n == "code"
        || n.ends_with("code") && (n.contains("auth") || n.contains("verif") || n.contains("totp") || n.contains("2fa"))
}

pub fn redact_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.clone(), if SECRET_HEADERS.contains(&k.as_str()) { REDACTED.to_string() } else { v.clone() })).collect()
}

/// Replaces secret-named fields anywhere in a JSON value.
pub fn redact_json(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, v)| (k.clone(), if is_secret_name(k) { Value::String(REDACTED.into()) } else { redact_json(v) })).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_json).collect()),
        other => other.clone(),
    }
}

/// A path with secret query parameters' values replaced.
pub fn redact_uri(uri: &str) -> String {
    let Some((path, query)) = uri.split_once('?') else { return uri.to_string() };
    let q: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", q.join("&"))
}

/// A difference with its values redacted when its path names a secret.
fn redact_difference(d: &Difference) -> Difference {
    let secret = d.at.split(['.', '[', ']', '"']).any(is_secret_name) || d.at.starts_with("header:set-cookie");
    let r = |v: &Value| if secret { Value::String(REDACTED.into()) } else { redact_json(v) };
    let kind = match &d.kind {
        DiffKind::Changed { legacy, candidate } => DiffKind::Changed { legacy: r(legacy), candidate: r(candidate) },
        DiffKind::Missing { legacy } => DiffKind::Missing { legacy: r(legacy) },
        DiffKind::Extra { candidate } => DiffKind::Extra { candidate: r(candidate) },
        DiffKind::WrongType { expected, candidate } => DiffKind::WrongType { expected: *expected, candidate: r(candidate) },
    };
    Difference { kind, ..d.clone() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Match,
    /// Only differences learned as noise.
    Noise,
    Mismatch,
    /// The shadow request failed (refused, reset, bad response).
    Error,
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Noise => "noise",
            Outcome::Mismatch => "mismatch",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One comparison as stored (one JSONL line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub ts_unix_ms: u64,
    pub route: String,
    pub endpoint: String,
    pub request_id: String,
    pub method: String,
    pub uri: String,
    /// Which side answered the client: `legacy` or `extracted`.
    pub primary: String,
    pub outcome: Outcome,
    pub legacy_status: Option<u16>,
    pub candidate_status: Option<u16>,
    #[serde(default)]
    pub differences: Vec<Value>,
    #[serde(default)]
    pub noise: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Enough to replay: redacted headers and body.
    #[serde(default)]
    pub request_headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<Value>,
}

impl Record {
    pub fn differences(diffs: &[Difference]) -> Vec<Value> {
        diffs.iter().map(|d| serde_json::to_value(redact_difference(d)).unwrap_or(Value::Null)).collect()
    }

    /// A request body as stored: redacted JSON, or a UTF-8 string, or its size.
    pub fn body(body: &[u8]) -> Option<Value> {
        if body.is_empty() {
            return None;
        }
        Some(match serde_json::from_slice::<Value>(body) {
            Ok(v) => redact_json(&v),
            Err(_) => match std::str::from_utf8(body) {
                Ok(s) if s.len() <= 4096 => Value::String(s.to_string()),
                _ => serde_json::json!({ "bytes": body.len() }),
            },
        })
    }
}

/// One differing place on a route: how often, and one example.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FieldStats {
    pub count: u64,
    pub example: Value,
}

/// Per-route results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteSummary {
    pub compared: u64,
    pub matches: u64,
    pub noise_only: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub dropped: BTreeMap<String, u64>,
    /// Regressions by place (`$.messages[*].createdAt`, `status`, `header:location`).
    pub mismatched_fields: BTreeMap<String, FieldStats>,
    /// Places seen differing that are noise (shown, not counted).
    pub noise_fields: BTreeMap<String, u64>,
    pub endpoints: BTreeMap<String, u64>,
}

impl RouteSummary {
    /// Share of comparisons without a regression, in percent (100 when nothing was compared).
    pub fn parity(&self) -> f64 {
        if self.compared == 0 {
            return 100.0;
        }
        100.0 * (self.matches + self.noise_only) as f64 / self.compared as f64
    }
}

/// Results of every route.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub routes: BTreeMap<String, RouteSummary>,
}

impl Summary {
    pub fn add(&mut self, r: &Record) {
        let s = self.routes.entry(r.route.clone()).or_default();
        s.compared += 1;
        *s.endpoints.entry(r.endpoint.clone()).or_default() += 1;
        match r.outcome {
            Outcome::Match => s.matches += 1,
            Outcome::Noise => s.noise_only += 1,
            Outcome::Mismatch => s.mismatches += 1,
            Outcome::Error => s.errors += 1,
            Outcome::Timeout => s.timeouts += 1,
        }
        for d in &r.differences {
            let key = place_key(d);
            let f = s.mismatched_fields.entry(key).or_default();
            f.count += 1;
            if f.example.is_null() {
                let mut ex = d.clone();
                ex["request_id"] = Value::String(r.request_id.clone());
                ex["endpoint"] = Value::String(r.endpoint.clone());
                f.example = ex;
            }
        }
        for d in &r.noise {
            *s.noise_fields.entry(place_key(d)).or_default() += 1;
        }
    }

    pub fn dropped(&mut self, route: &str, reason: &str) {
        *self.routes.entry(route.to_string()).or_default().dropped.entry(reason.to_string()).or_default() += 1;
    }
}

/// The grouping key of a stored difference (generalised path, `status`, `header:…`).
fn place_key(d: &Value) -> String {
    let place = &d["place"];
    match place["in"].as_str() {
        Some("field") => place["path"].as_str().unwrap_or("?").to_string(),
        Some("header") => format!("header:{}", place["name"].as_str().unwrap_or("?")),
        Some(other) => other.to_string(),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_survive() {
        let body = json!({ "email": "a@b.c", "password": "hunter2", "nested": [{ "refreshToken": "r", "ok": 1 }], "code": "123456" });
        let red = redact_json(&body);
        let text = red.to_string();
        for secret in ["hunter2", "\"r\"", "123456"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(red["email"], "a@b.c");
        assert_eq!(redact_uri("/auth/google/callback?code=abc&state=s"), "/auth/google/callback?code=[redacted]&state=s");
        let h = redact_headers(&[("authorization".into(), "Bearer x".into()), ("accept".into(), "*/*".into())]);
        assert_eq!(h[0].1, REDACTED);
        assert_eq!(h[1].1, "*/*");
        assert!(!is_secret_name("email") && !is_secret_name("statusCode") && !is_secret_name("countryCode"));
    }
}
