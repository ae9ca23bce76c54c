//! `strangler plan`: the migration's progress for a terminal or a tool. From a running proxy, it
//! is the admin API's `GET /plan` (live traffic, modes and their ages, parity, breakers,
//! demotions, what the monolith still answers); without one, it is built from routes.toml and a
//! shadow store (the plan, each route's mode and its parity, no traffic). A store given with
//! `--admin` replaces the proxy's own parity by the store's, which covers every proxy writing to
//! it.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use crate::config::RouteTable;
use crate::progress::report::{ConfigState, Inputs, PlanReport};
use crate::progress::Progress;
use crate::shadow::record::Summary;

/// `GET <admin>/plan`, with the bearer token when one is given.
pub async fn fetch(admin: &str, token: Option<&str>, token_env: &str) -> anyhow::Result<PlanReport> {
    let base = if admin.contains("://") { admin.to_string() } else { format!("http://{admin}") };
    let url = format!("{}/plan", base.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut req = client.get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("GET {url}: reading the answer"))?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let why = if token.is_some() { "the token in" } else { "a token: set" };
        bail!("GET {url}: 401, the admin API needs {why} ${token_env} ([admin] token_env of the proxy)");
    }
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: not a progress report (is this a strangler admin listener?)"))
}

/// The report without a running proxy: the plan and the routes' modes from `table`, parity from
/// `shadow` (a store's summary), no traffic.
pub fn offline(table: &RouteTable, path: &str, shadow: &Summary) -> PlanReport {
    let progress = Progress::default();
    progress.adopt(table, SystemTime::now());
    let mut report = PlanReport::build(Inputs {
        table,
        progress: &progress,
        shadow,
        breakers: Vec::new(),
        demoted: Vec::new(),
        demotion_history: Vec::new(),
        config: ConfigState { path: Some(path.to_string()), hash: table.hash.clone(), loaded_at_unix_secs: None, last_reload_error: None },
        live: false,
        now: Instant::now(),
        now_wall: SystemTime::now(),
    });
    // no proxy, no knowledge of when a mode was set
    for r in &mut report.routes {
        r.mode_since_unix_ms = None;
        r.mode_since_start = false;
    }
    report
}
