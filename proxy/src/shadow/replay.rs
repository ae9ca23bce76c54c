//! Replaying a recorded corpus through the monolith and the candidate service: the CI gate of
//! each cut-over.
//!
//! A cut-over folder (`shadow-tests/<cut-over>/`) holds `requests.jsonl` (one request a line:
//! `method`, `uri`, `headers`, `body`, as the shadow store records them, or as extracted by
//! `strangler corpus`) and `parity.toml`:
//!
//! ```toml
//! route = "auth"                          # the name reports use
//! legacy_url = "http://127.0.0.1:3000"    # overridable with --legacy / --candidate
//! candidate_url = "http://127.0.0.1:4001"
//! min_parity = 100.0
//! noise_samples = 2                       # ask the monolith twice for the first N requests of each endpoint
//! [rules]                                 # the same keys as a route's `shadow = { … }`
//! ignore = ["$.accessToken"]
//! ```
//!
//! Requests are replayed in file order, one at a time (a corpus is a session: later requests
//! may depend on earlier ones), each to the monolith and then to the candidate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use super::diff::{compare, Exchange, Rules};
use super::noise::NoiseModel;
use super::record::{Outcome, Record, Summary};
use super::template::endpoint_template;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parity {
    pub route: String,
    pub legacy_url: Option<String>,
    pub candidate_url: Option<String>,
    #[serde(default = "hundred")]
    pub min_parity: f64,
    #[serde(default = "two")]
    pub noise_samples: u32,
    #[serde(default)]
    pub rules: crate::config::raw::RawRouteShadow,
}

fn hundred() -> f64 {
    100.0
}
fn two() -> u32 {
    2
}

/// One request of a corpus.
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusRequest {
    pub method: String,
    pub uri: String,
    #[serde(default, alias = "request_headers")]
    pub headers: Vec<(String, String)>,
    #[serde(default, alias = "request_body")]
    pub body: Option<Value>,
}

/// Compiles a `[rules]` table with the same code as routes.toml, so rules mean the same in both.
pub fn compile_rules(parity_toml: &str, name: &str) -> anyhow::Result<Rules> {
    // Wrap the rules as a route of a minimal table and let the config compiler check them.
    let doc: toml::Table = toml::from_str(parity_toml).with_context(|| format!("parsing {name}"))?;
    let rules = doc.get("rules").cloned().unwrap_or(toml::Value::Table(Default::default()));
    let mut route = toml::Table::new();
    route.insert("name".into(), "replay".into());
    route.insert("target".into(), "legacy".into());
    route.insert("mode".into(), "shadow".into());
    route.insert("shadow".into(), rules);
    let mut table = toml::Table::new();
    let mut up = toml::Table::new();
    up.insert("url".into(), "http://127.0.0.1:1".into());
    table.insert("upstreams".into(), toml::Value::Table([("legacy".to_string(), toml::Value::Table(up))].into_iter().collect()));
    table.insert("routes".into(), toml::Value::Array(vec![toml::Value::Table(route)]));
    let text = toml::to_string(&table)?;
    match crate::config::RouteTable::compile(crate::config::Source::new(&format!("{name} [rules]"), &text)) {
        Ok(c) => Ok(c.table.routes[0].shadow.rules.clone()),
        Err(e) => bail!("{e}"),
    }
}

pub fn load_corpus(path: &Path) -> anyhow::Result<Vec<CorpusRequest>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not a corpus request", path.display(), i + 1)))
        .collect()
}

async fn send(client: &reqwest::Client, base: &str, r: &CorpusRequest) -> Result<Exchange, String> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, format!("{}{}", base.trim_end_matches('/'), r.uri));
    for (k, v) in &r.headers {
        if !matches!(k.as_str(), "content-length" | "transfer-encoding" | "host" | "connection") {
            req = req.header(k, v);
        }
    }
    if let Some(body) = &r.body {
        req = req.body(match body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
    Ok(Exchange { status, headers, body })
}

/// Replays a cut-over folder; returns the summary and the threshold.
pub async fn replay(dir: &Path, legacy: Option<String>, candidate: Option<String>) -> anyhow::Result<(Summary, f64)> {
    let parity_path = dir.join("parity.toml");
    let parity_text = std::fs::read_to_string(&parity_path).with_context(|| format!("reading {}", parity_path.display()))?;
    let parity: Parity = toml::from_str(&parity_text).with_context(|| format!("parsing {}", parity_path.display()))?;
    let rules = compile_rules(&parity_text, &parity_path.display().to_string())?;
    let legacy = legacy.or(parity.legacy_url.clone()).context("no monolith URL: set legacy_url in parity.toml or pass --legacy")?;
    let candidate =
        candidate.or(parity.candidate_url.clone()).context("no candidate URL: set candidate_url in parity.toml or pass --candidate")?;
    let corpus = load_corpus(&dir.join("requests.jsonl"))?;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30)).build()?;
    let mut noise = NoiseModel::default();
    let mut sampled: BTreeMap<String, u32> = BTreeMap::new();
    let mut summary = Summary::default();
    for (i, r) in corpus.iter().enumerate() {
        let path = r.uri.split('?').next().unwrap_or(&r.uri);
        let endpoint = endpoint_template(&r.method, path);
        let safe = matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS");
        let a = send(&client, &legacy, r).await;
        if let (true, Ok(first)) = (safe && sampled.get(&endpoint).copied().unwrap_or(0) < parity.noise_samples, &a) {
            if let Ok(second) = send(&client, &legacy, r).await {
                noise.learn(&endpoint, first, &second, &rules);
                *sampled.entry(endpoint.clone()).or_default() += 1;
            }
        }
        let b = send(&client, &candidate, r).await;
        let (outcome, regressions, noise_diffs, error, statuses) = match (&a, &b) {
            (Ok(a), Ok(b)) => {
                let (reg, nz) = noise.split(&endpoint, compare(a, b, &rules));
                let outcome = if !reg.is_empty() {
                    Outcome::Mismatch
                } else if !nz.is_empty() {
                    Outcome::Noise
                } else {
                    Outcome::Match
                };
                (outcome, reg, nz, None, (Some(a.status), Some(b.status)))
            }
            (Err(e), _) => (Outcome::Error, vec![], vec![], Some(format!("monolith: {e}")), (None, None)),
            (_, Err(e)) => (Outcome::Error, vec![], vec![], Some(format!("candidate: {e}")), (None, None)),
        };
        summary.add(&Record {
            ts_unix_ms: 0,
            route: parity.route.clone(),
            endpoint,
            request_id: format!("corpus#{}", i + 1),
            method: r.method.clone(),
            uri: super::record::redact_uri(&r.uri),
            primary: "replay".into(),
            outcome,
            legacy_status: statuses.0,
            candidate_status: statuses.1,
            differences: Record::differences(&regressions),
            noise: Record::differences(&noise_diffs),
            error,
            request_headers: vec![],
            request_body: None,
        });
    }
    Ok((summary, parity.min_parity))
}

/// Extracts a route's requests from a shadow store into corpus lines.
pub fn corpus_from_store(store: &Path, route: &str) -> anyhow::Result<Vec<String>> {
    let paths = if store.is_dir() { super::store::files(store)? } else { vec![store.to_path_buf()] };
    let mut out = Vec::new();
    for p in paths {
        for line in std::fs::read_to_string(&p)?.lines() {
            let Ok(r) = serde_json::from_str::<Record>(line) else { continue };
            if r.route == route {
                out.push(
                    serde_json::json!({ "method": r.method, "uri": r.uri, "headers": r.request_headers, "body": r.request_body })
                        .to_string(),
                );
            }
        }
    }
    Ok(out)
}
