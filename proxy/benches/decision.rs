//! The per-request decision path without the network (issue 14): route lookup, the canary's
//! sticky bucket, the breaker's admission and its record, the metrics a request records, and the
//! migration's progress counters (issue 15: who answered, and the monolith's endpoint template) —
//! each alone and all together, on a 50-route table with a Prometheus recorder installed as in
//! `serve`. A regression in what every request pays shows here without the whole stack.
//! `cargo bench -p strangler --bench decision`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use strangler::breaker::Breakers;
use strangler::config::{RouteTable, Source};
use strangler::metrics as m;
use strangler::progress::monolith::Named;
use strangler::progress::{Backend, Progress};
use strangler::routing::RequestFacts;
use strangler::routing::{bucket, in_canary, sticky_key};
use strangler::shadow::endpoint_template;
use strangler::shadow::template::endpoint_template_key;

fn table() -> RouteTable {
    let mut text = String::from("[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.svc]\nurl = \"http://127.0.0.1:4000\"\n");
    for i in 0..50 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nmatch = {{ path_prefix = \"/svc{i}/v1\", methods = [\"GET\", \"POST\"] }}\ntarget = \"svc\"\nmode = \"canary\"\npercent = 30\nsticky = \"jwt_sub\"\nbreaker = {{ failures = 5, cooldown_secs = 10 }}\n"
        ));
    }
    RouteTable::compile(Source::new("bench.toml", &text)).unwrap().table
}

/// What `Edge::finish_request` records per request: handles resolved once per thread.
fn record_metrics(route: &std::sync::Arc<str>, target: &std::sync::Arc<str>, elapsed: f64) {
    m::per_request::count_request(route, target, "canary", "2xx");
    m::per_request::request_duration(route, elapsed);
}

/// The same as the edge did it before: label strings built and looked up per request.
fn record_metrics_by_labels(route: &str, target: &str, elapsed: f64) {
    metrics::counter!(m::REQUESTS_TOTAL, "route" => route.to_string(), "target" => target.to_string(), "mode" => "canary", "status" => "2xx")
        .increment(1);
    metrics::histogram!(m::REQUEST_DURATION_SECONDS, "route" => route.to_string()).record(elapsed);
}

fn bench(c: &mut Criterion) {
    let _prometheus = m::install().unwrap();
    let t = table();
    let breakers = Breakers::default();
    let mut headers = HeaderMap::new();
    // a JWT whose payload is {"sub":"user-42"} (the sticky key; not verified here)
    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyLTQyIn0.x"));
    let client = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let req = RequestFacts { method: &Method::GET, path: "/svc37/v1/items/42", host: None, headers: &headers };
    let route = t.find(&req).expect("the bench route");

    let progress = Progress::default();
    progress.adopt(&t, std::time::SystemTime::now());
    // what `Edge::count_progress` does for a request the monolith answered: the route's counter,
    // then the endpoint template's (its text built only the first time)
    // (the edge passes the `now` it takes for the request's duration anyway)
    let count = |name: &strangler::config::RouteName, extracted: bool, path: &str, now: Instant| {
        progress.record(Some(name), if extracted { Backend::Target } else { Backend::Legacy }, now);
        if !extracted {
            let key = endpoint_template_key("GET", path);
            progress.record_monolith(key, now, || Named { template: endpoint_template("GET", path).into(), route: Some(name.clone()) });
        }
    };

    let mut g = c.benchmark_group("decision");
    g.bench_function("match", |b| b.iter(|| black_box(t.find(black_box(&req)).map(|r| r.line))));
    g.bench_function("canary", |b| {
        b.iter(|| {
            let key = sticky_key(&route.sticky, black_box(&headers), client).unwrap_or_default();
            black_box(in_canary(bucket(key.as_bytes()), route.percent))
        })
    });
    // what the edge does: the route's cell from the thread's cache, admission and outcome
    // answered from its flag while the breaker is closed and clean
    g.bench_function("breaker", |b| {
        b.iter(|| {
            let now = Instant::now();
            let cell = breakers.cell(black_box(&route.name), route.breaker);
            let admit = cell.admit(now);
            let changed = cell.record(true, || now);
            black_box((admit, changed))
        })
    });
    // what it did before (2026-12-07): the registry's lock taken three times per request
    g.bench_function("breaker-three-locks", |b| {
        b.iter(|| {
            let now = Instant::now();
            let admit = breakers.with(black_box(&route.name), route.breaker, |br| br.admit(now)).0;
            let before = breakers.with(&route.name, route.breaker, |br| br.state()).0;
            let after = breakers.with(&route.name, route.breaker, |br| br.record(true, now)).1;
            black_box((admit, before, after))
        })
    });
    let (svc, legacy): (std::sync::Arc<str>, std::sync::Arc<str>) = ("svc".into(), "legacy".into());
    g.bench_function("metrics", |b| b.iter(|| record_metrics(black_box(&route.name.0), &svc, 0.001)));
    g.bench_function("metrics-labels-per-request", |b| b.iter(|| record_metrics_by_labels(black_box(route.name.as_str()), "svc", 0.001)));
    g.bench_function("progress", |b| b.iter(|| count(&route.name, false, black_box(req.path), Instant::now())));
    // one request's whole decision, with or without the progress counting
    let decide = |with_progress: bool| {
        let r = t.find(black_box(&req)).unwrap();
        let key = sticky_key(&r.sticky, &headers, client).unwrap_or_default();
        let extracted = in_canary(bucket(key.as_bytes()), r.percent);
        let now = Instant::now();
        let cell = breakers.cell(&r.name, r.breaker);
        let admit = cell.admit(now).0;
        cell.record(true, || now);
        record_metrics(&r.name.0, if extracted { &svc } else { &legacy }, 0.001);
        if with_progress {
            count(&r.name, extracted, req.path, now);
        }
        black_box(admit)
    };
    // the same without the progress counting, in the same run: what counting adds
    g.bench_function("all-before-progress", |b| b.iter(|| decide(false)));
    g.bench_function("all", |b| b.iter(|| decide(true)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
