//! What still reaches the monolith: requests it answered, counted per endpoint template
//! (`GET /users/{id}`, or a GraphQL root field: `/graphql query users`), in bounded memory.
//!
//! A fixed table of [`CAPACITY`] slots, open addressing on the template's 64-bit key
//! (`shadow::template::endpoint_template_key`, computed without building the text). A slot is
//! claimed with one compare-and-swap of its key; the thread that claims it then writes the
//! template's text (the only allocation, once per distinct template) and counts into the slot's
//! per-minute ring. A template that finds no free slot within [`PROBES`] steps (the table is
//! full, or its neighbourhood is) is counted as "other", so memory never grows with what clients
//! send. Slots are never freed: the table holds the first templates seen since the proxy
//! started, which for an API is its endpoints (ids are already folded into `{id}`).
//!
//! Pure: the caller passes the minute number; nothing here reads a clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::ring::Ring;
use crate::config::RouteName;
use crate::shadow::template::Fnv64;

/// Distinct templates kept (a power of two).
pub const CAPACITY: usize = 512;
/// Slots a template may try before it counts as "other".
const PROBES: usize = 16;
/// Minutes of history per template: the last five and the current one.
pub const MINUTES: usize = 6;

/// The template of a GraphQL root field: `/graphql query users`.
pub fn graphql_template(path: &str, kind: &str, field: &str) -> String {
    format!("{path} {kind} {field}")
}

/// The key of [`graphql_template`], without building it.
pub fn graphql_template_key(path: &str, kind: &str, field: &str) -> u64 {
    let mut h = Fnv64::new();
    h.bytes(path.as_bytes());
    h.byte(b' ');
    h.bytes(kind.as_bytes());
    h.byte(b' ');
    h.bytes(field.as_bytes());
    std::hash::Hasher::finish(&h)
}

/// Requests per minute for the last few minutes, and since the proxy started.
#[derive(Debug, Default)]
pub struct Counter {
    minutes: Ring<MINUTES>,
}

impl Counter {
    pub fn add(&self, minute: u32) {
        self.minutes.add(minute, 1);
    }

    /// Requests in minutes `minute - (n - 1) ..= minute`.
    pub fn last_minutes(&self, minute: u32, n: u32) -> u64 {
        self.minutes.sum(minute.saturating_sub(n.saturating_sub(1)), minute)
    }

    pub fn total(&self) -> u64 {
        self.minutes.total()
    }
}

/// What a slot holds once claimed: the template and the route that matched it (none for
/// requests no route claims), as first seen.
#[derive(Debug)]
pub struct Named {
    pub template: Box<str>,
    pub route: Option<RouteName>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The template's key; 0 while free.
    key: AtomicU64,
    /// Written once by the thread that claimed the slot; a reader skips a slot whose text is
    /// not there yet.
    named: OnceLock<Named>,
    counts: Counter,
}

pub struct Templates {
    slots: Box<[Slot]>,
    other: Counter,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({} of {CAPACITY})", self.distinct())
    }
}

/// One template's counts, read out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCount {
    pub template: String,
    pub route: Option<String>,
    /// Requests in the minutes asked for.
    pub recent: u64,
    pub total: u64,
}

impl Templates {
    pub fn new() -> Self {
        Templates { slots: (0..CAPACITY).map(|_| Slot::default()).collect(), other: Counter::default() }
    }

    /// Counts one request for the template with `key`; `name` builds its text the first time.
    pub fn record(&self, key: u64, minute: u32, name: impl FnOnce() -> Named) {
        let key = key.max(1); // 0 marks a free slot
        let start = key as usize & (CAPACITY - 1);
        for probe in 0..PROBES {
            let slot = &self.slots[(start + probe) & (CAPACITY - 1)];
            let held = slot.key.load(Ordering::Acquire);
            if held == key {
                slot.counts.add(minute);
                return;
            }
            if held == 0 {
                match slot.key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        let _ = slot.named.set(name());
                        slot.counts.add(minute);
                        return;
                    }
                    // another thread claimed it first, perhaps for this very template
                    Err(now) if now == key => {
                        slot.counts.add(minute);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
        self.other.add(minute);
    }

    /// Templates claimed so far.
    pub fn distinct(&self) -> usize {
        self.slots.iter().filter(|s| s.named.get().is_some()).count()
    }

    /// The `top` templates with the most requests in the last `minutes` minutes (then since
    /// start, then by name), and the requests counted as "other".
    pub fn top(&self, minute: u32, minutes: u32, top: usize) -> (Vec<TemplateCount>, TemplateCount) {
        let mut all: Vec<TemplateCount> = self
            .slots
            .iter()
            .filter_map(|s| {
                let named = s.named.get()?;
                Some(TemplateCount {
                    template: named.template.to_string(),
                    route: named.route.as_ref().map(|r| r.to_string()),
                    recent: s.counts.last_minutes(minute, minutes),
                    total: s.counts.total(),
                })
            })
            .collect();
        all.sort_by(|a, b| b.recent.cmp(&a.recent).then(b.total.cmp(&a.total)).then(a.template.cmp(&b.template)));
        all.truncate(top);
        let other = TemplateCount {
            template: "other".into(),
            route: None,
            recent: self.other.last_minutes(minute, minutes),
            total: self.other.total(),
        };
        (all, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::template::{endpoint_template, endpoint_template_key};
    use proptest::prelude::*;

    fn count(t: &Templates, method: &str, path: &str, minute: u32) {
        t.record(endpoint_template_key(method, path), minute, || Named { template: endpoint_template(method, path).into(), route: None });
    }

    #[test]
    fn ids_fold_into_one_template_and_the_busiest_come_first() {
        let t = Templates::new();
        for id in 0..30 {
            count(&t, "GET", &format!("/users/{id}"), 0);
        }
        for _ in 0..5 {
            count(&t, "POST", "/auth/login", 0);
        }
        count(&t, "GET", "/users/5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00/chats", 1);
        let (top, other) = t.top(1, 5, 10);
        let names: Vec<(&str, u64)> = top.iter().map(|c| (c.template.as_str(), c.recent)).collect();
        assert_eq!(names, [("GET /users/{id}", 30), ("POST /auth/login", 5), ("GET /users/{id}/chats", 1)]);
        assert_eq!(other.total, 0);
        // minute 7: the first minutes are out of a five-minute window, the totals stay
        let (top, _) = t.top(7, 5, 10);
        assert_eq!(top[0].recent, 0);
        assert_eq!(top[0].total, 30);
    }

    #[test]
    fn graphql_keys_are_the_hash_of_their_template() {
        for (path, kind, field) in [("/graphql", "query", "users"), ("/api/graphql", "mutation", "sendMessage"), ("/g", "", "")] {
            assert_eq!(graphql_template_key(path, kind, field), Fnv64::of(graphql_template(path, kind, field).as_bytes()));
        }
    }

    proptest! {
        // each case fills a table of up to 1500 requests: a few dozen cases find what more would
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Memory is bounded and nothing is lost: however many distinct templates arrive, at
        /// most CAPACITY are kept, and every request is counted either under its template or as
        /// "other".
        #[test]
        fn bounded_and_every_request_counted(paths in prop::collection::vec("[a-z]{1,3}/[a-z]{1,3}", 1..1500)) {
            let t = Templates::new();
            for p in &paths {
                count(&t, "GET", &format!("/{p}"), 3);
            }
            prop_assert!(t.distinct() <= CAPACITY);
            let (top, other) = t.top(3, 5, CAPACITY);
            let counted: u64 = top.iter().map(|c| c.total).sum::<u64>() + other.total;
            prop_assert_eq!(counted, paths.len() as u64);
            let distinct: std::collections::HashSet<&String> = paths.iter().collect();
            prop_assert_eq!(top.len(), distinct.len().min(t.distinct()));
            if distinct.len() <= CAPACITY / 4 {
                // far from full, nothing overflows
                prop_assert_eq!(other.total, 0);
            }
        }
    }
}
