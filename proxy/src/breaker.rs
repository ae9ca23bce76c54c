//! The per-route circuit breaker in front of an extracted service.
//!
//! Closed: every request is tried; `failures` consecutive failures (refused connection,
//! 502/503/504) open it. Open: for `cooldown`, nothing is tried: idempotent requests go straight
//! to the monolith, others get a 503 with `Retry-After`. After the cooldown one probe request is
//! let through (half-open): success closes the breaker, failure opens it for another cooldown.
//!
//! The state machine is pure: the caller passes `now`. [`Breakers`] keeps one per route across
//! reloads (a reload that changes a route's breaker settings starts it afresh).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{BreakerSettings, RouteName};

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

/// One breaker per route, shared by all requests and kept across reloads.
#[derive(Debug, Default)]
pub struct Breakers {
    // A std mutex: held for a few instructions, never across an `.await`.
    map: Mutex<HashMap<RouteName, Entry>>,
}

impl Breakers {
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
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(route.clone()).or_insert_with(|| Entry { breaker: CircuitBreaker::new(settings), history: Default::default() });
        let before = e.breaker.state();
        if e.breaker.settings != settings {
            e.breaker = CircuitBreaker::new(settings);
        }
        let out = f(&mut e.breaker);
        let after = e.breaker.state();
        if before != after {
            e.history.push_back(Transition { at: now.unwrap_or_else(Instant::now), from: before, to: after });
            if e.history.len() > HISTORY {
                e.history.pop_front();
            }
        }
        (out, after)
    }

    pub fn states(&self) -> Vec<(RouteName, BreakerState)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, e)| (k.clone(), e.breaker.state())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every route's breaker with its last transitions, by route name.
    pub fn history(&self) -> Vec<RouteBreaker> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, e)| RouteBreaker { route: k.clone(), state: e.breaker.state(), transitions: e.history.iter().copied().collect() })
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
}
