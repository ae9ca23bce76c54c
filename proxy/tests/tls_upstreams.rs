//! Outbound TLS (issue 10, part 4): an `https` upstream whose certificate a private CA signed,
//! trusted through the upstream's `ca_file` — by Pingora's connector (requests), by the shadow
//! copies and by the health checks. Without `ca_file` the system's CAs do not know it, and the
//! same upstream is refused: certificates are checked, not waved through.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The fakes over HTTPS in this process (any path they do not know answers 404).
async fn https_upstream(dir: &std::path::Path) -> String {
    let pki = fakes::tls::TestPki::generate().unwrap();
    pki.write(dir).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // by name: Pingora checks an upstream's certificate against its host name (DNS names only)
    let url = format!("https://localhost:{}", tcp.local_addr().unwrap().port());
    let state =
        fakes::FakeState::new(fakes::Settings { public_base: url.clone(), stripe_webhook_url: None, stripe_webhook_secret: "x".into() });
    let listener = fakes::tls::TlsListener::new(tcp, pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    tokio::spawn(fakes::run(listener, state, std::future::pending()));
    url
}

async fn health_of(proxy: &Proxy, upstream: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = proxy.routes_json().await;
        if let Some(h) = v["upstream_health"].get(upstream).filter(|h| h["checked_unix_secs"].as_u64().unwrap_or(0) > 0) {
            return h.clone();
        }
        assert!(Instant::now() < deadline, "no health check of {upstream}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_with_its_ca_file_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let secure = https_upstream(dir.path()).await;
    let legacy = TestUpstream::start("legacy").await;
    let ca = dir.path().join("ca.pem");
    let routes = |ca_line: &str| {
        Routes::new()
            .upstream("legacy", &legacy.url())
            .raw(&format!("[upstreams.secure]\nurl = \"{secure}\"\nhealth = \"/_fake/health\"\nhealth_interval_secs = 1\n{ca_line}\n"))
            .route("fakes", "/_fake", "secure", "extracted", "fallback = false")
            .route("copied", "/copied", "secure", "shadow", "shadow = { noise_sample_percent = 0 }")
            .build()
    };

    let proxy = Proxy::start(&routes(&format!("ca_file = \"{}\"", ca.display()))).await;
    let r = reqwest::get(proxy.url("/_fake/health")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let h = health_of(&proxy, "secure").await;
    assert_eq!(h["up"], true, "{h}");
    // the shadow copy reaches the https target: compared, not an error
    reqwest::get(proxy.url("/copied/x")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let route = loop {
        let v: serde_json::Value = serde_json::from_str(&proxy.admin_get("/shadow").await.unwrap().1).unwrap();
        if v["routes"]["copied"]["compared"].as_u64() == Some(1) {
            break v["routes"]["copied"].clone();
        }
        assert!(Instant::now() < deadline, "no comparison: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(route["errors"], 0, "the copy to the https target failed: {route}");
    drop(proxy);

    // without ca_file only the system's CAs count, and they do not know this one
    let untrusting = Proxy::start(&routes("")).await;
    let r = reqwest::get(untrusting.url("/_fake/health")).await.unwrap();
    assert_eq!(r.status(), 502, "a certificate from an unknown CA was accepted");
    let h = health_of(&untrusting, "secure").await;
    assert_eq!(h["up"], false, "{h}");
    assert!(h["detail"].as_str().unwrap().contains("certificate"), "{h}");
}
