//! What the shadow thread does for one copy besides the network (issue 14): compare the two
//! answers (status, compared headers, body) and, for the record, find the monolith's answer's
//! secrets and ids; on the answer the bench's upstream sends (a 315-byte message) and on a page
//! of 50 such messages, the answers alike (the usual case) and the page's bodies differing in
//! one field. A regression in a copy's CPU shows here without the whole stack.
//! `cargo bench -p strangler --bench shadow`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use strangler::shadow::record::answer_facts;
use strangler::shadow::{compare, Exchange, PathPattern, Rules};

const MESSAGE: &str = r#"{"id":"5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00","chatId":"c0ffee00-1234-4abc-8def-0123456789ab","senderId":"u-42","text":"Hello from the BrainMessenger benchmark payload, long enough to look like a real message","createdAt":"2026-11-24T23:59:59.000Z","editedAt":null,"readBy":["u-1","u-2","u-3"],"kind":"text","v":1}"#;

fn answer(body: String) -> Exchange {
    let headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("content-length", "315"),
        ("cache-control", "no-store"),
        ("vary", "Origin"),
        ("x-request-id", "6b1f0c1e-7a2d-4c1e-9b0a-3f2e1d0c9b8a"),
        ("etag", "W/\"13b-abc\""),
        ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
    ];
    Exchange { status: 200, headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.into_bytes() }
}

fn bench(c: &mut Criterion) {
    let rules = Rules::default();
    let one = answer(MESSAGE.to_string());
    let page = answer(format!(r#"{{"messages":[{}],"cursor":"b3BhcXVl"}}"#, vec![MESSAGE; 50].join(",")));
    let page_changed =
        answer(format!(r#"{{"messages":[{}],"cursor":"b3BhcXVl"}}"#, vec![MESSAGE; 50].join(",")).replacen("\"v\":1", "\"v\":2", 1));
    // what a route's rules look like: a volatile field ignored, an id compared by type, a list
    // compared in any order
    let with_rules = Rules {
        ignore: vec![PathPattern::parse("$..editedAt").unwrap()],
        types: vec![(PathPattern::parse("$.messages[*].id").unwrap(), strangler::shadow::diff::ValueType::String)],
        sort: vec![(PathPattern::parse("$.messages[*].readBy").unwrap(), strangler::shadow::diff::SortBy::Value)],
        ..Rules::default()
    };
    let mut g = c.benchmark_group("copy");
    g.bench_function("compare-alike", |b| b.iter(|| black_box(compare(&one, black_box(&one), &rules))));
    g.bench_function("facts", |b| b.iter(|| black_box(answer_facts(black_box(&one)))));
    g.bench_function("compare-alike-page", |b| b.iter(|| black_box(compare(&page, black_box(&page), &rules))));
    g.bench_function("compare-differing-page", |b| b.iter(|| black_box(compare(&page, black_box(&page_changed), &rules))));
    g.bench_function("compare-differing-page-rules", |b| b.iter(|| black_box(compare(&page, black_box(&page_changed), &with_rules))));
    g.bench_function("facts-page", |b| b.iter(|| black_box(answer_facts(black_box(&page)))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
