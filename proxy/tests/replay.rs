//! `strangler replay` and `strangler corpus`: the CI gate of a cut-over.

mod common;

use std::process::Command;

use common::*;

fn strangler(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strangler")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const CORPUS: &str = r#"{"method":"GET","uri":"/random","headers":[["accept","application/json"]]}
{"method":"GET","uri":"/random","headers":[]}
{"method":"POST","uri":"/items?x=1","headers":[["content-type","application/json"]],"body":{"text":"hi"}}
{"method":"GET","uri":"/status/404","headers":[]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_gates_on_parity_after_rules_and_noise() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("2026-01-test");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("requests.jsonl"), CORPUS).unwrap();
    std::fs::write(
        cut.join("parity.toml"),
        "route = \"items\"\nmin_parity = 100.0\nnoise_samples = 2\n[rules]\nignore = [\"$.server\", \"$.headers\"]\n",
    )
    .unwrap();
    let out = dir.path().join("reports");
    let (l, c) = (legacy.url(), svc.url());
    let dir_s = cut.to_str().unwrap().to_string();
    let out_s = out.to_str().unwrap().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || strangler(&["replay", &dir_s, "--legacy", &l, "--candidate", &c, "--out", &out_s]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| `items` | 4 | 100.00% |"), "{md}");
    assert!(md.contains("`$.nonce`"), "noise should be reported: {md}");
    let junit = std::fs::read_to_string(out.join("report.junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    // The POST reached each side once; each GET was asked of the monolith twice (noise sampling,
    // up to noise_samples per endpoint): 2 × /random × 2 + /status × 2 + POST = 7.
    assert_eq!(svc.requests.lock().unwrap().len(), 4);
    assert_eq!(legacy.requests.lock().unwrap().len(), 7);
    assert_eq!(legacy.requests.lock().unwrap().iter().filter(|(m, _, _)| m == "POST").count(), 1);

    // Without the rules the same corpus fails the gate, naming the field.
    std::fs::write(cut.join("parity.toml"), "route = \"items\"\n").unwrap();
    let (l, c) = (legacy.url(), svc.url());
    let dir_s = cut.to_str().unwrap().to_string();
    let (code, md, _) =
        tokio::task::spawn_blocking(move || strangler(&["replay", &dir_s, "--legacy", &l, "--candidate", &c])).await.unwrap();
    assert_eq!(code, 1, "{md}");
    assert!(md.contains("`$.server`"), "{md}");

    // A bad rule is a config error with its place.
    std::fs::write(cut.join("parity.toml"), "route = \"items\"\n[rules]\nignore = [\"server\"]\n").unwrap();
    let dir_s = cut.to_str().unwrap().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        strangler(&["replay", &dir_s, "--legacy", "http://127.0.0.1:1", "--candidate", "http://127.0.0.1:1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("bad JSON path `server`"), "{err}");
}

#[test]
fn corpus_extracts_a_routes_requests_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let record = |route: &str, uri: &str| {
        serde_json::json!({ "ts_unix_ms": 1, "route": route, "endpoint": "GET /x", "request_id": "r", "method": "GET", "uri": uri,
            "primary": "legacy", "outcome": "match", "legacy_status": 200, "candidate_status": 200,
            "request_headers": [["authorization", "[redacted]"]] })
        .to_string()
    };
    std::fs::write(dir.path().join("shadow-1.jsonl"), format!("{}\n{}\n{{torn", record("auth", "/auth/me"), record("chat", "/graphql")))
        .unwrap();
    let (code, out, _) = strangler(&["corpus", "--store", dir.path().to_str().unwrap(), "--route", "auth"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["uri"], "/auth/me");
    assert_eq!(v["headers"][0][1], "[redacted]");
}
