//! For the integration tests of the services that use events: a private broker (tansu, its
//! SQLite engine: durable, restartable) and a fresh database with every migration, so tests that
//! run at once do not consume, relay or switch each other's state. Needs `TANSU_BIN` (set by
//! scripts/test, scripts/lib.sh `ensure_tansu`) and `DATABASE_URL` (the server to create
//! databases on).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// A tansu broker (SQLite engine, durable) on a free loopback port, restartable.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut b = Broker { port, dir: tempfile::tempdir().unwrap(), child: None };
        b.spawn().await;
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("TANSU_BIN").expect("TANSU_BIN: the broker binary (scripts/test sets it; see scripts/lib.sh ensure_tansu)");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            // the engine URL's path is relative to the working directory
            .current_dir(self.dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker did not listen on {}", self.port);
    }

    /// Stops it as an operator would (SIGINT, waiting for the exit: after SIGTERM the port stays
    /// held for 5 s) and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh database on `DATABASE_URL`'s server with every migration applied by
/// `scripts/migrate` (the path production takes); drop it with [`drop_database`].
pub async fn fresh_database() -> (PgPool, String) {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    let name = format!("events_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&base).await.expect("connecting to DATABASE_URL");
    // from template0, which nobody connects to: tests creating databases at once do not trip
    // over each other's copy of template1 ("being accessed by other users")
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = database_url(&name);
    // (no chat shards: these databases hold the monolith's tables only)
    bm_common::testdb::migrate(&url, 0);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(20).connect(&url).await.unwrap();
    (pool, name)
}

pub use bm_common::testdb::database_url;

pub async fn drop_database(pool: PgPool, name: &str) {
    pool.close().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let mut admin = PgConnection::connect(&base).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
}
