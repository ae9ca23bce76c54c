//! HTTP/1.1 to a plain-HTTP upstream, the parts both lean exchanges share: the edge's lean data
//! path ([`super::lean`]) and the shadow tee's copies (`crate::shadow::tee`).
//!
//! Connections come from a per-thread pool without a lock ([`pool`]); an answer's head is
//! parsed once ([`parse_head`]: status, framing by RFC 9112 §6.3, whether the connection can be
//! reused) and its chunked body followed across reads ([`Chunks`]). [`fetch`] is a whole
//! exchange with the body read into memory, for a copy whose answer is only compared: no
//! `Request` and `Url` built and parsed again, no header map, no hyper connection task.
//! `STRANGLER_LEAN_HTTP1=0` turns both users off ([`enabled`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::head::MAX_HEADERS;
use super::headers::{connection_tokens_raw, is_hop_by_hop};
use crate::config::Upstream;

/// At most this many bytes of an upstream's response head.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Whether the lean path and the copies' lean client are on (`STRANGLER_LEAN_HTTP1=0` turns both
/// off), read once.
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("STRANGLER_LEAN_HTTP1").map_or(true, |v| v != "0"))
}

/// Why an upstream exchange failed before its answer's head reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    ConnectRefused,
    ConnectTimedOut,
    /// Reset or closed before a whole response head arrived.
    Reset,
    TimedOut,
    /// The response head was not HTTP/1.x we can frame.
    Invalid,
    /// A whole answer read into memory ([`fetch`]) would pass its bound; the connection is
    /// dropped.
    TooLarge,
}

impl Failure {
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::ConnectTimedOut | Failure::TimedOut => 504,
            _ => 502,
        }
    }
    pub(crate) fn message(self) -> &'static str {
        match self {
            Failure::ConnectTimedOut | Failure::TimedOut => "upstream timed out",
            _ => "upstream unavailable",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::ConnectRefused => "upstream connection refused",
            Failure::ConnectTimedOut => "upstream connect timed out",
            Failure::Reset => "upstream closed the connection before a response",
            Failure::TimedOut => "upstream read timed out",
            Failure::Invalid => "upstream sent an invalid response head",
            Failure::TooLarge => "upstream answer over the body bound",
        })
    }
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) async fn with_timeout<T>(limit: Duration, io: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, io).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Failure::Reset),
        Err(_) => Err(Failure::TimedOut),
    }
}

/// Writes all of `buf`, with a timer only when the socket cannot take it at once.
pub(crate) async fn write_all(conn: &mut TcpStream, buf: &[u8], limit: Duration) -> Result<(), Failure> {
    let rest = match conn.try_write(buf) {
        Ok(n) if n == buf.len() => return Ok(()),
        Ok(n) => &buf[n..],
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => buf,
        Err(_) => return Err(Failure::Reset),
    };
    with_timeout(limit, conn.write_all(rest)).await
}

pub(crate) async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => {
            let _ = c.set_nodelay(true);
            Ok(c)
        }
        Ok(Err(_)) => Err(Failure::ConnectRefused),
        Err(_) => Err(Failure::ConnectTimedOut),
    }
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client's connection closes after it too.
    Close,
}

/// What the proxy needs of an upstream's response head.
pub(crate) struct ResponseHead {
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// HTTP/1.1 without `Connection: close`: the upstream connection may be reused.
    pub(crate) keep_alive: bool,
}

/// What a final response head means for the answer being read, called with the parse.
pub(crate) type OnFinal<'a> = &'a mut (dyn FnMut(&httparse::Response<'_, '_>, Framing) + Send);

/// Reads until a final response head is in `rbuf` (interim 1xx answers are read past; a `101`
/// to a request that asked for no upgrade is invalid) and hands its parse to `on_final`.
/// `head_only`: the request was `HEAD`, so the answer has no body whatever its headers say.
pub(crate) async fn read_head(
    conn: &mut TcpStream,
    rbuf: &mut BytesMut,
    limit: Duration,
    head_only: bool,
    on_final: OnFinal<'_>,
) -> Result<ResponseHead, Failure> {
    loop {
        if !rbuf.is_empty() {
            match parse_head(rbuf, head_only, Some(&mut *on_final))? {
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    rbuf.advance(head.len);
                    continue;
                }
                Some(head) if head.status == 101 => return Err(Failure::Invalid),
                Some(head) => return Ok(head),
                None if rbuf.len() >= MAX_RESPONSE_HEAD => return Err(Failure::Invalid),
                None => {}
            }
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(8 * 1024);
        }
        if with_timeout(limit, conn.read_buf(rbuf)).await? == 0 {
            return Err(Failure::Reset);
        }
    }
}

/// Parses an upstream's response head: its length, status, framing and whether its connection
/// can be reused. A final head's framing is the one its answer has (no body for `HEAD`, 204,
/// 304), and `on_final` gets the parse, so nothing parses the head twice.
pub(crate) fn parse_head(buf: &[u8], head_only: bool, on_final: Option<OnFinal<'_>>) -> Result<Option<ResponseHead>, Failure> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Invalid),
    };
    let status = resp.code.ok_or(Failure::Invalid)?;
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n = std::str::from_utf8(part).ok().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                let n = n.and_then(|p| p.parse::<u64>().ok()).ok_or(Failure::Invalid)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failure::Invalid);
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // the last coding decides whether the body is chunked
            chunked =
                h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).rfind(|c| !c.is_empty()).map(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive &= !connection_tokens_raw(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    let mut framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::Close,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Close,
    };
    if !(100..200).contains(&status) {
        if head_only || status == 204 || status == 304 {
            framing = Framing::Empty;
        }
        if let Some(f) = on_final {
            f(&resp, framing);
        }
    }
    Ok(Some(ResponseHead { len, status, framing, keep_alive }))
}

/// The headers of a message head (`head`: its bytes), names lowercase, for a shadow copy: as
/// forwarded (a request, already cleaned) or without the hop-by-hop ones (an upstream's answer,
/// as the Pingora path captures it).
pub(crate) fn header_pairs(head: &[u8], clean: bool) -> Vec<(String, String)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if clean {
        let mut resp = httparse::Response::new(&mut slots);
        let _ = resp.parse(head);
        pairs(resp.headers, true)
    } else {
        let mut req = httparse::Request::new(&mut slots);
        let _ = req.parse(head);
        pairs(req.headers, false)
    }
}

/// Parsed headers as (lowercase name, value) pairs; `clean`: without the hop-by-hop ones.
pub(crate) fn pairs(headers: &[httparse::Header<'_>], clean: bool) -> Vec<(String, String)> {
    let mut tokens: Vec<&[u8]> = Vec::new();
    if clean {
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
            tokens.extend(connection_tokens_raw(h.value));
        }
    }
    headers
        .iter()
        .filter(|h| !(h.name.is_empty() || clean && is_hop_by_hop(h.name, &tokens)))
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect()
}

/// Appends `data` to `out` as one chunk (nothing for no data: an empty chunk would end the body).
pub(crate) fn chunk_into(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// Follows a chunked body's framing (RFC 9112 §7.1) across reads, to know where it ends.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads `buf`, the next bytes of the body, handing each piece of chunk data to `data`.
    /// `Some(n)`: the body ends after `n` of them.
    pub(crate) fn feed(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<Option<usize>, ()> {
        use ChunkState as S;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                S::Size => match (b as char).to_digit(16) {
                    Some(d) if self.digits < 15 => {
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                        S::Size
                    }
                    None if self.digits > 0 && b == b'\r' => S::SizeLf,
                    None if self.digits > 0 && matches!(b, b';' | b' ' | b'\t') => S::Extension,
                    _ => return Err(()),
                },
                S::Extension if b == b'\r' => S::SizeLf,
                S::Extension if b == b'\n' => return Err(()),
                S::Extension => S::Extension,
                S::SizeLf if b == b'\n' => {
                    let size = std::mem::take(&mut self.size);
                    self.digits = 0;
                    if size == 0 {
                        S::TrailerStart
                    } else {
                        S::Data(size)
                    }
                }
                S::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - i);
                    data(&buf[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { S::DataCr } else { S::Data(left) };
                    continue;
                }
                S::DataCr if b == b'\r' => S::DataLf,
                S::DataLf if b == b'\n' => S::Size,
                S::TrailerStart if b == b'\r' => S::EndLf,
                S::TrailerStart | S::TrailerLine if b != b'\r' => S::TrailerLine,
                S::TrailerLine => S::TrailerLf,
                S::TrailerLf if b == b'\n' => S::TrailerStart,
                S::EndLf if b == b'\n' => {
                    self.state = S::Done;
                    return Ok(Some(i + 1));
                }
                S::Done => return Ok(Some(i)),
                _ => return Err(()),
            };
            i += 1;
        }
        Ok(if self.done() { Some(i) } else { None })
    }
}

/// One attempt at an exchange with `upstream` at `addr`: a pooled connection (unless
/// `fresh_only`) or a new one, `request` written, and the answer read up to its final head,
/// which `on_final` gets (see [`read_head`]); the head's bytes start `rbuf`. A failure says
/// whether the connection was a pooled one: one the upstream had closed unseen fails with
/// [`Failure::Reset`] before anything reached it. `ConnectRefused` and `ConnectTimedOut` mean
/// nothing was sent.
pub(crate) async fn attempt(
    upstream: &Upstream,
    addr: SocketAddr,
    request: &[u8],
    rbuf: &mut BytesMut,
    fresh_only: bool,
    head_only: bool,
    on_final: OnFinal<'_>,
) -> Result<(TcpStream, ResponseHead), (Failure, bool)> {
    rbuf.clear();
    let pooled = if fresh_only { None } else { pool::take(addr, upstream.idle_timeout) };
    let reused = pooled.is_some();
    let mut conn = match pooled {
        Some(c) => c,
        None => connect(addr, upstream.connect_timeout).await.map_err(|f| (f, false))?,
    };
    write_all(&mut conn, request, upstream.write_timeout).await.map_err(|f| (f, reused))?;
    let head = read_head(&mut conn, rbuf, upstream.read_timeout, head_only, on_final).await.map_err(|f| (f, reused))?;
    Ok((conn, head))
}

/// A whole answer, read into memory.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Lowercase names, in arrival order, without the hop-by-hop ones.
    pub(crate) headers: Vec<(String, String)>,
    /// The body as sent, de-chunked.
    pub(crate) body: Vec<u8>,
}

/// One exchange with `upstream` at `addr`: `request` (head and body, as bytes) written on a
/// pooled or new connection, and the answer read whole, within the upstream's timeouts per step
/// (the caller bounds the whole). A pooled connection that turns out closed before any answer
/// is replaced by a new one when the request is `idempotent`; the connection goes back to the
/// pool when its answer ended cleanly and the upstream keeps it open. A body longer than
/// `max_body` is not read on: [`Failure::TooLarge`].
pub(crate) async fn fetch(
    upstream: &Upstream,
    addr: SocketAddr,
    request: &[u8],
    idempotent: bool,
    head_only: bool,
    max_body: usize,
) -> Result<Answer, Failure> {
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut fresh_only = false;
    let mut headers = Vec::new();
    let (mut conn, head) = loop {
        let mut on_final = |resp: &httparse::Response<'_, '_>, _: Framing| headers = pairs(resp.headers, true);
        match attempt(upstream, addr, request, &mut rbuf, fresh_only, head_only, &mut on_final).await {
            Ok(got) => break got,
            // a pooled connection the upstream had already closed: nothing reached it
            Err((Failure::Reset, true)) if idempotent => fresh_only = true,
            Err((f, _)) => return Err(f),
        }
    };
    rbuf.advance(head.len);
    let body = read_body(&mut conn, &mut rbuf, &head, upstream.read_timeout, max_body).await?;
    // bytes after the answer that nobody asked for: the connection is not reused
    if rbuf.is_empty() && reusable(&head) {
        pool::put(addr, conn, upstream.pool_size);
    }
    Ok(Answer { status: head.status, headers, body })
}

/// Whether the connection can carry another exchange once this answer is read whole.
fn reusable(head: &ResponseHead) -> bool {
    head.keep_alive && head.framing != Framing::Close
}

/// Reads the body of the answer whose head was `head` (already taken off `rbuf`), de-chunked,
/// and leaves in `rbuf` whatever came after it (the next answer's, when requests were
/// pipelined). Longer than `max_body`: [`Failure::TooLarge`], read no further.
async fn read_body(
    conn: &mut TcpStream,
    rbuf: &mut BytesMut,
    head: &ResponseHead,
    limit: Duration,
    max_body: usize,
) -> Result<Vec<u8>, Failure> {
    if matches!(head.framing, Framing::Length(n) if n > max_body as u64) {
        return Err(Failure::TooLarge);
    }
    let mut body = Vec::new();
    let mut chunks = Chunks::default();
    loop {
        let done = match head.framing {
            Framing::Empty => true,
            Framing::Length(n) => {
                let take = usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(body.len()).min(rbuf.len());
                body.extend_from_slice(&rbuf[..take]);
                rbuf.advance(take);
                body.len() as u64 == n
            }
            Framing::Chunked => {
                let end = chunks.feed(rbuf, |data| body.extend_from_slice(data)).map_err(|()| Failure::Invalid)?;
                rbuf.advance(end.unwrap_or(rbuf.len()));
                end.is_some()
            }
            Framing::Close => {
                body.extend_from_slice(rbuf);
                rbuf.clear();
                false
            }
        };
        if body.len() > max_body {
            return Err(Failure::TooLarge);
        }
        if done {
            return Ok(body);
        }
        if with_timeout(limit, conn.read_buf(rbuf)).await? == 0 {
            return if head.framing == Framing::Close { Ok(body) } else { Err(Failure::Reset) };
        }
    }
}

/// Requests to `upstream` at `addr` that may be sent twice (idempotent), written together on one
/// connection (HTTP/1.1 pipelining, RFC 9112 §9.3.2) and their answers read in order: one write
/// and a few reads for a batch of shadow copies, not a write and a read each. Each request is
/// its bytes and whether it is `HEAD`. A request whose answer did not come whole because the
/// connection ended or failed (a pooled connection closed unseen, the upstream closing after
/// some answers, a broken answer before it) is sent again on its own ([`fetch`]), which is why
/// only idempotent requests may be given. Answers in the requests' order.
pub(crate) async fn fetch_all(
    upstream: &Upstream,
    addr: SocketAddr,
    requests: &[(Vec<u8>, bool)],
    max_body: usize,
) -> Vec<Result<Answer, Failure>> {
    let mut out = Vec::with_capacity(requests.len());
    // a pooled connection, then (what it left unanswered) a new one
    for fresh_only in [false, true] {
        if requests.len() - out.len() < 2 {
            break;
        }
        pipelined(upstream, addr, &requests[out.len()..], max_body, fresh_only, &mut out).await;
    }
    // what the connections left unanswered
    for (request, head_only) in &requests[out.len()..] {
        out.push(fetch(upstream, addr, request, true, *head_only, max_body).await);
    }
    out
}

/// [`fetch_all`]'s one connection (a pooled one unless `fresh_only`): pushes to `out` the answers
/// read in order, and stops at the first that did not come whole. An answer over the bound is
/// that request's own ([`Failure::TooLarge`] is pushed); any other failure leaves the request
/// unanswered, for the caller to send again.
async fn pipelined(
    upstream: &Upstream,
    addr: SocketAddr,
    requests: &[(Vec<u8>, bool)],
    max_body: usize,
    fresh_only: bool,
    out: &mut Vec<Result<Answer, Failure>>,
) {
    let mut all = Vec::with_capacity(requests.iter().map(|(r, _)| r.len()).sum());
    requests.iter().for_each(|(r, _)| all.extend_from_slice(r));
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut headers = Vec::new();
    // the connection, all the requests written, and the first answer's head: one attempt
    let first = {
        let mut on_final = |resp: &httparse::Response<'_, '_>, _: Framing| headers = pairs(resp.headers, true);
        attempt(upstream, addr, &all, &mut rbuf, fresh_only, requests[0].1, &mut on_final).await
    };
    let Ok((mut conn, mut head)) = first else { return };
    for (i, (_, head_only)) in requests.iter().enumerate() {
        if i > 0 {
            let mut on_final = |resp: &httparse::Response<'_, '_>, _: Framing| headers = pairs(resp.headers, true);
            let Ok(next) = read_head(&mut conn, &mut rbuf, upstream.read_timeout, *head_only, &mut on_final).await else { return };
            head = next;
        }
        let headers = std::mem::take(&mut headers);
        rbuf.advance(head.len);
        match read_body(&mut conn, &mut rbuf, &head, upstream.read_timeout, max_body).await {
            Ok(body) => out.push(Ok(Answer { status: head.status, headers, body })),
            // its own answer, too long to read: the connection is left mid-answer
            Err(Failure::TooLarge) => {
                out.push(Err(Failure::TooLarge));
                return;
            }
            Err(_) => return,
        }
        if !reusable(&head) {
            return;
        }
        if i + 1 == requests.len() && rbuf.is_empty() {
            pool::put(addr, conn, upstream.pool_size);
            return;
        }
    }
}

/// Idle upstream connections, per thread and upstream address. The proxy's workers (and the
/// shadow thread) are no-steal runtimes, so a connection is only ever used by tasks of the
/// thread that pooled it.
pub(crate) mod pool {
    use super::*;

    thread_local! {
        static IDLE: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>> = RefCell::new(HashMap::new());
    }

    /// The most recently pooled live connection to `addr` idle for less than `idle_timeout`.
    pub(crate) fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&addr)?;
            while let Some((conn, since)) = list.pop() {
                if since.elapsed() < idle_timeout && alive(&conn) {
                    return Some(conn);
                }
            }
            None
        })
    }

    pub(crate) fn put(addr: SocketAddr, conn: TcpStream, limit: usize) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(addr).or_default();
            if list.len() < limit {
                list.push((conn, Instant::now()));
            }
        });
    }

    /// An idle connection with nothing to read is alive; one that reads end-of-file (the
    /// upstream closed it) or bytes nobody asked for is not. Costs no system call unless the
    /// reactor saw it readable.
    fn alive(conn: &TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const BODY: &[u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do_whatever_the_reads() {
        let mut extended = BODY.to_vec();
        extended.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for split in 0..=BODY.len() {
            let mut c = Chunks::default();
            let first = c.feed(&extended[..split], |_| {}).unwrap();
            let end = match first {
                Some(n) => n,
                None => split + c.feed(&extended[split..], |_| {}).unwrap().expect("ends in the second read"),
            };
            assert_eq!(end, BODY.len(), "split at {split}");
        }
        // byte by byte
        let mut c = Chunks::default();
        let mut data = Vec::new();
        let ends: Vec<usize> =
            (0..BODY.len()).filter(|&i| c.feed(&BODY[i..=i], |d| data.extend_from_slice(d)).unwrap().is_some()).collect();
        assert_eq!(ends, vec![BODY.len() - 1]);
        assert_eq!(String::from_utf8(data).unwrap(), "Wikipedia in\r\n\r\nchunks.", "the chunks' data, byte by byte");
    }

    #[test]
    fn a_chunked_body_without_its_end_is_not_done_and_a_bad_one_is_an_error() {
        let mut c = Chunks::default();
        assert_eq!(c.feed(&BODY[..BODY.len() - 2], |_| {}).unwrap(), None);
        assert!(!c.done());
        for bad in [&b"x\r\n"[..], b"\r\n", b"4\r\nWikiXX", b"4\nWiki", b"fffffffffffffffff\r\n"] {
            assert!(Chunks::default().feed(bad, |_| {}).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn response_heads_are_framed_as_rfc_9112_says() {
        let head = |s: &str| parse_head(s.as_bytes(), false, None).unwrap().unwrap();
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!((h.status, h.framing, h.keep_alive, h.len), (200, Framing::Length(5), true, 38));
        assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n").framing, Framing::Chunked);
        assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").framing, Framing::Close);
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::Close);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").framing, Framing::Length(7));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 8\r\n\r\n", false, None).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, None).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false, None).unwrap().is_none());
        // no body for HEAD, 204 and 304 whatever the headers say; an interim head keeps its own
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, None).unwrap().unwrap().framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Empty);
        let mut finals = 0;
        parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", true, Some(&mut |_, _| finals += 1)).unwrap().unwrap();
        parse_head(b"HTTP/1.1 200 OK\r\n\r\n", true, Some(&mut |_, _| finals += 1)).unwrap().unwrap();
        assert_eq!(finals, 1, "only a final head is handed on");
    }

    /// An upstream on loopback that answers each request read on a connection with the next of
    /// `answers` (closing the connection after an answer marked `close`), and counts connections.
    async fn upstream(answers: Vec<(&'static str, bool)>) -> (Upstream, SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = Vec::new();
                'conn: loop {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // the requests have no body: each ends its head; pipelined ones are
                    // answered in order
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let Some((answer, close)) = answers.next() else { return };
                        s.write_all(answer.as_bytes()).await.unwrap();
                        if close {
                            break 'conn;
                        }
                    }
                }
            }
        });
        let s = Duration::from_secs(5);
        let u = Upstream {
            name: "test".into(),
            url: format!("http://{addr}"),
            tls: false,
            host: addr.ip().to_string(),
            port: addr.port(),
            addr: Some(addr),
            health: None,
            health_interval: s,
            connect_timeout: s,
            read_timeout: s,
            write_timeout: s,
            idle_timeout: Duration::from_secs(60),
            pool_size: 4,
            dry_run: false,
            ca_file: None,
            ca: None,
        };
        (u, addr, conns)
    }

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n";

    #[tokio::test]
    async fn fetch_reads_every_framing_whole_and_reuses_what_it_can() {
        let (u, addr, conns) = upstream(vec![
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Kept: a\r\n\r\nhello", false),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\n\r\nuntil close", true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
        ])
        .await;
        let a = fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(a.headers, vec![("content-length".to_string(), "5".to_string()), ("x-kept".to_string(), "a".to_string())]);
        let a = fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (201, &b"Wikipedia"[..]));
        let a = fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"until close"[..]));
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1, "three answers on one pooled connection");
        let a = fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap();
        assert_eq!((a.status, a.body.len()), (304, 0));
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "a close-delimited answer's connection is not pooled");
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_unseen_costs_an_idempotent_request_nothing() {
        // every connection is closed after one answer, without saying so
        let (u, addr, conns) = upstream(vec![
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", true),
        ])
        .await;
        assert_eq!(fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap().body, b"a");
        assert_eq!(fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap().body, b"b");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        // a truncated body is an error, never a short answer
        let (u, addr, _) = upstream(vec![("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true)]).await;
        assert_eq!(fetch(&u, addr, GET, true, false, 1 << 20).await.unwrap_err(), Failure::Reset);
    }

    #[tokio::test]
    async fn an_answer_over_the_bound_is_refused_in_every_framing_and_its_connection_dropped() {
        let (u, addr, conns) = upstream(vec![
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!", false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\n\r\nsix by", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", false),
        ])
        .await;
        // exactly the bound is read whole, and the connection kept
        assert_eq!(fetch(&u, addr, GET, true, false, 5).await.unwrap().body, b"hello");
        assert_eq!(fetch(&u, addr, GET, true, false, 5).await.unwrap_err(), Failure::TooLarge);
        assert_eq!(fetch(&u, addr, GET, true, false, 5).await.unwrap_err(), Failure::TooLarge);
        assert_eq!(fetch(&u, addr, GET, true, false, 5).await.unwrap_err(), Failure::TooLarge);
        assert_eq!(fetch(&u, addr, GET, true, false, 5).await.unwrap().body, b"z");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 4, "no connection is reused after an answer over the bound");
    }

    #[tokio::test]
    async fn pipelined_requests_share_one_connection_and_what_it_leaves_is_sent_again() {
        const HEAD: &[u8] = b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n";
        let reqs = |n: usize| (0..n).map(|i| (if i == 2 { HEAD } else { GET }.to_vec(), i == 2)).collect::<Vec<_>>();
        let (u, addr, conns) = upstream(vec![
            // four answers on one connection, every framing; the HEAD's length is not a body
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", false),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            // then: the upstream closes after two answers; the other two go on a new connection
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ne", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nf", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nh", false),
            // then: an answer over the bound in the middle is that request's, not the others'
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ni", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", false),
            // (written on the connection the client gave up mid-answer: never read)
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk", false),
        ])
        .await;
        let bodies = |got: Vec<Result<Answer, Failure>>| got.into_iter().map(|a| a.map(|a| (a.status, a.body))).collect::<Vec<_>>();
        let ok = |status: u16, body: &[u8]| Ok((status, body.to_vec()));
        let got = bodies(fetch_all(&u, addr, &reqs(4), 10).await);
        assert_eq!(got, vec![ok(200, b"a"), ok(200, b"b"), ok(200, b""), ok(204, b"")]);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1, "four answers, one connection");
        let got = bodies(fetch_all(&u, addr, &reqs(4), 10).await);
        assert_eq!(got, vec![ok(200, b"e"), ok(200, b"f"), ok(200, b""), ok(200, b"h")]);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "the pooled connection, then a new one for the rest");
        let got = bodies(fetch_all(&u, addr, &[(GET.to_vec(), false), (GET.to_vec(), false), (GET.to_vec(), false)], 10).await);
        assert_eq!(got, vec![ok(200, b"i"), Err(Failure::TooLarge), ok(200, b"k")]);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3, "no answer is read after one left mid-way");
    }
}
