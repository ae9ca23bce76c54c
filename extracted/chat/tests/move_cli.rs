//! `bm-chat move` as an operator runs it, against real PostgreSQL: a move started while a writer
//! keeps writing, killed with SIGKILL in the middle of its copy, run again — it continues where
//! it stopped and verify is clean; `status` shows where it is; bad input is refused with exit
//! status 2 and a message saying what is wrong.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bm_chatmove::testkit::{writer, Fixture};

/// Whether a mover holds the lock on the fixture's database (advisory locks are per database:
/// other tests' movers hold theirs on theirs).
const MOVE_LOCK_HELD: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND (classid::bigint << 32 | objid::bigint) = 109299962768751)";

fn bm_chat(fx: &Fixture, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bm-chat"));
    c.arg("move").args(args).env("DATABASE_URL", &fx.main_url).env("RUST_LOG", "warn");
    for (_, var, url) in &fx.shards {
        c.env(var, url);
    }
    c
}

fn run(fx: &Fixture, args: &[&str]) -> Output {
    bm_chat(fx, args).output().expect("running bm-chat move")
}

fn text(o: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_mid_copy_continues_and_verifies_clean() {
    let fx = Fixture::create(4).await;
    fx.seed(40, 60, 6000).await;
    let map = write("shards.toml", &fx.map(1, 4));

    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(fx.pools().await, stop.clone(), 50_000));
    // slow chunks, so there is a middle of the copy to kill it in
    let mut child = bm_chat(&fx, &["run", "--to", &map, "--chunk", "200", "--pause-ms", "30", "--exit-after", "verify"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let copied_before_kill = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the mover ended ({status}) before the test saw its copy half done");
        }
        let row: Option<(i64, bool)> = sqlx::query_as("SELECT rows_copied, done FROM chat_move.copy_progress WHERE tbl = 'messages'")
            .fetch_optional(&fx.main)
            .await
            .unwrap_or(None);
        if let Some((n, false)) = row.filter(|(n, _)| *n > 0) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // the killed mover's database session ends when its server notices the closed socket
    for _ in 0..500 {
        let held: bool = sqlx::query_scalar(MOVE_LOCK_HELD).fetch_one(&fx.main).await.unwrap();
        if !held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = run(&fx, &["status"]);
    let out = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{}", text(&status));
    assert!(out.contains("stage copy") && out.contains("mover: none running") && out.contains("copy legacy.messages:"), "{out}");

    // run again: no --to, the open move's map is stored
    let resumed = run(&fx, &["run", "--chunk", "500", "--exit-after", "verify"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("no differences"), "{}", text(&resumed));
    let (copied, total): (i64, i64) = sqlx::query_as("SELECT rows_copied, rows_total FROM chat_move.copy_progress WHERE tbl = 'messages'")
        .fetch_one(&fx.main)
        .await
        .unwrap();
    assert!(copied > copied_before_kill, "the copy went on from where it was killed: {copied_before_kill} then {copied}");
    assert!(total >= 6000);

    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    let verify = run(&fx, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("no differences"), "{}", text(&verify));
    let json = run(&fx, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json)));
    assert_eq!(st["stage"], "following");
    assert_eq!(st["copy"].as_array().unwrap().len(), 3);
    assert!(st["copy"].as_array().unwrap().iter().all(|c| c["done"] == true), "{st}");
    assert_eq!(st["last_verify"]["differences"], serde_json::json!([]));
    assert!(st["follow"][0]["lag_bytes"].as_i64().is_some(), "{st}");

    // a different move while this one is open is refused
    let other = write("other.toml", &fx.map(2, 2));
    let refused = run(&fx, &["run", "--to", &other]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is open with other maps"), "{}", text(&refused));

    // the switches, asked of a running mover (it holds the lock and follows meanwhile)
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let follower = bm_chat(&fx, &["run", "--metrics-addr", &metrics_addr]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..500 {
        let held: bool = sqlx::query_scalar(MOVE_LOCK_HELD).fetch_one(&fx.main).await.unwrap();
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the running mover's metrics: its stage, and the follow lag once it has read it
    let metrics = loop {
        if let Ok(r) = reqwest::get(format!("http://{metrics_addr}/metrics")).await {
            let text = r.text().await.unwrap();
            if text.contains("chat_move_follow_lag_bytes") {
                break text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains("chat_move_stage{stage=\"following\"} 1"), "{metrics}");
    for what in ["reads", "writes"] {
        let o = run(&fx, &["switch", what]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("done by the running mover"), "{}", text(&o));
    }
    let st: serde_json::Value = serde_json::from_slice(&run(&fx, &["status", "--json"]).stdout).unwrap();
    assert_eq!(st["stage"], "writes-switched");
    assert!(st["write_pause_ms"].as_i64().is_some(), "{st}");
    assert!(st["follow"][0]["slot"].as_str().unwrap().contains("_rev_"), "after the switch the shards' slots are followed: {st}");
    let o = run(&fx, &["rollback"]);
    assert!(o.status.success(), "{}", text(&o));
    let ended = follower.wait_with_output().unwrap();
    assert!(ended.status.success(), "the mover ends with its move: {}", text(&ended));
    let none = run(&fx, &["status"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("no move is open"), "{}", text(&none));
    fx.drop_all().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_do() {
    let fx = Fixture::create(4).await;
    // a map that leaves buckets without a shard: file, line, column
    let gap = write("gap.toml", &fx.map(1, 4).replace("\"768-1023\"", "\"800-1023\""));
    let o = run(&fx, &["run", "--to", &gap]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains(&format!("{gap}:")) && err.contains("768-799") && err.contains("assigned to no shard"), "{err}");

    // a shard whose variable is not set, and one that does not answer: both named at once
    let map = write("shards.toml", &fx.map(1, 4));
    let mut c = bm_chat(&fx, &["run", "--to", &map]);
    c.env_remove(&fx.shards[1].1).env(&fx.shards[3].1, "postgres://postgres@127.0.0.1:1/nowhere");
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains(&format!("{} is not set", fx.shards[1].1)), "{err}");

    let mut c = bm_chat(&fx, &["run", "--to", &map]);
    c.env(&fx.shards[3].1, "postgres://postgres@127.0.0.1:1/nowhere");
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("shard `s3` is unreachable"), "{err}");

    // no map and no open move
    let o = run(&fx, &["run"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no move is open: start one with --to"), "{}", text(&o));
    fx.drop_all().await;
}
