//! Migration progress measured from live traffic: who answered each route's requests (the
//! extracted service, the monolith by design, the monolith as a fallback), how long each route
//! has been in its mode, and which endpoints the monolith still answers.
//!
//! The edge counts every answered request once, when it ends (`Edge::logging`): a per-route
//! ring of 10-second slots per backend ([`ring`]) and, for answers from the monolith, its
//! endpoint template ([`monolith`]). Both are atomics only: no lock, and no allocation but a
//! template's text the first time it is seen. Routes are found by name in a map behind an
//! `ArcSwap`, replaced (never edited) when a reload brings a new route, so the request path
//! only reads it. Counters are kept by route name across reloads: a route's history survives
//! the reload that flips it.
//!
//! Mode history is kept here too, updated on start-up and on each successful reload
//! ([`Progress::adopt`]), off the request path. [`report`] turns all of it, with parity,
//! breakers and demotions, into the JSON of `GET /plan` and the text of `strangler plan`.

pub mod monolith;
pub mod report;
pub mod ring;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{Mode, Route, RouteName, RouteTable};
use monolith::{Named, Templates};
use ring::Ring;

/// Width of a traffic slot.
pub const SLOT_SECS: u64 = 10;
/// Slots kept per route and backend: one hour.
pub const SLOTS: usize = 360;
/// Mode changes kept per route.
const MODE_HISTORY: usize = 20;

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The route's extracted service.
    Target,
    /// The monolith, because the route (or no route) sends it there: legacy and shadow modes, a
    /// canary's monolith share, a demoted canary, unmatched requests.
    Legacy,
    /// The monolith, because the extracted service could not answer (connection refused or
    /// reset, 502/503/504, an open breaker).
    Fallback,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Target, Backend::Legacy, Backend::Fallback];

    fn index(self) -> usize {
        match self {
            Backend::Target => 0,
            Backend::Legacy => 1,
            Backend::Fallback => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Target => "target",
            Backend::Legacy => "legacy",
            Backend::Fallback => "fallback",
        }
    }
}

/// One route's (or the unmatched requests') answers per backend: recent slots and totals.
#[derive(Debug, Default)]
pub struct Traffic {
    slots: [Ring<SLOTS>; 3],
}

/// Requests per backend over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub target: u64,
    pub legacy: u64,
    pub fallback: u64,
}

impl Split {
    pub fn total(&self) -> u64 {
        self.target + self.legacy + self.fallback
    }

    /// The extracted services' share, 0..=1 (`None` without requests).
    pub fn target_share(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.target as f64 / total as f64)
    }

    fn add(&mut self, o: Split) {
        self.target += o.target;
        self.legacy += o.legacy;
        self.fallback += o.fallback;
    }
}

impl std::ops::Add for Split {
    type Output = Split;
    fn add(mut self, o: Split) -> Split {
        Split::add(&mut self, o);
        self
    }
}

impl Traffic {
    pub fn record(&self, backend: Backend, slot: u32) {
        self.slots[backend.index()].add(slot, 1);
    }

    /// Requests in the last `n` slots up to `slot`, per backend.
    pub fn last(&self, slot: u32, n: u32) -> Split {
        let from = slot.saturating_sub(n.saturating_sub(1));
        let s = |b: Backend| self.slots[b.index()].sum(from, slot);
        Split { target: s(Backend::Target), legacy: s(Backend::Legacy), fallback: s(Backend::Fallback) }
    }

    pub fn since_start(&self) -> Split {
        let t = |b: Backend| self.slots[b.index()].total();
        Split { target: t(Backend::Target), legacy: t(Backend::Legacy), fallback: t(Backend::Fallback) }
    }

    /// Per backend, the `len` slots ending with `slot`, oldest first.
    pub fn series(&self, slot: u32, len: usize) -> [Vec<u64>; 3] {
        Backend::ALL.map(|b| self.slots[b.index()].series(slot, len))
    }
}

/// A route's mode as the dashboard names it: `canary 25%`, `extracted`.
pub fn mode_label(route: &Route) -> String {
    match route.mode {
        Mode::Canary => format!("canary {}%", route.percent.get()),
        m => m.to_string(),
    }
}

/// One change of a route's mode, by a reload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModeChange {
    pub at_unix_ms: u64,
    /// `None`: the route was added by this reload.
    pub from: Option<String>,
    pub to: String,
}

#[derive(Debug, Clone)]
struct ModeState {
    current: String,
    since: SystemTime,
    /// The route was in this mode when the proxy started: it may have been so for longer.
    since_start: bool,
    changes: VecDeque<ModeChange>,
}

/// What is kept per route name.
#[derive(Debug)]
pub struct RouteProgress {
    pub traffic: Traffic,
    mode: Mutex<Option<ModeState>>,
}

/// A route's mode and how long it has held it.
#[derive(Debug, Clone)]
pub struct ModeSince {
    pub current: String,
    pub since: SystemTime,
    pub since_start: bool,
    pub changes: Vec<ModeChange>,
}

impl RouteProgress {
    fn new() -> Self {
        RouteProgress { traffic: Traffic::default(), mode: Mutex::new(None) }
    }

    pub fn mode(&self) -> Option<ModeSince> {
        let g = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|m| ModeSince {
            current: m.current.clone(),
            since: m.since,
            since_start: m.since_start,
            changes: m.changes.iter().cloned().collect(),
        })
    }
}

type RouteMap = HashMap<RouteName, Arc<RouteProgress>, std::hash::BuildHasherDefault<crate::shadow::template::Fnv64>>;

/// Progress of every route, the unmatched requests, and the monolith's templates.
pub struct Progress {
    /// Slot numbers count from here.
    epoch: Instant,
    started_at: SystemTime,
    /// By route name, hashed with FNV (names come from the file, not from clients): the map
    /// is read on every request.
    routes: ArcSwap<RouteMap>,
    /// Requests no route claimed (the default upstream answers them).
    pub unmatched: Traffic,
    pub monolith: Templates,
    /// One `adopt` at a time (reloads are serialised already; this keeps the map's
    /// read-copy-update honest whoever calls it); holds whether a table was adopted yet.
    adopted: Mutex<bool>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Progress({} routes, {:?})", self.routes.load().len(), self.monolith)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new(Instant::now(), SystemTime::now())
    }
}

impl Progress {
    pub fn new(epoch: Instant, started_at: SystemTime) -> Self {
        Progress {
            epoch,
            started_at,
            routes: ArcSwap::from_pointee(RouteMap::default()),
            unmatched: Traffic::default(),
            monolith: Templates::new(),
            adopted: Mutex::new(false),
        }
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The traffic slot `now` falls in.
    pub fn slot(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_secs() / SLOT_SECS) as u32
    }

    /// The minute `now` falls in (for the monolith's templates).
    pub fn minute(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_secs() / 60) as u32
    }

    /// Seconds since the epoch, for windows that are not yet full.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// Takes a table in: counters for its new routes, and each route's mode change (`now` is
    /// when the table started serving). The first table is the one the proxy started with.
    pub fn adopt(&self, table: &RouteTable, now: SystemTime) {
        let mut adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        let first = !std::mem::replace(&mut *adopted, true);
        let current = self.routes.load_full();
        let mut added = Vec::new();
        for route in &table.routes {
            let progress = match current.get(&route.name) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(RouteProgress::new());
                    added.push((route.name.clone(), p.clone()));
                    p
                }
            };
            let label = mode_label(route);
            let at_unix_ms = crate::clock::unix_ms(now);
            let mut mode = progress.mode.lock().unwrap_or_else(|e| e.into_inner());
            match mode.as_mut() {
                None => {
                    let changes =
                        if first { VecDeque::new() } else { VecDeque::from([ModeChange { at_unix_ms, from: None, to: label.clone() }]) };
                    *mode = Some(ModeState { current: label, since: now, since_start: first, changes });
                }
                Some(m) if m.current != label => {
                    m.changes.push_back(ModeChange { at_unix_ms, from: Some(m.current.clone()), to: label.clone() });
                    while m.changes.len() > MODE_HISTORY {
                        m.changes.pop_front();
                    }
                    m.current = label;
                    m.since = now;
                    m.since_start = false;
                }
                Some(_) => {}
            }
        }
        if !added.is_empty() {
            let mut map = (*current).clone();
            map.extend(added);
            self.routes.store(Arc::new(map));
        }
    }

    /// A route's counters (`None` for a name no table this process served had).
    pub fn route(&self, name: &RouteName) -> Option<Arc<RouteProgress>> {
        self.routes.load().get(name).cloned()
    }

    /// Counts one answered request: on its route (or as unmatched) by who answered it. The
    /// request path: a map read and two atomic updates.
    pub fn record(&self, route: Option<&RouteName>, backend: Backend, now: Instant) {
        let slot = self.slot(now);
        match route {
            None => self.unmatched.record(backend, slot),
            Some(name) => {
                if let Some(p) = self.routes.load().get(name) {
                    p.traffic.record(backend, slot);
                }
            }
        }
    }

    /// Counts one answer of the monolith under its endpoint template (`key`, see
    /// `shadow::template::endpoint_template_key`); `name` builds the template's text the first
    /// time it is seen.
    pub fn record_monolith(&self, key: u64, now: Instant, name: impl FnOnce() -> Named) {
        self.monolith.record(key, self.minute(now), name);
    }

    /// Every route's counters, by name, and the unmatched requests: the overall timeline adds
    /// them up (including routes a reload has removed since).
    pub fn all_routes(&self) -> Vec<(RouteName, Arc<RouteProgress>)> {
        let mut v: Vec<_> = self.routes.load().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn table(mode: &str) -> RouteTable {
        let text = format!(
            "[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.auth]\nurl = \"http://127.0.0.1:4001\"\n[[routes]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth\" }}\ntarget = \"auth\"\n{mode}\n"
        );
        RouteTable::compile(Source::new("routes.toml", &text)).unwrap().table
    }

    #[test]
    fn counts_by_route_and_backend_across_reloads() {
        let t0 = Instant::now();
        let p = Progress::new(t0, SystemTime::UNIX_EPOCH);
        p.adopt(&table("mode = \"canary\"\npercent = 25"), SystemTime::UNIX_EPOCH);
        let auth = RouteName::from("auth");
        p.record(Some(&auth), Backend::Target, t0);
        p.record(Some(&auth), Backend::Legacy, t0 + Duration::from_secs(15));
        p.record(Some(&auth), Backend::Legacy, t0 + Duration::from_secs(15));
        p.record(None, Backend::Legacy, t0);
        // a route no table had is not counted (a request of a table older than this process)
        p.record(Some(&RouteName::from("gone")), Backend::Target, t0);
        // the reload flips the route; its counters carry on
        let reload_at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        p.adopt(&table("mode = \"extracted\""), reload_at);
        p.record(Some(&auth), Backend::Fallback, t0 + Duration::from_secs(20));
        let r = p.route(&auth).unwrap();
        let now = p.slot(t0 + Duration::from_secs(25));
        assert_eq!(r.traffic.last(now, 30), Split { target: 1, legacy: 2, fallback: 1 });
        // the last slot only (20..30 s)
        assert_eq!(r.traffic.last(now, 1), Split { target: 0, legacy: 0, fallback: 1 });
        assert_eq!(r.traffic.since_start().total(), 4);
        assert_eq!(p.unmatched.since_start(), Split { target: 0, legacy: 1, fallback: 0 });
        let [target, legacy, fallback] = r.traffic.series(now, 3);
        assert_eq!((target, legacy, fallback), (vec![1, 0, 0], vec![0, 2, 0], vec![0, 0, 1]));
        let mode = r.mode().unwrap();
        assert_eq!((mode.current.as_str(), mode.since, mode.since_start), ("extracted", reload_at, false));
        assert_eq!(mode.changes, [ModeChange { at_unix_ms: 100_000, from: Some("canary 25%".into()), to: "extracted".into() }]);
        // an unchanged mode keeps its time
        p.adopt(&table("mode = \"extracted\""), reload_at + Duration::from_secs(50));
        assert_eq!(p.route(&auth).unwrap().mode().unwrap().since, reload_at);
    }

    #[test]
    fn a_route_in_the_first_table_has_held_its_mode_at_least_since_start() {
        let p = Progress::default();
        p.adopt(&table("mode = \"shadow\""), SystemTime::UNIX_EPOCH);
        let m = p.route(&RouteName::from("auth")).unwrap().mode().unwrap();
        assert!(m.since_start);
        assert!(m.changes.is_empty());
    }
}
