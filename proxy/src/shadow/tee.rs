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
//! Copies reach the shadow thread in batches (see `BATCH_TICK`). Copies of idempotent requests
//! to the same plain-HTTP upstream in a batch go pipelined, a few on one connection
//! (`PIPELINE_DEPTH`), sharing one timeout; a copy the connection leaves unanswered is sent again
//! on its own. An answer longer than `max_body_bytes` is not read on nor compared
//! (`dropped{reason="too_large"}`), as the client's answer is not.
//!
//! Unsafe methods are copied only when the route says `writes = "dry-run"`, only to upstreams
//! that declare `dry_run = true`, and with the dry-run header signed by the proxy
//! (`strangler_protocol::dry_run`: HMAC over the request id, method, target and time), so the
//! service can tell a real dry run from a forged one and rolls the work back. Without the secret
//! no copy of a write is sent (`dropped{reason="no_dry_run_key"}`). The monolith is never sent a
//! second write: noise sampling (asking the monolith twice) is for safe methods only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
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

impl Capture {
    /// The heads captured as bytes (the lean path), read into header pairs.
    fn read_raw(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.headers = wire::header_pairs(&raw.request, false);
            self.primary.headers = wire::header_pairs(&raw.response, true);
        }
    }

    /// Whether this copy may go pipelined with others to the same upstream: sent over the lean
    /// client, and safe to send again if the connection fails under it.
    fn pipelinable(&self) -> bool {
        self.method.is_idempotent() && !self.dry_run && !self.other.tls && self.other.addr.is_some() && wire::enabled()
    }
}

/// A lean exchange's result as the comparison takes it.
fn lean_answer(answer: Result<wire::Answer, wire::Failure>) -> Result<Exchange, NoAnswer> {
    match answer {
        Ok(a) => Ok(Exchange { status: a.status, headers: a.headers, body: a.body }),
        Err(wire::Failure::TooLarge) => Err(NoAnswer::TooLarge),
        Err(wire::Failure::TimedOut | wire::Failure::ConnectTimedOut) => Err(NoAnswer::Failed(Outcome::Timeout)),
        Err(_) => Err(NoAnswer::Failed(Outcome::Error)),
    }
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
    /// Wakes the shadow thread before its tick when half the queue is taken.
    half_full: Arc<Notify>,
    /// per-upstream TLS trust (its `ca_file`, else the system's CAs)
    clients: Arc<crate::outbound::Clients>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    /// A copy's answer longer than this is not read on, nor compared (`dropped{reason="too_large"}`),
    /// as the client's answer is not when it is longer.
    max_body: usize,
    noise: Mutex<NoiseModel>,
    summary: Mutex<Summary>,
    store: Option<mpsc::Sender<Record>>,
    demoter: Arc<crate::demote::Demoter>,
    /// Signs the dry-run header of copies of writes; without it no such copy is sent.
    dry_run_key: Option<DryRunKey>,
}

/// Why a copy has no answer to compare.
#[derive(Debug, Clone, Copy)]
enum NoAnswer {
    /// Counted and recorded with this outcome.
    Failed(Outcome),
    /// Longer than `max_body`: not compared, counted as dropped (`too_large`).
    TooLarge,
}

/// A copy and its place among the copies in flight.
type Queued = (Capture, OwnedSemaphorePermit);

/// How long the shadow thread lets copies gather after starting a batch. Handing each copy to
/// another thread woke that thread once per copy (a system call and a context switch on the
/// worker's side, about a tenth of a proxied request's cost); copies made within a tick go
/// together, so the workers wake the shadow thread at most about once a tick, or when half the
/// queue is taken (see [`Tee::dispatch`]), whichever comes first: a busy route's copies do not
/// wait for the tick to be dropped as saturated. Only the copy waits, never the client.
const BATCH_TICK: Duration = Duration::from_millis(4);

/// How many copies at most go pipelined on one connection. The upstream answers pipelined
/// requests one after the other, so a deeper line holds its copies' places among those in
/// flight longer when the upstream is slow; a few per connection already take most of the
/// system calls out.
const PIPELINE_DEPTH: usize = 8;

/// Starts the copies queued for the shadow thread, a batch at a time (see [`BATCH_TICK`]): all
/// that are queued, then waits for the tick or for the queue to fill to half. Ends when the tee
/// is gone.
async fn drain(tee: std::sync::Weak<Tee>, mut rx: mpsc::Receiver<Queued>, half_full: Arc<Notify>) {
    let mut batch = Vec::with_capacity(rx.max_capacity());
    while rx.recv_many(&mut batch, rx.max_capacity()).await > 0 {
        let Some(t) = tee.upgrade() else { return };
        // copies to the same upstream that may share a connection, a few at a time
        let mut lines: Vec<(std::net::SocketAddr, Vec<Queued>)> = Vec::new();
        for (cap, permit) in batch.drain(..) {
            let line = match cap.other.addr.filter(|_| cap.pipelinable()) {
                Some(addr) => match lines.iter().position(|(a, l)| *a == addr && l.len() < PIPELINE_DEPTH) {
                    Some(i) => i,
                    None => {
                        lines.push((addr, Vec::with_capacity(PIPELINE_DEPTH)));
                        lines.len() - 1
                    }
                },
                None => {
                    start_one(t.clone(), (cap, permit));
                    continue;
                }
            };
            lines[line].1.push((cap, permit));
        }
        for (addr, mut line) in lines {
            let t = t.clone();
            if line.len() == 1 {
                start_one(t, line.pop().expect("one copy"));
            } else {
                tokio::spawn(async move { t.compare_pipelined(addr, line).await });
            }
        }
        drop(t);
        tokio::select! {
            () = tokio::time::sleep(BATCH_TICK) => {}
            () = half_full.notified() => {}
        }
    }
}

/// Sends and compares one copy on its own.
fn start_one(t: Arc<Tee>, (cap, permit): Queued) {
    tokio::spawn(async move {
        let _permit = permit;
        t.compare(cap).await;
    });
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
        max_body: usize,
        timeout: Duration,
        store: Option<mpsc::Sender<Record>>,
        demoter: Arc<crate::demote::Demoter>,
        dry_run_key: Option<DryRunKey>,
        clients: Arc<crate::outbound::Clients>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(max_in_flight.max(1));
        let half_full = Arc::new(Notify::new());
        let tee = Arc::new(Tee {
            queue,
            half_full: half_full.clone(),
            clients,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            max_body,
            noise: Mutex::default(),
            summary: Mutex::default(),
            store,
            demoter,
            dry_run_key,
        });
        shadow_runtime().spawn(drain(Arc::downgrade(&tee), rx, half_full));
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
        m::per_request::shadow_dropped(&route.0, reason);
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
        } else if self.queue.capacity() * 2 <= self.queue.max_capacity() {
            self.half_full.notify_one();
        }
    }

    /// The dry-run header's value for a copy of a write: signed over its request id, method,
    /// target and the time.
    fn dry_run_value(&self, cap: &Capture) -> Option<String> {
        let key = self.dry_run_key.as_ref()?;
        let signed = Signed { request_id: &cap.request_id, method: cap.method.as_str(), target: &cap.uri };
        Some(key.sign(crate::clock::now_unix_secs(), signed))
    }

    async fn send(&self, to: &Upstream, cap: &Capture) -> Result<Exchange, NoAnswer> {
        let Some(addr) = to.addr else { return Err(NoAnswer::Failed(Outcome::Error)) };
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
            let Some(signed) = self.dry_run_value(cap) else { return Err(NoAnswer::Failed(Outcome::Error)) };
            req = req.header(strangler_protocol::DRY_RUN_HEADER, signed);
        }
        if !cap.body.is_empty() {
            req = req.body(cap.body.clone());
        }
        let failed = |e: reqwest::Error| NoAnswer::Failed(if e.is_timeout() { Outcome::Timeout } else { Outcome::Error });
        let mut resp = req.send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        if resp.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(NoAnswer::TooLarge);
        }
        let read = async {
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(failed)? {
                if body.len() + chunk.len() > self.max_body {
                    return Err(NoAnswer::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        let body = tokio::time::timeout(self.timeout, read).await.map_err(|_| NoAnswer::Failed(Outcome::Timeout))??;
        Ok(Exchange { status, headers, body })
    }

    /// A copy to a plain-HTTP upstream, written as bytes and sent over the shadow thread's own
    /// pool of connections ([`wire::fetch`]): the same request the reqwest path sends (headers
    /// as forwarded, `Host` as the client sent it, the shadow and dry-run headers, the body with
    /// its length) for a fraction of its cost, since the answer is only compared.
    async fn send_lean(&self, to: &Upstream, addr: std::net::SocketAddr, cap: &Capture) -> Result<Exchange, NoAnswer> {
        let req = self.lean_request(addr, cap)?;
        let head_only = cap.method == http::Method::HEAD;
        match tokio::time::timeout(self.timeout, wire::fetch(to, addr, &req, cap.method.is_idempotent(), head_only, self.max_body)).await {
            Ok(answer) => lean_answer(answer),
            Err(_) => Err(NoAnswer::Failed(Outcome::Timeout)),
        }
    }

    /// A copy as the bytes [`wire::fetch`] sends: the same request the reqwest path sends
    /// (headers as forwarded, `Host` as the client sent it, the shadow and dry-run headers, the
    /// body with its length).
    fn lean_request(&self, addr: std::net::SocketAddr, cap: &Capture) -> Result<Vec<u8>, NoAnswer> {
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
            let Some(signed) = self.dry_run_value(cap) else { return Err(NoAnswer::Failed(Outcome::Error)) };
            wire::push_header(&mut req, strangler_protocol::DRY_RUN_HEADER.as_bytes(), signed.as_bytes());
        }
        if !cap.body.is_empty() {
            wire::push_header(&mut req, b"content-length", cap.body.len().to_string().as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&cap.body);
        Ok(req)
    }

    /// Copies of idempotent requests to one plain-HTTP upstream (at `addr`, as `drain` grouped
    /// them), sent pipelined on one connection ([`wire::fetch_all`]) and compared one by one; the
    /// batch shares one timeout.
    async fn compare_pipelined(&self, addr: std::net::SocketAddr, batch: Vec<Queued>) {
        let to = batch[0].0.other.clone();
        let mut sent = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for (mut cap, permit) in batch {
            cap.read_raw();
            match self.lean_request(addr, &cap) {
                Ok(req) => {
                    requests.push((req, cap.method == http::Method::HEAD));
                    sent.push((cap, permit));
                }
                Err(e) => self.judge(cap, Err(e)).await,
            }
        }
        let answers: Vec<_> = match tokio::time::timeout(self.timeout, wire::fetch_all(&to, addr, &requests, self.max_body)).await {
            Ok(answers) => answers.into_iter().map(lean_answer).collect(),
            Err(_) => vec![Err(NoAnswer::Failed(Outcome::Timeout)); sent.len()],
        };
        for ((cap, permit), answer) in sent.into_iter().zip(answers) {
            self.judge(cap, answer).await;
            drop(permit);
        }
    }

    async fn compare(&self, mut cap: Capture) {
        cap.read_raw();
        let other = self.send(&cap.other, &cap).await;
        self.judge(cap, other).await;
    }

    /// Compares the copy's answer (`other`) with the client's, learns noise, counts and keeps
    /// the record.
    async fn judge(&self, mut cap: Capture, other: Result<Exchange, NoAnswer>) {
        let route = cap.route.name.to_string();
        let path = cap.uri.split_once('?').map_or(cap.uri.as_str(), |(p, _)| p);
        let endpoint = super::endpoint_template(cap.method.as_str(), path);
        let rules: &Rules = &cap.route.shadow.rules;
        let other = match other {
            Ok(answer) => Ok(answer),
            Err(NoAnswer::Failed(o)) => Err(o),
            Err(NoAnswer::TooLarge) => {
                self.dropped(&cap.route.name, "too_large");
                return;
            }
        };
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
        m::per_request::shadow_compared(&cap.route.name.0, outcome.as_str());
        if let (crate::config::Mode::Canary, Some(limits)) = (cap.route.mode, cap.route.demote) {
            let signal = crate::demote::Signal::Comparison(outcome == Outcome::Mismatch);
            self.demoter.observe(&cap.route.name, limits, signal, std::time::Instant::now());
        }
        let record = Record {
            ts_unix_ms: crate::clock::now_unix_ms(),
            route: route.clone(),
            endpoint,
            request_id: std::mem::take(&mut cap.request_id),
            method: cap.method.to_string(),
            uri: redact_uri(&cap.uri),
            primary: if cap.primary_is_legacy { "legacy".into() } else { "extracted".into() },
            outcome,
            legacy_status: statuses.0,
            candidate_status: statuses.1,
            differences: Record::differences(&regressions),
            noise: Record::differences(&noise),
            error,
            request_body: Record::body(
                &cap.body,
                cap.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str()),
            ),
            // the last use of the copy's headers: redacted where they are
            request_headers: redact_headers(std::mem::take(&mut cap.headers)),
            answer_secrets,
            answer_ids,
        };
        if outcome == Outcome::Mismatch {
            debug!(route = %route, request_id = %record.request_id, differences = record.differences.len(), "shadow mismatch");
        }
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).add(&record);
        if let Some(store) = &self.store {
            super::store::offer(store, record);
        }
    }
}
