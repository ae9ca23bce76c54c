//! For integration tests that make databases of their own on the test server (`DATABASE_URL`,
//! as scripts/test sets it): their URLs, and every migration applied the way production applies
//! them (`scripts/migrate`).

use std::process::{Command, Stdio};

/// The URL of database `name` on `DATABASE_URL`'s server.
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    let (head, tail) = base.split_at(base.rfind('/').expect("a database URL ends with /name"));
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{head}/{name}{query}")
}

/// Runs `scripts/migrate` on `url`, with `chat_shards` chat shard databases beside it (named
/// `<db>_chat_s<i>`, created when missing; 0: none).
pub fn migrate(url: &str, chat_shards: usize) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/migrate"))
        .arg(url)
        .env("CHAT_SHARDS", chat_shards.to_string())
        .env_remove("CHAT_SHARD_URLS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running scripts/migrate");
    assert!(out.status.success(), "scripts/migrate failed: {}", String::from_utf8_lossy(&out.stderr));
}
