//! Header hygiene between client and upstream.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not be forwarded:
//! `Connection` itself, every header it names, and the classic list (`Keep-Alive`,
//! `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`, `TE`, `Trailer`,
//! `Upgrade`). The exception is a WebSocket/HTTP upgrade, where `Connection: upgrade` and
//! `Upgrade` must reach the upstream and come back on the 101. `Transfer-Encoding` framing is
//! Pingora's job on each side, so it is left to Pingora.
//!
//! Requests also get `X-Forwarded-For` (appended), `X-Forwarded-Proto`, and an `X-Request-Id`
//! when the client sent none; the dry-run header that only the proxy's shadow copies may carry
//! is removed from client requests. `traceparent`/`tracestate` pass through untouched.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

pub use strangler_protocol::{DRY_RUN_HEADER, REQUEST_ID_HEADER};

const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"];

/// Names listed in the `Connection` header(s), lowercased.
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The hop-by-hop header names to drop from a message.
fn hop_by_hop(headers: &http::HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = connection_tokens(headers).iter().filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    names.extend(HOP_BY_HOP.iter().map(|h| HeaderName::from_static(h)));
    names.push(CONNECTION);
    names.retain(|n| !(keep_upgrade && (n == http::header::UPGRADE || n == CONNECTION)));
    // Framing headers are Pingora's to manage, even if a client lists them in `Connection`.
    names.retain(|n| n != http::header::TRANSFER_ENCODING && n != http::header::CONTENT_LENGTH && n != http::header::HOST);
    names
}

/// The names a `Connection` header value lists (trimmed, as sent), for [`is_hop_by_hop`].
pub fn connection_tokens_raw(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a header named `name` is hop-by-hop in a message whose `Connection` headers list
/// `tokens` — the rule [`prepare_upstream_request`] and [`clean_upstream_response`] apply to
/// Pingora's header maps, for the lean path's raw heads (never an upgrade there).
pub fn is_hop_by_hop(name: &str, tokens: &[&[u8]]) -> bool {
    if name.eq_ignore_ascii_case("connection") || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    // framing headers and Host are never dropped, even when a client lists them
    !(name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host"))
        && tokens.iter().any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// A client's request id, when it sent a usable one (otherwise the proxy makes one).
pub fn client_request_id(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty() && v.len() <= 200)
}

/// Returns the request's id, generating one when the client sent none.
pub fn ensure_request_id(req: &mut RequestHeader) -> String {
    if let Some(id) = client_request_id(req.headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok())) {
        return id.to_string();
    }
    let id = uuid::Uuid::new_v4().to_string();
    // A freshly generated UUID is always a valid header value.
    let _ = req.insert_header(REQUEST_ID_HEADER, &id);
    id
}

pub fn prepare_upstream_request(req: &mut RequestHeader, client: Option<IpAddr>, tls: bool, upgrade: bool) -> Result<()> {
    for name in hop_by_hop(&req.headers, upgrade) {
        req.remove_header(&name);
    }
    if upgrade {
        req.insert_header(CONNECTION, "upgrade")?;
    }
    req.remove_header(DRY_RUN_HEADER);
    if let Some(ip) = client {
        let forwarded = match req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip.to_string(),
        };
        req.insert_header("x-forwarded-for", forwarded)?;
    }
    req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    Ok(())
}

pub fn clean_upstream_response(resp: &mut ResponseHeader, upgrade: bool) -> Result<()> {
    for name in hop_by_hop(&resp.headers, upgrade) {
        resp.remove_header(&name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_classic_hop_by_hop_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, X-Secret").unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("proxy-connection", "keep-alive").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        req.insert_header(DRY_RUN_HEADER, "1").unwrap();
        prepare_upstream_request(&mut req, Some("10.0.0.1".parse().unwrap()), false, false).unwrap();
        for gone in ["connection", "x-secret", "keep-alive", "proxy-connection", "te", DRY_RUN_HEADER] {
            assert!(!req.headers.contains_key(gone), "{gone} forwarded");
        }
        assert!(req.headers.contains_key("traceparent"));
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn keeps_upgrade_for_websockets_and_appends_forwarded_for() {
        let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
        req.insert_header("connection", "Upgrade").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        prepare_upstream_request(&mut req, Some("10.0.0.1".parse().unwrap()), true, true).unwrap();
        assert_eq!(req.headers["upgrade"], "websocket");
        assert_eq!(req.headers["connection"], "upgrade");
        assert_eq!(req.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn the_raw_rule_drops_what_the_header_map_rule_drops() {
        let tokens: Vec<&[u8]> = connection_tokens_raw(b" keep-alive, X-Secret ,,Content-Length").collect();
        assert_eq!(tokens, vec![&b"keep-alive"[..], b"X-Secret", b"Content-Length"]);
        for gone in ["Connection", "keep-alive", "x-secret", "Proxy-Connection", "TE", "trailer", "upgrade", "proxy-authorization"] {
            assert!(is_hop_by_hop(gone, &tokens), "{gone} kept");
        }
        for kept in ["content-length", "Transfer-Encoding", "host", "traceparent", "x-secretive"] {
            assert!(!is_hop_by_hop(kept, &tokens), "{kept} dropped");
        }
        assert!(!is_hop_by_hop("x-secret", &[]));
    }

    #[test]
    fn keeps_a_client_request_id_and_makes_one_otherwise() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(REQUEST_ID_HEADER, "abc").unwrap();
        assert_eq!(ensure_request_id(&mut req), "abc");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let id = ensure_request_id(&mut req);
        assert_eq!(id.len(), 36);
        assert_eq!(req.headers[REQUEST_ID_HEADER], id.as_str());
    }
}
