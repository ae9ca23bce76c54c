//! The migration's progress as one value: what `GET /plan` serves, what the dashboard draws and
//! what `strangler plan` prints.
//!
//! [`PlanReport::build`] gathers a table, the live counters ([`super::Progress`]), the shadow
//! summary and the breakers' and demotions' histories, with `now` passed in (pure, so the text is
//! golden-tested). The same struct deserialises on the command line, which reads it from a
//! running proxy's admin API, and [`PlanReport::text`] renders it for a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::monolith::{TemplateCount, CAPACITY};
use super::{Backend, ModeChange, Progress, Split, SLOTS, SLOT_SECS};
use crate::clock::unix_ms;
use crate::config::{Mode, RouteTable};
use crate::shadow::record::Summary;

/// The "recent" window: five minutes.
pub const RECENT_SECS: u64 = 300;
/// Slots of the overall timeline the report carries: the last 15 minutes.
pub const TIMELINE_SLOTS: usize = 90;
/// Templates listed under "still on the monolith".
pub const TOP_TEMPLATES: usize = 25;
/// Mismatching fields listed per route.
const TOP_FIELDS: usize = 10;

/// Requests per backend over three spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    pub last_minute: Split,
    pub last_5m: Split,
    pub since_start: Split,
}

impl std::ops::Add for Windows {
    type Output = Windows;
    fn add(self, o: Windows) -> Windows {
        Windows {
            last_minute: self.last_minute + o.last_minute,
            last_5m: self.last_5m + o.last_5m,
            since_start: self.since_start + o.since_start,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub generated_at_unix_ms: u64,
    /// Traffic measured by a running proxy; `false`: read from routes.toml and a shadow store,
    /// with no traffic figures.
    pub live: bool,
    pub started_at_unix_ms: Option<u64>,
    pub config: ConfigState,
    /// Every request the proxy answered, by who answered it.
    pub overall: Windows,
    pub stages: Vec<StageReport>,
    pub routes: Vec<RouteReport>,
    /// Requests no route claims (the default upstream answers them).
    pub unmatched: Windows,
    pub monolith: MonolithReport,
    pub timeline: Timeline,
}

/// The table being served and the last reload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    pub path: Option<String>,
    pub hash: String,
    pub loaded_at_unix_secs: Option<u64>,
    pub last_reload_error: Option<ReloadError>,
}

/// A reload that failed: the previous table keeps serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadError {
    pub at_unix_secs: u64,
    pub trigger: String,
    pub errors: Vec<String>,
}

/// Where a stage of the plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// No route yet, or every route still in legacy mode.
    NotStarted,
    /// Some route in shadow, canary, or not every route extracted yet.
    InProgress,
    /// Every route extracted (the monolith only answers fallbacks and reverse shadows).
    Extracted,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::NotStarted => "not started",
            StageStatus::InProgress => "in progress",
            StageStatus::Extracted => "extracted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    pub services: Vec<String>,
    pub routes: Vec<String>,
    /// Services of the stage no route targets yet.
    pub services_without_routes: Vec<String>,
    pub status: StageStatus,
    pub traffic: Windows,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReport {
    pub name: String,
    pub stage: Option<String>,
    pub target: String,
    /// As the file says: `legacy`, `shadow`, `canary 25%`, `extracted`.
    pub mode: String,
    /// Demoted to shadow at run time (a canary that misbehaved), until the next reload.
    pub demoted: Option<DemotedNow>,
    /// When the route took its current mode (the reload that set it), and whether that was
    /// already so when the proxy started (it may have held it for longer).
    pub mode_since_unix_ms: Option<u64>,
    pub mode_since_start: bool,
    pub mode_changes: Vec<ModeChange>,
    pub traffic: Windows,
    pub parity: ParityReport,
    pub breaker: BreakerReport,
    pub demotions: Vec<crate::demote::DemotionEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemotedNow {
    pub reason: String,
    pub at_unix_secs: u64,
}

/// The shadow comparisons of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    pub compared: u64,
    pub matches: u64,
    pub noise_only: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Percent of comparisons without a regression (`None`: nothing compared).
    pub parity: Option<f64>,
    /// When the last comparison was recorded.
    pub last_unix_ms: Option<u64>,
    /// The mismatching places, most frequent first, each with one request that showed it.
    pub fields: Vec<FieldReport>,
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    pub place: String,
    pub count: u64,
    pub request_id: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerReport {
    pub state: String,
    /// The last transitions, oldest first.
    pub transitions: Vec<BreakerTransition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerTransition {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
}

/// What the monolith still answers, per endpoint template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonolithReport {
    pub window_secs: u64,
    pub templates: Vec<TemplateRate>,
    /// Requests whose template found no room in the bounded table.
    pub other: TemplateRate,
    /// Templates kept, and how many the table holds.
    pub distinct: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateRate {
    pub template: String,
    /// The route that matched it (none: no route claims it).
    pub route: Option<String>,
    pub recent: u64,
    pub per_sec: f64,
    pub since_start: u64,
}

/// Requests per backend, per slot, oldest first, ending with the slot of `end_unix_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub slot_secs: u64,
    pub end_unix_ms: u64,
    pub target: Vec<u64>,
    pub legacy: Vec<u64>,
    pub fallback: Vec<u64>,
}

/// The run-time state the report reads besides the counters.
pub struct Inputs<'a> {
    pub table: &'a RouteTable,
    pub progress: &'a Progress,
    pub shadow: &'a Summary,
    pub breakers: Vec<crate::breaker::RouteBreaker>,
    pub demoted: Vec<(crate::config::RouteName, crate::demote::Demotion)>,
    pub demotion_history: Vec<crate::demote::DemotionEvent>,
    pub config: ConfigState,
    pub live: bool,
    pub now: Instant,
    pub now_wall: SystemTime,
}

fn windows(t: &super::Traffic, slot: u32) -> Windows {
    Windows {
        last_minute: t.last(slot, (60 / SLOT_SECS) as u32),
        last_5m: t.last(slot, (RECENT_SECS / SLOT_SECS) as u32),
        since_start: t.since_start(),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl PlanReport {
    pub fn build(i: Inputs<'_>) -> PlanReport {
        let p = i.progress;
        let slot = p.slot(i.now);
        let now_ms = unix_ms(i.now_wall);
        let ago_ms = |at: Instant| now_ms.saturating_sub(i.now.saturating_duration_since(at).as_millis() as u64);

        let mut routes = Vec::new();
        for route in &i.table.routes {
            let name = route.name.as_str();
            let counters = p.route(&route.name);
            let traffic = counters.as_ref().map(|c| windows(&c.traffic, slot)).unwrap_or_default();
            let mode = counters.as_ref().and_then(|c| c.mode());
            let parity = i.shadow.routes.get(name).map(parity_report).unwrap_or_default();
            let breaker = i.breakers.iter().find(|b| b.route == route.name);
            let breaker = BreakerReport {
                state: breaker.map_or("closed", |b| b.state.as_str()).to_string(),
                transitions: breaker
                    .map(|b| {
                        b.transitions
                            .iter()
                            .map(|t| BreakerTransition { at_unix_ms: ago_ms(t.at), from: t.from.as_str().into(), to: t.to.as_str().into() })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            routes.push(RouteReport {
                name: name.to_string(),
                stage: route.stage.as_deref().map(str::to_string),
                target: route.target.to_string(),
                mode: super::mode_label(route),
                demoted: i
                    .demoted
                    .iter()
                    .find(|(r, _)| *r == route.name)
                    .map(|(_, d)| DemotedNow { reason: d.reason.clone(), at_unix_secs: d.at_unix_secs }),
                mode_since_unix_ms: mode.as_ref().map(|m| unix_ms(m.since)),
                mode_since_start: mode.as_ref().is_some_and(|m| m.since_start),
                mode_changes: mode.map(|m| m.changes).unwrap_or_default(),
                traffic,
                parity,
                breaker,
                demotions: i.demotion_history.iter().filter(|d| d.route == name).cloned().collect(),
            });
        }

        let stages = i
            .table
            .plan
            .iter()
            .map(|st| {
                let mine: Vec<&RouteReport> = routes.iter().filter(|r| r.stage.as_deref() == Some(&*st.name)).collect();
                let modes: Vec<Mode> = i.table.routes.iter().filter(|r| r.stage.as_deref() == Some(&*st.name)).map(|r| r.mode).collect();
                let status = if modes.is_empty() || modes.iter().all(|m| *m == Mode::Legacy) {
                    StageStatus::NotStarted
                } else if modes.iter().all(|m| *m == Mode::Extracted) {
                    StageStatus::Extracted
                } else {
                    StageStatus::InProgress
                };
                StageReport {
                    name: st.name.to_string(),
                    services: st.services.clone(),
                    routes: mine.iter().map(|r| r.name.clone()).collect(),
                    services_without_routes: st
                        .services
                        .iter()
                        .filter(|s| !i.table.routes.iter().any(|r| r.target.as_str() == s.as_str()))
                        .cloned()
                        .collect(),
                    status,
                    traffic: mine.iter().map(|r| r.traffic).fold(Windows::default(), |a, b| a + b),
                }
            })
            .collect();

        // every route this process counted (removed ones too), and the unmatched requests
        let all = p.all_routes();
        let unmatched = windows(&p.unmatched, slot);
        let overall = all.iter().map(|(_, c)| windows(&c.traffic, slot)).fold(unmatched, |a, b| a + b);
        let mut timeline = Timeline {
            slot_secs: SLOT_SECS,
            end_unix_ms: now_ms,
            target: vec![0; TIMELINE_SLOTS.min(SLOTS)],
            legacy: vec![0; TIMELINE_SLOTS.min(SLOTS)],
            fallback: vec![0; TIMELINE_SLOTS.min(SLOTS)],
        };
        for traffic in all.iter().map(|(_, c)| &c.traffic).chain([&p.unmatched]) {
            let series = traffic.series(slot, timeline.target.len());
            for (b, values) in Backend::ALL.iter().zip(series) {
                let into = match b {
                    Backend::Target => &mut timeline.target,
                    Backend::Legacy => &mut timeline.legacy,
                    Backend::Fallback => &mut timeline.fallback,
                };
                into.iter_mut().zip(values).for_each(|(a, v)| *a += v);
            }
        }

        // the five-minute rate: over the time the window has really covered so far
        let minute = p.minute(i.now);
        let covered = (p.uptime(i.now).as_secs().min(4 * 60 + p.uptime(i.now).as_secs() % 60)).max(1);
        let rate = |c: &TemplateCount| TemplateRate {
            template: c.template.clone(),
            route: c.route.clone(),
            recent: c.recent,
            per_sec: round2(c.recent as f64 / covered as f64),
            since_start: c.total,
        };
        let (top, other) = p.monolith.top(minute, 5, TOP_TEMPLATES);
        let monolith = MonolithReport {
            window_secs: covered,
            templates: top.iter().map(rate).collect(),
            other: rate(&other),
            distinct: p.monolith.distinct(),
            capacity: CAPACITY,
        };

        PlanReport {
            generated_at_unix_ms: now_ms,
            live: i.live,
            started_at_unix_ms: i.live.then(|| unix_ms(p.started_at())),
            config: i.config,
            overall,
            stages,
            routes,
            unmatched,
            monolith,
            timeline,
        }
    }

    /// The report replaced by a store's comparisons (several proxies' shadow traffic, or a
    /// report without a running proxy).
    pub fn with_parity(mut self, shadow: &Summary) -> PlanReport {
        for r in &mut self.routes {
            r.parity = shadow.routes.get(&r.name).map(parity_report).unwrap_or_default();
        }
        self
    }
}

fn parity_report(s: &crate::shadow::record::RouteSummary) -> ParityReport {
    let mut fields: Vec<FieldReport> = s
        .mismatched_fields
        .iter()
        .map(|(place, f)| FieldReport {
            place: place.clone(),
            count: f.count,
            request_id: f.example["request_id"].as_str().map(str::to_string),
            endpoint: f.example["endpoint"].as_str().map(str::to_string),
        })
        .collect();
    fields.sort_by(|a, b| b.count.cmp(&a.count).then(a.place.cmp(&b.place)));
    fields.truncate(TOP_FIELDS);
    ParityReport {
        compared: s.compared,
        matches: s.matches,
        noise_only: s.noise_only,
        mismatches: s.mismatches,
        errors: s.errors,
        timeouts: s.timeouts,
        parity: (s.compared > 0).then(|| round2(s.parity())),
        last_unix_ms: s.last_unix_ms,
        fields,
        dropped: s.dropped.clone(),
    }
}

// ---- text ----

/// `3d 4h`, `12m`, `45s`: the two largest units.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn pct(n: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * n as f64 / total as f64)
    }
}

/// `72% / 27% / 1%  (1,204)`: service, monolith, fallback shares and the count.
fn split_text(s: &Split) -> String {
    let t = s.total();
    if t == 0 {
        return "no requests".into();
    }
    format!("{} / {} / {}  ({})", pct(s.target, t), pct(s.legacy, t), pct(s.fallback, t), thousands(t))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl PlanReport {
    fn ago(&self, at_unix_ms: u64) -> String {
        human_duration(self.generated_at_unix_ms.saturating_sub(at_unix_ms) / 1000)
    }

    /// What `strangler plan` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let hash: String = self.config.hash.chars().take(12).collect();
        let loaded = self.config.loaded_at_unix_secs.map(|t| format!(", loaded {} ago", self.ago(t * 1000))).unwrap_or_default();
        let _ = writeln!(s, "table {hash}{loaded}");
        match &self.config.last_reload_error {
            None => {}
            Some(e) => {
                let _ = writeln!(
                    s,
                    "LAST RELOAD FAILED {} ago ({}): the previous table keeps serving\n  {}",
                    self.ago(e.at_unix_secs * 1000),
                    e.trigger,
                    e.errors.join("\n  ").replace('\n', "\n  ")
                );
            }
        }
        if self.live {
            let up = self.started_at_unix_ms.map(|t| format!(" (proxy up {})", self.ago(t))).unwrap_or_default();
            let _ = writeln!(
                s,
                "\nrequests answered by service / monolith / fallback{up}\n  last minute  {}\n  last 5 min   {}\n  since start  {}",
                split_text(&self.overall.last_minute),
                split_text(&self.overall.last_5m),
                split_text(&self.overall.since_start)
            );
        } else {
            s.push_str("\nno live traffic: read from routes.toml and the shadow store\n");
        }

        if !self.stages.is_empty() {
            s.push_str("\nplan\n");
            let w = self.stages.iter().map(|st| st.name.chars().count()).max().unwrap_or(0).max(5);
            for st in &self.stages {
                let routes = if st.routes.is_empty() { "no routes yet".to_string() } else { st.routes.join(", ") };
                let traffic = if self.live && !st.routes.is_empty() {
                    format!("  last 5 min {}", split_text(&st.traffic.last_5m))
                } else {
                    String::new()
                };
                let _ =
                    writeln!(s, "  {:<w$}  {:<11}  {:<22} routes: {routes}{traffic}", st.name, st.status.as_str(), st.services.join(", "));
                if !st.services_without_routes.is_empty() && !st.routes.is_empty() {
                    let _ = writeln!(s, "  {:<w$}  {:<11}  no route yet for: {}", "", "", st.services_without_routes.join(", "));
                }
            }
        }

        s.push_str("\nroutes\n");
        let w = self.routes.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max("(no route)".len());
        for r in &self.routes {
            let mut mode = r.mode.clone();
            if r.demoted.is_some() {
                mode.push_str(" (DEMOTED to shadow)");
            }
            let since = match (r.mode_since_unix_ms, r.mode_since_start) {
                (Some(t), true) => format!("≥ {}", self.ago(t)),
                (Some(t), false) => self.ago(t),
                (None, _) => "-".into(),
            };
            let _ = writeln!(s, "  {:<w$}  {:<10} {:<30} for {since}", r.name, r.stage.as_deref().unwrap_or("-"), mode);
            if self.live {
                let _ = writeln!(s, "  {:<w$}  last 5 min {}", "", split_text(&r.traffic.last_5m));
            }
            let p = &r.parity;
            if let Some(parity) = p.parity {
                let last = p.last_unix_ms.map(|t| format!(", last {} ago", self.ago(t))).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:<w$}  parity {parity:.2}% of {} compared ({} mismatches, {} errors, {} timeouts{last})",
                    "",
                    thousands(p.compared),
                    p.mismatches,
                    p.errors,
                    p.timeouts
                );
                for f in &p.fields {
                    let example = f.request_id.as_deref().map(|id| format!(", e.g. request {id}")).unwrap_or_default();
                    let endpoint = f.endpoint.as_deref().map(|e| format!(" on {e}")).unwrap_or_default();
                    let _ = writeln!(s, "  {:<w$}    {} × {}{endpoint}{example}", "", f.count, f.place);
                }
            }
            if r.breaker.state != "closed" || !r.breaker.transitions.is_empty() {
                let history: Vec<String> =
                    r.breaker.transitions.iter().rev().take(3).map(|t| format!("{} {} ago", t.to, self.ago(t.at_unix_ms))).collect();
                let _ = writeln!(s, "  {:<w$}  breaker {} (last: {})", "", r.breaker.state, history.join(", "));
            }
            for d in &r.demotions {
                let promoted = d.promoted_at_unix_secs.map(|t| format!(", re-promoted {} ago", self.ago(t * 1000))).unwrap_or_default();
                let _ = writeln!(s, "  {:<w$}  demoted {} ago: {}{promoted}", "", self.ago(d.at_unix_secs * 1000), d.reason);
            }
        }
        if self.live {
            let _ = writeln!(s, "  {:<w$}  last 5 min {}", "(no route)", split_text(&self.unmatched.last_5m));
            let m = &self.monolith;
            let _ = writeln!(s, "\nstill answered by the monolith (last {}, requests per second)", human_duration(m.window_secs));
            if m.templates.is_empty() && m.other.since_start == 0 {
                s.push_str("  nothing\n");
            }
            for t in &m.templates {
                let route = t.route.as_deref().map(|r| format!("  [{r}]")).unwrap_or_default();
                let _ = writeln!(s, "  {:>8.2}/s  {}{route}  ({} since start)", t.per_sec, t.template, thousands(t.since_start));
            }
            if m.other.since_start > 0 {
                let _ = writeln!(
                    s,
                    "  {:>8.2}/s  other templates, past the first {} kept  ({} since start)",
                    m.other.per_sec,
                    m.capacity,
                    thousands(m.other.since_start)
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::breaker::{BreakerState, RouteBreaker, Transition};
    use crate::config::{RouteName, Source};
    use crate::progress::monolith::Named;
    use crate::shadow::record::{FieldStats, RouteSummary};

    const TABLE: &str = r#"
[plan]
stages = [
  { name = "january", services = ["auth"] },
  { name = "february", services = ["chat", "notification"] },
  { name = "march", services = ["payment"] },
]

[upstreams.legacy]
url = "http://127.0.0.1:3000"
[upstreams.auth]
url = "http://127.0.0.1:4001"
[upstreams.chat]
url = "http://127.0.0.1:4002"

[[routes]]
name = "auth"
stage = "january"
match = { path_prefix = "/auth" }
target = "auth"
mode = "extracted"

[[routes]]
name = "chat"
stage = "february"
match = { path_prefix = "/chats" }
target = "chat"
mode = "canary"
percent = 25
"#;

    fn table(text: &str) -> RouteTable {
        RouteTable::compile(Source::new("routes.toml", text)).unwrap().table
    }

    /// A proxy that started at `t0` (wall clock 1,800,000,000 s), flipped `chat` to canary 25%
    /// at +60 s, and is asked at +125 s.
    fn report() -> PlanReport {
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let p = Progress::new(t0, wall0);
        p.adopt(&table(&TABLE.replace("mode = \"canary\"\npercent = 25", "mode = \"shadow\"")), wall0);
        p.adopt(&table(TABLE), wall0 + Duration::from_secs(60));
        let (auth, chat) = (RouteName::from("auth"), RouteName::from("chat"));
        let at = |s: u64| t0 + Duration::from_secs(s);
        for i in 0..90 {
            p.record(Some(&auth), Backend::Target, at(i));
        }
        for _ in 0..10 {
            p.record(Some(&auth), Backend::Fallback, at(100));
        }
        for i in 0..40 {
            p.record(Some(&chat), if i % 4 == 0 { Backend::Target } else { Backend::Legacy }, at(70 + i));
        }
        for i in 0..20 {
            p.record(None, Backend::Legacy, at(i * 5));
            let path = format!("/users/{i}");
            p.record_monolith(crate::shadow::template::endpoint_template_key("GET", &path), at(i * 5), || Named {
                template: crate::shadow::endpoint_template("GET", &path).into(),
                route: None,
            });
        }
        let shadow = Summary {
            routes: BTreeMap::from([(
                "chat".to_string(),
                RouteSummary {
                    compared: 200,
                    matches: 197,
                    noise_only: 1,
                    mismatches: 2,
                    mismatched_fields: BTreeMap::from([(
                        "$.messages[*].editedAt".to_string(),
                        FieldStats { count: 2, example: serde_json::json!({ "request_id": "req-7", "endpoint": "GET /chats/{id}" }) },
                    )]),
                    last_unix_ms: Some(1_800_000_120_000),
                    ..Default::default()
                },
            )]),
        };
        let breakers = vec![RouteBreaker {
            route: auth.clone(),
            state: BreakerState::Closed,
            transitions: vec![
                Transition { at: at(100), from: BreakerState::Closed, to: BreakerState::Open },
                Transition { at: at(110), from: BreakerState::Open, to: BreakerState::HalfOpen },
                Transition { at: at(110), from: BreakerState::HalfOpen, to: BreakerState::Closed },
            ],
        }];
        let demotion_history = vec![crate::demote::DemotionEvent {
            route: "chat".into(),
            reason: "shadow mismatches: 3 of 20 in the last 60s (limit 5%)".into(),
            at_unix_secs: 1_800_000_030,
            promoted_at_unix_secs: Some(1_800_000_060),
        }];
        PlanReport::build(Inputs {
            table: &table(TABLE),
            progress: &p,
            shadow: &shadow,
            breakers,
            demoted: Vec::new(),
            demotion_history,
            config: ConfigState {
                path: Some("routes.toml".into()),
                hash: "0123456789abcdef".into(),
                loaded_at_unix_secs: Some(1_800_000_060),
                last_reload_error: Some(ReloadError {
                    at_unix_secs: 1_800_000_120,
                    trigger: "file".into(),
                    errors: vec!["routes.toml:3:1: error: unknown key `mdoe` in routes[1]".into()],
                }),
            },
            live: true,
            now: at(125),
            now_wall: wall0 + Duration::from_secs(125),
        })
    }

    #[test]
    fn progress_per_route_and_stage_from_the_counters() {
        let r = report();
        let auth = &r.routes[0];
        assert_eq!(auth.traffic.since_start, Split { target: 90, legacy: 0, fallback: 10 });
        // the last minute is slots 7..=12 (70..130 s): auth's target answers at 70..89 s and its
        // fallbacks at 100 s
        assert_eq!(auth.traffic.last_minute, Split { target: 20, legacy: 0, fallback: 10 });
        assert_eq!(auth.breaker.transitions.len(), 3);
        assert_eq!(auth.breaker.transitions[0].at_unix_ms, 1_800_000_100_000);
        let chat = &r.routes[1];
        assert_eq!((chat.mode.as_str(), chat.mode_since_unix_ms, chat.mode_since_start), ("canary 25%", Some(1_800_000_060_000), false));
        assert_eq!(chat.mode_changes[0].from.as_deref(), Some("shadow"));
        assert_eq!(chat.parity.parity, Some(99.0));
        assert_eq!(chat.parity.fields[0].request_id.as_deref(), Some("req-7"));
        assert_eq!(chat.demotions.len(), 1);
        let stages: Vec<(&str, StageStatus, u64)> =
            r.stages.iter().map(|s| (s.name.as_str(), s.status, s.traffic.since_start.total())).collect();
        assert_eq!(
            stages,
            [("january", StageStatus::Extracted, 100), ("february", StageStatus::InProgress, 40), ("march", StageStatus::NotStarted, 0)]
        );
        assert_eq!(r.stages[1].services_without_routes, ["notification"]);
        assert_eq!(r.overall.since_start, Split { target: 100, legacy: 50, fallback: 10 });
        assert_eq!(r.unmatched.since_start.legacy, 20);
        // the timeline ends at the current slot and adds every route and the unmatched requests
        assert_eq!(r.timeline.target.len(), TIMELINE_SLOTS);
        let timeline_total: u64 = r.timeline.target.iter().chain(&r.timeline.legacy).chain(&r.timeline.fallback).sum();
        assert_eq!(timeline_total, 160);
        assert_eq!(r.monolith.templates[0].template, "GET /users/{id}");
        assert_eq!(r.monolith.templates[0].since_start, 20);
        // 20 requests over the 125 s the proxy has been up
        assert_eq!(r.monolith.window_secs, 125);
        assert_eq!(r.monolith.templates[0].per_sec, 0.16);
    }

    #[test]
    fn the_report_reads_back_as_it_was_written() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<PlanReport>(&json).unwrap(), r);
    }

    #[test]
    fn text_for_a_terminal() {
        insta::assert_snapshot!("plan_text", report().text());
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(125), "2m 05s");
        assert_eq!(human_duration(3 * 3600 + 7 * 60), "3h 07m");
        assert_eq!(human_duration(86_400 * 3 + 3600 * 4 + 5), "3d 4h");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
