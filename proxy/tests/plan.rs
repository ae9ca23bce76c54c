//! The migration's progress from live traffic (issue #15): `GET /plan` counts who answered each
//! route's requests and what the monolith still answers, follows a route flipped by a reload,
//! and `strangler plan` prints it from the admin API or from routes.toml and a shadow store. The
//! dashboard's files are served with the same auth rules (the page holds no data).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn strangler_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The plan once `ready` holds: the edge counts a request when it ends, a moment after the
/// client has its answer.
async fn plan_when(proxy: &Proxy, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = proxy.admin_get("/plan").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if ready(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never showed in /plan:\n{v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["routes"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no route {name} in {plan:#}"))
}

fn template<'a>(plan: &'a Value, t: &str) -> Option<&'a Value> {
    plan["monolith"]["templates"].as_array().unwrap().iter().find(|x| x["template"] == t)
}

const PLAN: &str =
    "[plan]\nstages = [{ name = \"january\", services = [\"auth\"] }, { name = \"march\", services = [\"pay\", \"call\"] }]\n";

#[tokio::test]
async fn plan_counts_who_answered_and_follows_a_flip() {
    let legacy = TestUpstream::start("legacy").await;
    let auth = TestUpstream::start("auth").await;
    let (dead, _held) = dead_addr();
    let body = Routes::new()
        .upstream("legacy", &legacy.url())
        .upstream("auth", &auth.url())
        .upstream("pay", &format!("http://{dead}"))
        .raw(PLAN)
        .route("auth", "/auth", "auth", "shadow", "stage = \"january\"\nshadow = { noise_sample_percent = 0 }")
        .route("pay", "/pay", "pay", "extracted", "stage = \"march\"")
        .build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    // shadow mode: the monolith answers (a copy goes to the service, not counted as an answer)
    for i in 0..5 {
        assert_eq!(served_by(&c, &proxy.url(&format!("/auth/users/{i}"))).await, "legacy");
    }
    // the service is down: the monolith answers as a fallback
    for _ in 0..3 {
        assert_eq!(served_by(&c, &proxy.url("/pay/invoices")).await, "legacy");
    }
    // no route: the default upstream
    for i in 0..4 {
        assert_eq!(served_by(&c, &proxy.url(&format!("/users/{i}/profile"))).await, "legacy");
    }
    let plan = plan_when(&proxy, "12 answers", |v| {
        v["overall"]["since_start"]["legacy"].as_u64().unwrap_or(0) + v["overall"]["since_start"]["fallback"].as_u64().unwrap_or(0) == 12
    })
    .await;
    assert_eq!(plan["live"], true);
    let a = route(&plan, "auth");
    assert_eq!(a["traffic"]["since_start"], serde_json::json!({ "target": 0, "legacy": 5, "fallback": 0 }));
    assert_eq!(a["traffic"]["last_minute"]["legacy"], 5);
    assert_eq!((a["mode"].as_str(), a["mode_since_start"].as_bool(), a["stage"].as_str()), (Some("shadow"), Some(true), Some("january")));
    assert_eq!(route(&plan, "pay")["traffic"]["since_start"], serde_json::json!({ "target": 0, "legacy": 0, "fallback": 3 }));
    assert_eq!(plan["unmatched"]["since_start"]["legacy"], 4);
    // what still reaches the monolith, ids folded, with the route that matched
    let t = template(&plan, "GET /auth/users/{id}").expect("the auth template");
    assert_eq!((t["since_start"].as_u64(), t["route"].as_str()), (Some(5), Some("auth")));
    assert_eq!(template(&plan, "GET /users/{id}/profile").unwrap()["route"], Value::Null);
    assert_eq!(template(&plan, "GET /pay/invoices").unwrap()["since_start"], 3);
    let stages: Vec<(&str, &str)> =
        plan["stages"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap())).collect();
    assert_eq!(stages, [("january", "in_progress"), ("march", "extracted")]);
    assert_eq!(plan["stages"][1]["services_without_routes"], serde_json::json!(["call"]));
    // the requests of the last minute are in the timeline's slots
    let timeline: u64 =
        ["target", "legacy", "fallback"].iter().flat_map(|k| plan["timeline"][k].as_array().unwrap()).map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(timeline, 12);

    // flip auth to extracted: the counters carry on, the mode's age starts at the reload
    proxy.write_body(&body.replace("mode = \"shadow\"", "mode = \"extracted\""));
    let (status, reload) = proxy.admin_post("/reload").await;
    assert_eq!(status, 200, "{reload}");
    for i in 0..6 {
        assert_eq!(served_by(&c, &proxy.url(&format!("/auth/users/{i}"))).await, "auth");
    }
    let plan = plan_when(&proxy, "the service's answers", |v| route(v, "auth")["traffic"]["since_start"]["target"] == 6).await;
    let a = route(&plan, "auth");
    assert_eq!(a["traffic"]["since_start"]["legacy"], 5);
    assert_eq!((a["mode"].as_str(), a["mode_since_start"].as_bool()), (Some("extracted"), Some(false)));
    assert_eq!(a["mode_changes"][0]["from"], "shadow");
    assert_eq!(a["mode_changes"][0]["to"], "extracted");
    let since = a["mode_since_unix_ms"].as_u64().unwrap();
    assert!(since <= plan["generated_at_unix_ms"].as_u64().unwrap() && since >= plan["started_at_unix_ms"].as_u64().unwrap());
    assert_eq!(plan["stages"][0]["status"], "extracted");
    // the service's answers are not the monolith's
    assert_eq!(template(&plan, "GET /auth/users/{id}").unwrap()["since_start"], 5);

    // the command line prints the same report
    let admin = format!("http://{}", proxy.admin);
    let (code, out, err) = strangler_cli(&["plan", "--admin", &admin], &[]);
    assert_eq!(code, 0, "{err}");
    for expected in ["january", "extracted", "routes: auth", "GET /users/{id}/profile", "no route yet for: call"] {
        assert!(out.contains(expected), "`{expected}` missing:\n{out}");
    }
    let (code, out, err) = strangler_cli(&["plan", "--admin", &admin, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(route(&v, "auth")["traffic"]["since_start"]["target"], 6);

    // without a proxy: the table and the shadow store the proxy wrote (the auth route's copies
    // while it was in shadow mode)
    let store = proxy.dir.path().join("shadow-store");
    let config = proxy.config.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = strangler_cli(&["plan", "--config", &config, "--store", store.to_str().unwrap(), "--json"], &[]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["live"], false);
        if route(&v, "auth")["parity"]["compared"] == 5 {
            assert_eq!(route(&v, "auth")["mode"], "extracted");
            assert_eq!(route(&v, "auth")["traffic"]["since_start"]["legacy"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "the store never held the 5 comparisons: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, _) = strangler_cli(&["plan", "--config", &config, "--store", store.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("no live traffic") && out.contains("% of 5 compared"), "{out}");
}

#[tokio::test]
async fn plan_and_dashboard_follow_the_admin_auth_rules() {
    let legacy = TestUpstream::start("legacy").await;
    let body = Routes::new().upstream("legacy", &legacy.url()).build();
    let env = [("TEST_ADMIN_TOKEN", "s3cret-token")];
    let proxy = Proxy::start_opts(&body, Opts { admin: "token_env = \"TEST_ADMIN_TOKEN\"", env: &env, ..Opts::default() }).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", proxy.admin);
    assert_eq!(c.get(url("/plan")).send().await.unwrap().status(), 401);
    let r = c.get(url("/plan")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["routes"], serde_json::json!([]));
    // the page and its files hold no data: a browser loads them, then asks for the token
    for (path, kind) in [("/dashboard", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")] {
        let r = c.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    let r = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap().get(url("/")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (302, "/dashboard"));
    // unknown paths list the endpoints, /plan among them (behind the token, like the others)
    let r = c.get(url("/nope")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let endpoints = r.json::<Value>().await.unwrap()["endpoints"].clone();
    assert!(endpoints.as_array().unwrap().iter().any(|e| e == "/plan") && endpoints.as_array().unwrap().iter().any(|e| e == "/dashboard"));

    // the command line reads the token from the variable it is told (default STRANGLER_ADMIN_TOKEN)
    let admin = format!("http://{}", proxy.admin);
    let (code, _, err) = strangler_cli(&["plan", "--admin", &admin], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("401") && err.contains("STRANGLER_ADMIN_TOKEN"), "{err}");
    let (code, out, err) = strangler_cli(&["plan", "--admin", &admin], &[("STRANGLER_ADMIN_TOKEN", "s3cret-token")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requests answered by service / monolith / fallback"), "{out}");
    let (code, _, err) = strangler_cli(&["plan", "--admin", &admin, "--token-env", "OTHER_TOKEN"], &[("OTHER_TOKEN", "wrong")]);
    assert_eq!(code, 2);
    assert!(err.contains("the token in $OTHER_TOKEN"), "{err}");
}
