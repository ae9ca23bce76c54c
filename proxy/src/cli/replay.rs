//! Replaying a recorded corpus through the monolith and the candidate service: the CI gate of
//! each cut-over.
//!
//! A cut-over folder (`shadow-tests/<cut-over>/`) holds `requests.jsonl` (one request a line:
//! `method`, `uri`, `headers`, `body` and, when the monolith's answer held token-like secrets,
//! `answer_secrets`, as the shadow store records them, or as extracted by `strangler corpus`)
//! and `parity.toml`:
//!
//! ```toml
//! route = "auth"                          # the name reports use
//! legacy_url = "http://127.0.0.1:3000"    # overridable with --legacy / --candidate
//! candidate_url = "http://127.0.0.1:4001"
//! min_parity = 100.0
//! noise_samples = 2                       # ask the monolith twice for the first N requests of each endpoint
//! candidate_dry_run = true                # ask the candidate first, as a dry run (default false)
//! [rules]                                 # the same keys as a route's `shadow = { … }`
//! ignore = ["$.accessToken"]
//! [fill]                                  # values for secrets the store redacted, by field (or header) name
//! password = "corpus-password-1"          # a literal
//! code = "totp:secret"                    # the current TOTP code of the base32 `secret` the monolith last answered
//! ```
//!
//! Requests are replayed in file order, one at a time (a corpus is a session: later requests
//! may depend on earlier ones), each to the monolith and then to the candidate.
//!
//! ## Filling redacted secrets
//! The store redacts secrets (see `super::record`): a token-like one becomes `[redacted:<fp>]`
//! (a fingerprint) and the record lists the fingerprints of the monolith's answer secrets by
//! path (`answer_secrets`). Before request *i* is sent, every `[redacted:<fp>]` in its body
//! (whole string values, any depth) and in its header values (`Bearer [redacted:<fp>]`) is
//! replaced by the value the monolith answered *during this replay* at the path that the
//! latest earlier request's `answer_secrets` gives for that fingerprint. So the refresh token
//! of the login answer is presented to refresh, the access token becomes the bearer, and an old
//! refresh token presented again (reuse detection) is the old token of this replay.
//!
//! What is left — plain `[redacted]` values (passwords, codes) and fingerprints no earlier
//! answer explains — is filled from `[fill]` by the field's name (a header is filled whole by
//! its name, e.g. `cookie`): a literal, or `totp:<field>`, the current RFC 6238 code (SHA-1, 6
//! digits, 30 s) of the base32 secret found as string field `<field>` (any depth) in the latest
//! monolith answer that has one. Values that cannot be filled are sent as recorded; each
//! request with such values gets a warning on stderr naming them. Both sides get the same
//! filled request.
//!
//! ## Shared database
//! The monolith and the candidate usually share one database, so a write replayed to the
//! monolith first would make the candidate answer differently (`409` on a second register).
//! With `candidate_dry_run = true` the candidate is asked first, with a signed `x-strangler-dry-run`
//! (the secret in `$STRANGLER_DRY_RUN_SECRET`)
//! (services on `extracted/common` roll such a request back), then the monolith: both see the
//! same state and only the monolith's writes persist.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use strangler_protocol::dry_run::Signed;
use strangler_protocol::{DryRunKey, REQUEST_ID_HEADER};

use crate::shadow::diff::{compare, decoded, Exchange, Rules};
use crate::shadow::noise::NoiseModel;
use crate::shadow::path::FieldPath;
use crate::shadow::record::{find_fingerprints, parse_fingerprint, Outcome, Record, Summary, REDACTED};
use crate::shadow::template::endpoint_template;

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
    /// Ask the candidate first, as a dry run, then the monolith (a shared database).
    #[serde(default)]
    pub candidate_dry_run: bool,
    /// Values for redacted secrets, by field name: a literal or `totp:<field>`.
    #[serde(default)]
    pub fill: BTreeMap<String, String>,
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
    /// Fingerprints of the secrets in the recorded monolith answer, by JSON path.
    #[serde(default)]
    pub answer_secrets: BTreeMap<String, String>,
    /// The ids (UUIDs) in the recorded monolith answer, by JSON path.
    #[serde(default)]
    pub answer_ids: BTreeMap<String, String>,
    /// A request of another route the session needs (a sign-in): sent to the monolith only, to
    /// follow the session; not compared.
    #[serde(default)]
    pub setup: bool,
}

/// A request of a corpus with its redacted secrets filled, and what could not be filled
/// (field names; `header:<name>` for headers).
#[derive(Debug, Clone)]
pub struct Filled {
    pub request: CorpusRequest,
    pub unfilled: Vec<String>,
}

/// What filling request `i` may draw on: the corpus, the monolith's answers of this replay so
/// far (`answers[j]` for request `j`, `None` when it was not JSON or failed), the `[fill]`
/// table, and the time (for TOTP codes).
pub struct FillContext<'a> {
    pub corpus: &'a [CorpusRequest],
    pub answers: &'a [Option<Value>],
    pub fill: &'a BTreeMap<String, String>,
    pub now_unix: u64,
}

impl FillContext<'_> {
    /// Request `i` with its redacted secrets filled and its recorded ids mapped.
    pub fn fill_request(&self, i: usize) -> Filled {
        let mut request = self.corpus[i].clone();
        let mut unfilled = Vec::new();
        if let Some(body) = request.body.as_mut() {
            self.fill_json(i, body, "", &mut unfilled);
        }
        let ids = self.id_map(i);
        if !ids.is_empty() {
            request.uri = replace_all(&request.uri, &ids);
            if let Some(body) = request.body.as_mut() {
                map_strings(body, &ids);
            }
            for (_, value) in request.headers.iter_mut() {
                *value = replace_all(value, &ids);
            }
        }
        for (name, value) in request.headers.iter_mut() {
            let mut unresolved = false;
            let found = find_fingerprints(value);
            if !found.is_empty() {
                let mut out = String::with_capacity(value.len());
                let mut last = 0;
                for (range, fp) in found {
                    out.push_str(&value[last..range.start]);
                    match self.resolve(i, fp) {
                        Some(v) => out.push_str(&v),
                        None => {
                            unresolved = true;
                            out.push_str(&value[range.clone()]);
                        }
                    }
                    last = range.end;
                }
                out.push_str(&value[last..]);
                *value = out;
            }
            if unresolved || value == REDACTED {
                match self.fill_value(i, &name.to_ascii_lowercase()) {
                    Some(v) => *value = v,
                    None => unfilled.push(format!("header:{name}")),
                }
            }
        }
        Filled { request, unfilled }
    }

    fn fill_json(&self, i: usize, v: &mut Value, field: &str, unfilled: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    self.fill_json(i, v, k, unfilled);
                }
            }
            Value::Array(a) => {
                for v in a.iter_mut() {
                    self.fill_json(i, v, field, unfilled);
                }
            }
            Value::String(s) => {
                let redacted = match parse_fingerprint(s) {
                    Some(fp) => match self.resolve(i, fp) {
                        Some(value) => {
                            *s = value;
                            return;
                        }
                        None => true,
                    },
                    None => s == REDACTED,
                };
                if redacted {
                    match self.fill_value(i, field) {
                        Some(value) => *s = value,
                        None => unfilled.push(if field.is_empty() { "body".to_string() } else { field.to_string() }),
                    }
                }
            }
            _ => {}
        }
    }

    /// The value of this replay behind a fingerprint: the latest earlier request whose
    /// recorded answer had a secret with that fingerprint, and the monolith's answer to it now.
    fn resolve(&self, i: usize, fp: &str) -> Option<String> {
        let j = (0..i.min(self.corpus.len())).rev().find(|&j| self.corpus[j].answer_secrets.values().any(|v| v == fp))?;
        let answer = self.answers.get(j)?.as_ref()?;
        self.corpus[j]
            .answer_secrets
            .iter()
            .filter(|(_, v)| *v == fp)
            .find_map(|(path, _)| value_at(answer, &FieldPath::root(), path)?.as_str().map(str::to_string))
    }

    /// Recorded id → this replay's id, for every id an earlier answer carried: an id maps to
    /// the value at the same path of this replay's answer to the request that first answered it
    /// (the request that created it). Ids that map to themselves are left out.
    fn id_map(&self, i: usize) -> Vec<(String, String)> {
        let mut first: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for j in 0..i.min(self.corpus.len()) {
            for (path, id) in &self.corpus[j].answer_ids {
                first.entry(id.as_str()).or_insert((j, path.as_str()));
            }
        }
        first
            .into_iter()
            .filter_map(|(recorded, (j, path))| {
                let now = value_at(self.answers.get(j)?.as_ref()?, &FieldPath::root(), path)?.as_str()?;
                (now != recorded).then(|| (recorded.to_string(), now.to_string()))
            })
            .collect()
    }

    /// A value from `[fill]` for a field or header name.
    fn fill_value(&self, i: usize, name: &str) -> Option<String> {
        let spec = self.fill.get(name)?;
        match spec.strip_prefix("totp:") {
            Some(field) => {
                let earlier = &self.answers[..i.min(self.answers.len())];
                let secret = earlier.iter().rev().flatten().find_map(|a| string_field(a, field))?;
                totp(secret, self.now_unix)
            }
            None => Some(spec.clone()),
        }
    }
}

/// `s` with every recorded id in it replaced: UUIDs wherever they appear (a GraphQL document
/// names ids inside its text), other values (cursors) only as the whole string.
fn replace_all(s: &str, ids: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (from, to) in ids {
        if crate::shadow::record::is_uuid(from) {
            if out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        } else if out == *from {
            out = to.clone();
        }
    }
    out
}

fn map_strings(v: &mut Value, ids: &[(String, String)]) {
    match v {
        Value::String(s) => *s = replace_all(s, ids),
        Value::Array(a) => a.iter_mut().for_each(|v| map_strings(v, ids)),
        Value::Object(m) => m.values_mut().for_each(|v| map_strings(v, ids)),
        _ => {}
    }
}

/// The value at a concrete path (`$.items[0].token`, as [`FieldPath`] displays it).
fn value_at<'a>(v: &'a Value, at: &FieldPath, target: &str) -> Option<&'a Value> {
    let here = at.to_string();
    if here == target {
        return Some(v);
    }
    if !target.starts_with(&here) {
        return None;
    }
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| value_at(v, &at.key(k), target)),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| value_at(v, &at.index(i), target)),
        _ => None,
    }
}

/// The first string field of that name at any depth.
fn string_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    match v {
        Value::Object(m) => m.get(name).and_then(Value::as_str).or_else(|| m.values().find_map(|v| string_field(v, name))),
        Value::Array(a) => a.iter().find_map(|v| string_field(v, name)),
        _ => None,
    }
}

/// The RFC 6238 TOTP code (HMAC-SHA-1, 6 digits, 30 s step) of a base32 secret at a time.
pub fn totp(secret_base32: &str, unix_secs: u64) -> Option<String> {
    use hmac::{Hmac, Mac};
    let key = base32_decode(secret_base32)?;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&key).ok()?;
    mac.update(&(unix_secs / 30).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    Some(format!("{:06}", bin % 1_000_000))
}

/// RFC 4648 base32, case-insensitive, padding, spaces and dashes ignored.
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.chars().filter(|c| !matches!(c, '=' | ' ' | '-')) {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u32 - 'A' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return None,
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// An answer's body as JSON (decoded as the diff engine does).
fn answer_json(e: &Exchange) -> Option<Value> {
    serde_json::from_slice(&decoded(e)).ok()
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

/// Sends one corpus request; with `dry_run`, as a signed dry run.
async fn send(client: &reqwest::Client, base: &str, r: &CorpusRequest, dry_run: Option<&DryRunKey>) -> Result<Exchange, String> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, format!("{}{}", base.trim_end_matches('/'), r.uri));
    for (k, v) in &r.headers {
        let k_lower = k.to_ascii_lowercase();
        if !matches!(k_lower.as_str(), "content-length" | "transfer-encoding" | "host" | "connection" | strangler_protocol::DRY_RUN_HEADER)
        {
            req = req.header(k, v);
        }
    }
    if let Some(key) = dry_run {
        // the signature covers the request id: use the recorded one, or give the request one
        let recorded = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(REQUEST_ID_HEADER)).map(|(_, v)| v.clone());
        let id = match recorded {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                req = req.header(REQUEST_ID_HEADER, &id);
                id
            }
        };
        let signed = key.sign(crate::clock::now_unix_secs(), Signed { request_id: &id, method: &r.method, target: &r.uri });
        req = req.header(strangler_protocol::DRY_RUN_HEADER, signed);
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
/// Replays the corpus in `dir`. With `candidate_dry_run`, the candidate's copies are signed
/// with `dry_run_key` (the secret the candidate verifies with).
pub async fn replay(
    dir: &Path,
    legacy: Option<String>,
    candidate: Option<String>,
    dry_run_key: Option<DryRunKey>,
) -> anyhow::Result<(Summary, f64)> {
    let parity_path = dir.join("parity.toml");
    let parity_text = std::fs::read_to_string(&parity_path).with_context(|| format!("reading {}", parity_path.display()))?;
    let parity: Parity = toml::from_str(&parity_text).with_context(|| format!("parsing {}", parity_path.display()))?;
    let rules = compile_rules(&parity_text, &parity_path.display().to_string())?;
    let legacy = legacy.or(parity.legacy_url.clone()).context("no monolith URL: set legacy_url in parity.toml or pass --legacy")?;
    let candidate =
        candidate.or(parity.candidate_url.clone()).context("no candidate URL: set candidate_url in parity.toml or pass --candidate")?;
    let corpus = load_corpus(&dir.join("requests.jsonl"))?;
    if parity.candidate_dry_run && dry_run_key.is_none() {
        bail!(
            "{} asks for candidate_dry_run, but no dry-run secret is set: export {} with the secret the candidate verifies dry runs with",
            parity_path.display(),
            crate::config::DEFAULT_DRY_RUN_SECRET_ENV
        );
    }
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30)).build()?;
    let mut noise = NoiseModel::default();
    let mut sampled: BTreeMap<String, u32> = BTreeMap::new();
    let mut summary = Summary::default();
    // The monolith's answers of this replay, by corpus position: what fingerprints resolve to.
    let mut answers: Vec<Option<Value>> = Vec::with_capacity(corpus.len());
    let mut unfilled_total = 0;
    for i in 0..corpus.len() {
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let filled = FillContext { corpus: &corpus, answers: &answers, fill: &parity.fill, now_unix }.fill_request(i);
        let r = &filled.request;
        if !filled.unfilled.is_empty() {
            unfilled_total += filled.unfilled.len();
            eprintln!(
                "warning: corpus#{} {} {}: left redacted (nothing to fill it with): {}",
                i + 1,
                r.method,
                crate::shadow::record::redact_uri(&r.uri),
                filled.unfilled.join(", ")
            );
        }
        if r.setup {
            // a request of another route the session needs: the monolith's answer is what later
            // requests follow; nothing to compare
            let a = send(&client, &legacy, r, None).await;
            if let Err(e) = &a {
                eprintln!("warning: corpus#{} {} {} (setup): {e}", i + 1, r.method, crate::shadow::record::redact_uri(&r.uri));
            }
            answers.push(a.as_ref().ok().and_then(answer_json));
            continue;
        }
        let path = r.uri.split('?').next().unwrap_or(&r.uri);
        let endpoint = endpoint_template(&r.method, path);
        let safe = matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS");
        // With a shared database the candidate goes first as a dry run, so both sides see the
        // state before this request and only the monolith's write persists.
        let dry = if parity.candidate_dry_run { Some(send(&client, &candidate, r, dry_run_key.as_ref()).await) } else { None };
        let a = send(&client, &legacy, r, None).await;
        answers.push(a.as_ref().ok().and_then(answer_json));
        if let (true, Ok(first)) = (safe && sampled.get(&endpoint).copied().unwrap_or(0) < parity.noise_samples, &a) {
            if let Ok(second) = send(&client, &legacy, r, None).await {
                noise.learn(&endpoint, first, &second, &rules);
                *sampled.entry(endpoint.clone()).or_default() += 1;
            }
        }
        let b = match dry {
            Some(b) => b,
            None => send(&client, &candidate, r, None).await,
        };
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
            uri: crate::shadow::record::redact_uri(&r.uri),
            primary: "replay".into(),
            outcome,
            legacy_status: statuses.0,
            candidate_status: statuses.1,
            differences: Record::differences(&regressions),
            noise: Record::differences(&noise_diffs),
            error,
            request_headers: vec![],
            request_body: None,
            answer_secrets: BTreeMap::new(),
            answer_ids: BTreeMap::new(),
        });
    }
    if unfilled_total > 0 {
        eprintln!("warning: {unfilled_total} redacted value(s) could not be filled; add them to [fill] in parity.toml");
    }
    Ok((summary, parity.min_parity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::record::{fingerprint, redact_secret};
    use serde_json::json;

    /// A recorded value (as the store saw it at recording time) and its corpus placeholder.
    fn rec(n: &str) -> (String, String) {
        let v = format!("recorded-{n}-0123456789abcdefghij");
        (fingerprint(&v), redact_secret(&v))
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Value>, secrets: &[(&str, &str)]) -> CorpusRequest {
        CorpusRequest {
            method: method.into(),
            uri: uri.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body,
            answer_secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            answer_ids: BTreeMap::new(),
            setup: false,
        }
    }

    #[test]
    fn recorded_ids_map_to_the_ids_of_this_replay_wherever_they_appear() {
        let (chat_rec, chat_now) = ("0e5b7d38-1f1d-4b86-9c52-3b6a1b8e4f10", "7a1c0000-0000-4000-8000-000000000001");
        let (user_rec, user_now) = ("11111111-1f1d-4b86-9c52-3b6a1b8e4f10", "22222222-0000-4000-8000-000000000002");
        let mut create = req("POST", "/graphql", &[], Some(json!({ "query": "mutation { createChat }" })), &[]);
        create.answer_ids = [("$.data.createChat.id".to_string(), chat_rec.to_string())].into();
        let mut register = req("POST", "/auth/register", &[], None, &[]);
        register.answer_ids = [("$.user.id".to_string(), user_rec.to_string())].into();
        register.setup = true;
        // a later answer that carries the chat id again does not move its mapping
        let mut list = req("POST", "/graphql", &[], None, &[]);
        list.answer_ids = [("$.data.chats[0].id".to_string(), chat_rec.to_string())].into();
        let send = req(
            "POST",
            &format!("/x/{chat_rec}"),
            &[],
            Some(
                json!({ "query": format!("{{ chat(id: \"{chat_rec}\") {{ id }} }}"), "variables": { "c": chat_rec, "m": [user_rec, "other"] } }),
            ),
            &[],
        );
        let corpus = vec![register, create, list, send];
        let answers = vec![
            Some(json!({ "user": { "id": user_now } })),
            Some(json!({ "data": { "createChat": { "id": chat_now } } })),
            Some(json!({ "data": { "chats": [{ "id": "ffffffff-0000-4000-8000-000000000000" }] } })),
        ];
        let fill = BTreeMap::new();
        let f = FillContext { corpus: &corpus, answers: &answers, fill: &fill, now_unix: 0 }.fill_request(3);
        assert_eq!(f.request.uri, format!("/x/{chat_now}"));
        let body = f.request.body.unwrap();
        assert_eq!(body["query"], format!("{{ chat(id: \"{chat_now}\") {{ id }} }}"));
        assert_eq!(body["variables"], json!({ "c": chat_now, "m": [user_now, "other"] }));
    }

    #[test]
    fn fingerprints_resolve_to_the_latest_earlier_answer_and_old_tokens_stay_old() {
        let (r1, r1_ph) = rec("r1");
        let (a1, _) = rec("a1");
        let (r2, _) = rec("r2");
        let (a2, a2_ph) = rec("a2");
        let (sid, sid_ph) = rec("sid");
        let (item, item_ph) = rec("item");
        let (_, unknown_ph) = rec("unknown");
        let corpus = vec![
            req(
                "POST",
                "/login",
                &[],
                Some(json!({ "email": "a@b.c", "password": REDACTED })),
                &[("$.refreshToken", &r1), ("$.accessToken", &a1), ("$.session.id", &sid)],
            ),
            req(
                "POST",
                "/refresh",
                &[],
                Some(json!({ "refreshToken": r1_ph })),
                &[("$.refreshToken", &r2), ("$.accessToken", &a2), ("$.session.id", &sid), ("$.items[1].token", &item)],
            ),
            req("GET", "/me", &[("authorization", &format!("Bearer {a2_ph}")), ("cookie", REDACTED)], None, &[]),
            // Reuse detection: the refresh token of the login answer, presented again.
            req("POST", "/refresh", &[], Some(json!({ "refreshToken": r1_ph })), &[]),
            req(
                "POST",
                "/x",
                &[("authorization", &format!("Bearer {unknown_ph}"))],
                Some(json!({ "deep": [{ "sessionId": sid_ph, "token": item_ph }], "refreshToken": unknown_ph, "password": REDACTED })),
                &[],
            ),
        ];
        // What the monolith answers during this replay: new values at the recorded paths.
        let answers = vec![
            Some(json!({ "refreshToken": "replay-R1", "accessToken": "replay-A1", "session": { "id": "replay-S1" } })),
            Some(json!({
                "refreshToken": "replay-R2", "accessToken": "replay-A2", "session": { "id": "replay-S2" },
                "items": [{ "token": "not-this" }, { "token": "replay-I" }]
            })),
            Some(json!({ "email": "a@b.c" })),
            Some(json!({ "error": "reuse" })),
        ];
        let no_fill = BTreeMap::new();
        let ctx = FillContext { corpus: &corpus, answers: &answers, fill: &no_fill, now_unix: 0 };

        let f = ctx.fill_request(1);
        assert_eq!(f.request.body.unwrap()["refreshToken"], "replay-R1");
        assert!(f.unfilled.is_empty());

        let f = ctx.fill_request(2);
        assert_eq!(f.request.headers[0].1, "Bearer replay-A2");
        assert_eq!(f.request.headers[1].1, REDACTED);
        assert_eq!(f.unfilled, vec!["header:cookie"]);

        // The fingerprint points at the login answer, not the latest refresh: the OLD token.
        let f = ctx.fill_request(3);
        assert_eq!(f.request.body.unwrap()["refreshToken"], "replay-R1");

        // The session id is in both earlier answers: the latest wins. Array paths resolve.
        let f = ctx.fill_request(4);
        let body = f.request.body.unwrap();
        assert_eq!(body["deep"][0]["sessionId"], "replay-S2");
        assert_eq!(body["deep"][0]["token"], "replay-I");
        // Nothing explains this fingerprint and [fill] is empty: sent as recorded, reported.
        assert_eq!(body["refreshToken"], unknown_ph.as_str());
        assert_eq!(f.request.headers[0].1, format!("Bearer {unknown_ph}"));
        assert_eq!(f.unfilled, vec!["password", "refreshToken", "header:authorization"]);

        // Only EARLIER answers count: request 1 cannot see its own answer's values.
        let f = FillContext { corpus: &corpus, answers: &answers[..1], fill: &no_fill, now_unix: 0 }.fill_request(2);
        assert_eq!(f.unfilled, vec!["header:authorization", "header:cookie"]);

        // [fill] covers plain [redacted] values and unresolved fingerprints, by field or header name.
        let fill: BTreeMap<String, String> = [
            ("password", "corpus-password-1"),
            ("refreshToken", "fallback-token"),
            ("cookie", "sid=fixed"),
            ("authorization", "Bearer fixed"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = FillContext { corpus: &corpus, answers: &answers, fill: &fill, now_unix: 0 };
        let f = ctx.fill_request(0);
        assert_eq!(f.request.body.unwrap()["password"], "corpus-password-1");
        let f = ctx.fill_request(4);
        let body = f.request.body.unwrap();
        assert_eq!((body["password"].as_str(), body["refreshToken"].as_str()), (Some("corpus-password-1"), Some("fallback-token")));
        assert_eq!(f.request.headers[0].1, "Bearer fixed");
        assert!(f.unfilled.is_empty());
        // A resolved fingerprint is never overridden by [fill].
        assert_eq!(ctx.fill_request(3).request.body.unwrap()["refreshToken"], "replay-R1");
    }

    /// RFC 6238 appendix B (SHA-1), last six digits, secret "12345678901234567890".
    #[test]
    fn totp_matches_rfc_6238_vectors() {
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        for (t, code) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
            (20000000000, "353130"),
        ] {
            assert_eq!(totp(secret, t).as_deref(), Some(code), "t = {t}");
        }
        assert_eq!(totp("gezdgnbvgy3tqojq gezdgnbvgy3tqojq", 59).as_deref(), Some("287082"));
        assert_eq!(totp("not base32!", 59), None);
    }

    #[test]
    fn totp_fill_uses_the_latest_answer_with_the_secret() {
        let corpus = vec![
            req("POST", "/2fa/setup", &[], None, &[]),
            req("GET", "/me", &[], None, &[]),
            req("POST", "/2fa/setup", &[], None, &[]),
            req("POST", "/2fa/verify", &[], Some(json!({ "code": REDACTED })), &[]),
        ];
        let answers = vec![
            Some(json!({ "twoFactor": { "secret": "JBSWY3DPEHPK3PXP" } })),
            Some(json!({ "email": "a@b.c" })),
            Some(json!({ "data": [{ "twoFactor": { "secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ" } }] })),
        ];
        let fill = [("code".to_string(), "totp:secret".to_string())].into_iter().collect();
        let f = FillContext { corpus: &corpus, answers: &answers, fill: &fill, now_unix: 59 }.fill_request(3);
        assert_eq!(f.request.body.unwrap()["code"], "287082");
        let f = FillContext { corpus: &corpus, answers: &answers[..2], fill: &fill, now_unix: 59 }.fill_request(3);
        assert_eq!(f.request.body.unwrap()["code"], totp("JBSWY3DPEHPK3PXP", 59).unwrap().as_str());
        let f = FillContext { corpus: &corpus, answers: &[], fill: &fill, now_unix: 59 }.fill_request(3);
        assert_eq!(f.unfilled, vec!["code"]);
    }

    #[test]
    fn parity_reads_dry_run_and_fill() {
        let p: Parity = toml::from_str(
            "route = \"auth\"\ncandidate_dry_run = true\n[fill]\npassword = \"pw\"\ncode = \"totp:secret\"\n[rules]\nignore = [\"$.x\"]\n",
        )
        .unwrap();
        assert!(p.candidate_dry_run);
        assert_eq!(p.fill.get("code").map(String::as_str), Some("totp:secret"));
        let p: Parity = toml::from_str("route = \"auth\"\n").unwrap();
        assert!(!p.candidate_dry_run && p.fill.is_empty());
        assert!(toml::from_str::<Parity>("route = \"auth\"\ncandidate_dry_rn = true\n").is_err());
    }

    #[test]
    fn corpus_lines_carry_answer_secrets() {
        let line = r#"{"method":"POST","uri":"/login","headers":[],"body":{"password":"[redacted]"},"answer_secrets":{"$.refreshToken":"0123456789ab"}}"#;
        let r: CorpusRequest = serde_json::from_str(line).unwrap();
        assert_eq!(r.answer_secrets.get("$.refreshToken").map(String::as_str), Some("0123456789ab"));
        let r: CorpusRequest = serde_json::from_str(r#"{"method":"GET","uri":"/"}"#).unwrap();
        assert!(r.answer_secrets.is_empty());
    }
}
