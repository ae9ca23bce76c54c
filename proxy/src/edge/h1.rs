//! The proxy's connection loop: our own reading of HTTP/1.x request heads in front of Pingora.
//!
//! [`EdgeApp`] is the `ServerApp` the listeners run. HTTP/2 (ALPN `h2`, or h2c when enabled)
//! goes straight to Pingora's `HttpProxy`. For HTTP/1.x it owns the keep-alive loop that
//! Pingora would otherwise run, so every request head is read and judged here first
//! ([`super::head::inspect`]):
//!
//! - a malformed request line (a space in the target), a missing, doubled or invalid `Host`,
//!   conflicting `Content-Length`s or an oversized head get `400`/`431` with `Connection: close`,
//!   instead of Pingora's lenient repairs;
//! - the bytes of one request (its head and whatever of its body has arrived) are handed to a
//!   Pingora session as its pipelined prefix, so Pingora parses them without another read, and
//!   anything after them (the next pipelined request) stays here for the next turn. Pipelined
//!   requests are therefore answered in order. (After a chunked body, or a body longer than what
//!   had arrived, Pingora may read past the request itself; it then answers and closes the
//!   connection, and the client retries the rest, as RFC 9112 §9.3.2 expects.)
//!
//! Idle connections wait at most [`KEEPALIVE`] for the next request; a head must arrive whole
//! within [`HEAD_TIMEOUT`] of its first byte (`408` otherwise); on shutdown, idle connections
//! are closed and the last answer says `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

use super::head::{self, Body, Head, Invalid};
use super::lean::Served;
use super::Edge;
use crate::metrics as m;

/// How long an idle keep-alive connection waits for the next request (Pingora's default).
pub const KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a request head may take to arrive once its first byte has (nginx's
/// `client_header_timeout`).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct EdgeApp {
    proxy: Arc<HttpProxy<Edge>>,
    /// The same edge (its state and tee shared) for the lean path, or `None` when it is off.
    lean: Option<Edge>,
    h2c: bool,
}

impl EdgeApp {
    /// `lean`: an [`Edge`] over the same state as `proxy`'s, serving the requests the lean
    /// HTTP/1 path takes ([`super::lean`]); it is dropped when `STRANGLER_LEAN_HTTP1=0`.
    pub fn new(proxy: HttpProxy<Edge>, lean: Edge, h2c: bool) -> EdgeApp {
        let lean = super::wire::enabled().then_some(lean);
        EdgeApp { proxy: Arc::new(proxy), lean, h2c }
    }
}

/// How a wait for bytes ended.
enum Read {
    Data,
    Closed,
    TimedOut,
    ShuttingDown,
}

async fn read_more(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant, shutdown: &mut ShutdownWatch) -> Read {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    let idle = buf.is_empty();
    tokio::select! {
        biased;
        r = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => match r {
            Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
            Ok(Ok(_)) => Read::Data,
            Err(_) => Read::TimedOut,
        },
        // only an idle connection is dropped at shutdown: a request that has begun is read whole
        // and answered (with `Connection: close`)
        _ = shutdown.changed(), if idle => Read::ShuttingDown,
    }
}

/// Writes a refusal with `Connection: close` and closes. The body has the monolith's error shape.
async fn refuse(stream: &mut Stream, invalid: Invalid) {
    metrics::counter!(m::REQUESTS_REFUSED_TOTAL, "reason" => invalid.reason).increment(1);
    let client = stream.get_socket_digest().and_then(|d| d.peer_addr().map(|a| a.to_string())).unwrap_or_default();
    info!(target: "access", status = invalid.status, refused = invalid.reason, client = %client, "request refused before routing");
    let _ = super::write_error(stream, invalid.status, &format!("bad request: {}", invalid.reason.replace('_', " ")), &[]).await;
    let _ = stream.shutdown().await;
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let h2c = !h2 && self.h2c && stream.get_ssl_digest().is_none() && {
            let mut preface = [0u8; H2_PREFACE.len()];
            // Pingora's peek on a TCP stream reads and rewinds: nothing is lost either way
            matches!(stream.try_peek(&mut preface).await, Ok(true)) && preface == H2_PREFACE
        };
        if h2 || h2c {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }

        let mut shutdown = shutdown.clone();
        let mut buf = BytesMut::with_capacity(4096);
        let mut scratch = super::lean::Scratch::default();
        loop {
            // a whole head, or a reason to stop
            let mut deadline = Instant::now() + KEEPALIVE;
            let (len, body) = loop {
                match head::inspect(&buf) {
                    Head::Complete { len, body } => break (len, body),
                    Head::Invalid(invalid) => {
                        refuse(&mut stream, invalid).await;
                        return None;
                    }
                    Head::Partial => {}
                }
                if buf.is_empty() && *shutdown.borrow() {
                    return None;
                }
                let was_idle = buf.is_empty();
                match read_more(&mut stream, &mut buf, deadline, &mut shutdown).await {
                    Read::Data if was_idle => deadline = Instant::now() + HEAD_TIMEOUT,
                    Read::Data => {}
                    Read::TimedOut if !buf.is_empty() => {
                        refuse(&mut stream, Invalid { status: 408, reason: "head_timeout" }).await;
                        return None;
                    }
                    Read::Closed | Read::TimedOut | Read::ShuttingDown => return None,
                }
            };
            // this request's bytes: its head and what has arrived of its body; a pipelined
            // request after them stays in `buf`
            let take = match body {
                Body::None => len,
                Body::Length(n) => len + usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - len),
                Body::Chunked | Body::Tunnel => buf.len(),
            };
            // the common request, whole in hand: the lean path, unless it declines
            let whole = match body {
                Body::None => true,
                Body::Length(n) => (take - len) as u64 == n,
                Body::Chunked | Body::Tunnel => false,
            };
            if let (Some(edge), true) = (&self.lean, whole) {
                let closing = *shutdown.borrow();
                match super::lean::serve(edge, &mut stream, &mut scratch, &buf[..take], closing).await {
                    Served::Declined => {}
                    Served::KeepAlive => {
                        buf.advance(take);
                        continue;
                    }
                    Served::Close => {
                        let _ = stream.shutdown().await;
                        return None;
                    }
                }
            }
            let prefix = buf.split_to(take);
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(KEEPALIVE.as_secs()) });
            session.set_pipelined_prefix(prefix);
            let reused = HttpServerApp::process_new_http(&self.proxy, session, &shutdown).await?;
            // Pingora's persistent settings hold nothing we use: keep-alive is set per request
            // here, and overread bytes never come back (with pipelining off, Pingora does not
            // reuse a connection it read past)
            stream = reused.consume().0;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await;
    }
}
