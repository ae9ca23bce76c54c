//! Active health checks of upstreams that declare a `health` path.
//!
//! A background service sends `GET <health>` to each such upstream every `health_interval_secs`
//! over plain HTTP/1.1 with a timeout, and records up/down in the [`HealthTable`] (shown on the
//! admin API) and the `strangler_upstream_up` gauge. Routing does not consult it: passive
//! signals (refused connections, 502/503/504) drive fallback and the breaker, which react on the
//! first failed request rather than the next check. TLS upstreams are not probed yet (reported as
//! unchecked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// One health probe: `Ok(status)` when a response line arrived.
pub async fn probe(upstream: &Upstream, path: &str) -> Result<u16, String> {
    let addr = upstream.addr.ok_or("unresolved address")?;
    let timeout = upstream.connect_timeout + Duration::from_secs(2);
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: strangler-health\r\nConnection: close\r\n\r\n",
            upstream.host, upstream.port
        );
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let read = stream.read(&mut buf[n..]).await.map_err(|e| format!("read: {e}"))?;
            if read == 0 {
                return Err("closed before answering".to_string());
            }
            n += read;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| "not an HTTP response".to_string())
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| "timed out".to_string())?
}

/// Probes the upstreams of whatever table is live, and records the results in `health`.
pub struct HealthChecker {
    pub tables: Arc<arc_swap::ArcSwap<crate::config::RouteTable>>,
    pub health: Arc<HealthTable>,
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
                let result = if u.tls {
                    UpstreamHealth { up: true, detail: "unchecked (tls)".into(), checked_unix_secs: 0 }
                } else {
                    let at = crate::clock::now_unix_secs();
                    match probe(u, path).await {
                        Ok(s) if (200..400).contains(&s) => UpstreamHealth { up: true, detail: format!("{s}"), checked_unix_secs: at },
                        Ok(s) => UpstreamHealth { up: false, detail: format!("status {s}"), checked_unix_secs: at },
                        Err(e) => UpstreamHealth { up: false, detail: e, checked_unix_secs: at },
                    }
                };
                self.health.set(&u.name, result);
            }
        }
    }
}
