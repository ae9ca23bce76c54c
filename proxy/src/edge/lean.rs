//! The lean HTTP/1 data path: the common request proxied without Pingora's proxy framework.
//!
//! Pingora's `HttpProxy` pays a fixed price per request whatever the request needs: a boxed
//! future per phase, a copy of the request head, two channels and a join between the
//! downstream and upstream halves, and a connection pool whose every return takes a mutex,
//! updates an LRU and spawns a task to watch the idle connection. For the request most traffic
//! is — HTTP/1.1, its whole body already read with its head, routed to a plain-HTTP upstream —
//! [`serve`] does the exchange itself on the connection loop's task: the client's head bytes
//! are rewritten once into the upstream request (hop-by-hop headers dropped, `X-Forwarded-*`
//! and `X-Request-Id` set, exactly as the Pingora path does), the upstream connection comes
//! from a per-thread pool (the workers are no-steal runtimes: a task never changes thread, so
//! the pool needs no lock), and the answer is streamed back as it arrives, its framing checked
//! (`Content-Length`, chunked, or until close, which the client gets chunked). A request its
//! route copies to the other side is captured here as on the Pingora path (request headers as
//! forwarded, body, the answer's status, headers and de-chunked body, within the shadow bound)
//! and handed to the same tee.
//!
//! Everything else is declined *before anything is sent*, and the connection loop hands the
//! request to Pingora as before: other HTTP versions, a body not yet read whole, chunked or
//! `Expect` requests, upgrades, GraphQL paths (their operation is read from the body), a path
//! that normalises to something else, TLS upstreams.
//!
//! The rules are the Pingora path's, in the same shared functions: the breaker's admission
//! ([`Edge::admit`]), failover to the monolith (a connection the service refused → any method;
//! a reset before any answer byte or a 502/503/504 → idempotent requests only; a timeout never),
//! an answer cut short after its head is out is aborted (the client's connection closes short
//! of its length or last chunk, never completed), errors in the monolith's shape, and the same
//! access line, metrics and progress counters ([`Edge::finish_request`]). The integration tests
//! in `proxy/tests` run over this path wherever it applies; `STRANGLER_LEAN_HTTP1=0` turns it
//! off (for comparisons in `scripts/bench`).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::head::MAX_HEADERS;
use super::headers::{client_request_id, connection_tokens_raw, is_hop_by_hop};
use super::wire::{attempt, chunk_into, pool, push_header, Chunks, Failure, Framing};
use super::{Admission, Edge, RequestCtx, ShadowCtx, DRY_RUN_HEADER, REQUEST_ID_HEADER};
use crate::config::{Mode, Upstream};
use crate::metrics as m;
use crate::routing::{decide, host_of, RequestFacts, Side};
use crate::shadow::tee::RawHeads;

/// Attempts per request: a stale pooled connection retried once, a fallback, and its retry.
const MAX_ATTEMPTS: usize = 4;

/// What became of a request offered to the lean path.
pub(super) enum Served {
    /// Answered; the client connection can take its next request.
    KeepAlive,
    /// Answered (or cut short); the client connection must close.
    Close,
    /// Not for this path: nothing was sent anywhere, the request goes to Pingora.
    Declined,
}

/// What the lean path keeps for a client connection between its requests: the client's
/// address, looked up and formatted once. (Buffers are not kept here: an idle keep-alive
/// connection holds no buffer, see [`Lent`].)
#[derive(Default)]
pub(super) struct Scratch {
    /// The client's address, and as text for `X-Forwarded-For`.
    client: Option<(Option<std::net::IpAddr>, String)>,
}

/// The buffers one request needs.
#[derive(Default)]
struct Buffers {
    /// The upstream request.
    out: Vec<u8>,
    /// The upstream's answer as it is read.
    rbuf: BytesMut,
    /// The client's response head (and the first of its body).
    wbuf: Vec<u8>,
}

thread_local! {
    /// Buffers between requests, per worker thread: a request borrows a set and gives it back,
    /// so neither an allocation per request nor memory per idle connection.
    static SPARE: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// Buffers lent to one request by its thread's spares, given back (cleared) when it ends;
/// sets grown past 256 KiB, and spares past 256 sets, are freed instead.
struct Lent(Buffers);

impl Lent {
    fn take() -> Lent {
        Lent(SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten().unwrap_or_default())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut b = std::mem::take(&mut self.0);
        if b.out.capacity() + b.rbuf.capacity() + b.wbuf.capacity() > 256 * 1024 {
            return;
        }
        b.out.clear();
        b.rbuf.clear();
        b.wbuf.clear();
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < 256 {
                s.push(b);
            }
        });
    }
}

/// A request the lean path has taken on, its upstream request written.
struct Owned<'r> {
    ctx: RequestCtx,
    method: Method,
    method_text: &'r str,
    target: &'r str,
    path: &'r str,
    /// The client's connection can stay open after the answer.
    keep_client: bool,
}

enum Prepared<'r> {
    Declined,
    /// The breaker is open and the route has no fallback: `503` with this `Retry-After`.
    Refused(Owned<'r>, String),
    Go(Owned<'r>),
}

/// Reads and routes the request and writes the upstream request into `out`, synchronously: the
/// parse's header slots (8 KiB) never live across an await, so they are not part of the
/// connection's future, which every idle keep-alive connection holds.
fn prepare<'r>(edge: &Edge, stream: &Stream, scratch: &mut Scratch, request: &'r [u8], closing: bool, out: &mut Vec<u8>) -> Prepared<'r> {
    let mut header_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut header_slots);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(request) else { return Prepared::Declined };
    let (Some(method_text), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else { return Prepared::Declined };
    if !target.starts_with('/') {
        return Prepared::Declined;
    }
    let mut client_close = false;
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut lengths = 0;
    for h in parsed.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("expect") || n.eq_ignore_ascii_case("transfer-encoding") || n.eq_ignore_ascii_case("upgrade") {
            return Prepared::Declined;
        }
        if n.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 || h.value.contains(&b',') {
                return Prepared::Declined;
            }
        } else if n.eq_ignore_ascii_case("connection") {
            for t in connection_tokens_raw(h.value) {
                client_close |= t.eq_ignore_ascii_case(b"close");
                tokens.push(t);
            }
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let table = edge.state.table.load_full();
    if !matches!(crate::routing::normalize(path, table.server.encoded_slash), Ok(std::borrow::Cow::Borrowed(_)))
        || table.graphql_paths.contains_key(path)
    {
        return Prepared::Declined;
    }
    let Ok(method) = Method::from_bytes(method_text.as_bytes()) else { return Prepared::Declined };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) else {
            return Prepared::Declined;
        };
        headers.append(name, value);
    }

    let mut ctx = <Edge as pingora::proxy::ProxyHttp>::new_ctx(edge);
    let (client_ip, client_text) = scratch.client.get_or_insert_with(|| {
        let ip = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        (ip, ip.map(|ip| ip.to_string()).unwrap_or_default())
    });
    ctx.client_ip = *client_ip;
    let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(host_of);
    let facts = RequestFacts { method: &method, path, host: host.as_deref(), headers: &headers };
    let mut decision = decide(&table, &facts, ctx.client_ip);
    if let Some(route) = &decision.route {
        // A demoted canary serves everyone from the monolith and keeps comparing.
        if route.mode == Mode::Canary && edge.state.demoter.is_demoted(&route.name) {
            decision.side = Side::Legacy;
            ctx.demoted = true;
        }
    }
    let primary = match (decision.side, &decision.route) {
        (Side::Extracted, Some(route)) => table.upstream(&route.target).clone(),
        _ => table.default_upstream().clone(),
    };
    let plain = |u: &Upstream| !u.tls && u.addr.is_some();
    if !plain(&primary) || !plain(table.default_upstream()) {
        return Prepared::Declined;
    }

    // From here on the request is this path's.
    served_counter().increment(1);
    let generated_id = client_request_id(headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok())).is_none();
    ctx.request_id = match headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        Some(id) if !generated_id => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    ctx.table = Some(table.clone());
    ctx.route = decision.route;
    ctx.side = decision.side;
    ctx.upstream = Some(primary);
    let body = &request[head_len..];
    edge.plan_shadow_for(&mut ctx, &table, method.is_safe(), Some(body.len()));
    let keep_client = !client_close && !closing;
    if let Admission::Refuse(retry_after) = edge.admit(&mut ctx, &table, method.is_idempotent()) {
        return Prepared::Refused(Owned { ctx, method, method_text, target, path, keep_client }, retry_after);
    }

    // the upstream request: the client's head with the Pingora path's header rules, then the body
    let tls = stream.get_ssl_digest().is_some();
    out.extend_from_slice(method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    for h in parsed.headers.iter() {
        let n = h.name;
        if is_hop_by_hop(n, &tokens)
            || n.eq_ignore_ascii_case(DRY_RUN_HEADER)
            || n.eq_ignore_ascii_case("x-forwarded-proto")
            || (generated_id && n.eq_ignore_ascii_case(REQUEST_ID_HEADER))
        {
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
            continue;
        }
        push_header(out, n.as_bytes(), h.value);
    }
    if ctx.client_ip.is_some() {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = forwarded_for.map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(client_text.as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if let Some(prior) = forwarded_for {
        push_header(out, b"x-forwarded-for", prior);
    }
    push_header(out, b"x-forwarded-proto", if tls { b"https" } else { b"http" });
    if generated_id {
        push_header(out, REQUEST_ID_HEADER.as_bytes(), ctx.request_id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(shadow) = ctx.shadow.as_mut() {
        // what the copy is sent with: the headers as forwarded (read on the shadow thread), and
        // the body
        shadow.raw = Some(RawHeads { request: out.clone(), response: Vec::new() });
        shadow.body = body.to_vec();
    }
    out.extend_from_slice(body);
    Prepared::Go(Owned { ctx, method, method_text, target, path, keep_client })
}

/// Offers one request — `request` holds its head and its whole body — to the lean path.
/// `closing`: the server is shutting down, the answer says `Connection: close`.
pub(super) async fn serve(edge: &Edge, stream: &mut Stream, scratch: &mut Scratch, request: &[u8], closing: bool) -> Served {
    let mut lent = Lent::take();
    let Buffers { out, rbuf, wbuf } = &mut lent.0;
    let Owned { mut ctx, method, method_text, target, path, keep_client } = match prepare(edge, stream, scratch, request, closing, out) {
        Prepared::Declined => return Served::Declined,
        Prepared::Refused(Owned { mut ctx, method_text, path, .. }, retry_after) => {
            let status = 503;
            let _ = answer_error(stream, status, "service temporarily unavailable", &ctx.request_id, Some(&retry_after)).await;
            edge.finish_request(method_text, path, status, None, &mut ctx);
            return Served::Close;
        }
        Prepared::Go(owned) => owned,
    };
    let idempotent = method.is_idempotent();
    let head_only = method == Method::HEAD;

    // the exchange: attempts until an answer's head arrives, or a failure that is final
    let out = &*out;
    let mut fresh_only = false;
    let mut attempts = 0;
    let got = loop {
        attempts += 1;
        let u = ctx.upstream.clone().expect("an upstream is chosen before the exchange");
        let addr = u.addr.expect("lean upstreams are resolved");
        ctx.upstream_started = Some(Instant::now());
        let request_id = &ctx.request_id;
        // the client's head written from the one parse of the upstream's
        let mut on_final = |resp: &httparse::Response<'_, '_>, framing: Framing| {
            // a body that ends with the upstream's connection goes to the client chunked, so
            // the client's connection can stay open (as Pingora does)
            wbuf.clear();
            write_client_head(wbuf, resp, request_id, keep_client, framing == Framing::Close);
        };
        match attempt(&u, addr, out, rbuf, fresh_only, head_only, &mut on_final).await {
            Ok((conn, head)) => {
                ctx.upstream_status = Some(head.status);
                if let Some(route) = &ctx.route {
                    let seconds = ctx.upstream_started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                    m::per_request::upstream_duration(&route.name.0, ctx.target_name(), seconds);
                }
                if ctx.breaker_pending && ctx.on_extracted_attempt() {
                    let failed = matches!(head.status, 502..=504);
                    edge.record_breaker(&mut ctx, !failed);
                    if failed && ctx.fallback_ok && idempotent && attempts < MAX_ATTEMPTS {
                        edge.fall_back(&mut ctx, "bad_status");
                        ctx.upstream_status = None;
                        continue;
                    }
                }
                if let Some(shadow) = ctx.shadow.as_mut() {
                    shadow.answered = true;
                    shadow.response.status = head.status;
                    if let Some(raw) = shadow.raw.as_mut() {
                        raw.response = rbuf[..head.len].to_vec();
                    }
                }
                break Ok((conn, head, u, addr));
            }
            Err((f @ (Failure::ConnectRefused | Failure::ConnectTimedOut), _)) => {
                if ctx.breaker_pending && ctx.on_extracted_attempt() {
                    edge.record_breaker(&mut ctx, false);
                    if ctx.fallback_ok && attempts < MAX_ATTEMPTS {
                        // the service never saw the request: any method may go elsewhere
                        edge.fall_back(&mut ctx, "connect_error");
                        continue;
                    }
                }
                break Err(f);
            }
            Err((f, reused)) => {
                // a pooled connection the upstream had already closed: nothing reached it
                if reused && f == Failure::Reset && idempotent && attempts < MAX_ATTEMPTS {
                    fresh_only = true;
                    continue;
                }
                if ctx.breaker_pending && ctx.on_extracted_attempt() {
                    edge.record_breaker(&mut ctx, false);
                    if f == Failure::Reset && idempotent && ctx.fallback_ok && attempts < MAX_ATTEMPTS {
                        edge.fall_back(&mut ctx, "upstream_reset");
                        continue;
                    }
                }
                break Err(f);
            }
        }
    };
    let (mut conn, head, upstream, addr) = match got {
        Ok(g) => g,
        Err(f) => {
            let status = f.status();
            let _ = answer_error(stream, status, f.message(), &ctx.request_id, None).await;
            edge.dispatch_shadow(&method, target, &mut ctx, true);
            edge.finish_request(method_text, path, status, Some(&f), &mut ctx);
            return Served::Close;
        }
    };

    // the answer: its head (written as `read_head` parsed it) for the client, then its body as it arrives
    let framing = head.framing;
    rbuf.advance(head.len);
    let status = head.status;
    let max = edge.shadow_max_body;
    let capture = ctx.shadow.as_mut().map(|s| Capture { body: &mut s.response.body, too_large: &mut s.too_large, max });
    let relayed = match relay_body(stream, &mut conn, rbuf, wbuf, framing, upstream.read_timeout, capture).await {
        Ok(reusable) => {
            if reusable && head.keep_alive {
                pool::put(addr, conn, upstream.pool_size);
            }
            stream.flush().await.map_err(|_| "downstream")
        }
        Err(reason) => Err(reason),
    };
    let served = match relayed {
        Ok(()) if keep_client => Served::KeepAlive,
        Ok(()) => Served::Close,
        Err(reason) => {
            ctx.aborted = Some(reason);
            metrics::counter!(m::RESPONSES_ABORTED_TOTAL, "route" => ctx.route_label(), "reason" => reason).increment(1);
            Served::Close
        }
    };
    let aborted = ctx.aborted.is_some();
    edge.dispatch_shadow(&method, target, &mut ctx, aborted);
    let error = ctx.aborted.map(|reason| format!("response aborted: {reason}"));
    edge.finish_request(method_text, path, status, error.as_ref().map(|e| e as &dyn std::fmt::Display), &mut ctx);
    served
}

/// `strangler_lean_requests_total`, resolved once (the recorder is installed before serving).
fn served_counter() -> &'static metrics::Counter {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!(m::LEAN_REQUESTS_TOTAL))
}

/// Writes the client's response head: the upstream's status and headers without its hop-by-hop
/// ones, `Date` (Pingora's cached one), `X-Request-Id` when the upstream set none, whether the
/// connection stays open, and `Transfer-Encoding: chunked` when the proxy chunks the body.
fn write_client_head(out: &mut Vec<u8>, resp: &httparse::Response<'_, '_>, request_id: &str, keep_alive: bool, chunk: bool) {
    let status = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut tokens: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        tokens.extend(connection_tokens_raw(h.value));
    }
    let chunked = chunk || resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let mut has_id = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if is_hop_by_hop(n, &tokens) || n.eq_ignore_ascii_case("date") || (chunked && n.eq_ignore_ascii_case("content-length")) {
            continue;
        }
        has_id |= n.eq_ignore_ascii_case(REQUEST_ID_HEADER);
        push_header(out, n.as_bytes(), h.value);
    }
    push_header(out, b"date", pingora::protocols::http::date::get_cached_date().as_bytes());
    if chunk {
        push_header(out, b"transfer-encoding", b"chunked");
    }
    if !has_id {
        push_header(out, REQUEST_ID_HEADER.as_bytes(), request_id.as_bytes());
    }
    out.extend_from_slice(if keep_alive { b"connection: keep-alive\r\n\r\n" } else { b"connection: close\r\n\r\n" });
}

/// Sends `head` and the body after it to the client as the upstream sends it. `Ok(reusable)`:
/// the body arrived whole (and nothing after it, so the upstream connection can serve another
/// request); `Err(reason)`: the client's answer was cut short.
async fn relay_body(
    client: &mut Stream,
    upstream: &mut TcpStream,
    rbuf: &mut BytesMut,
    head: &mut Vec<u8>,
    framing: Framing,
    read_timeout: Duration,
    mut capture: Option<Capture<'_>>,
) -> Result<bool, &'static str> {
    let mut remaining = match framing {
        Framing::Empty => {
            client.write_all(head).await.map_err(|_| "downstream")?;
            return Ok(rbuf.is_empty());
        }
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    let mut chunks = Chunks::default();
    let mut chunked_out = Vec::new();
    let mut first = Some(head);
    loop {
        // the part of what arrived that belongs to this body
        let take = match framing {
            Framing::Length(_) => usize::try_from(remaining).unwrap_or(usize::MAX).min(rbuf.len()),
            Framing::Chunked => match chunks.feed(rbuf, |data| capture.iter_mut().for_each(|c| c.append(data))).map_err(|()| "upstream")? {
                Some(end) => end,
                None => rbuf.len(),
            },
            _ => rbuf.len(),
        };
        let done = match framing {
            Framing::Length(_) => {
                remaining -= take as u64;
                remaining == 0
            }
            Framing::Chunked => chunks.done(),
            _ => false,
        };
        if framing != Framing::Chunked {
            if let Some(c) = capture.as_mut() {
                c.append(&rbuf[..take]);
            }
        }
        let out: &[u8] = match (first.take(), framing) {
            (Some(h), Framing::Close) => {
                chunk_into(h, &rbuf[..take]);
                h
            }
            (Some(h), _) => {
                h.extend_from_slice(&rbuf[..take]);
                h
            }
            (None, Framing::Close) => {
                chunked_out.clear();
                chunk_into(&mut chunked_out, &rbuf[..take]);
                &chunked_out
            }
            (None, _) => &rbuf[..take],
        };
        if !out.is_empty() {
            client.write_all(out).await.map_err(|_| "downstream")?;
        }
        rbuf.advance(take);
        if done {
            return Ok(rbuf.is_empty());
        }
        rbuf.clear();
        if rbuf.capacity() < 8 * 1024 {
            rbuf.reserve(16 * 1024);
        }
        match tokio::time::timeout(read_timeout, upstream.read_buf(rbuf)).await {
            Ok(Ok(0)) if framing == Framing::Close => {
                client.write_all(b"0\r\n\r\n").await.map_err(|_| "downstream")?;
                return Ok(false);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err("upstream"),
            Ok(Ok(_)) => {}
            Err(_) => return Err("timeout"),
        }
    }
}

/// Where a shadowed answer's body is kept for the comparison, up to the shadow bound.
struct Capture<'a> {
    body: &'a mut Vec<u8>,
    too_large: &'a mut bool,
    max: usize,
}

impl Capture<'_> {
    fn append(&mut self, data: &[u8]) {
        ShadowCtx::append(self.body, data, self.max, self.too_large);
    }
}

/// An error answer with the request's id and `Date`; the connection closes after it.
async fn answer_error(stream: &mut Stream, status: u16, message: &str, request_id: &str, retry_after: Option<&str>) -> std::io::Result<()> {
    let date = pingora::protocols::http::date::get_cached_date();
    let date = date.to_str().unwrap_or_default();
    let mut extra = Vec::with_capacity(3);
    if let Some(r) = retry_after {
        extra.push(("retry-after", r));
    }
    extra.extend([(REQUEST_ID_HEADER, request_id), ("date", date)]);
    super::write_error(stream, status, message, &extra).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_head(out: &mut Vec<u8>, upstream_head: &[u8], request_id: &str, keep_alive: bool, chunk: bool) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        resp.parse(upstream_head).unwrap();
        write_client_head(out, &resp, request_id, keep_alive, chunk);
    }

    #[test]
    fn the_clients_head_drops_hop_by_hop_headers_and_says_how_the_connection_goes_on() {
        let upstream = b"HTTP/1.1 201 Created\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nDate: yesterday\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-Kept: yes\r\n\r\n";
        let mut out = Vec::new();
        client_head(&mut out, upstream, "rid-1", false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        for gone in ["X-Private", "Keep-Alive", "yesterday", "Content-Length", "keep-alive"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        for kept in ["Transfer-Encoding: chunked\r\n", "X-Kept: yes\r\n", "x-request-id: rid-1\r\n", "date: ", "connection: close\r\n\r\n"]
        {
            assert!(text.contains(kept), "{kept} not in {text}");
        }
        let mut out = Vec::new();
        client_head(&mut out, b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nContent-Length: 9\r\n\r\n", "ours", true, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Request-Id: theirs") && !text.contains("ours") && text.ends_with("connection: keep-alive\r\n\r\n"));
        assert!(text.contains("transfer-encoding: chunked\r\n") && !text.contains("Content-Length"), "{text}");
    }
}
