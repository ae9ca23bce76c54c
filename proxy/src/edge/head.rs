//! The head of an HTTP/1.x request, read strictly before Pingora sees it.
//!
//! Pingora's own parser is lenient where an edge must not be: a request target with a space
//! (`GET /a b HTTP/1.1`) is silently rewritten to `/a%20b`, and a request without `Host` is
//! forwarded. [`inspect`] parses the bytes received so far with httparse's strict rules (the
//! same parser Pingora uses, without its fallback) and says one of three things:
//!
//! - [`Head::Partial`]: more bytes are needed;
//! - [`Head::Invalid`]: the request must be refused, with the status to answer (RFC 9112:
//!   `400` for a malformed request line, header or `Host`, `431` for a head that is too large);
//! - [`Head::Complete`]: the head is well formed; its length and how its body is framed let the
//!   reader hand Pingora exactly this request's bytes and keep any pipelined request that
//!   follows for the next turn.
//!
//! Pure: bytes in, verdict out.

/// At most this many header fields (Pingora's own limit).
pub const MAX_HEADERS: usize = 256;
/// At most this many bytes of request line and headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the body that follows a complete head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body: the next request starts right after the head.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding` (chunked): where it ends is only known by reading it.
    Chunked,
    /// An upgrade (WebSocket) or `CONNECT`: whatever follows belongs to the tunnel.
    Tunnel,
}

/// Why a request is refused before it is proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub status: u16,
    /// A short, fixed label (also a metric label value).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Partial,
    Invalid(Invalid),
    Complete { len: usize, body: Body },
}

const fn bad(reason: &'static str) -> Head {
    Head::Invalid(Invalid { status: 400, reason })
}

/// Inspects the start of `buf`, which holds the bytes of a request received so far.
pub fn inspect(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Head::Invalid(Invalid { status: 431, reason: "head_too_large" })
        }
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::Invalid(Invalid { status: 431, reason: "too_many_headers" }),
        Err(_) => {
            // which part is wrong: parsed with room for no header at all, a good request line
            // gets as far as the first header
            let mut none = [];
            let line_ok = matches!(httparse::Request::new(&mut none).parse(buf), Ok(_) | Err(httparse::Error::TooManyHeaders));
            return bad(if line_ok { "malformed_header" } else { "malformed_request_line" });
        }
    };
    if len > MAX_HEAD_BYTES {
        return Head::Invalid(Invalid { status: 431, reason: "head_too_large" });
    }
    let http11 = req.version == Some(1);

    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to any
    // request with more than one Host or an invalid one.
    let mut hosts = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return bad("duplicate_host"),
        (None, None) if http11 => return bad("missing_host"),
        (Some(h), None) if !valid_host(h.value) => return bad("invalid_host"),
        _ => {}
    }

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let (mut connection_upgrade, mut upgrade) = (false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: a list of identical values is one value; anything else is an error
            for part in h.value.split(|&b| b == b',') {
                let Some(n) = parse_length(part) else { return bad("invalid_content_length") };
                if length.is_some_and(|l| l != n) {
                    return bad("conflicting_content_length");
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let body = if req.method == Some("CONNECT") || (connection_upgrade && upgrade) {
        Body::Tunnel
    } else if chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); Pingora drops the latter
        // and closes the connection after the answer
        Body::Chunked
    } else {
        match length {
            None | Some(0) => Body::None,
            Some(n) => Body::Length(n),
        }
    };
    Head::Complete { len, body }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2). Empty is allowed (a target
/// without authority).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        // IP-literal
        let Some(end) = rest.iter().position(|&b| b == b']') else { return false };
        let Ok(inner) = std::str::from_utf8(&rest[..end]) else { return false };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], port),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &b""[..]),
        }
    };
    let reg_name = host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535);
    reg_name && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdict(s: &str) -> Head {
        inspect(s.as_bytes())
    }

    fn refused(s: &str) -> (u16, &'static str) {
        match verdict(s) {
            Head::Invalid(i) => (i.status, i.reason),
            other => panic!("{s:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn well_formed_heads_and_their_bodies() {
        assert_eq!(verdict("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Head::Complete { len: 27, body: Body::None });
        assert_eq!(
            verdict("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
            Head::Complete { len: 48, body: Body::Length(5) }
        );
        assert_eq!(
            verdict("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Head::Complete { len: 57, body: Body::Chunked }
        );
        assert!(matches!(
            verdict("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Head::Complete { body: Body::Tunnel, .. }
        ));
        // HTTP/1.0 may omit Host
        assert!(matches!(verdict("GET / HTTP/1.0\r\n\r\n"), Head::Complete { body: Body::None, .. }));
        assert_eq!(verdict("GET / HTTP/1.1\r\nHost: a\r\n"), Head::Partial);
        assert_eq!(verdict("GE"), Head::Partial);
    }

    /// See: issue 10, "Request target with a space".
    #[test]
    fn a_space_or_control_in_the_target_is_refused() {
        assert_eq!(refused("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), (400, "malformed_request_line"));
        assert_eq!(refused("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"), (400, "malformed_request_line"));
        assert_eq!(refused("GET /a HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n"), (400, "malformed_header"));
        assert_eq!(refused("GET /a HTTP/1.1 x\r\nHost: a\r\n\r\n"), (400, "malformed_request_line"));
    }

    /// See: issue 10, "Host".
    #[test]
    fn host_must_be_there_once_and_valid() {
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), (400, "missing_host"));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), (400, "duplicate_host"));
        assert_eq!(refused("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"), (400, "duplicate_host"));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), (400, "invalid_host"));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), (400, "invalid_host"));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"), (400, "invalid_host"));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), (400, "invalid_host"));
        for ok in ["a", "api.example.com:8443", "[::1]:80", "[2001:db8::1]", "127.0.0.1", "", "xn--bcher-kva.example"] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
    }

    /// See: issue 10, "`Content-Length: 5, 5`".
    #[test]
    fn content_length_lists_must_agree() {
        assert!(matches!(
            verdict("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            Head::Complete { body: Body::Length(5), .. }
        ));
        assert!(matches!(
            verdict("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Head::Complete { body: Body::Length(5), .. }
        ));
        assert_eq!(refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"), (400, "conflicting_content_length"));
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            (400, "conflicting_content_length")
        );
        assert_eq!(refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), (400, "invalid_content_length"));
        assert_eq!(refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n"), (400, "invalid_content_length"));
    }

    #[test]
    fn oversized_heads_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused(&big), (431, "head_too_large"));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), (431, "too_many_headers"));
    }

    proptest! {
        /// A head that is complete stays complete, with the same length, whatever follows it
        /// (a body or a pipelined request): the reader can split exactly there.
        #[test]
        fn the_head_length_does_not_depend_on_what_follows(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
            let mut buf = head.to_vec();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(inspect(&buf), Head::Complete { len: head.len(), body: Body::Length(3) });
        }

        /// Every prefix of a valid head is Partial: bytes arriving one at a time are never refused.
        #[test]
        fn prefixes_of_a_valid_head_are_partial(cut in 0usize..40) {
            let head = b"GET /items?id=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
            let cut = cut.min(head.len() - 1);
            prop_assert_eq!(inspect(&head[..cut]), Head::Partial);
        }
    }
}
