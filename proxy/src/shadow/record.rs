//! What is kept of one comparison, redacted, and the per-route summary built from many.
//!
//! The same [`Summary`] is fed live (admin API `/shadow`) and from the store (`strangler
//! report`), so both always agree. Secrets never reach a record: credential headers are
//! replaced, and JSON fields whose names look like secrets (password, token, secret, code,
//! otp, authorization, cookie, api key) are replaced wherever they appear, in request bodies and
//! in reported values.
//!
//! ## Fingerprints
//! A recorded session (login → refresh with the token from the login answer → reuse of an old
//! token) can only be replayed if the replay knows *which* earlier answer a redacted value came
//! from. So in stored requests a token-like secret (at least [`TOKEN_MIN_LEN`] characters, no
//! whitespace) is replaced by `[redacted:<fp>]`, where `<fp>` is the first 12 hex characters of
//! its SHA-256, and a `Bearer` credential header becomes `Bearer [redacted:<fp>]`. Each record
//! also keeps [`Record::answer_secrets`]: the fingerprints of the token-like secrets in the
//! monolith's answer, by JSON path. Replay (`super::replay`) joins the two to substitute the
//! value the monolith answers at replay time. Short secrets (passwords, 6-digit codes) stay a
//! plain `[redacted]`: a short hash of a low-entropy value is reversible by trying candidates.
//! Reported differences keep the plain form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::diff::{decoded, DiffKind, Difference, Exchange};
use super::path::{render, SegRef};

pub const REDACTED: &str = "[redacted]";

/// The shortest secret that is fingerprinted rather than plainly redacted.
pub const TOKEN_MIN_LEN: usize = 20;

const FINGERPRINT_PREFIX: &str = "[redacted:";
const FINGERPRINT_HEX: usize = 12;

const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"];
const BEARER_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

/// Whether a secret is long and unstructured enough to be fingerprinted: a token, not a
/// password or a one-time code. A hash of a short or human-chosen secret would leak it to a
/// dictionary attack (hash every likely password or all 10^6 codes and compare), so those are
/// only ever stored as `[redacted]`.
pub fn is_token_like(s: &str) -> bool {
    s.chars().count() >= TOKEN_MIN_LEN && !s.chars().any(char::is_whitespace)
}

/// The first 12 hex characters of the value's SHA-256.
pub fn fingerprint(value: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes()).iter().take(FINGERPRINT_HEX / 2).map(|b| format!("{b:02x}")).collect()
}

/// Whether a secret-named field may be fingerprinted at all: passwords are chosen by people,
/// so even a long one is never hashed into a record.
fn fingerprintable(name: &str) -> bool {
    with_folded(name, false, |n| !n.contains("password") && !n.contains("passwd"))
}

/// `[redacted:<fp>]` for a token-like secret, `[redacted]` otherwise.
pub fn redact_secret(value: &str) -> String {
    if is_token_like(value) {
        format!("{FINGERPRINT_PREFIX}{}]", fingerprint(value))
    } else {
        REDACTED.to_string()
    }
}

/// The fingerprint of a whole `[redacted:<fp>]` string.
pub fn parse_fingerprint(s: &str) -> Option<&str> {
    let fp = s.strip_prefix(FINGERPRINT_PREFIX)?.strip_suffix(']')?;
    (fp.len() == FINGERPRINT_HEX && fp.bytes().all(|b| b.is_ascii_hexdigit())).then_some(fp)
}

/// Every `[redacted:<fp>]` inside a text (a header value): byte range and fingerprint.
pub fn find_fingerprints(s: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find(FINGERPRINT_PREFIX).map(|i| i + from) {
        let end = at + FINGERPRINT_PREFIX.len() + FINGERPRINT_HEX + 1;
        match s.get(at..end).and_then(parse_fingerprint) {
            Some(fp) => {
                out.push((at..end, fp));
                from = end;
            }
            None => from = at + FINGERPRINT_PREFIX.len(),
        }
    }
    out
}

/// Whether a JSON key or query parameter names a secret.
pub fn is_secret_name(name: &str) -> bool {
    with_folded(name, true, |n| {
        ["password", "passwd", "token", "secret", "otp", "authorization", "cookie", "apikey", "privatekey", "signature"]
            .iter()
            .any(|s| n.contains(s))
            || n == "code"
            || n.ends_with("code") && (n.contains("auth") || n.contains("verif") || n.contains("totp") || n.contains("2fa"))
    })
}

/// `f` of the name in ASCII lower case (and without `_` and `-` when `squash`), folded on the
/// stack when it is short: every key of every recorded answer is asked about.
fn with_folded<R>(name: &str, squash: bool, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for b in name.bytes().filter(|b| !squash || (*b != b'_' && *b != b'-')) {
        if n == buf.len() {
            let lower = name.to_ascii_lowercase();
            return f(&if squash { lower.replace(['_', '-'], "") } else { lower });
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    // only ASCII bytes were changed or left out: still UTF-8
    f(std::str::from_utf8(&buf[..n]).expect("ASCII folding keeps UTF-8"))
}

/// Credential headers replaced; a token-like `Bearer` credential keeps its fingerprint
/// (`Bearer [redacted:<fp>]`) so a replay can put the matching token back.
pub fn redact_headers(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, v) in &mut headers {
        let Some(name) = SECRET_HEADERS.iter().find(|s| k.eq_ignore_ascii_case(s)) else { continue };
        *v = match v.trim().split_once(' ') {
            Some((scheme, token))
                if BEARER_HEADERS.contains(name) && scheme.eq_ignore_ascii_case("bearer") && is_token_like(token.trim()) =>
            {
                format!("{scheme} {}", redact_secret(token.trim()))
            }
            _ => REDACTED.to_string(),
        };
    }
    headers
}

/// Replaces secret-named fields anywhere in a JSON value with `[redacted]` (reported values).
pub fn redact_json(v: &Value) -> Value {
    redact_json_with(v, &|_, _| Value::String(REDACTED.into()))
}

/// Replaces secret-named fields anywhere in a JSON value, token-like strings (not passwords)
/// with their fingerprint (stored requests).
pub fn redact_json_fingerprinted(v: &Value) -> Value {
    redact_json_with(v, &|name, secret| match secret {
        Value::String(s) if fingerprintable(name) => Value::String(redact_secret(s)),
        _ => Value::String(REDACTED.into()),
    })
}

fn redact_json_with(v: &Value, secret: &dyn Fn(&str, &Value) -> Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, v)| (k.clone(), if is_secret_name(k) { secret(k, v) } else { redact_json_with(v, secret) })).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| redact_json_with(v, secret)).collect()),
        other => other.clone(),
    }
}

/// Ids (UUID-shaped strings) kept per answer, at most.
const MAX_ANSWER_IDS: usize = 256;

/// [`answer_secrets`] and the UUIDs in the answer body (decoded as the diff engine does), by
/// JSON path, for a replay to map recorded ids to its own ([`Record::answer_ids`]; ids are not
/// secrets) — from one parse of the body: the tee asks for both for every comparison, and
/// parsing the monolith's answer is most of their cost.
///
/// The body is read once, as a stream: no `Value` tree is built (that tree was most of a shadow
/// copy's allocations, docs/benchmarks.md). Found in document order: past [`MAX_ANSWER_IDS`]
/// the first ids are kept. A body that is not JSON has none.
pub fn answer_facts(answer: &Exchange) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let body = decoded(answer);
    let mut facts = facts::Facts::default();
    let mut de = serde_json::Deserializer::from_slice(&body);
    match serde::de::DeserializeSeed::deserialize(facts::Node { facts: &mut facts, secret: Some(false) }, &mut de).and_then(|()| de.end()) {
        Ok(()) => (facts.secrets, facts.ids),
        Err(_) => Default::default(),
    }
}

/// The one streaming walk of [`answer_facts`]: what [`secrets_in`] and [`ids_in`] find in a
/// parsed body, found while it is read.
mod facts {
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{fingerprint, fingerprintable, is_cursor_key, is_secret_name, is_token_like, is_uuid, render, SegRef, MAX_ANSWER_IDS};

    #[derive(Default)]
    pub(super) struct Facts<'de> {
        pub(super) secrets: BTreeMap<String, String>,
        pub(super) ids: BTreeMap<String, String>,
        path: Vec<Seg<'de>>,
    }

    enum Seg<'de> {
        Key(Cow<'de, str>),
        Index(usize),
    }

    impl Facts<'_> {
        fn segs(&self) -> impl Iterator<Item = SegRef<'_>> {
            self.path.iter().map(|s| match s {
                Seg::Key(k) => SegRef::Key(k),
                Seg::Index(i) => SegRef::Index(*i),
            })
        }

        fn string(&mut self, s: &str, secret: Option<bool>) {
            let cursor = matches!(self.path.last(), Some(Seg::Key(k)) if is_cursor_key(k));
            if self.ids.len() < MAX_ANSWER_IDS && (is_uuid(s) || cursor) {
                self.ids.insert(render(self.segs()), s.to_string());
            }
            if secret == Some(true) && is_token_like(s) {
                self.secrets.insert(render(self.segs()), fingerprint(s));
            }
        }
    }

    /// One value of the body. `secret`: `None` below a key that is never fingerprinted (a
    /// password: no secret is collected under it), else whether an enclosing key names a secret.
    pub(super) struct Node<'a, 'de> {
        pub(super) facts: &'a mut Facts<'de>,
        pub(super) secret: Option<bool>,
    }

    impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    /// An object's key, borrowed from the body unless it has escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s.to_string())))
                }
                fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s)))
                }
            }
            d.deserialize_str(V)
        }
    }

    impl<'de> Visitor<'de> for Node<'_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, s: &str) -> Result<(), E> {
            self.facts.string(s, self.secret);
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            for i in 0.. {
                self.facts.path.push(Seg::Index(i));
                let more = seq.next_element_seed(Node { facts: &mut *self.facts, secret: self.secret })?;
                self.facts.path.pop();
                if more.is_none() {
                    break;
                }
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                let secret = match self.secret {
                    Some(s) if fingerprintable(&k) => Some(s || is_secret_name(&k)),
                    _ => None,
                };
                self.facts.path.push(Seg::Key(k));
                map.next_value_seed(Node { facts: &mut *self.facts, secret })?;
                self.facts.path.pop();
            }
            Ok(())
        }
    }
}

#[cfg(test)] // the tree-walking reference the streaming walk is tested against
fn ids_in(v: &Value) -> BTreeMap<String, String> {
    fn walk<'a>(v: &'a Value, path: &mut Vec<SegRef<'a>>, out: &mut BTreeMap<String, String>) {
        if out.len() >= MAX_ANSWER_IDS {
            return;
        }
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                path.push(SegRef::Key(k));
                walk(v, path, out);
                path.pop();
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
                path.push(SegRef::Index(i));
                walk(v, path, out);
                path.pop();
            }),
            Value::String(s) if is_uuid(s) || is_cursor_path(path) => {
                out.insert(render(path.iter().copied()), s.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// A pagination cursor (`cursor`, `endCursor`, `startCursor`): opaque, so a replay maps it like
/// an id (whole values only: it is too short to find inside other text).
fn is_cursor_key(key: &str) -> bool {
    matches!(key, "cursor" | "endCursor" | "startCursor")
}

#[cfg(test)] // the tree-walking reference's form of [`is_cursor_key`]
fn is_cursor_path(path: &[SegRef<'_>]) -> bool {
    matches!(path.last(), Some(SegRef::Key(k)) if is_cursor_key(k))
}

/// 8-4-4-4-12 hex digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// The fingerprints of the token-like secrets in an answer body (decoded as the diff engine
/// does), by JSON path (`$.refreshToken`, `$.items[0].token`). A string counts when its own
/// key, or the key of an enclosing object or array, names a secret (passwords never count).
pub fn answer_secrets(answer: &Exchange) -> BTreeMap<String, String> {
    answer_facts(answer).0
}

#[cfg(test)] // the tree-walking reference the streaming walk is tested against
fn secrets_in(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    collect_secrets(v, &mut Vec::new(), false, &mut out);
    out
}

#[cfg(test)] // the tree-walking reference the streaming walk is tested against
fn collect_secrets<'a>(v: &'a Value, path: &mut Vec<SegRef<'a>>, secret: bool, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if fingerprintable(k) {
                    path.push(SegRef::Key(k));
                    collect_secrets(v, path, secret || is_secret_name(k), out);
                    path.pop();
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(SegRef::Index(i));
                collect_secrets(v, path, secret, out);
                path.pop();
            }
        }
        Value::String(s) if secret && is_token_like(s) => {
            out.insert(render(path.iter().copied()), fingerprint(s));
        }
        _ => {}
    }
}

/// A form body (`a=1&password=x`) with secret fields replaced as in JSON bodies (token-like
/// ones fingerprinted, passwords plainly), kept as a form.
pub fn redact_form(text: &str) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
        let v = if !is_secret_name(&k) {
            v.into_owned()
        } else if fingerprintable(&k) {
            redact_secret(&v)
        } else {
            REDACTED.to_string()
        };
        out.append_pair(&k, &v);
    }
    out.finish()
}

/// The `boundary` parameter of a multipart content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A `multipart/form-data` body with secret-named fields redacted and file contents replaced
/// by their size; `None` when it does not parse (then nothing of it is kept).
pub fn redact_multipart(text: &str, boundary: &str) -> Option<String> {
    let delimiter = format!("--{boundary}");
    let mut parts = text.split(delimiter.as_str());
    if !parts.next()?.trim().is_empty() {
        return None;
    }
    let mut out = String::new();
    for part in parts {
        out.push_str(&delimiter);
        if part.starts_with("--") {
            out.push_str(part);
            return Some(out);
        }
        let (head, content) = part.strip_prefix("\r\n")?.split_once("\r\n\r\n")?;
        let content = content.strip_suffix("\r\n")?;
        let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let param = |name: &str| {
            disposition.split(';').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let field = param("name")?;
        let content = if param("filename").is_some() {
            format!("[file: {} bytes]", content.len())
        } else if !is_secret_name(&field) {
            content.to_string()
        } else if fingerprintable(&field) {
            redact_secret(content)
        } else {
            REDACTED.to_string()
        };
        out.push_str(&format!("\r\n{head}\r\n\r\n{content}\r\n"));
    }
    // no closing delimiter: not a whole multipart body
    None
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
    /// Fingerprints of the token-like secrets in the monolith's answer, by JSON path
    /// (`{"$.refreshToken": "3f2a…"}`): what lets a replay resolve `[redacted:<fp>]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answer_secrets: BTreeMap<String, String>,
    /// The UUIDs (and pagination cursors) in the monolith's answer, by JSON path
    /// (`{"$.data.createChat.id": "0e5b…"}`): the ids of what the request created, which later
    /// requests of a session name; a replay maps each to the value its own answer carries there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answer_ids: BTreeMap<String, String>,
}

impl Record {
    /// The request of this record as one line of a replay corpus (JSON), with the fingerprints
    /// of the monolith's answer secrets so a replay can follow the session.
    ///
    /// A `setup` line is a request of another route the session needs (a sign-in before the
    /// chat requests): a replay sends it to the monolith only, to follow the session, and does
    /// not compare it.
    pub fn corpus_line(&self, setup: bool) -> String {
        let mut line =
            serde_json::json!({ "method": self.method, "uri": self.uri, "headers": self.request_headers, "body": self.request_body });
        if !self.answer_secrets.is_empty() {
            line["answer_secrets"] = serde_json::json!(self.answer_secrets);
        }
        if !self.answer_ids.is_empty() {
            line["answer_ids"] = serde_json::json!(self.answer_ids);
        }
        if setup {
            line["setup"] = Value::Bool(true);
        }
        line.to_string()
    }

    pub fn differences(diffs: &[Difference]) -> Vec<Value> {
        diffs.iter().map(|d| serde_json::to_value(redact_difference(d)).unwrap_or(Value::Null)).collect()
    }

    /// A request body as stored, with the same secret rules whatever its format:
    /// - JSON: redacted (token-like secrets fingerprinted);
    /// - a form (`application/x-www-form-urlencoded`): the same, field by field, kept as a form;
    /// - `multipart/form-data`: secret-named fields redacted and files replaced by their size;
    /// - anything else, or a form that does not parse: only its size and type. A body whose
    ///   fields cannot be told apart cannot be redacted, so it is not kept.
    pub fn body(body: &[u8], content_type: Option<&str>) -> Option<Value> {
        if body.is_empty() {
            return None;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            return Some(redact_json_fingerprinted(&v));
        }
        let mime = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let redacted = match (mime.as_deref(), std::str::from_utf8(body)) {
            (Some("application/x-www-form-urlencoded"), Ok(text)) if body.len() <= 4096 => Some(redact_form(text)),
            (Some("multipart/form-data"), Ok(text)) if body.len() <= 4096 => {
                content_type.and_then(boundary).and_then(|b| redact_multipart(text, &b))
            }
            _ => None,
        };
        Some(redacted.map(Value::String).unwrap_or_else(|| serde_json::json!({ "bytes": body.len(), "content_type": mime })))
    }
}

#[cfg(test)]
impl Record {
    /// A matching comparison of `method uri` on `route`, for tests to adjust with `..`.
    pub fn sample(route: &str, method: &str, uri: &str) -> Record {
        Record {
            ts_unix_ms: 0,
            route: route.into(),
            endpoint: format!("{method} {uri}"),
            request_id: "req-1".into(),
            method: method.into(),
            uri: uri.into(),
            primary: "legacy".into(),
            outcome: Outcome::Match,
            legacy_status: Some(200),
            candidate_status: Some(200),
            differences: vec![],
            noise: vec![],
            error: None,
            request_headers: vec![],
            request_body: None,
            answer_secrets: Default::default(),
            answer_ids: Default::default(),
        }
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
    /// When the newest comparison was recorded (for the operator's view; not in reports).
    #[serde(skip)]
    pub last_unix_ms: Option<u64>,
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
        // one per copy compared: no allocation once the route and endpoint are known
        if !self.routes.contains_key(&r.route) {
            self.routes.insert(r.route.clone(), Default::default());
        }
        let s = self.routes.get_mut(&r.route).expect("inserted above");
        s.compared += 1;
        s.last_unix_ms = s.last_unix_ms.max(Some(r.ts_unix_ms));
        match s.endpoints.get_mut(&r.endpoint) {
            Some(n) => *n += 1,
            None => {
                s.endpoints.insert(r.endpoint.clone(), 1);
            }
        }
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
        // counted per request on a route whose target is saturated: no allocation once seen
        let counts = match self.routes.get_mut(route) {
            Some(r) => &mut r.dropped,
            None => &mut self.routes.entry(route.to_string()).or_default().dropped,
        };
        match counts.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                counts.insert(reason.to_string(), 1);
            }
        }
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
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Folding on the stack answers as lower-casing (and squashing) a copy of the name did,
        /// for short and long names, ASCII or not.
        #[test]
        fn folded_names_answer_as_the_allocating_fold(name in "([a-zA-Z_-]{0,12}(Token|PASS_word|Pass-wd|auth_Code|é|ß|2fa|code)?){0,8}") {
            let squashed = name.to_ascii_lowercase().replace(['_', '-'], "");
            let by_copy = ["password", "passwd", "token", "secret", "otp", "authorization", "cookie", "apikey", "privatekey", "signature"]
                .iter()
                .any(|s| squashed.contains(s))
                || squashed == "code"
                || squashed.ends_with("code")
                    && (squashed.contains("auth") || squashed.contains("verif") || squashed.contains("totp") || squashed.contains("2fa"));
            prop_assert_eq!(is_secret_name(&name), by_copy);
            let lower = name.to_ascii_lowercase();
            prop_assert_eq!(fingerprintable(&name), !lower.contains("password") && !lower.contains("passwd"));
        }
    }

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
        let h = redact_headers(vec![("authorization".into(), "Bearer x".into()), ("accept".into(), "*/*".into())]);
        assert_eq!(h[0].1, REDACTED);
        assert_eq!(h[1].1, "*/*");
        assert!(!is_secret_name("email") && !is_secret_name("statusCode") && !is_secret_name("countryCode"));
    }

    /// JSON values with the keys and strings the facts look for: secret names, passwords,
    /// cursors, keys that need escapes; UUIDs, tokens, short and spaced strings.
    fn facts_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("id".to_string()),
            Just("refreshToken".to_string()),
            Just("password".to_string()),
            Just("newPasswordToken".to_string()),
            Just("endCursor".to_string()),
            Just("cursor".to_string()),
            Just("secrets".to_string()),
            Just("na\"me\n".to_string()),
            Just("t\u{e9}l\u{e9}token".to_string()),
            "[a-z]{1,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(1.5)),
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".prop_map(Value::String),
            "[A-Za-z0-9._-]{16,40}".prop_map(Value::String),
            "[a-z \"\\\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The streaming walk finds exactly what the two walks of the parsed tree find.
        #[test]
        fn answer_facts_stream_finds_what_the_tree_walks_find(v in facts_json()) {
            let answer = Exchange { status: 200, headers: vec![], body: serde_json::to_vec(&v).unwrap() };
            let (secrets, ids) = answer_facts(&answer);
            prop_assert_eq!(secrets, secrets_in(&v));
            prop_assert_eq!(ids, ids_in(&v));
        }
    }

    #[test]
    fn answer_facts_of_what_is_not_one_json_value_are_empty() {
        let id = "5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00";
        for body in [format!(r#"{{"id":"{id}"}} trailing"#), format!(r#"{{"id":"{id}""#), "<html>".to_string(), String::new()] {
            let answer = Exchange { status: 200, headers: vec![], body: body.clone().into_bytes() };
            assert_eq!(answer_facts(&answer), Default::default(), "{body}");
        }
        let answer = Exchange { status: 200, headers: vec![], body: format!(r#" {{"id":"{id}"}} "#).into_bytes() };
        assert_eq!(answer_facts(&answer).1.get("$.id").map(String::as_str), Some(id));
    }

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";

    #[test]
    fn fingerprints_are_sha256_prefixes() {
        // SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(redact_secret(TOKEN), format!("[redacted:{}]", fingerprint(TOKEN)));
        assert_eq!(parse_fingerprint(&redact_secret(TOKEN)), Some(fingerprint(TOKEN).as_str()));
        assert_eq!(parse_fingerprint("[redacted]"), None);
        assert_eq!(parse_fingerprint("[redacted:xyz]"), None);
        let header = format!("Bearer {} and [redacted:nothex] {}", redact_secret(TOKEN), redact_secret("b".repeat(30).as_str()));
        let found: Vec<&str> = find_fingerprints(&header).into_iter().map(|(_, fp)| fp).collect();
        assert_eq!(found, vec![fingerprint(TOKEN), fingerprint(&"b".repeat(30))]);
    }

    #[test]
    fn tokens_are_fingerprinted_passwords_and_codes_are_not() {
        let body = json!({
            "email": "a@b.c",
            "password": "hunter2",
            "newPassword": "correct-horse-battery-staple-long",
            "refreshToken": TOKEN,
            "code": "123456",
            "nested": [{ "apiKey": TOKEN, "clientSecret": "short", "tokens": [TOKEN] }],
            "signature": "has whitespace in it so it is not a token"
        });
        let red = redact_json_fingerprinted(&body);
        let fp = format!("[redacted:{}]", fingerprint(TOKEN));
        assert_eq!(red["refreshToken"], fp.as_str());
        assert_eq!(red["nested"][0]["apiKey"], fp.as_str());
        for plain in [&red["password"], &red["newPassword"], &red["code"], &red["nested"][0]["clientSecret"], &red["signature"]] {
            assert_eq!(plain, REDACTED);
        }
        // A secret-named array or object is redacted whole.
        assert_eq!(red["nested"][0]["tokens"], REDACTED);
        assert_eq!(red["email"], "a@b.c");
        let text = red.to_string();
        for secret in [TOKEN, "hunter2", "correct-horse", "123456", "whitespace"] {
            assert!(!text.contains(secret), "{text}");
        }
        // Stored request bodies use fingerprints; reported values stay plain.
        assert_eq!(Record::body(body.to_string().as_bytes(), Some("application/json")).unwrap(), red);
        assert_eq!(redact_json(&body)["refreshToken"], REDACTED);
    }

    /// See: issue 10, "Secrets in the shadow store": non-JSON bodies get the JSON rules.
    #[test]
    fn form_and_multipart_bodies_are_redacted_like_json() {
        let form = format!("email=a%40b.c&password=hunter2&refresh_token={TOKEN}&code=123456");
        let stored = Record::body(form.as_bytes(), Some("application/x-www-form-urlencoded; charset=utf-8")).unwrap();
        let text = stored.as_str().unwrap();
        for secret in ["hunter2", TOKEN, "123456"] {
            assert!(!text.contains(secret), "{text}");
        }
        let fields: BTreeMap<String, String> = url::form_urlencoded::parse(text.as_bytes()).into_owned().collect();
        assert_eq!(fields["email"], "a@b.c");
        assert_eq!(fields["password"], REDACTED);
        assert_eq!(fields["refresh_token"], format!("[redacted:{}]", fingerprint(TOKEN)));

        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.c\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nhunter2\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"me.png\"\r\nContent-Type: image/png\r\n\r\nPNG-secret-bytes\r\n\
            --XyZ--\r\n";
        let stored = Record::body(multipart.as_bytes(), Some("multipart/form-data; boundary=XyZ")).unwrap();
        let text = stored.as_str().unwrap();
        assert!(!text.contains("hunter2") && !text.contains("PNG-secret-bytes"), "{text}");
        assert!(text.contains("a@b.c") && text.contains("[file: 16 bytes]") && text.contains(REDACTED), "{text}");

        // what cannot be told apart field by field is not kept at all
        let broken =
            Record::body(b"--XyZ\r\nno disposition here\r\n\r\npassword=hunter2", Some("multipart/form-data; boundary=XyZ")).unwrap();
        assert_eq!(broken, json!({ "bytes": 46, "content_type": "multipart/form-data" }));
        let plain = Record::body(b"password=hunter2", Some("text/plain")).unwrap();
        assert_eq!(plain, json!({ "bytes": 16, "content_type": "text/plain" }));
        let untyped = Record::body(b"password=hunter2", None).unwrap();
        assert!(!untyped.to_string().contains("hunter2"));
    }

    #[test]
    fn bearer_headers_keep_a_fingerprint() {
        let h = redact_headers(vec![
            ("authorization".into(), format!("Bearer {TOKEN}")),
            ("proxy-authorization".into(), format!("bearer {TOKEN}")),
            ("authorization".into(), "Bearer short".into()),
            ("authorization".into(), format!("Basic {TOKEN}")),
            ("cookie".into(), format!("sid={TOKEN}")),
            ("x-api-key".into(), TOKEN.into()),
            ("accept".into(), "*/*".into()),
        ]);
        let fp = fingerprint(TOKEN);
        assert_eq!(h[0].1, format!("Bearer [redacted:{fp}]"));
        assert_eq!(h[1].1, format!("bearer [redacted:{fp}]"));
        for (name, value) in &h[2..6] {
            assert_eq!(value, REDACTED, "{name}");
        }
        assert_eq!(h[6].1, "*/*");
    }

    #[test]
    fn answer_ids_are_keyed_by_diff_paths() {
        let (a, b) = ("5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00", "c0ffee00-1234-4abc-8def-0123456789ab");
        let body = json!({
            "data": { "chats": [{ "id": a, "title": "not an id" }, { "id": b, "members": [{ "userId": a }] }] },
            "page": { "endCursor": "b3BhcXVl", "count": 2 },
            "odd key": [b, "5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f0"]
        });
        let (_, ids) = answer_facts(&Exchange { status: 200, headers: vec![], body: body.to_string().into_bytes() });
        let expected: BTreeMap<String, String> = [
            ("$.data.chats[0].id", a),
            ("$.data.chats[1].id", b),
            ("$.data.chats[1].members[0].userId", a),
            ("$.page.endCursor", "b3BhcXVl"),
            ("$[\"odd key\"][0]", b),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn answer_secrets_are_keyed_by_diff_paths() {
        use std::io::Write;
        let t = |n: u8| format!("{}{}", TOKEN, n);
        let body = json!({
            "refreshToken": t(1),
            "accessToken": "short",
            "user": { "id": 1, "name": "a-long-name-that-is-not-a-secret", "sessionToken": t(2), "password": t(9) },
            "items": [{ "token": "short" }, { "token": t(3) }],
            "tokens": { "access": t(4) },
            "odd key": { "apiKey": t(5) }
        });
        let answer = |body: Vec<u8>, headers: Vec<(String, String)>| Exchange { status: 200, headers, body };
        let expected: BTreeMap<String, String> = [
            ("$.refreshToken", t(1)),
            ("$.user.sessionToken", t(2)),
            ("$.items[1].token", t(3)),
            ("$.tokens.access", t(4)),
            ("$[\"odd key\"].apiKey", t(5)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), fingerprint(&v)))
        .collect();
        let json_ct = vec![("content-type".to_string(), "application/json".to_string())];
        assert_eq!(answer_secrets(&answer(body.to_string().into_bytes(), json_ct.clone())), expected);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body.to_string().as_bytes()).unwrap();
        let mut headers = json_ct;
        headers.push(("content-encoding".into(), "gzip".into()));
        assert_eq!(answer_secrets(&answer(gz.finish().unwrap(), headers)), expected);
        assert!(answer_secrets(&answer(b"<html>".to_vec(), vec![])).is_empty());

        // Stored only when there is something to store.
        let record = |answer_secrets| Record { answer_secrets, ..Record::sample("auth", "POST", "/login") };
        assert!(!serde_json::to_string(&record(BTreeMap::new())).unwrap().contains("answer_secrets"));
        let line = serde_json::to_string(&record(expected.clone())).unwrap();
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back.answer_secrets, expected);
    }
}
