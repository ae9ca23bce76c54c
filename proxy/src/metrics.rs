//! Metric names, in one place, Prometheus style: `strangler_` prefix, base units, `_total` for
//! counters. Label values come from bounded sets: route and upstream names from the table,
//! status classes, fixed reasons. Never a raw path, user or error text.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `route`, `target` (upstream name), `mode` and `status` class (`2xx`…).
pub const REQUESTS_TOTAL: &str = "strangler_requests_total";
/// Time from choosing an upstream to its response header, by `route` and `target`.
pub const UPSTREAM_DURATION_SECONDS: &str = "strangler_upstream_response_seconds";
/// Whole request time as the client sees it, by `route`.
pub const REQUEST_DURATION_SECONDS: &str = "strangler_request_duration_seconds";
/// Requests an extracted route sent to the monolith instead, by `route` and `reason`
/// (`connect_error`, `bad_status`, `breaker_open`).
pub const FALLBACKS_TOTAL: &str = "strangler_fallbacks_total";
/// Per route: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "strangler_breaker_state";
/// Breaker transitions into `state`, by `route`.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "strangler_breaker_transitions_total";
/// Reloads by `result` (`ok`, `error`, `unchanged`) and `trigger` (`file`, `sighup`, `admin`).
pub const CONFIG_RELOADS_TOTAL: &str = "strangler_config_reloads_total";
/// Unix time of the table being served.
pub const CONFIG_LOADED_TIMESTAMP_SECONDS: &str = "strangler_config_loaded_timestamp_seconds";
/// 1 when the served table is the file on disk, 0 when the file is broken and an older table serves.
pub const CONFIG_IN_SYNC: &str = "strangler_config_in_sync";
/// Shadow comparisons by `route` and `outcome` (`match`, `noise`, `mismatch`, `error`, `timeout`).
pub const SHADOW_COMPARISONS_TOTAL: &str = "strangler_shadow_comparisons_total";
/// Shadows not sent or not stored, by `route` and `reason` (`not_sampled`, `saturated`,
/// `too_large`, `unsafe_method`, `no_dry_run_support`, `no_dry_run_key`, `store_full`,
/// `store_error`).
pub const SHADOW_DROPPED_TOTAL: &str = "strangler_shadow_dropped_total";
/// Failed comparison-store operations, by `op` (`connect`, `insert`, `trim` for Postgres;
/// `open`, `write` for JSONL files).
pub const SHADOW_STORE_ERRORS_TOTAL: &str = "strangler_shadow_store_errors_total";
/// 1 while a canary route is demoted to shadow at run time.
pub const ROUTE_DEMOTED: &str = "strangler_route_demoted";
/// Automatic demotions by `route` and `reason` (`errors`, `mismatches`).
pub const DEMOTIONS_TOTAL: &str = "strangler_demotions_total";
/// Requests refused before routing (malformed head, bad `Host`, bad path…), by `reason`.
pub const REQUESTS_REFUSED_TOTAL: &str = "strangler_requests_refused_total";
/// Responses cut short after their head was sent (the upstream failed mid-body, so the client's
/// connection or stream was aborted rather than the answer looking complete), by `route` and
/// `reason` (`upstream`, `timeout`, `downstream`).
pub const RESPONSES_ABORTED_TOTAL: &str = "strangler_responses_aborted_total";
/// Requests on a GraphQL path by `outcome` (`owned`: one route owns every root field;
/// `unclaimed`, `mixed`: the default upstream; `rejected`; `unread`: not parsed, with `reason`;
/// `websocket`).
pub const GRAPHQL_OPERATIONS_TOTAL: &str = "strangler_graphql_operations_total";
/// Log lines dropped because the log's writer fell behind (never waited for), by `kind`
/// (`access`: a request's line; `other`).
pub const LOG_LINES_DROPPED_TOTAL: &str = "strangler_log_lines_dropped_total";
/// Requests the lean HTTP/1 path served (`edge::lean`); the rest of `strangler_requests_total`
/// went through Pingora's proxy.
pub const LEAN_REQUESTS_TOTAL: &str = "strangler_lean_requests_total";
/// Health-check result per `upstream`: 1 up, 0 down.
pub const UPSTREAM_UP: &str = "strangler_upstream_up";

/// Buckets for latency histograms, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .upkeep_timeout(Duration::from_secs(5))
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS_TOTAL, "Requests answered, by route, target, mode and status class");
    describe_counter!(LOG_LINES_DROPPED_TOTAL, "Log lines dropped because the log writer fell behind, by kind");
    describe_histogram!(UPSTREAM_DURATION_SECONDS, Unit::Seconds, "Upstream time to response header");
    describe_histogram!(REQUEST_DURATION_SECONDS, Unit::Seconds, "Whole request duration");
    describe_counter!(FALLBACKS_TOTAL, "Extracted-route requests served by the monolith instead");
    describe_gauge!(BREAKER_STATE, "Circuit breaker per route: 0 closed, 1 open, 2 half-open");
    describe_counter!(BREAKER_TRANSITIONS_TOTAL, "Circuit breaker transitions");
    describe_counter!(CONFIG_RELOADS_TOTAL, "Configuration reloads by result and trigger");
    describe_gauge!(CONFIG_LOADED_TIMESTAMP_SECONDS, Unit::Seconds, "When the served table was loaded");
    describe_gauge!(CONFIG_IN_SYNC, "1 when the served table is the file on disk");
    describe_counter!(SHADOW_COMPARISONS_TOTAL, "Shadow comparisons by route and outcome");
    describe_counter!(SHADOW_DROPPED_TOTAL, "Shadows dropped by route and reason");
    describe_counter!(SHADOW_STORE_ERRORS_TOTAL, "Failed shadow comparison store operations by op");
    describe_gauge!(ROUTE_DEMOTED, "1 while a canary is demoted to shadow");
    describe_counter!(DEMOTIONS_TOTAL, "Automatic canary demotions");
    describe_gauge!(UPSTREAM_UP, "Health check per upstream: 1 up, 0 down");
    describe_counter!(GRAPHQL_OPERATIONS_TOTAL, "Requests on GraphQL paths by how their operation was routed");
    describe_counter!(REQUESTS_REFUSED_TOTAL, "Requests refused before routing, by reason");
    describe_counter!(LEAN_REQUESTS_TOTAL, "Requests served by the lean HTTP/1 path instead of Pingora's proxy");
    describe_counter!(RESPONSES_ABORTED_TOTAL, "Responses aborted after their head was sent, by route and reason");
}

/// Handles of the metrics every request records, by their label values, resolved once per
/// worker thread: a request then pays a hash lookup, not the label strings' allocation and the
/// recorder's registry lookup (issue 14). Names only grow the maps as they grow the exporter's
/// own registry (routes and upstreams of the tables served).
pub mod per_request {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Arc;
    use std::thread::LocalKey;

    use metrics::{Counter, Histogram};

    type Name = Arc<str>;
    /// A name as a key: the address of its shared text. The entry keeps the name itself, so the
    /// address cannot be reused by another name while the entry lives. A lookup neither clones
    /// nor hashes the name: each clone of a name shared by the worker threads is an atomic
    /// write to one cache line they take from each other (issue 14, two workers).
    type At = usize;
    fn at(name: &Name) -> At {
        Arc::as_ptr(name) as *const u8 as usize
    }
    /// The caches' hasher: their keys come from the configuration, not from clients.
    type Fnv = std::hash::BuildHasherDefault<crate::shadow::template::Fnv64>;
    type Cache<K, H> = HashMap<K, (Vec<Name>, H), Fnv>;
    /// Entries per thread and metric past which a cache starts afresh: each reload brings new
    /// names (new addresses), whose old entries would otherwise stay for the process's life.
    const LIMIT: usize = 4096;
    /// `requests_total`'s labels: route, target, mode, status class.
    type RequestKey = (At, At, &'static str, &'static str);

    thread_local! {
        static REQUESTS: RefCell<Cache<RequestKey, Counter>> = RefCell::default();
        static DURATIONS: RefCell<Cache<At, Histogram>> = RefCell::default();
        static UPSTREAM: RefCell<Cache<(At, At), Histogram>> = RefCell::default();
        static SHADOW_DROPPED: RefCell<Cache<(At, &'static str), Counter>> = RefCell::default();
        static SHADOW_COMPARED: RefCell<Cache<(At, &'static str), Counter>> = RefCell::default();
    }

    /// Runs `use_` on the handle under `key` in this thread's `map`, registered with `make` (and
    /// kept with the `names` its key points at) the first time.
    fn with<K: Eq + Hash, H>(
        map: &'static LocalKey<RefCell<Cache<K, H>>>,
        key: K,
        names: &[&Name],
        make: impl FnOnce() -> H,
        use_: impl FnOnce(&H),
    ) {
        map.with(|m| {
            let mut m = m.borrow_mut();
            if let Some((_, h)) = m.get(&key) {
                return use_(h);
            }
            if m.len() >= LIMIT {
                m.clear();
            }
            let h = make();
            use_(&h);
            m.insert(key, (names.iter().map(|n| Arc::clone(n)).collect(), h));
        })
    }

    #[cfg(test)]
    pub(super) fn tests_limit() -> usize {
        LIMIT
    }

    /// `strangler_shadow_dropped_total{route,reason}` + 1: for every request a sampled route
    /// leaves out, and for every copy a saturated or slow target cannot take.
    pub fn shadow_dropped(route: &Name, reason: &'static str) {
        with(
            &SHADOW_DROPPED,
            (at(route), reason),
            &[route],
            || metrics::counter!(super::SHADOW_DROPPED_TOTAL, "route" => route.to_string(), "reason" => reason),
            |c| c.increment(1),
        )
    }

    /// `strangler_shadow_comparisons_total{route,outcome}` + 1: one per copy compared (on the
    /// shadow thread).
    pub fn shadow_compared(route: &Name, outcome: &'static str) {
        with(
            &SHADOW_COMPARED,
            (at(route), outcome),
            &[route],
            || metrics::counter!(super::SHADOW_COMPARISONS_TOTAL, "route" => route.to_string(), "outcome" => outcome),
            |c| c.increment(1),
        )
    }

    /// `strangler_requests_total{route,target,mode,status}` + 1.
    pub fn count_request(route: &Name, target: &Name, mode: &'static str, status: &'static str) {
        with(
            &REQUESTS,
            (at(route), at(target), mode, status),
            &[route, target],
            || metrics::counter!(super::REQUESTS_TOTAL, "route" => route.to_string(), "target" => target.to_string(), "mode" => mode, "status" => status),
            |c| c.increment(1),
        )
    }

    /// `strangler_request_duration_seconds{route}`.
    pub fn request_duration(route: &Name, seconds: f64) {
        with(
            &DURATIONS,
            at(route),
            &[route],
            || metrics::histogram!(super::REQUEST_DURATION_SECONDS, "route" => route.to_string()),
            |h| h.record(seconds),
        )
    }

    /// `strangler_upstream_response_seconds{route,target}`.
    pub fn upstream_duration(route: &Name, target: &Name, seconds: f64) {
        with(
            &UPSTREAM,
            (at(route), at(target)),
            &[route, target],
            || metrics::histogram!(super::UPSTREAM_DURATION_SECONDS, "route" => route.to_string(), "target" => target.to_string()),
            |h| h.record(seconds),
        )
    }
}

/// `2xx`, `4xx`…; `0xx` when no response was sent (client gone).
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn per_request_handles_count_by_label_text_across_reloaded_names_and_a_cleared_cache() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            // a reload compiles new names with the same text: new addresses, the same series
            let (chat, svc): (Arc<str>, Arc<str>) = ("chat".into(), "svc".into());
            let (chat2, svc2): (Arc<str>, Arc<str>) = ("chat".into(), "svc".into());
            super::per_request::count_request(&chat, &svc, "canary", "2xx");
            super::per_request::count_request(&chat, &svc, "canary", "2xx");
            super::per_request::count_request(&chat2, &svc2, "canary", "2xx");
            super::per_request::count_request(&chat2, &svc2, "canary", "5xx");
            super::per_request::request_duration(&chat, 0.5);
            super::per_request::request_duration(&chat2, 1.5);
            // enough other names to start this thread's cache afresh, then the first again
            for i in 0..super::per_request::tests_limit() + 1 {
                let other: Arc<str> = format!("r{i}").into();
                super::per_request::count_request(&other, &svc, "extracted", "2xx");
            }
            super::per_request::count_request(&chat, &svc, "canary", "2xx");
        });
        let text = handle.render();
        assert!(text.contains(r#"strangler_requests_total{route="chat",target="svc",mode="canary",status="2xx"} 4"#), "{text}");
        assert!(text.contains(r#"strangler_requests_total{route="chat",target="svc",mode="canary",status="5xx"} 1"#), "{text}");
        assert!(text.contains(r#"strangler_requests_total{route="r4096",target="svc",mode="extracted",status="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"strangler_request_duration_seconds_sum{route="chat"} 2"#), "{text}");
        assert!(text.contains(r#"strangler_request_duration_seconds_count{route="chat"} 2"#), "{text}");
    }
}
