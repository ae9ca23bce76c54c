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

use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use super::diff::{compare, Exchange, Rules};
use super::noise::NoiseModel;
use super::record::{answer_facts, redact_headers, redact_uri, Outcome, Record, Summary};
use crate::config::{Route, Upstream};
use crate::metrics as m;
use strangler_protocol::dry_run::Signed;
use strangler_protocol::DryRunKey;

pub use strangler_protocol::SHADOW_HEADER;

/// Everything needed to replay one request against the other side and compare.
pub struct Capture {
    pub route: Arc<Route>,
    pub endpoint: String,
    pub request_id: String,
    pub method: http::Method,
    /// Path and query, as the client sent them.
    pub uri: String,
    /// Request headers as forwarded (hop-by-hop already removed).
    pub headers: Vec<(String, String)>,
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

pub struct Tee {
    /// the shadow thread's runtime: copies, diffs and records run there, not on the proxy's
    /// workers, so a shadowed route costs the client's worker as little as possible
    rt: tokio::runtime::Handle,
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
        Arc::new(Tee {
            rt: shadow_runtime(),
            clients,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            noise: Mutex::default(),
            summary: Mutex::default(),
            store,
            demoter,
            dry_run_key,
        })
    }

    pub fn summary(&self) -> Summary {
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn noise(&self) -> NoiseModel {
        self.noise.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A shadow that was not sent, and why (`saturated`, `too_large`, `unsafe_method`, `error_response`).
    pub fn dropped(&self, route: &str, reason: &'static str) {
        metrics::counter!(m::SHADOW_DROPPED_TOTAL, "route" => route.to_string(), "reason" => reason).increment(1);
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).dropped(route, reason);
    }

    /// Starts the comparison in the background, or drops it when saturated. Never waits.
    pub fn dispatch(self: &Arc<Self>, cap: Capture) {
        if cap.dry_run && self.dry_run_key.is_none() {
            // an unsigned dry run would be refused by the service (or, worse, run for real)
            self.dropped(cap.route.name.as_str(), "no_dry_run_key");
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.dropped(cap.route.name.as_str(), "saturated");
            return;
        };
        let tee = self.clone();
        self.rt.spawn(async move {
            let _permit = permit;
            tee.compare(cap).await;
        });
    }

    async fn send(&self, to: &Upstream, cap: &Capture) -> Result<Exchange, Outcome> {
        let Some(addr) = to.addr else { return Err(Outcome::Error) };
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
            let Some(key) = &self.dry_run_key else { return Err(Outcome::Error) };
            let signed = Signed { request_id: &cap.request_id, method: cap.method.as_str(), target: &cap.uri };
            req = req.header(strangler_protocol::DRY_RUN_HEADER, key.sign(crate::clock::now_unix_secs(), signed));
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

    async fn compare(&self, cap: Capture) {
        let route = cap.route.name.to_string();
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
                let learned = self.noise.lock().unwrap_or_else(|e| e.into_inner()).learn(&cap.endpoint, a, b, rules);
                if !learned.is_empty() {
                    debug!(route = %route, endpoint = %cap.endpoint, places = ?learned, "learned noise");
                }
            }
        }
        // The monolith's answer: the fingerprints of its secrets let a replay follow a session.
        let legacy_answer = if cap.primary_is_legacy { Some(&cap.primary) } else { other.as_ref().ok() };
        let (answer_secrets, answer_ids) = legacy_answer.map(answer_facts).unwrap_or_default();
        let (outcome, regressions, noise, error, statuses) = match other {
            Err(o) => {
                (o, Vec::new(), Vec::new(), Some(format!("shadow request to {} failed ({})", cap.other.name, o.as_str())), (None, None))
            }
            Ok(other) => {
                let (legacy, candidate) = if cap.primary_is_legacy { (&cap.primary, &other) } else { (&other, &cap.primary) };
                let diffs = compare(legacy, candidate, rules);
                let (regressions, noise) = self.noise.lock().unwrap_or_else(|e| e.into_inner()).split(&cap.endpoint, diffs);
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
            endpoint: cap.endpoint.clone(),
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
