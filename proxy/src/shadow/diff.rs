//! Comparing the monolith's answer with the extracted service's: status, a documented set of
//! headers, and bodies — JSON structurally with field paths, anything else as normalised bytes,
//! after undoing gzip/deflate/br.
//!
//! Pure: two [`Exchange`]s and the route's [`Rules`] in, a list of [`Difference`]s out. The
//! same function serves live shadowing, replay in CI and noise learning (legacy vs legacy).
//!
//! ## Headers
//! Compared: `content-type` (media type and charset, case-insensitive), `location`,
//! `cache-control`, `www-authenticate`, `allow`, `vary`, `content-disposition`, and `set-cookie`
//! by cookie name and attributes (values are secrets and differ per call, so they are not
//! compared). Everything else — `date`, `server`, `etag`, `content-length`, framing, request
//! ids, `x-powered-by` — is transport noise. A route adds names with `rules.headers`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Read;

use serde::Serialize;
use serde_json::Value;

use super::path::{generalize, render, PathPattern, SegRef};

/// One side's response.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub status: u16,
    /// Header names lowercase, in arrival order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// As received (possibly compressed).
    pub body: Vec<u8>,
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// What a value must be when only its type is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    String,
    Number,
    Integer,
    Boolean,
    Null,
    Array,
    Object,
    /// A string holding an RFC 3339 timestamp.
    Rfc3339,
    /// A string holding a UUID.
    Uuid,
    /// Present, any value.
    Present,
}

impl ValueType {
    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "string" => ValueType::String,
            "number" => ValueType::Number,
            "integer" => ValueType::Integer,
            "boolean" => ValueType::Boolean,
            "null" => ValueType::Null,
            "array" => ValueType::Array,
            "object" => ValueType::Object,
            "rfc3339" => ValueType::Rfc3339,
            "uuid" => ValueType::Uuid,
            "present" => ValueType::Present,
            _ => return None,
        })
    }

    pub fn holds(self, v: &Value) -> bool {
        match self {
            ValueType::String => v.is_string(),
            ValueType::Number => v.is_number(),
            ValueType::Integer => v.is_i64() || v.is_u64(),
            ValueType::Boolean => v.is_boolean(),
            ValueType::Null => v.is_null(),
            ValueType::Array => v.is_array(),
            ValueType::Object => v.is_object(),
            ValueType::Rfc3339 => v.as_str().is_some_and(is_rfc3339),
            ValueType::Uuid => v.as_str().is_some_and(is_uuid),
            ValueType::Present => true,
        }
    }
}

/// How arrays at a path are ordered before comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    /// By the whole element's canonical JSON.
    Value,
    /// By one field of each (object) element.
    Field(String),
}

/// A route's comparison rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Not compared at all (nor anything inside).
    pub ignore: Vec<PathPattern>,
    /// Compared by type only: the candidate's value must have the type.
    pub types: Vec<(PathPattern, ValueType)>,
    /// Arrays sorted before comparing.
    pub sort: Vec<(PathPattern, SortBy)>,
    /// Extra header names to compare.
    pub headers: Vec<String>,
}

pub const COMPARED_HEADERS: &[&str] =
    &["content-type", "location", "cache-control", "www-authenticate", "allow", "vary", "content-disposition"];

/// Where a difference is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum Place {
    Status,
    Header {
        name: String,
    },
    /// A JSON field.
    Field {
        path: String,
    },
    /// A non-JSON body, or a JSON body on one side only.
    Body,
}

impl Place {
    /// The unit mismatches are grouped and noise is learned by: indices generalised.
    pub fn key(&self) -> String {
        match self {
            Place::Status => "status".into(),
            Place::Header { name } => format!("header:{name}"),
            Place::Field { path } => path.clone(),
            Place::Body => "body".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiffKind {
    Changed {
        legacy: Value,
        candidate: Value,
    },
    /// In the monolith's answer, not in the candidate's.
    Missing {
        legacy: Value,
    },
    /// In the candidate's answer, not in the monolith's.
    Extra {
        candidate: Value,
    },
    /// A type-only rule failed.
    WrongType {
        expected: ValueType,
        candidate: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub place: Place,
    /// The concrete path (`$.messages[3].createdAt`) for fields; equals `place.key()` otherwise.
    pub at: String,
    #[serde(flatten)]
    pub kind: DiffKind,
}

/// Compares two answers under the rules.
pub fn compare(legacy: &Exchange, candidate: &Exchange, rules: &Rules) -> Vec<Difference> {
    let mut out = Vec::new();
    if legacy.status != candidate.status {
        out.push(Difference { place: Place::Status, at: "status".into(), kind: changed(legacy.status.into(), candidate.status.into()) });
    }
    compare_headers(legacy, candidate, rules, &mut out);
    let (lb, cb) = (decoded(legacy), decoded(candidate));
    if lb == cb {
        // the same bytes cannot differ in any field or line: no parse (the usual case)
        return out;
    }
    match (as_json(legacy, &lb), as_json(candidate, &cb)) {
        (Some(a), Some(b)) => compare_json(&a, &b, &mut Vec::new(), rules, &mut out),
        (None, None) => {
            if normalize_text(legacy, &lb) != normalize_text(candidate, &cb) {
                out.push(Difference { place: Place::Body, at: "body".into(), kind: changed(body_summary(&lb), body_summary(&cb)) });
            }
        }
        _ => out.push(Difference { place: Place::Body, at: "body".into(), kind: changed(body_summary(&lb), body_summary(&cb)) }),
    }
    out
}

fn changed(legacy: Value, candidate: Value) -> DiffKind {
    DiffKind::Changed { legacy, candidate }
}

fn compare_headers(legacy: &Exchange, candidate: &Exchange, rules: &Rules, out: &mut Vec<Difference>) {
    let mut names: Vec<Cow<'_, str>> = COMPARED_HEADERS.iter().map(|s| Cow::Borrowed(*s)).collect();
    names.extend(rules.headers.iter().map(|h| Cow::Owned(h.to_ascii_lowercase())));
    names.sort();
    names.dedup();
    for name in &names {
        // compared without copying the values (every copy asks; they are nearly always alike)
        if header_values(legacy, name).eq(header_values(candidate, name)) {
            continue;
        }
        let all = |e| header_values(e, name).map(Cow::into_owned).collect::<Vec<String>>();
        let (a, b) = (all(legacy), all(candidate));
        out.push(Difference { place: Place::Header { name: name.to_string() }, at: format!("header:{name}"), kind: header_kind(&a, &b) });
    }
    let (a, b) = (cookie_shapes(legacy), cookie_shapes(candidate));
    if a != b {
        out.push(Difference {
            place: Place::Header { name: "set-cookie".into() },
            at: "header:set-cookie".into(),
            kind: header_kind(&a, &b),
        });
    }
}

/// A header's values as compared: trimmed; `content-type` also lower-cased, its parameters
/// without spaces (`text/html; charset=UTF-8` is `text/html;charset=utf-8`).
fn header_values<'a>(e: &'a Exchange, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    e.headers.iter().filter(move |(k, _)| k == name).map(move |(_, v)| match name {
        "content-type" => Cow::Owned(content_type_form(v)),
        _ => Cow::Borrowed(v.trim()),
    })
}

/// `content-type`'s compared form, in one pass: parts between `;` trimmed, empty ones left out,
/// spaces removed, lower case.
fn content_type_form(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(';');
        }
        out.extend(part.chars().filter(|c| *c != ' ').map(|c| c.to_ascii_lowercase()));
    }
    out
}

fn header_kind(a: &[String], b: &[String]) -> DiffKind {
    let v = |x: &[String]| if x.len() == 1 { Value::String(x[0].clone()) } else { Value::from(x.to_vec()) };
    match (a.is_empty(), b.is_empty()) {
        (false, true) => DiffKind::Missing { legacy: v(a) },
        (true, false) => DiffKind::Extra { candidate: v(b) },
        _ => changed(v(a), v(b)),
    }
}

/// `Set-Cookie` reduced to name and sorted attributes (`Max-Age` and `Expires` values dropped:
/// they move with the clock); cookie values are never compared or shown.
fn cookie_shapes(e: &Exchange) -> Vec<String> {
    let mut v: Vec<String> = e
        .all("set-cookie")
        .into_iter()
        .map(|c| {
            let mut parts = c.split(';').map(str::trim);
            let name = parts.next().unwrap_or("").split('=').next().unwrap_or("").to_string();
            let mut attrs: Vec<String> = parts
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, val) = p.split_once('=').unwrap_or((p, ""));
                    let k = k.trim().to_ascii_lowercase();
                    if k == "max-age" || k == "expires" || val.is_empty() {
                        k
                    } else {
                        format!("{k}={}", val.trim().to_ascii_lowercase())
                    }
                })
                .collect();
            attrs.sort();
            format!("{name}; {}", attrs.join("; "))
        })
        .collect();
    v.sort();
    v
}

/// The body with its `content-encoding` undone; undecodable bodies are compared as received.
pub fn decoded(e: &Exchange) -> Cow<'_, [u8]> {
    let enc = e.header("content-encoding").unwrap_or("").trim().to_ascii_lowercase();
    if enc.is_empty() || enc == "identity" {
        return Cow::Borrowed(&e.body);
    }
    let mut out = Vec::new();
    let ok = match enc.as_str() {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&e.body[..]).read_to_end(&mut out).is_ok(),
        "deflate" => flate2::read::ZlibDecoder::new(&e.body[..]).read_to_end(&mut out).is_ok(),
        "br" => brotli::Decompressor::new(&e.body[..], 4096).read_to_end(&mut out).is_ok(),
        _ => false,
    };
    if ok {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(&e.body)
    }
}

fn as_json(e: &Exchange, body: &[u8]) -> Option<Value> {
    let ct = e.header("content-type").unwrap_or("").to_ascii_lowercase();
    let looks_json = ct.contains("json") || (ct.is_empty() && body.first().is_some_and(|b| *b == b'{' || *b == b'['));
    if !looks_json || body.is_empty() {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// Text bodies: line endings and trailing whitespace normalised; other bodies byte for byte.
fn normalize_text(e: &Exchange, body: &[u8]) -> Vec<u8> {
    let ct = e.header("content-type").unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("text/") || ct.contains("json") || ct.contains("xml") || ct.contains("javascript") {
        String::from_utf8_lossy(body)
            .replace("\r\n", "\n")
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .as_bytes()
            .to_vec()
    } else {
        body.to_vec()
    }
}

fn body_summary(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
    serde_json::json!({ "bytes": body.len(), "start": text })
}

/// Compares two JSON values at `path` (pushed to and popped back as the walk goes down: one
/// borrowed segment per node; a path's text is rendered only for a difference).
fn compare_json<'a>(a: &'a Value, b: &'a Value, path: &mut Vec<SegRef<'a>>, rules: &Rules, out: &mut Vec<Difference>) {
    if rules.ignore.iter().any(|p| p.matches(path)) {
        return;
    }
    if let Some((_, ty)) = rules.types.iter().find(|(p, _)| p.matches(path)) {
        if !ty.holds(b) {
            out.push(field(path, DiffKind::WrongType { expected: *ty, candidate: b.clone() }));
        }
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&'a String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                path.push(SegRef::Key(k));
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => compare_json(va, vb, path, rules, out),
                    (Some(va), None) if !ignored(path, rules) => out.push(field(path, DiffKind::Missing { legacy: va.clone() })),
                    (None, Some(vb)) if !ignored(path, rules) => out.push(field(path, DiffKind::Extra { candidate: vb.clone() })),
                    _ => {}
                }
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            // in the order a rule sorts this array by (the elements' references sorted, not
            // copies), or as they are
            let order = rules.sort.iter().find(|(p, _)| p.matches(path)).map(|(_, by)| (sorted(x, by), sorted(y, by)));
            for i in 0..x.len().max(y.len()) {
                path.push(SegRef::Index(i));
                let pair = match &order {
                    Some((x, y)) => (x.get(i).copied(), y.get(i).copied()),
                    None => (x.get(i), y.get(i)),
                };
                match pair {
                    (Some(va), Some(vb)) => compare_json(va, vb, path, rules, out),
                    (Some(va), None) if !ignored(path, rules) => out.push(field(path, DiffKind::Missing { legacy: va.clone() })),
                    (None, Some(vb)) if !ignored(path, rules) => out.push(field(path, DiffKind::Extra { candidate: vb.clone() })),
                    _ => {}
                }
                path.pop();
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(field(path, changed(a.clone(), b.clone()))),
    }
}

fn ignored(path: &[SegRef<'_>], rules: &Rules) -> bool {
    rules.ignore.iter().any(|p| p.matches(path))
}

fn field(path: &[SegRef<'_>], kind: DiffKind) -> Difference {
    Difference { place: Place::Field { path: generalize(path.iter().copied()) }, at: render(path.iter().copied()), kind }
}

/// The elements in the rule's order, each one's key computed once.
fn sorted<'a>(items: &'a [Value], by: &SortBy) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = items.iter().collect();
    let key = |x: &&Value| match by {
        SortBy::Value => canonical(x),
        SortBy::Field(f) => x.get(f).map(canonical).unwrap_or_default(),
    };
    v.sort_by_cached_key(key);
    v
}

/// JSON with object keys sorted, for ordering and grouping.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// `2026-11-24T23:59:59Z`, `2026-11-24T23:59:59.123+03:00` (RFC 3339 `date-time`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let num = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).ok().and_then(|x| x.parse::<u32>().ok()).unwrap_or(99);
    if b.len() < 20 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' || !digits(8..10) {
        return false;
    }
    if !matches!(b[10], b'T' | b't' | b' ') || !digits(11..13) || b[13] != b':' || !digits(14..16) || b[16] != b':' || !digits(17..19) {
        return false;
    }
    if !(1..=12).contains(&num(5..7)) || !(1..=31).contains(&num(8..10)) || num(11..13) > 23 || num(14..16) > 59 || num(17..19) > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && digits(i + 1..i + 3)
                && b[i + 3] == b':'
                && digits(i + 4..i + 6)
                && num(i + 1..i + 3) <= 23
                && num(i + 4..i + 6) <= 59
        }
        _ => false,
    }
}

pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

#[cfg(test)]
mod form_tests {
    use super::content_type_form;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass form is the one the comparison always used (lower case, split at `;`,
        /// each part trimmed and without spaces, empty parts left out, joined by `;`).
        #[test]
        fn content_type_form_is_the_old_normal_form(v in "[ \t;=a-zA-Z/+.-]{0,40}") {
            let old = v.to_ascii_lowercase().split(';').map(|p| p.trim().replace(' ', "")).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(";");
            prop_assert_eq!(content_type_form(&v), old);
        }
    }
}
