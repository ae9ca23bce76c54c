//! Hot reload without dropping a request, bad files keeping the old table, SIGHUP, ConfigMap
//! symlink swaps, graceful shutdown, and the admin API.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn body(legacy: &TestUpstream, svc: &TestUpstream, mode: &str, comment: &str) -> String {
    Routes::new()
        .upstream("legacy", &legacy.url())
        .upstream("svc", &svc.url())
        .raw(&format!("# {comment}"))
        .route("r", "/r", "svc", mode, "")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_every_100ms_under_load_fails_no_request() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let proxy = Arc::new(Proxy::start(&body(&legacy, &svc, "legacy", "v0")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let mut workers = Vec::new();
    for w in 0..6 {
        let (proxy, stop, ok, failures) = (proxy.clone(), stop.clone(), ok.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut i = 0u64;
            // Bounded: stops when told, and never runs past 2,000 requests per worker.
            while !stop.load(Ordering::SeqCst) && i < 2000 {
                i += 1;
                let req = if i % 3 == 0 {
                    c.post(proxy.url(&format!("/r/{w}/{i}"))).body(format!("body-{i}"))
                } else {
                    c.get(proxy.url(&format!("/r/{w}/{i}")))
                };
                match req.send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        if i % 3 == 0 && v["body_sha256"] != sha256_hex(format!("body-{i}").as_bytes()) {
                            failures.lock().unwrap().push(format!("body changed in flight: {v}"));
                        }
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.lock().unwrap().push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                }
            }
        }));
    }
    // 30 reloads back to back while the workers keep sending: each new file as soon as the
    // proxy serves the one before (and only after some requests went through it)
    for n in 1..=30 {
        let served = ok.load(Ordering::SeqCst);
        while ok.load(Ordering::SeqCst) < served + 20 && !workers.iter().all(|w| w.is_finished()) {
            tokio::task::yield_now().await;
        }
        let old = proxy.routes_json().await["hash"].as_str().unwrap().to_string();
        let mode = if n % 2 == 0 { "legacy" } else { "extracted" };
        proxy.write_body(&body(&legacy, &svc, mode, &format!("v{n}")));
        proxy.wait_for_hash_change(&old).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failed requests, first: {:?}\n{}", failures.len(), failures.first(), proxy.logs());
    assert!(ok.load(Ordering::SeqCst) > 100, "the load did not run");
    assert!(legacy.hits() > 0 && svc.hits() > 0, "reloads never switched the route (legacy {}, svc {})", legacy.hits(), svc.hits());
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    let reloads: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("strangler_config_reloads_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(reloads >= 5.0, "only {reloads} reloads applied:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_the_old_table_and_says_why() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let proxy = Proxy::start(&body(&legacy, &svc, "extracted", "good")).await;
    let c = reqwest::Client::new();
    assert_eq!(served_by(&c, &proxy.url("/r/x")).await, "svc");
    let good = proxy.routes_json().await;

    // Two mistakes at once: a typo'd key and an unknown upstream.
    let broken = format!(
        "{}[[routes]]\nname = \"oops\"\nmatch = {{ path_prefx = \"/x\" }}\ntarget = \"nope\"\n",
        body(&legacy, &svc, "legacy", "broken")
    );
    proxy.write_body(&broken);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let routes = loop {
        let v = proxy.routes_json().await;
        if !v["last_reload_error"].is_null() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no reload error reported:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(routes["hash"], good["hash"], "the broken table was applied");
    let errors: Vec<String> =
        routes["last_reload_error"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("routes.toml:") && errors[0].contains("path_prefx"), "{errors:?}");
    assert!(errors[1].contains("unknown upstream `nope`"), "{errors:?}");
    // Still routing by the old table (extracted), not the broken one (legacy).
    assert_eq!(served_by(&c, &proxy.url("/r/x")).await, "svc");
    let (status, text) = proxy.admin_post("/reload").await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("path_prefx"));
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    assert!(metrics.contains("result=\"error\""), "{metrics}");
    assert!(metrics.contains("strangler_config_in_sync 0"), "{metrics}");
    proxy.wait_for_log_line(|l| l.contains("continuing with previous configuration")).await;

    // Fixed: applied, error cleared.
    proxy.write_body(&body(&legacy, &svc, "legacy", "fixed"));
    let v = proxy.wait_for_hash_change(good["hash"].as_str().unwrap()).await;
    assert!(v["last_reload_error"].is_null(), "{v}");
    assert_eq!(served_by(&c, &proxy.url("/r/x")).await, "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_configmap_symlink_swap_reload() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let proxy = Proxy::start(&body(&legacy, &svc, "legacy", "a")).await;
    let c = reqwest::Client::new();

    proxy.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !proxy.admin_get("/metrics").await.unwrap().1.contains("trigger=\"sighup\"") {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Kubernetes mounts a ConfigMap as routes.toml -> ..data/routes.toml, ..data -> ..<stamp>/,
    // and updates it by swapping the ..data symlink.
    let dir = proxy.dir.path();
    let header = proxy.header.clone();
    let stamp = |name: &str, mode: &str| {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("routes.toml"), format!("{header}{}", body(&legacy, &svc, mode, name))).unwrap();
    };
    stamp("..2026_11_24_a", "legacy");
    std::os::unix::fs::symlink("..2026_11_24_a", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.toml", dir.join("routes.toml.link")).unwrap();
    let before = proxy.routes_json().await["hash"].as_str().unwrap().to_string();
    std::fs::rename(dir.join("routes.toml.link"), dir.join("routes.toml")).unwrap();
    let v = proxy.wait_for_hash_change(&before).await;
    assert_eq!(served_by(&c, &proxy.url("/r/x")).await, "legacy");

    stamp("..2026_11_24_b", "extracted");
    std::os::unix::fs::symlink("..2026_11_24_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    proxy.wait_for_hash_change(v["hash"].as_str().unwrap()).await;
    assert_eq!(served_by(&c, &proxy.url("/r/x")).await, "svc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_sigterm_drains() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let mut proxy = Proxy::start(
        &Routes::new().upstream("legacy", &legacy.url()).upstream("svc", &svc.url()).route("s", "/slow", "svc", "extracted", "").build(),
    )
    .await;
    let url = proxy.url("/slow/1500");
    let in_flight = tokio::spawn(async move {
        reqwest::get(url).await.map(|r| (r.status().as_u16(), r.headers()["x-served-by"].to_str().unwrap().to_string()))
    });
    // the request is at the service (which answers it in 1.5 s)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while svc.requests.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the request never reached the service");
        tokio::task::yield_now().await;
    }
    // Reload mid-request: the request keeps the table it started with.
    let old = proxy.routes_json().await["hash"].as_str().unwrap().to_string();
    proxy.write_body(
        &Routes::new().upstream("legacy", &legacy.url()).upstream("svc", &svc.url()).route("s", "/slow", "svc", "legacy", "").build(),
    );
    proxy.wait_for_hash_change(&old).await;
    // And shut down mid-request: it still completes.
    proxy.signal(libc::SIGTERM);
    let (status, by) = in_flight.await.unwrap().expect("in-flight request failed during shutdown");
    assert_eq!((status, by.as_str()), (200, "svc"));
    let exit = proxy.terminate();
    assert!(exit.success(), "exit {exit:?}\n{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_token_except_for_probes() {
    let legacy = TestUpstream::start("legacy").await;
    let opts = Opts { admin: "token_env = \"TEST_ADMIN_TOKEN\"\n", env: &[("TEST_ADMIN_TOKEN", "s3cret")], ..Opts::default() };
    let proxy = Proxy::start_opts(&Routes::new().upstream("legacy", &legacy.url()).build(), opts).await;
    assert_eq!(proxy.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 200);
    assert_eq!(proxy.admin_get("/routes").await.unwrap().0, 401);
    assert_eq!(proxy.admin_get("/metrics").await.unwrap().0, 401);
    let c = reqwest::Client::new();
    let r = c.get(format!("http://{}/routes", proxy.admin)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("http://{}/routes", proxy.admin)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    assert!(v["loaded_at_unix_secs"].as_u64().unwrap() > 0);
    reqwest::get(proxy.url("/x")).await.unwrap();
    // The request is counted in Pingora's logging phase, after the client has its response.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = c.get(format!("http://{}/metrics", proxy.admin)).bearer_auth("s3cret").send().await.unwrap().text().await.unwrap();
        if m.contains("strangler_requests_total{") || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for name in [
        "strangler_requests_total{route=\"default\",target=\"legacy\",mode=\"default\",status=\"2xx\"}",
        "strangler_request_duration_seconds_bucket",
        "strangler_config_in_sync 1",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    let r = c.post(format!("http://{}/reload", proxy.admin)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
