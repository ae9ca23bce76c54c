//! Active health checks of upstreams that declare a `health` path.
//!
//! A background service sends `GET <health>` to each such upstream every `health_interval_secs`
//! (HTTP/1.1, or HTTPS checked against the upstream's `ca_file` or the system's CAs) with a
//! timeout, and records up/down in the [`HealthTable`] (shown on the admin API) and the
//! `strangler_upstream_up` gauge. Routing does not consult it: passive signals (refused
//! connections, 502/503/504) drive fallback and the breaker, which react on the first failed
//! request rather than the next check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Upstream, UpstreamName};
use crate::metrics as m;

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamHealth {
    pub up: bool,
    pub detail: String,
    pub checked_unix_secs: u64,
}

#[derive(Debug, Default)]
pub struct HealthTable {
    // A std mutex: never held across an `.await`.
    map: Mutex<HashMap<UpstreamName, UpstreamHealth>>,
}

impl HealthTable {
    pub fn snapshot(&self) -> HashMap<UpstreamName, UpstreamHealth> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, name: &UpstreamName, h: UpstreamHealth) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let changed = map.get(name).is_none_or(|old| old.up != h.up);
        if changed {
            if h.up {
                info!(upstream = %name, "upstream healthy");
            } else {
                warn!(upstream = %name, detail = %h.detail, "upstream unhealthy");
            }
        }
        metrics::gauge!(m::UPSTREAM_UP, "upstream" => name.to_string()).set(if h.up { 1.0 } else { 0.0 });
        map.insert(name.clone(), h);
    }
}

/// One health probe: `Ok(status)` when a response arrived.
pub async fn probe(client: &reqwest::Client, upstream: &Upstream, path: &str) -> Result<u16, String> {
    let addr = upstream.addr.ok_or("unresolved address")?;
    // https by name, so the certificate is checked against it; http by the resolved address
    let url = if upstream.tls { format!("https://{}:{}{path}", upstream.host, upstream.port) } else { format!("http://{addr}{path}") };
    let r = client
        .get(url)
        .header("user-agent", "strangler-health")
        .timeout(upstream.connect_timeout + Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timed out".to_string() } else { error_chain(&e) })?;
    Ok(r.status().as_u16())
}

/// Probes the upstreams of whatever table is live, and records the results in `health`.
/// An error and its causes, `: `-separated (reqwest's own text leaves out why a TLS handshake
/// failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Probes the upstreams of whatever table is live, and records the results in `health`.
pub struct HealthChecker {
    pub tables: Arc<arc_swap::ArcSwap<crate::config::RouteTable>>,
    pub health: Arc<HealthTable>,
    pub clients: Arc<crate::outbound::Clients>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut next: HashMap<UpstreamName, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            let table = self.tables.load_full();
            let now = Instant::now();
            for u in table.upstreams.values() {
                let Some(path) = &u.health else { continue };
                if next.get(&u.name).is_some_and(|t| *t > now) {
                    continue;
                }
                next.insert(u.name.clone(), now + u.health_interval);
                let at = crate::clock::now_unix_secs();
                let result = match probe(&self.clients.for_upstream(u), u, path).await {
                    Ok(s) if (200..400).contains(&s) => UpstreamHealth { up: true, detail: format!("{s}"), checked_unix_secs: at },
                    Ok(s) => UpstreamHealth { up: false, detail: format!("status {s}"), checked_unix_secs: at },
                    Err(e) => UpstreamHealth { up: false, detail: e, checked_unix_secs: at },
                };
                self.health.set(&u.name, result);
            }
        }
    }
}
