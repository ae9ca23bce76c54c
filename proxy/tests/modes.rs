//! Each mode routes as configured, canary is sticky and near its percent, extracted falls back.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

fn two_sided(legacy: &TestUpstream, extracted: &TestUpstream) -> Routes {
    Routes::new().upstream("legacy", &legacy.url()).upstream("svc", &extracted.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_routes_as_configured() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body = two_sided(&legacy, &svc)
        .route("l", "/legacy-mode", "svc", "legacy", "")
        .route("s", "/shadow-mode", "svc", "shadow", "")
        .route("e", "/extracted-mode", "svc", "extracted", "")
        .route("c0", "/canary-zero", "svc", "canary", "percent = 0")
        .route("c100", "/canary-all", "svc", "canary", "percent = 100")
        .build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    assert_eq!(served_by(&c, &proxy.url("/legacy-mode/x")).await, "legacy");
    assert_eq!(served_by(&c, &proxy.url("/shadow-mode/x")).await, "legacy");
    assert_eq!(served_by(&c, &proxy.url("/extracted-mode/x")).await, "svc");
    assert_eq!(served_by(&c, &proxy.url("/canary-zero/x")).await, "legacy");
    assert_eq!(served_by(&c, &proxy.url("/canary-all/x")).await, "svc");
    assert_eq!(served_by(&c, &proxy.url("/unmatched")).await, "legacy");

    // Method, path, query and body arrive exactly as sent.
    let r: serde_json::Value =
        c.put(proxy.url("/extracted-mode/a%20b/c?x=1&y=%2F")).body("hello").send().await.unwrap().json().await.unwrap();
    assert_eq!(r["method"], "PUT");
    assert_eq!(r["uri"], "/extracted-mode/a%20b/c?x=1&y=%2F");
    assert_eq!(r["body_len"], 5);
    assert_eq!(r["body_sha256"], sha256_hex(b"hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_is_near_percent_and_sticky_per_user() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body = two_sided(&legacy, &svc).route("c", "/c", "svc", "canary", "percent = 30").build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let users = 2000;
    let mut side: HashMap<usize, String> = HashMap::new();
    let mut futs = futures_util::stream::iter(0..users)
        .map(|u| {
            let c = c.clone();
            let url = proxy.url("/c/me");
            async move {
                let r = c.get(url).bearer_auth(jwt_for(&format!("user-{u}"))).send().await.unwrap();
                (u, r.headers()["x-served-by"].to_str().unwrap().to_string())
            }
        })
        .buffer_unordered(16);
    use futures_util::StreamExt;
    while let Some((u, s)) = futs.next().await {
        side.insert(u, s);
    }
    let extracted = side.values().filter(|s| *s == "svc").count();
    // 30% of 2000 = 600, sd ≈ 20.5; 4 sd either way. Keys are fixed, so this is deterministic.
    assert!((518..=682).contains(&extracted), "{extracted} of {users} went to the canary");

    // Sticky: the same users land on the same side again.
    for u in (0..users).step_by(50) {
        let r = c.get(proxy.url("/c/again")).bearer_auth(jwt_for(&format!("user-{u}"))).send().await.unwrap();
        assert_eq!(r.headers()["x-served-by"].to_str().unwrap(), side[&u], "user-{u} switched sides");
    }

    // Raising the percent only moves users to the canary.
    let body = two_sided(&legacy, &svc).route("c", "/c", "svc", "canary", "percent = 60").build();
    let old = proxy.routes_json().await["hash"].as_str().unwrap().to_string();
    proxy.write_body(&body);
    proxy.wait_for_hash_change(&old).await;
    for u in (0..users).step_by(10) {
        let r = c.get(proxy.url("/c/me")).bearer_auth(jwt_for(&format!("user-{u}"))).send().await.unwrap();
        let now = r.headers()["x-served-by"].to_str().unwrap().to_string();
        if side[&u] == "svc" {
            assert_eq!(now, "svc", "user-{u} moved back to legacy when the percent went up");
        }
    }
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// See: issue 10, "Failover without a single failed request": a request the service never saw
/// (connection refused, open breaker) goes to the monolith whatever its method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extracted_upstream_killed_requests_it_never_saw_go_to_the_monolith_breaker_opens_and_closes() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body = two_sided(&legacy, &svc).route("e", "/e", "svc", "extracted", "breaker = { failures = 3, cooldown_secs = 1 }").build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    assert_eq!(served_by(&c, &proxy.url("/e/x")).await, "svc");

    let addr = svc.kill().await;
    // GET: served by the monolith instead.
    assert_eq!(served_by(&c, &proxy.url("/e/x")).await, "legacy");
    // POST: the connection was refused, so the service never saw it: the monolith answers it,
    // with the body the client sent.
    let r = c.post(proxy.url("/e/x")).body("payload").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "legacy");
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], 7, "the monolith got the POST's body: {echo}");

    // Enough failures open the breaker; GETs and POSTs still succeed, from legacy.
    for _ in 0..3 {
        assert_eq!(served_by(&c, &proxy.url("/e/x")).await, "legacy");
    }
    let routes = proxy.routes_json().await;
    assert_eq!(routes["breakers"]["e"], "open", "{routes}");
    let r = c.post(proxy.url("/e/x")).body("while open").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-served-by"].to_str().unwrap()), (200, "legacy"));
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    assert!(metrics.contains("strangler_fallbacks_total{route=\"e\",reason=\"connect_error\"}"), "{metrics}");
    assert!(metrics.contains("strangler_fallbacks_total{route=\"e\",reason=\"breaker_open\"}"), "{metrics}");
    assert!(metrics.contains("strangler_breaker_state{route=\"e\"} 1"), "{metrics}");

    // The service comes back: after the cooldown a probe succeeds and the breaker closes.
    let svc = TestUpstream::start_at("svc", addr).await;
    wait_until("extracted service serves again", || {
        let c = c.clone();
        let url = proxy.url("/e/x");
        async move { served_by(&c, &url).await == "svc" }
    })
    .await;
    assert_eq!(proxy.routes_json().await["breakers"]["e"], "closed");
    assert!(svc.hits() >= 1);
    proxy.wait_for_log_line(|l| l.contains("circuit breaker opened")).await;
}

/// With `fallback = false` nothing goes to the monolith: a POST to a dead service gets a 502 in
/// the monolith's error shape, and an open breaker answers 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_a_dead_service_gets_502_then_503() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body = two_sided(&legacy, &svc)
        .route("e", "/e", "svc", "extracted", "fallback = false\nbreaker = { failures = 2, cooldown_secs = 30 }")
        .build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let _ = svc.kill().await;
    for _ in 0..2 {
        let r = c.post(proxy.url("/e/x")).body("payload").send().await.unwrap();
        assert_eq!(r.status(), 502);
        let err: serde_json::Value = r.json().await.unwrap();
        assert_eq!(err["statusCode"], 502);
    }
    let r = c.get(proxy.url("/e/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(legacy.hits(), 0, "nothing was sent to the monolith");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_from_the_service_fall_back_for_idempotent_requests_only() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body =
        two_sided(&legacy, &svc).route("e", "/status", "svc", "extracted", "breaker = { failures = 100, cooldown_secs = 1 }").build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    for code in [502, 503, 504] {
        // The test monolith answers /status/N with N too; what matters is who answered.
        let r = c.get(proxy.url(&format!("/status/{code}"))).send().await.unwrap();
        assert_eq!(r.headers()["x-served-by"], "legacy", "GET after a {code} from the service");
        assert_eq!(r.status(), code);
    }
    // A 500 is the service's own answer, not unavailability: passed through.
    let r = c.get(proxy.url("/status/500")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-served-by"], "svc");
    // POST gets the service's 503 as is.
    let r = c.post(proxy.url("/status/503")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-served-by"], "svc");
}
