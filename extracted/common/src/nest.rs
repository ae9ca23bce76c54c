//! What the monolith's HTTP layer (NestJS 11 on Express 5) does around every handler, so that a
//! client cannot tell the two apart: the JSON body parser (`express.json()`: 100 kB limit, strict
//! top level, `{}` for other content types), Nest's error bodies, `application/json;
//! charset=utf-8`, Express's weak ETag and its `304` for a matching `If-None-Match`, the redirect
//! bodies, and Nest's `404 Cannot GET /path` for every unknown route or method.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use sha1::{Digest, Sha1};

/// Express's `express.json()` default limit.
pub const BODY_LIMIT: usize = 100 * 1024;

/// An error as Nest's exception filter renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct NestError {
    pub status: StatusCode,
    pub message: Value,
    /// `error` is absent on a bare `UnauthorizedException()` and on 413/500.
    pub error: Option<&'static str>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "statusCode")]
    status_code: u16,
}

impl NestError {
    fn new(status: StatusCode, message: impl Into<Value>) -> Self {
        NestError { status, message: message.into(), error: status.canonical_reason(), retry_after: None }
    }
    pub fn bad_request(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn validation(messages: Vec<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Value::from(messages))
    }
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// `throw new UnauthorizedException()`: `{"message":"Unauthorized","statusCode":401}`.
    pub fn bare_unauthorized() -> Self {
        NestError { error: None, ..Self::new(StatusCode::UNAUTHORIZED, "Unauthorized") }
    }
    pub fn conflict(message: &str) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn too_many(retry_after: u64) -> Self {
        NestError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "Too many attempts, try again later")
        }
    }
    /// Nest's answer to an unexpected error: no details reach the client.
    pub fn internal() -> Self {
        NestError { error: None, ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error") }
    }
}

/// Express's own errors (413) and Nest's 500 put `statusCode` first.
#[derive(Serialize)]
struct StatusFirstBody<'a> {
    #[serde(rename = "statusCode")]
    status_code: u16,
    message: &'a Value,
}

impl IntoResponse for NestError {
    fn into_response(self) -> Response {
        let mut res = if self.error.is_none() && self.status != StatusCode::UNAUTHORIZED {
            json(self.status, &StatusFirstBody { status_code: self.status.as_u16(), message: &self.message })
        } else {
            json(self.status, &ErrorBody { message: &self.message, error: self.error, status_code: self.status.as_u16() })
        };
        if let Some(s) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// Unexpected failures (database, Redis) become Nest's 500; the cause goes to the log only.
impl From<sqlx::Error> for NestError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::internal()
    }
}
impl From<redis::RedisError> for NestError {
    fn from(e: redis::RedisError) -> Self {
        tracing::error!(error = %e, "redis error");
        Self::internal()
    }
}

/// A JSON answer as Express's `res.json` sends it. Bodies are structs, not `json!` maps, so keys
/// keep the monolith's order and the bytes (and ETags) come out the same.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    json_bytes(status, serde_json::to_vec(body).expect("response bodies serialise"))
}

pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    res
}

/// Express's default ETag: `W/"<length hex>-<first 27 chars of base64 SHA-1>"`.
pub fn etag(body: &[u8]) -> String {
    let digest = Sha1::digest(body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("W/\"{:x}-{}\"", body.len(), &b64[..27])
}

/// Whether an `If-None-Match` value matches an ETag (weak comparison, as Express's `fresh`).
pub fn if_none_match_hits(if_none_match: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    if_none_match.trim() == "*" || if_none_match.split(',').any(|t| strip(t) == strip(etag))
}

/// Middleware: ETag on every answer with a body (as `res.send` does), `304` for GET/HEAD when the
/// client already has it.
pub async fn express_etag(req: Request, next: Next) -> Response {
    // Express's `fresh`: a client asking for `no-cache` always gets the body
    let no_cache = req.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("no-cache"));
    let conditional = (matches!(*req.method(), Method::GET | Method::HEAD) && !no_cache)
        .then(|| req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string))
        .flatten();
    let res = next.run(req).await;
    let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return NestError::internal().into_response();
    };
    let tag = etag(&bytes);
    if let (Some(inm), true) = (conditional, parts.status.is_success()) {
        if if_none_match_hits(&inm, &tag) {
            parts.status = StatusCode::NOT_MODIFIED;
            parts.headers.remove(header::CONTENT_TYPE);
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("etag is ASCII"));
            return Response::from_parts(parts, Body::empty());
        }
    }
    parts.headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("etag is ASCII"));
    Response::from_parts(parts, Body::from(bytes))
}

/// A service as Nest on Express serves it: `inner` (the service's routes, health and metrics)
/// wrapped by what Express does around routing: JSON body parsing, case-insensitive paths with
/// an optional trailing slash, ETags, and no `Allow` on 404s.
pub fn express_app(inner: axum::Router) -> axum::Router {
    axum::Router::new()
        .fallback_service(inner)
        .layer(axum::middleware::from_fn(express_json))
        .layer(axum::middleware::from_fn(express_routing))
        .layer(axum::middleware::from_fn(express_etag))
        .layer(axum::middleware::from_fn(no_allow_on_404))
}

/// Middleware outside the router: axum names the allowed methods on a known path's 404 (its
/// method-not-allowed fallback), after every layer inside the router has run; Express does not.
pub async fn no_allow_on_404(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if res.status() == StatusCode::NOT_FOUND {
        res.headers_mut().remove(header::ALLOW);
    }
    res
}

/// `res.redirect(302, url)`: text or HTML body as the client's `Accept` prefers (an empty body
/// when it accepts neither), `Vary: Accept`.
pub fn redirect(accept: Option<&str>, url: &str) -> Response {
    let (ctype, body) = match negotiate(accept.unwrap_or("*/*"), &["text/plain", "text/html"]) {
        Some("text/html") => (Some("text/html; charset=utf-8"), format!("<p>Found. Redirecting to {}</p>", escape_html(url))),
        Some(_) => (Some("text/plain; charset=utf-8"), format!("Found. Redirecting to {url}")),
        None => (None, String::new()),
    };
    let mut res = (StatusCode::FOUND, body).into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(url).unwrap_or(HeaderValue::from_static("/")));
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    match ctype {
        Some(c) => h.insert(header::CONTENT_TYPE, HeaderValue::from_static(c)),
        None => h.remove(header::CONTENT_TYPE),
    };
    res
}

/// The `negotiator` package's choice among `offers`: highest q, then the client's order of the
/// matching `Accept` entry, then the server's order; `None` when nothing is acceptable.
fn negotiate<'a>(accept: &str, offers: &[&'a str]) -> Option<&'a str> {
    let entries: Vec<(String, f32)> = accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let q = parts.find_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.trim().parse().ok())).unwrap_or(1.0);
            (!media.is_empty()).then_some((media, q))
        })
        .collect();
    let mut best: Option<(f32, usize, usize, &'a str)> = None;
    for (server_i, offer) in offers.iter().enumerate() {
        let (otype, _) = offer.split_once('/').unwrap_or((offer, ""));
        // the most specific matching entry decides this offer's q
        let m = entries
            .iter()
            .enumerate()
            .filter_map(|(i, (media, q))| {
                let spec = if media == offer {
                    2
                } else if media == &format!("{otype}/*") {
                    1
                } else if media == "*/*" {
                    0
                } else {
                    return None;
                };
                Some((spec, *q, i))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        if let Some((_, q, client_i)) = m {
            if q <= 0.0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, bc, bs, _)) => q > bq || (q == bq && (client_i < bc || (client_i == bc && server_i < bs))),
            };
            if better {
                best = Some((q, client_i, server_i, offer));
            }
        }
    }
    best.map(|b| b.3)
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Nest's answer for an unknown route or method: `Cannot GET /path?query`, the URL as sent.
pub async fn not_found(req: Request) -> NestError {
    let url = match req.extensions().get::<ClientUrl>() {
        Some(u) => u.0.clone(),
        None => req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string()),
    };
    NestError::not_found(format!("Cannot {} {url}", req.method()))
}

/// The request's URL as the client sent it, before [`express_routing`] normalised it.
#[derive(Clone, Debug)]
pub struct ClientUrl(pub String);

/// The path's segments as the client sent them, percent-decoded (`/a/B%20c` → `["", "a", "B c"]`).
/// Express matches routes case-insensitively but hands a route's parameters over as sent, while
/// [`express_routing`] lower-cases the path for axum's router: a parameter whose case matters (a
/// device token) is read from here, by its position.
#[derive(Clone, Debug)]
pub struct ClientSegments(pub Vec<String>);

impl ClientSegments {
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).map(String::as_str)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientSegments {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = match parts.extensions.get::<ClientUrl>() {
            Some(u) => u.0.split('?').next().unwrap_or_default().to_string(),
            None => parts.uri.path().to_string(),
        };
        let segments = path.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
        Ok(ClientSegments(segments))
    }
}

/// Middleware before routing: Express's router matches paths case-insensitively and with one
/// optional trailing slash (`POST /auth/Login/` is `POST /auth/login`).
pub async fn express_routing(mut req: Request, next: Next) -> Response {
    let original = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string());
    let path = req.uri().path();
    let mut normal = path.to_ascii_lowercase();
    if normal.len() > 1 && normal.ends_with('/') {
        normal.pop();
    }
    if normal != path {
        let pq = match req.uri().query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req.extensions_mut().insert(ClientUrl(original));
    next.run(req).await
}

/// Middleware before routing: `express.json()` parses every JSON body, whatever the route, so a
/// malformed one is a 400 (or 413/415) even where the handler reads no body (`2fa/setup`), and
/// before any guard.
pub async fn express_json(req: Request, next: Next) -> Response {
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    if !is_json(ctype.as_deref()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT + 1).await {
        Ok(b) => b,
        Err(_) => return too_large().into_response(),
    };
    let mut req = Request::from_parts(parts, Body::empty());
    match JsonBody::parse(ctype.as_deref(), &bytes) {
        // parsed once, here; the handler's JsonBody extractor takes it from the extensions
        Ok(parsed) => {
            req.extensions_mut().insert(parsed);
            req.extensions_mut().insert(RawJson(bytes));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The bytes of a JSON body [`express_json`] parsed, for handlers that need more than
/// [`JsonBody`] keeps (the order of keys below the top level, for one).
#[derive(Clone, Debug)]
pub struct RawJson(pub axum::body::Bytes);

/// A request body as `express.json()` hands it to Nest: the parsed JSON value, or `{}` when the
/// content type is not JSON or the body is empty. Keys are also kept in the order they were sent
/// (validation reports unknown properties in that order).
#[derive(Debug, Clone)]
pub struct JsonBody {
    pub value: Value,
    pub keys: Vec<String>,
}

impl JsonBody {
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Self, NestError> {
        let empty = || JsonBody { value: Value::Object(Default::default()), keys: vec![] };
        let is_json = content_type.and_then(|c| c.split(';').next()).is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Ok(empty());
        }
        if bytes.len() > BODY_LIMIT {
            return Err(too_large());
        }
        if let Some(charset) = charset(content_type) {
            if !charset.starts_with("utf-") {
                let message = format!("unsupported charset \"{}\"", charset.to_uppercase());
                return Err(NestError { error: None, ..NestError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message) });
            }
        }
        if bytes.is_empty() {
            return Ok(empty());
        }
        let decoded = String::from_utf8_lossy(bytes);
        // the decoder drops a byte-order mark
        let text = decoded.strip_prefix('\u{feff}').unwrap_or(&decoded);
        let Some(first) = text.trim_start_matches([' ', '\t', '\n', '\r']).chars().next() else {
            return Err(NestError::bad_request("Unexpected end of JSON input"));
        };
        if first != '{' && first != '[' {
            return Err(NestError::bad_request(&strict_violation(text, first)));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            // V8's JSON.parse message where serde's category matches it; serde's words otherwise
            if e.is_eof() {
                NestError::bad_request("Unexpected end of JSON input")
            } else {
                NestError::bad_request(&format!("{e} in JSON"))
            }
        })?;
        let keys = serde_json::from_str::<KeysInOrder>(text).map(|k| k.0).unwrap_or_default();
        Ok(JsonBody { value, keys })
    }
}

/// The timestamp as the monolith prints it: node-postgres turns the microseconds into
/// `1000 * parseFloat("0.uuuuuu")` milliseconds, `Date` truncates that, then `toISOString()`.
/// The same floating-point steps here (node agrees with plain truncation for all 10^6 values).
pub fn js_iso_string(t: chrono::DateTime<chrono::Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    let ms = (1000.0 * (micros as f64 / 1_000_000.0)).trunc() as u32;
    format!("{}.{ms:03}Z", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// The query string as Express 5's default ("simple") query parser, node's `querystring.parse`,
/// hands it to Nest: `+` is a space, escapes are decoded (malformed ones kept as sent), a key sent
/// twice becomes an array. Keys keep the order sent (validation reports unknown ones so).
pub fn query_object(query: Option<&str>) -> JsonBody {
    let mut value = serde_json::Map::new();
    let mut keys = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let (k, v) = (k.into_owned(), Value::String(v.into_owned()));
        match value.get_mut(&k) {
            None => {
                keys.push(k.clone());
                value.insert(k, v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
        }
    }
    JsonBody { value: Value::Object(value), keys }
}

fn too_large() -> NestError {
    NestError { error: None, ..NestError::new(StatusCode::PAYLOAD_TOO_LARGE, "request entity too large") }
}

/// body-parser's strict mode message for a top level that is not an object or array, which is
/// V8's `JSON.parse` message for the first character.
fn strict_violation(text: &str, first: char) -> String {
    const SHORT: usize = 40;
    let shown = if text.chars().count() <= SHORT {
        format!("\"{text}\"")
    } else {
        format!("\"{}\"... ", text.chars().take(10).collect::<String>())
    };
    format!("Unexpected token '{first}', {} is not valid JSON", shown.trim_end())
}

/// The top-level keys of a JSON object in the order they were sent.
struct KeysInOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeysInOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeysInOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeysInOrder, A::Error> {
                let mut keys: Vec<String> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                Ok(KeysInOrder(keys))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeysInOrder, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KeysInOrder(vec![]))
            }
        }
        d.deserialize_any(V)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = NestError;
    async fn from_request(mut req: Request, _: &S) -> Result<Self, NestError> {
        if let Some(parsed) = req.extensions_mut().remove::<JsonBody>() {
            return Ok(parsed); // parsed by the express_json middleware
        }
        let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        if !is_json(ctype.as_deref()) {
            // express.json() does not read other bodies at all: no size limit applies, Nest sees {}
            return JsonBody::parse(ctype.as_deref(), b"");
        }
        let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT + 1).await.map_err(|_| too_large())?;
        JsonBody::parse(ctype.as_deref(), &bytes)
    }
}

/// The `charset` parameter of a content type, lower-cased.
fn charset(content_type: Option<&str>) -> Option<String> {
    content_type?.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    })
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.and_then(|c| c.split(';').next()).is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ct: &str, body: &str) -> Result<JsonBody, NestError> {
        JsonBody::parse(Some(ct), body.as_bytes())
    }

    #[test]
    fn express_etag_matches_express() {
        // from the monolith: {"message":"If the address is registered, a reset link has been sent"}
        let body = br#"{"message":"If the address is registered, a reset link has been sent"}"#;
        assert_eq!(etag(body), "W/\"46-6MQTmSXjaq8/d2cMDHjpReZUh7U\"");
        assert!(if_none_match_hits("W/\"46-6MQTmSXjaq8/d2cMDHjpReZUh7U\"", &etag(body)));
        assert!(if_none_match_hits("\"x\", \"46-6MQTmSXjaq8/d2cMDHjpReZUh7U\"", &etag(body)));
        assert!(!if_none_match_hits("W/\"47-6MQTmSXjaq8/d2cMDHjpReZUh7U\"", &etag(body)));
    }

    #[test]
    fn body_parser_rules() {
        assert_eq!(parse("text/plain", "hello").unwrap().value, serde_json::json!({}));
        assert_eq!(parse("application/vnd.api+json", r#"{"a":1}"#).unwrap().value, serde_json::json!({}));
        assert_eq!(parse("application/json", "").unwrap().value, serde_json::json!({}));
        // checked against body-parser: blanks are not empty, a BOM is dropped, charsets other than UTF-* are 415
        assert_eq!(parse("application/json", "  ").unwrap_err().message, Value::from("Unexpected end of JSON input"));
        assert_eq!(parse("application/json", "\u{feff}{\"a\":1}").unwrap().value, serde_json::json!({"a": 1}));
        let e = parse("application/json; charset=latin1", "{}").unwrap_err();
        assert_eq!((e.status, e.message), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Value::from("unsupported charset \"LATIN1\"")));
        assert!(parse("application/json; charset=UTF-8", "{}").is_ok());
        assert_eq!(parse("application/json; charset=utf-8", r#"{"b":1,"a":2,"b":3}"#).unwrap().keys, vec!["b", "a"]);
        let e = parse("application/json", "null").unwrap_err();
        assert_eq!(e.message, Value::from("Unexpected token 'n', \"null\" is not valid JSON"));
        let e = parse("application/json", "\"str\"").unwrap_err();
        assert_eq!(e.message, Value::from("Unexpected token '\"', \"\"str\"\" is not valid JSON"));
        assert_eq!(parse("application/json", "{bad").unwrap_err().status, StatusCode::BAD_REQUEST);
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(BODY_LIMIT));
        let e = parse("application/json", &big).unwrap_err();
        assert_eq!((e.status, e.error), (StatusCode::PAYLOAD_TOO_LARGE, None));
    }

    #[test]
    fn redirect_negotiates_like_express() {
        let offers = ["text/plain", "text/html"];
        assert_eq!(negotiate("*/*", &offers), Some("text/plain"));
        assert_eq!(negotiate("text/html,application/xhtml+xml,*/*;q=0.8", &offers), Some("text/html"));
        assert_eq!(negotiate("text/plain, text/html", &offers), Some("text/plain"));
        assert_eq!(negotiate("text/html, text/plain", &offers), Some("text/html"), "ties go to the client's order");
        assert_eq!(negotiate("application/json", &offers), None);
        assert_eq!(negotiate("text/*;q=0.5, text/plain;q=0", &offers), Some("text/html"));
        let r = redirect(Some("application/json"), "http://g/");
        assert!(r.headers().get(header::CONTENT_TYPE).is_none());
        let r = redirect(Some("text/html"), "http://g/?a=1&b=2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(r.headers()[header::LOCATION], "http://g/?a=1&b=2");
    }

    #[test]
    fn iso_strings_follow_javascript() {
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 23, 19, 48).unwrap() + chrono::Duration::microseconds(457_123);
        assert_eq!(js_iso_string(t), "2026-12-01T23:19:48.457Z");
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(js_iso_string(t), "2026-01-02T03:04:05.000Z");
        // truncated, never rounded (checked with node for every microsecond value of a second)
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(999_999);
        assert_eq!(js_iso_string(t), "2026-01-02T03:04:05.999Z");
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(291_000);
        assert_eq!(js_iso_string(t), "2026-01-02T03:04:05.291Z");
    }

    #[test]
    fn queries_parse_as_node_querystring() {
        let q = query_object(Some("b=2&a=x+y&b=3&c=%zz&d=%E2%9C%93&e"));
        assert_eq!(q.keys, vec!["b", "a", "c", "d", "e"]);
        assert_eq!(q.value, serde_json::json!({ "b": ["2", "3"], "a": "x y", "c": "%zz", "d": "✓", "e": "" }));
        assert_eq!(query_object(None).value, serde_json::json!({}));
    }
}
