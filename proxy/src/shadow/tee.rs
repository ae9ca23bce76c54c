//! The tee: sends a copy of a served request to the other side, off the request path, and
//! compares the answers.
//!
//! The edge captures the request (headers, body up to `max_body_bytes`) and the answer the
//! client got; when the client's exchange is over (Pingora's logging phase) it hands a
//! [`Capture`] to [`Tee::dispatch`], which runs the copy on the shadow thread's own runtime (off
//! the proxy's workers). Dispatch never waits: a `Semaphore` bounds shadow requests
//! in flight, and when none is free the copy is dropped and counted
//! (`strangler_shadow_dropped_total{reason="saturated"}`). Each copy has its own timeout. So the
//! client's latency, status and bytes never depend on the shadow.
//!
//! Unsafe methods are copied only when the route says `writes = "dry-run"`, only to upstreams
//! that declare `dry_run = true`, and with the dry-run header signed by the proxy
//! (`strangler_protocol::dry_run`: HMAC over the request id, method, target and time), so the
//! service can tell a real dry run from a forged one and rolls the work back. Without the secret
//! no copy of a write is sent (`dropped{reason="no_dry_run_key"}`). The monolith is never sent a
//! second write: noise sampling (asking the monolith twice) is for safe methods only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::diff::{compare, Exchange, Rules};
use super::noise::NoiseModel;
use super::record::{answer_facts, redact_headers, redact_uri, Outcome, Record, Summary};
use crate::config::{Route, RouteName, Upstream};
use crate::edge::wire;
use crate::metrics as m;
use strangler_protocol::dry_run::Signed;
use strangler_protocol::DryRunKey;

pub use strangler_protocol::SHADOW_HEADER;

/// Everything needed to replay one request against the other side and compare.
pub struct Capture {
    pub route: Arc<Route>,
    pub request_id: String,
    pub method: http::Method,
    /// Path and query, as the client sent them.
    pub uri: String,
    /// Request headers as forwarded (hop-by-hop already removed).
    pub headers: Vec<(String, String)>,
    /// Or, from the lean path, both heads as bytes: read into `headers` and `primary.headers`
    /// on the shadow thread, so the worker only copies them.
    pub raw: Option<RawHeads>,
    pub body: Vec<u8>,
    /// The side that answered the client: `true` when that was the monolith.
    pub primary_is_legacy: bool,
    /// The answer the client got.
    pub primary: Exchange,
    /// Where the copy goes.
    pub other: Arc<Upstream>,
    /// The monolith (for noise sampling).
    pub legacy: Arc<Upstream>,
    pub dry_run: bool,
    pub sample_noise: bool,
}

/// A request's head as forwarded and its answer's head as the upstream sent it.
#[derive(Debug, Default)]
pub struct RawHeads {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

pub struct Tee {
    /// Copies on their way to the shadow thread: copies, diffs and records run there, not on
    /// the proxy's workers, so a shadowed route costs the client's worker as little as possible.
    /// Bounded by the permits (one per copy in flight).
    queue: mpsc::Sender<Queued>,
    /// per-upstream TLS trust (its `ca_file`, else the system's CAs)
    clients: Arc<crate::outbound::Clients>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    noise: Mutex<NoiseModel>,
    summary: Mutex<Summary>,
    store: Option<mpsc::Sender<Record>>,
    demoter: Arc<crate::demote::Demoter>,
    /// Signs the dry-run header of copies of writes; without it no such copy is sent.
    dry_run_key: Option<DryRunKey>,
}

/// A copy and its place among the copies in flight.
type Queued = (Capture, OwnedSemaphorePermit);

/// How long the shadow thread lets copies gather after starting a batch. Handing each copy to
/// another thread woke that thread once per copy (a system call and a context switch on the
/// worker's side, about a tenth of a proxied request's cost); copies made within a tick now go
/// together, so the workers wake the shadow thread at most about once a tick. Only the copy
/// waits, never the client.
const BATCH_TICK: Duration = Duration::from_millis(1);

/// Starts the copies queued for the shadow thread, a batch at a time (see [`BATCH_TICK`]).
/// Ends when the tee is gone.
async fn drain(tee: std::sync::Weak<Tee>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let Some(t) = tee.upgrade() else { return };
        for (cap, permit) in batch.drain(..) {
            let t = t.clone();
            tokio::spawn(async move {
                let _permit = permit;
                t.compare(cap).await;
            });
        }
        drop(t);
        tokio::time::sleep(BATCH_TICK).await;
    }
}

/// A one-thread runtime on its own OS thread ("strangler-shadow"), alive for the process.
fn shadow_runtime() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("strangler-shadow".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime builds");
            let _ = tx.send(rt.handle().clone());
            rt.block_on(std::future::pending::<()>());
        })
        .expect("the shadow thread starts");
    rx.recv().expect("the shadow thread hands over its runtime")
}

impl Tee {
    pub fn new(
        max_in_flight: usize,
        timeout: Duration,
        store: Option<mpsc::Sender<Record>>,
        demoter: Arc<crate::demote::Demoter>,
        dry_run_key: Option<DryRunKey>,
        clients: Arc<crate::outbound::Clients>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(max_in_flight.max(1));
        let tee = Arc::new(Tee {
            queue,
            clients,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            noise: Mutex::default(),
            summary: Mutex::default(),
            store,
            demoter,
            dry_run_key,
        });
        shadow_runtime().spawn(drain(Arc::downgrade(&tee), rx));
        tee
    }

    pub fn summary(&self) -> Summary {
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn noise(&self) -> NoiseModel {
        self.noise.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A shadow that was not sent, and why (`saturated`, `too_large`, `unsafe_method`, `error_response`).
    pub fn dropped(&self, route: &RouteName, reason: &'static str) {
        m::per_request::shadow_dropped(&route.0, reason).increment(1);
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).dropped(route.as_str(), reason);
    }

    /// Starts the comparison in the background, or drops it when saturated. Never waits.
    pub fn dispatch(self: &Arc<Self>, cap: Capture) {
        if cap.dry_run && self.dry_run_key.is_none() {
            // an unsigned dry run would be refused by the service (or, worse, run for real)
            self.dropped(&cap.route.name, "no_dry_run_key");
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.dropped(&cap.route.name, "saturated");
            return;
        };
        if let Err(e) = self.queue.try_send((cap, permit)) {
            // cannot be full while a permit is held; closed only if the shadow thread is gone
            let (cap, _) = match e {
                mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => q,
            };
            self.dropped(&cap.route.name, "saturated");
        }
    }

    /// The dry-run header's value for a copy of a write: signed over its request id, method,
    /// target and the time.
    fn dry_run_value(&self, cap: &Capture) -> Option<String> {
        let key = self.dry_run_key.as_ref()?;
        let signed = Signed { request_id: &cap.request_id, method: cap.method.as_str(), target: &cap.uri };
        Some(key.sign(crate::clock::now_unix_secs(), signed))
    }

    async fn send(&self, to: &Upstream, cap: &Capture) -> Result<Exchange, Outcome> {
        let Some(addr) = to.addr else { return Err(Outcome::Error) };
        if !to.tls && wire::enabled() {
            return self.send_lean(to, addr, cap).await;
        }
        // https by name, so the certificate is checked against it; http by the resolved address
        let url = if to.tls { format!("https://{}:{}{}", to.host, to.port, cap.uri) } else { format!("http://{addr}{}", cap.uri) };
        let mut req = self.clients.for_upstream(to).request(cap.method.clone(), url).timeout(self.timeout);
        for (k, v) in &cap.headers {
            if k != "content-length" && k != "transfer-encoding" {
                req = req.header(k, v);
            }
        }
        req = req.header(SHADOW_HEADER, "1");
        if cap.dry_run {
            let Some(signed) = self.dry_run_value(cap) else { return Err(Outcome::Error) };
            req = req.header(strangler_protocol::DRY_RUN_HEADER, signed);
        }
        if !cap.body.is_empty() {
            req = req.body(cap.body.clone());
        }
        let resp = req.send().await.map_err(|e| if e.is_timeout() { Outcome::Timeout } else { Outcome::Error })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let body = tokio::time::timeout(self.timeout, resp.bytes()).await.map_err(|_| Outcome::Timeout)?.map_err(|_| Outcome::Error)?;
        Ok(Exchange { status, headers, body: body.to_vec() })
    }

    /// A copy to a plain-HTTP upstream, written as bytes and sent over the shadow thread's own
    /// pool of connections ([`wire::fetch`]): the same request the reqwest path sends (headers
    /// as forwarded, `Host` as the client sent it, the shadow and dry-run headers, the body with
    /// its length) for a fraction of its cost, since the answer is only compared.
    async fn send_lean(&self, to: &Upstream, addr: std::net::SocketAddr, cap: &Capture) -> Result<Exchange, Outcome> {
        let mut req = Vec::with_capacity(
            256 + cap.uri.len() + cap.body.len() + cap.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>(),
        );
        req.extend_from_slice(cap.method.as_str().as_bytes());
        req.push(b' ');
        req.extend_from_slice(cap.uri.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        for (k, v) in &cap.headers {
            if k != "content-length" && k != "transfer-encoding" {
                has_host |= k == "host";
                wire::push_header(&mut req, k.as_bytes(), v.as_bytes());
            }
        }
        if !has_host {
            wire::push_header(&mut req, b"host", addr.to_string().as_bytes());
        }
        wire::push_header(&mut req, SHADOW_HEADER.as_bytes(), b"1");
        if cap.dry_run {
            let Some(signed) = self.dry_run_value(cap) else { return Err(Outcome::Error) };
            wire::push_header(&mut req, strangler_protocol::DRY_RUN_HEADER.as_bytes(), signed.as_bytes());
        }
        if !cap.body.is_empty() {
            wire::push_header(&mut req, b"content-length", cap.body.len().to_string().as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&cap.body);
        let head_only = cap.method == http::Method::HEAD;
        match tokio::time::timeout(self.timeout, wire::fetch(to, addr, &req, cap.method.is_idempotent(), head_only)).await {
            Ok(Ok(a)) => Ok(Exchange { status: a.status, headers: a.headers, body: a.body }),
            Ok(Err(wire::Failure::TimedOut | wire::Failure::ConnectTimedOut)) | Err(_) => Err(Outcome::Timeout),
            Ok(Err(_)) => Err(Outcome::Error),
        }
    }

    async fn compare(&self, mut cap: Capture) {
        if let Some(raw) = cap.raw.take() {
            cap.headers = wire::header_pairs(&raw.request, false);
            cap.primary.headers = wire::header_pairs(&raw.response, true);
        }
        let route = cap.route.name.to_string();
        let path = cap.uri.split_once('?').map_or(cap.uri.as_str(), |(p, _)| p);
        let endpoint = super::endpoint_template(cap.method.as_str(), path);
        let rules: &Rules = &cap.route.shadow.rules;
        let other = self.send(&cap.other, &cap).await;
        // Noise sampling: ask the monolith a second time (safe methods only).
        if cap.sample_noise && cap.method.is_safe() && other.is_ok() {
            let second = if cap.primary_is_legacy { self.send(&cap.legacy, &cap).await.ok() } else { None };
            let pair = match (&second, cap.primary_is_legacy) {
                (Some(s), true) => Some((&cap.primary, s)),
                _ => None,
            };
            if let Some((a, b)) = pair {
                let learned = self.noise.lock().unwrap_or_else(|e| e.into_inner()).learn(&endpoint, a, b, rules);
                if !learned.is_empty() {
                    debug!(route = %route, endpoint = %endpoint, places = ?learned, "learned noise");
                }
            }
        }
        // The monolith's answer: the fingerprints of its secrets let a replay follow a session.
        // Only a stored record is replayed, and finding them parses the answer: not without a store.
        let legacy_answer = if cap.primary_is_legacy { Some(&cap.primary) } else { other.as_ref().ok() };
        let (answer_secrets, answer_ids) = legacy_answer.filter(|_| self.store.is_some()).map(answer_facts).unwrap_or_default();
        let (outcome, regressions, noise, error, statuses) = match other {
            Err(o) => {
                (o, Vec::new(), Vec::new(), Some(format!("shadow request to {} failed ({})", cap.other.name, o.as_str())), (None, None))
            }
            Ok(other) => {
                let (legacy, candidate) = if cap.primary_is_legacy { (&cap.primary, &other) } else { (&other, &cap.primary) };
                let diffs = compare(legacy, candidate, rules);
                let (regressions, noise) = self.noise.lock().unwrap_or_else(|e| e.into_inner()).split(&endpoint, diffs);
                let outcome = if !regressions.is_empty() {
                    Outcome::Mismatch
                } else if !noise.is_empty() {
                    Outcome::Noise
                } else {
                    Outcome::Match
                };
                (outcome, regressions, noise, None, (Some(legacy.status), Some(candidate.status)))
            }
        };
        metrics::counter!(m::SHADOW_COMPARISONS_TOTAL, "route" => route.clone(), "outcome" => outcome.as_str()).increment(1);
        if let (crate::config::Mode::Canary, Some(limits)) = (cap.route.mode, cap.route.demote) {
            let signal = crate::demote::Signal::Comparison(outcome == Outcome::Mismatch);
            self.demoter.observe(&cap.route.name, limits, signal, std::time::Instant::now());
        }
        let record = Record {
            ts_unix_ms: crate::clock::now_unix_ms(),
            route: route.clone(),
            endpoint,
            request_id: cap.request_id.clone(),
            method: cap.method.to_string(),
            uri: redact_uri(&cap.uri),
            primary: if cap.primary_is_legacy { "legacy".into() } else { "extracted".into() },
            outcome,
            legacy_status: statuses.0,
            candidate_status: statuses.1,
            differences: Record::differences(&regressions),
            noise: Record::differences(&noise),
            error,
            request_headers: redact_headers(&cap.headers),
            request_body: Record::body(
                &cap.body,
                cap.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str()),
            ),
            answer_secrets,
            answer_ids,
        };
        if outcome == Outcome::Mismatch {
            debug!(route = %route, request_id = %cap.request_id, differences = record.differences.len(), "shadow mismatch");
        }
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).add(&record);
        if let Some(store) = &self.store {
            super::store::offer(store, record);
        }
    }
}
