//! Automatic demotion: the safety net behind "rollback is reverting a route".
//!
//! A `canary` route with `demote = { … }` is watched over a sliding window: the share of its
//! extracted answers that are 5xx, and the share of its shadow comparisons that mismatch. When
//! either passes its limit (with at least `min_requests` in the window), the route is demoted
//! to `shadow` at run time: every user goes back to the monolith while comparisons continue.
//! It is visible on the admin API (`/routes` → `demoted`), as `strangler_route_demoted{route}`
//! and in the log. A reload (any successful one, even of an unchanged file) re-promotes.
//!
//! The window is pure (time passed in): [`Window`] keeps per-slice counts in a ring.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::error;

use crate::config::{DemoteSettings, RouteName};
use crate::metrics as m;

/// Counts of good and bad events over the last `span`, in `SLICES` slices.
#[derive(Debug, Clone)]
pub struct Window {
    span: Duration,
    slices: VecDeque<(Instant, u64, u64)>,
}

const SLICES: u32 = 10;

impl Window {
    pub fn new(span: Duration) -> Self {
        Window { span, slices: VecDeque::new() }
    }

    pub fn record(&mut self, now: Instant, bad: bool) {
        self.expire(now);
        let slice = self.span / SLICES;
        match self.slices.back_mut() {
            Some((start, total, b)) if now.saturating_duration_since(*start) < slice => {
                *total += 1;
                *b += u64::from(bad);
            }
            _ => self.slices.push_back((now, 1, u64::from(bad))),
        }
    }

    fn expire(&mut self, now: Instant) {
        while self.slices.front().is_some_and(|(start, _, _)| now.saturating_duration_since(*start) >= self.span) {
            self.slices.pop_front();
        }
    }

    /// (total, bad) within the window.
    pub fn counts(&mut self, now: Instant) -> (u64, u64) {
        self.expire(now);
        self.slices.iter().fold((0, 0), |(t, b), (_, tt, bb)| (t + tt, b + bb))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Demotion {
    pub reason: String,
    pub at_unix_secs: u64,
}

/// A demotion as the history keeps it: when, why, and when a reload re-promoted the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DemotionEvent {
    pub route: String,
    pub reason: String,
    pub at_unix_secs: u64,
    pub promoted_at_unix_secs: Option<u64>,
}

/// Demotions kept in the history (of all routes).
pub const HISTORY: usize = 50;

#[derive(Debug)]
struct RouteWatch {
    settings: DemoteSettings,
    errors: Window,
    mismatches: Window,
}

/// Per-route windows and demotions, shared by the edge and the tee.
#[derive(Debug, Default)]
pub struct Demoter {
    // A std mutex: held briefly, never across an `.await`.
    inner: Mutex<(HashMap<RouteName, RouteWatch>, HashMap<RouteName, Demotion>)>,
    /// The last demotions, oldest first; a reload does not clear it.
    history: Mutex<VecDeque<DemotionEvent>>,
}

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    /// An answer from the extracted side; `true` when it was a 5xx.
    Answer(bool),
    /// A shadow comparison; `true` when it mismatched.
    Comparison(bool),
}

impl Demoter {
    pub fn is_demoted(&self, route: &RouteName) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.contains_key(route)
    }

    pub fn demotions(&self) -> Vec<(RouteName, Demotion)> {
        let mut v: Vec<_> = self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The last demotions of every route, oldest first.
    pub fn history(&self) -> Vec<DemotionEvent> {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Re-promotes every route and forgets the windows (called on reload).
    pub fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !g.1.is_empty() {
            let now = crate::clock::now_unix_secs();
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            for e in history.iter_mut().filter(|e| e.promoted_at_unix_secs.is_none()) {
                e.promoted_at_unix_secs = Some(now);
            }
        }
        for route in g.1.keys() {
            metrics::gauge!(m::ROUTE_DEMOTED, "route" => route.to_string()).set(0.0);
        }
        *g = Default::default();
    }

    /// Records one event; demotes the route when a limit is passed. Returns `true` on demotion.
    pub fn observe(&self, route: &RouteName, settings: DemoteSettings, signal: Signal, now: Instant) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (watches, demoted) = &mut *g;
        if demoted.contains_key(route) {
            return false;
        }
        let w = watches.entry(route.clone()).or_insert_with(|| RouteWatch {
            settings,
            errors: Window::new(settings.window),
            mismatches: Window::new(settings.window),
        });
        if w.settings != settings {
            *w = RouteWatch { settings, errors: Window::new(settings.window), mismatches: Window::new(settings.window) };
        }
        let (window, limit, what) = match signal {
            Signal::Answer(bad) => {
                w.errors.record(now, bad);
                (&mut w.errors, settings.max_error_percent, "5xx answers")
            }
            Signal::Comparison(bad) => {
                w.mismatches.record(now, bad);
                (&mut w.mismatches, settings.max_mismatch_percent, "shadow mismatches")
            }
        };
        let (total, bad) = window.counts(now);
        if total < settings.min_requests || (bad as f64) * 100.0 <= f64::from(limit) * total as f64 {
            return false;
        }
        let reason = format!("{what}: {bad} of {total} in the last {}s (limit {limit}%)", settings.window.as_secs());
        error!(route = %route, reason = %reason, "canary demoted to shadow: all users back on the monolith; reload to re-promote");
        metrics::gauge!(m::ROUTE_DEMOTED, "route" => route.to_string()).set(1.0);
        metrics::counter!(m::DEMOTIONS_TOTAL, "route" => route.to_string(), "reason" => if matches!(signal, Signal::Answer(_)) { "errors" } else { "mismatches" }).increment(1);
        let at_unix_secs = crate::clock::now_unix_secs();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back(DemotionEvent { route: route.to_string(), reason: reason.clone(), at_unix_secs, promoted_at_unix_secs: None });
        if history.len() > HISTORY {
            history.pop_front();
        }
        demoted.insert(route.clone(), Demotion { reason, at_unix_secs });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DemoteSettings {
        DemoteSettings { max_error_percent: 10, max_mismatch_percent: 5, window: Duration::from_secs(60), min_requests: 10 }
    }

    #[test]
    fn window_forgets_old_events() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        for i in 0..10 {
            w.record(t0 + Duration::from_secs(i), i % 2 == 0);
        }
        assert_eq!(w.counts(t0 + Duration::from_secs(9)), (10, 5));
        assert_eq!(w.counts(t0 + Duration::from_millis(14_500)), (5, 2));
        assert_eq!(w.counts(t0 + Duration::from_secs(30)), (0, 0));
    }

    #[test]
    fn demotes_past_the_limit_only_with_enough_samples_and_reload_promotes() {
        let d = Demoter::default();
        let r = RouteName::from("auth");
        let now = Instant::now();
        // 5 of 5 bad, but below min_requests.
        for _ in 0..5 {
            assert!(!d.observe(&r, settings(), Signal::Answer(true), now));
        }
        // 5 bad of 10: 50% > 10%.
        for i in 0..5 {
            let demoted = d.observe(&r, settings(), Signal::Answer(false), now);
            assert_eq!(demoted, i == 4);
        }
        assert!(d.is_demoted(&r));
        assert!(d.demotions()[0].1.reason.starts_with("5xx answers: 5 of 10"));
        assert_eq!(d.history().len(), 1);
        assert_eq!(d.history()[0].promoted_at_unix_secs, None);
        d.reset();
        assert!(!d.is_demoted(&r));
        // the history outlives the reload, which it records as the re-promotion
        assert_eq!(d.history().len(), 1);
        assert!(d.history()[0].promoted_at_unix_secs.is_some());
        assert_eq!(d.history()[0].route, "auth");
        // At the limit is allowed: 1 of 20 mismatches = 5% (the bad one last, so the share never passes 5%).
        for i in 0..20 {
            assert!(!d.observe(&r, settings(), Signal::Comparison(i == 19), now));
        }
    }
}
