//! The per-route circuit breaker in front of an extracted service.
//!
//! Closed: every request is tried; `failures` consecutive failures (refused connection,
//! 502/503/504) open it. Open: for `cooldown`, nothing is tried: idempotent requests go straight
//! to the monolith, others get a 503 with `Retry-After`. After the cooldown one probe request is
//! let through (half-open): success closes the breaker, failure opens it for another cooldown.
//!
//! The state machine is pure: the caller passes `now`. [`Breakers`] keeps one per route across
//! reloads (a reload that changes a route's breaker settings starts it afresh).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{BreakerSettings, RouteName};

/// The caches' hasher: their keys come from the configuration, not from clients.
type Fnv = std::hash::BuildHasherDefault<crate::shadow::template::Fnv64>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Value of the `strangler_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a request may go to the extracted service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the one probe of a half-open breaker.
    Probe,
    No,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Inner,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe_since`: when the probe was let through; a probe that never reports back (client
    /// gone) is replaced after another cooldown.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker { settings, inner: Inner::Closed { failures: 0 } }
    }

    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.inner {
            Inner::Closed { .. } => Admit::Yes,
            Inner::Open { until } if now < until => Admit::No,
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen { probe_since: Some(now) };
                Admit::Probe
            }
            Inner::HalfOpen { probe_since: Some(t) } if now.saturating_duration_since(t) < self.settings.cooldown => Admit::No,
            Inner::HalfOpen { .. } => {
                self.inner = Inner::HalfOpen { probe_since: Some(now) };
                Admit::Probe
            }
        }
    }

    /// Records the outcome of a request that was admitted.
    pub fn record(&mut self, success: bool, now: Instant) {
        self.inner = match (self.inner, success) {
            (Inner::Closed { .. }, true) | (Inner::HalfOpen { .. }, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, false) if failures + 1 < self.settings.failures => Inner::Closed { failures: failures + 1 },
            (Inner::Closed { .. }, false) | (Inner::HalfOpen { .. }, false) => Inner::Open { until: now + self.settings.cooldown },
            // Outcomes of requests admitted before the breaker opened change nothing.
            (open @ Inner::Open { .. }, _) => open,
        };
    }

    pub fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }
}

/// Transitions kept per route, for the operator's view (`/plan`, the dashboard).
pub const HISTORY: usize = 20;

/// A breaker changing state (`at` is when the request that changed it was handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub at: Instant,
    pub from: BreakerState,
    pub to: BreakerState,
}

/// A route's breaker as the admin API shows it: its state and its last transitions.
#[derive(Debug, Clone)]
pub struct RouteBreaker {
    pub route: RouteName,
    pub state: BreakerState,
    /// Oldest first, at most [`HISTORY`].
    pub transitions: Vec<Transition>,
}

#[derive(Debug)]
struct Entry {
    breaker: CircuitBreaker,
    history: std::collections::VecDeque<Transition>,
}

impl Entry {
    fn note(&mut self, from: BreakerState, to: BreakerState, at: Instant) -> Option<Transition> {
        if from == to {
            return None;
        }
        let t = Transition { at, from, to };
        self.history.push_back(t);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        Some(t)
    }
}

/// One route's breaker under one set of settings, shared by every request and worker thread.
///
/// A request asks it twice (admission, then the outcome), and nearly always it is closed with no
/// failure counted: those two questions are answered from one atomic flag, without the lock —
/// the per-request price was three takes of one global mutex (docs/benchmarks.md). Anything
/// else (a failure, an open or half-open breaker) takes the cell's own lock.
#[derive(Debug)]
pub struct Cell {
    settings: BreakerSettings,
    /// The breaker is closed with no failure counted (written under `entry`'s lock).
    clean: AtomicBool,
    /// A reload changed the route's settings: this cell was replaced by a fresh one.
    replaced: AtomicBool,
    /// The state gauge has been set for this cell (see [`Cell::first_use`]).
    announced: AtomicBool,
    entry: Mutex<Entry>,
}

impl Cell {
    fn new(settings: BreakerSettings, history: std::collections::VecDeque<Transition>) -> Cell {
        Cell {
            settings,
            clean: AtomicBool::new(true),
            replaced: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            entry: Mutex::new(Entry { breaker: CircuitBreaker::new(settings), history }),
        }
    }

    /// Whether a request may go to the service now; a change of state it made (an open
    /// breaker's cooldown over: half-open) is returned for the caller to report.
    pub fn admit(&self, now: Instant) -> (Admit, Option<Transition>) {
        if self.clean.load(Ordering::Acquire) {
            return (Admit::Yes, None);
        }
        let (admit, _, t) = self.with_at(now, |b| b.admit(now));
        (admit, t)
    }

    /// Records how an admitted request went (`now` is asked only if the state may change); a
    /// change of state it made is returned.
    pub fn record(&self, success: bool, now: impl FnOnce() -> Instant) -> Option<Transition> {
        // a success on a clean breaker leaves it clean
        if success && self.clean.load(Ordering::Acquire) {
            return None;
        }
        let now = now();
        self.with_at(now, |b| b.record(success, now)).2
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.entry.lock().unwrap_or_else(|e| e.into_inner()).breaker.state()
    }

    /// `true` exactly once per cell: the caller reports the state gauge of a breaker it has not
    /// reported yet (a new route, or one whose settings a reload changed).
    pub fn first_use(&self) -> bool {
        !self.announced.load(Ordering::Relaxed) && !self.announced.swap(true, Ordering::Relaxed)
    }

    /// Runs `f` on the breaker under the lock; returns its result, the state after it and the
    /// change of state (stamped `now`), if any.
    fn with_at<T>(&self, now: Instant, f: impl FnOnce(&mut CircuitBreaker) -> T) -> (T, BreakerState, Option<Transition>) {
        let mut e = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let before = e.breaker.state();
        let out = f(&mut e.breaker);
        let after = e.breaker.state();
        self.clean.store(matches!(e.breaker.inner, Inner::Closed { failures: 0 }), Ordering::Release);
        let t = e.note(before, after, now);
        (out, after, t)
    }
}

/// One registry's cells in one thread, by route name.
type RouteCells = HashMap<Arc<str>, Arc<Cell>, Fnv>;

static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each thread's cells by registry and route name: a request finds its route's breaker
    /// without the registry's lock (the workers' threads live as long as the proxy).
    static CELLS: RefCell<HashMap<u64, RouteCells, Fnv>> = RefCell::new(HashMap::default());
}

/// One breaker per route, shared by all requests and kept across reloads.
#[derive(Debug)]
pub struct Breakers {
    /// Tells this registry's cells from another's in the threads' caches (tests run several).
    id: u64,
    // A std mutex: held for a few instructions, never across an `.await`; taken only the first
    // time a thread meets a route (or its new settings).
    map: Mutex<HashMap<RouteName, Arc<Cell>>>,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers { id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed), map: Mutex::default() }
    }
}

impl Breakers {
    /// The route's breaker under `settings`: created the first time, started afresh (its
    /// history kept) when the settings changed.
    pub fn cell(&self, route: &RouteName, settings: BreakerSettings) -> Arc<Cell> {
        let cached = CELLS.with(|c| {
            let c = c.borrow();
            let cell = c.get(&self.id)?.get(route.as_str())?;
            (cell.settings == settings && !cell.replaced.load(Ordering::Acquire)).then(|| cell.clone())
        });
        if let Some(cell) = cached {
            return cell;
        }
        let cell = self.shared_cell(route, settings, Instant::now());
        CELLS.with(|c| c.borrow_mut().entry(self.id).or_default().insert(route.0.clone(), cell.clone()));
        cell
    }

    /// The registry's cell for `route`, replaced by a fresh one if its settings differ (the
    /// reset kept in the history, stamped `now`).
    fn shared_cell(&self, route: &RouteName, settings: BreakerSettings, now: Instant) -> Arc<Cell> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(route) {
            Some(cell) if cell.settings == settings => cell.clone(),
            Some(old) => {
                old.replaced.store(true, Ordering::Release);
                let mut e = old.entry.lock().unwrap_or_else(|e| e.into_inner());
                let before = e.breaker.state();
                e.note(before, BreakerState::Closed, now);
                let fresh = Arc::new(Cell::new(settings, std::mem::take(&mut e.history)));
                drop(e);
                map.insert(route.clone(), fresh.clone());
                fresh
            }
            None => {
                let fresh = Arc::new(Cell::new(settings, Default::default()));
                map.insert(route.clone(), fresh.clone());
                fresh
            }
        }
    }

    /// Runs `f` on the route's breaker, creating (or, when settings changed, resetting) it.
    /// Returns `f`'s result and the state after it. A change of state is kept in the route's
    /// history, stamped `now` (the time `f` was given).
    pub fn with<T>(&self, route: &RouteName, settings: BreakerSettings, f: impl FnOnce(&mut CircuitBreaker) -> T) -> (T, BreakerState) {
        self.with_at(route, settings, None, f)
    }

    /// [`Breakers::with`], stamping a change of state with `now`.
    pub fn with_at<T>(
        &self,
        route: &RouteName,
        settings: BreakerSettings,
        now: Option<Instant>,
        f: impl FnOnce(&mut CircuitBreaker) -> T,
    ) -> (T, BreakerState) {
        let now = now.unwrap_or_else(Instant::now);
        let (out, after, _) = self.shared_cell(route, settings, now).with_at(now, f);
        (out, after)
    }

    pub fn states(&self) -> Vec<(RouteName, BreakerState)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, c)| (k.clone(), c.state())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every route's breaker with its last transitions, by route name.
    pub fn history(&self) -> Vec<RouteBreaker> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, c)| {
                let e = c.entry.lock().unwrap_or_else(|e| e.into_inner());
                RouteBreaker { route: k.clone(), state: e.breaker.state(), transitions: e.history.iter().copied().collect() }
            })
            .collect();
        v.sort_by(|a, b| a.route.cmp(&b.route));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings { failures: 3, cooldown: Duration::from_secs(10) }
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admit::Yes);
            b.record(false, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true, t0); // a success resets the count
        for _ in 0..3 {
            b.record(false, t0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admit::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(t0 + Duration::from_secs(11)), Admit::No);
        b.record(true, t0 + Duration::from_secs(11));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t0 + Duration::from_secs(11)), Admit::Yes);
    }

    #[test]
    fn failed_probe_reopens_and_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        for _ in 0..3 {
            b.record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admit::Probe);
        b.record(false, t1);
        assert_eq!(b.state(), BreakerState::Open);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2), Admit::Probe);
        // The probe never reports; after another cooldown a new probe goes.
        assert_eq!(b.admit(t2 + Duration::from_secs(10)), Admit::Probe);
    }

    #[test]
    fn registry_resets_on_new_settings() {
        let reg = Breakers::default();
        let name = RouteName::from("auth");
        let now = Instant::now();
        for _ in 0..3 {
            reg.with(&name, settings(), |b| b.record(false, now));
        }
        assert_eq!(reg.with(&name, settings(), |_| ()).1, BreakerState::Open);
        let other = BreakerSettings { failures: 5, ..settings() };
        assert_eq!(reg.with(&name, other, |_| ()).1, BreakerState::Closed);
    }

    #[test]
    fn registry_keeps_each_routes_last_transitions() {
        let reg = Breakers::default();
        let name = RouteName::from("auth");
        let t0 = Instant::now();
        for _ in 0..3 {
            reg.with_at(&name, settings(), Some(t0), |b| b.record(false, t0));
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(reg.with_at(&name, settings(), Some(t1), |b| b.admit(t1)).0, Admit::Probe);
        reg.with_at(&name, settings(), Some(t1), |b| b.record(true, t1));
        let h = reg.history();
        assert_eq!(h.len(), 1);
        let seen: Vec<(BreakerState, BreakerState, Instant)> = h[0].transitions.iter().map(|t| (t.from, t.to, t.at)).collect();
        assert_eq!(
            seen,
            [
                (BreakerState::Closed, BreakerState::Open, t0),
                (BreakerState::Open, BreakerState::HalfOpen, t1),
                (BreakerState::HalfOpen, BreakerState::Closed, t1)
            ]
        );
        // bounded: a flapping breaker keeps only the last HISTORY transitions
        for i in 0..HISTORY as u64 {
            let t = t1 + Duration::from_secs(100 * (i + 1));
            for _ in 0..3 {
                reg.with_at(&name, settings(), Some(t), |b| b.record(false, t));
            }
            reg.with_at(&name, settings(), Some(t + Duration::from_secs(10)), |b| b.admit(t + Duration::from_secs(10)));
            reg.with_at(&name, settings(), Some(t + Duration::from_secs(10)), |b| b.record(true, t));
        }
        assert_eq!(reg.history()[0].transitions.len(), HISTORY);
    }

    #[test]
    fn a_cell_answers_as_the_breaker_does_with_and_without_its_lock() {
        // the same sequence through a plain breaker and through a cell (whose clean path skips
        // the lock): every admission and every state alike
        let reg = Breakers::default();
        let name = RouteName::from("chat");
        let t0 = Instant::now();
        let mut plain = CircuitBreaker::new(settings());
        let cell = reg.cell(&name, settings());
        let steps: &[(u64, Option<bool>)] = &[
            (0, None),
            (0, Some(true)),
            (1, Some(false)),
            (1, None),
            (2, Some(true)), // a success after a failure: clean again
            (2, Some(false)),
            (3, Some(false)),
            (4, Some(false)), // opens
            (5, None),
            (14, None), // the probe
            (14, None), // not a second one
            (15, Some(true)),
            (16, None),
            (16, Some(true)),
        ];
        for &(secs, outcome) in steps {
            let now = t0 + Duration::from_secs(secs);
            match outcome {
                None => assert_eq!(cell.admit(now).0, plain.admit(now), "admission at {secs}s"),
                Some(ok) => {
                    cell.record(ok, || now);
                    plain.record(ok, now);
                }
            }
            assert_eq!(cell.state(), plain.state(), "state at {secs}s");
        }
        let seen: Vec<_> = reg.history()[0].transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            seen,
            [
                (BreakerState::Closed, BreakerState::Open),
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Closed)
            ]
        );
    }

    #[test]
    fn a_cell_reports_its_changes_of_state_and_its_first_use_once() {
        let reg = Breakers::default();
        let name = RouteName::from("chat");
        let t0 = Instant::now();
        let cell = reg.cell(&name, settings());
        assert!(cell.first_use());
        assert!(!cell.first_use());
        assert!(cell.record(false, || t0).is_none());
        assert!(cell.record(false, || t0).is_none());
        let opened = cell.record(false, || t0).expect("the third failure opens it");
        assert_eq!((opened.from, opened.to, opened.at), (BreakerState::Closed, BreakerState::Open, t0));
        let t1 = t0 + Duration::from_secs(10);
        let (admit, probing) = cell.admit(t1);
        assert_eq!(admit, Admit::Probe);
        assert_eq!(probing.map(|t| t.to), Some(BreakerState::HalfOpen));
        assert_eq!(cell.record(true, || t1).map(|t| t.to), Some(BreakerState::Closed));
    }

    #[test]
    fn every_thread_sees_one_cell_per_route_and_a_reload_s_new_settings() {
        let reg = Arc::new(Breakers::default());
        let name = RouteName::from("chat");
        let t0 = Instant::now();
        // this thread caches the cell; another thread opens the breaker through its own cache
        let here = reg.cell(&name, settings());
        let (r, n) = (reg.clone(), name.clone());
        std::thread::spawn(move || {
            let there = r.cell(&n, settings());
            for _ in 0..3 {
                there.record(false, || t0);
            }
        })
        .join()
        .unwrap();
        assert_eq!(reg.cell(&name, settings()).admit(t0).0, Admit::No, "one breaker for every thread");
        assert!(Arc::ptr_eq(&here, &reg.cell(&name, settings())));
        // a reload changes the settings (on another thread): a fresh, closed breaker everywhere,
        // the old one marked so that this thread's cache lets it go
        let other = BreakerSettings { failures: 5, ..settings() };
        let (r, n) = (reg.clone(), name.clone());
        let fresh = std::thread::spawn(move || r.cell(&n, other)).join().unwrap();
        assert_eq!(fresh.state(), BreakerState::Closed);
        assert!(Arc::ptr_eq(&fresh, &reg.cell(&name, other)));
        // and back to the first settings: this thread's cached (replaced) cell is not reused
        let again = reg.cell(&name, settings());
        assert!(!Arc::ptr_eq(&again, &here));
        assert_eq!(again.admit(t0).0, Admit::Yes);
        let seen: Vec<_> = reg.history()[0].transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(seen, [(BreakerState::Closed, BreakerState::Open), (BreakerState::Open, BreakerState::Closed)]);
        // registries do not share cells
        let second = Breakers::default();
        assert!(!Arc::ptr_eq(&second.cell(&name, settings()), &again));
    }
}
