//! Route lookup cost against table size: 10 vs 10,000 routes, with a linear scan over the same
//! table as the baseline in the same run. `cargo bench -p strangler --bench matcher`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use strangler::config::{RouteTable, Source};
use strangler::routing::{conditions_hold, normalize_path, path_holds, specificity, RequestFacts};

fn table(n: usize) -> RouteTable {
    let mut text = String::from("[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.svc]\nurl = \"http://127.0.0.1:4000\"\n");
    for i in 0..n {
        let m = if i % 3 == 0 {
            format!("path = \"/svc{i}/v1/items\"")
        } else {
            format!("path_prefix = \"/svc{i}/v1\", methods = [\"GET\", \"POST\"]")
        };
        text.push_str(&format!("[[routes]]\nname = \"r{i}\"\nmatch = {{ {m} }}\ntarget = \"svc\"\n"));
    }
    RouteTable::compile(Source::new("bench.toml", &text)).unwrap().table
}

fn linear(t: &RouteTable, req: &RequestFacts<'_>) -> Option<usize> {
    let path = normalize_path(req.path);
    t.routes
        .iter()
        .enumerate()
        .filter(|(_, r)| path_holds(&r.matcher.path, &path) && conditions_hold(&r.matcher, req))
        .max_by(|(i, a), (j, b)| specificity(&a.matcher.path).cmp(&specificity(&b.matcher.path)).then(j.cmp(i)))
        .map(|(i, _)| i)
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 10_000] {
        let t = table(n);
        // A path that hits the last route, and one that matches nothing.
        let hit = format!("/svc{}/v1/items/42", n - 1);
        for (label, path) in [("hit", hit.as_str()), ("miss", "/graphql")] {
            let req = RequestFacts { method: &Method::GET, path, host: None, headers: &headers };
            g.bench_with_input(BenchmarkId::new(format!("trie/{label}"), n), &req, |b, req| {
                b.iter(|| black_box(t.find(black_box(req)).map(|r| r.line)))
            });
            if n <= 10_000 {
                g.bench_with_input(BenchmarkId::new(format!("linear/{label}"), n), &req, |b, req| {
                    b.iter(|| black_box(linear(&t, black_box(req))))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
