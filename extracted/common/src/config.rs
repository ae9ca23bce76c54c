//! Settings from the environment. A service declares what it reads through [`Env`], which
//! collects every missing or malformed variable, and fails once with all of them.

use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads variables from a source (the process environment, or a map in tests).
pub struct Env<'a> {
    get: Lookup<'a>,
    problems: Vec<String>,
}

impl Env<'static> {
    pub fn from_process() -> Self {
        Self { get: Box::new(|k| std::env::var(k).ok().filter(|v| !v.is_empty())), problems: Vec::new() }
    }
}

impl<'a> Env<'a> {
    pub fn from_fn(get: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self { get: Box::new(get), problems: Vec::new() }
    }

    /// A required variable.
    pub fn required(&mut self, name: &str) -> String {
        (self.get)(name).unwrap_or_else(|| {
            self.problems.push(format!("{name} is not set"));
            String::new()
        })
    }

    pub fn optional(&mut self, name: &str) -> Option<String> {
        (self.get)(name)
    }

    pub fn or(&mut self, name: &str, default: &str) -> String {
        (self.get)(name).unwrap_or_else(|| default.to_string())
    }

    /// A parsed variable with a default; a value that does not parse is a problem.
    pub fn parse_or<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: Display,
    {
        match (self.get)(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|e| {
                self.problems.push(format!("{name}={raw}: {e}"));
                default
            }),
        }
    }

    /// The secret that verifies the proxy's dry-run headers, from `DRY_RUN_SECRET` (shared with
    /// the proxy's `STRANGLER_DRY_RUN_SECRET`). Unset: every dry run is refused.
    pub fn dry_run_key(&mut self) -> Option<strangler_protocol::DryRunKey> {
        let secret = (self.get)("DRY_RUN_SECRET")?;
        match strangler_protocol::DryRunKey::try_new(secret.trim().as_bytes()) {
            Ok(k) => Some(k),
            Err(e) => {
                self.problems.push(format!("DRY_RUN_SECRET: {e}"));
                None
            }
        }
    }

    /// FCM HTTP v1 as the monolith configures it: `FCM_BASE_URL` (a URL), `FCM_PROJECT_ID`,
    /// `FCM_ACCESS_TOKEN`, with the monolith's defaults.
    pub fn fcm(&mut self) -> Fcm {
        let base_url = self.or("FCM_BASE_URL", "https://fcm.googleapis.com").trim_end_matches('/').to_string();
        if reqwest::Url::parse(&base_url).is_err() {
            self.problem(format!("FCM_BASE_URL={base_url} is not a URL"));
        }
        Fcm {
            base_url,
            project_id: self.or("FCM_PROJECT_ID", "brainmessenger-dev"),
            access_token: self.or("FCM_ACCESS_TOKEN", "dev-fcm-token"),
        }
    }

    /// A service's database: `DATABASE_URL` (required), `DB_POOL_MAX` (20) and
    /// `DB_ACQUIRE_TIMEOUT_MS` (30 s: how long a request waits for a connection before failing).
    pub fn database(&mut self) -> Database {
        let pool_max = self.db_pool_max();
        let acquire: u64 = self.parse_or("DB_ACQUIRE_TIMEOUT_MS", 30_000);
        Database { url: self.required("DATABASE_URL"), pool_max, acquire_timeout: std::time::Duration::from_millis(acquire) }
    }

    /// `DB_POOL_MAX` (default 20, 1..500): a service's Postgres connections.
    pub fn db_pool_max(&mut self) -> u32 {
        let pool: u32 = self.parse_or("DB_POOL_MAX", 20);
        if !(1..=500).contains(&pool) {
            self.problem(format!("DB_POOL_MAX={pool} is not in 1..500"));
        }
        pool
    }

    /// Records a problem found while validating values together.
    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    /// Ok when nothing was missing or malformed.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.problems))
        }
    }
}

/// A service's Postgres settings ([`Env::database`]).
#[derive(Debug, Clone)]
pub struct Database {
    pub url: String,
    pub pool_max: u32,
    /// How long a request waits for a connection before failing (the monolith's pg pool waits
    /// without limit; a wait this long is an overload, not a normal answer).
    pub acquire_timeout: std::time::Duration,
}

impl Database {
    /// The pool, connected now (a wrong URL fails at start, naming `DATABASE_URL`).
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        use anyhow::Context;
        pool_options(self.pool_max, self.acquire_timeout).connect(&self.url).await.context("connecting to Postgres (DATABASE_URL)")
    }
}

/// A connection idle this long is pinged before a request gets it.
pub const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Every service's pool settings: at most `max` connections, a request waits `acquire_timeout`
/// for one. Stock sqlx pings a connection when it is handed out (by default) and again when it
/// is returned — two round trips (and on a busy host two wake-ups each) per checkout.
/// Here only a connection idle for [`PING_IDLE_AFTER`] is pinged before use (one a server
/// restart or an idle timeout may have closed since its return), and the vendored sqlx-core
/// (vendor/sqlx-core, "strangler patch") only flushes what is still in flight on return: a
/// dropped transaction's ROLLBACK, the rest of an abandoned answer (tests/pool_release.rs);
/// docs/benchmarks.md.
pub fn pool_options(max: u32, acquire_timeout: std::time::Duration) -> sqlx::postgres::PgPoolOptions {
    use sqlx::Connection;
    sqlx::postgres::PgPoolOptions::new().max_connections(max).acquire_timeout(acquire_timeout).test_before_acquire(false).before_acquire(
        |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        },
    )
}

/// FCM HTTP v1, as the monolith calls it (pushes for new messages): [`Env::fcm`].
#[derive(Debug, Clone)]
pub struct Fcm {
    pub base_url: String,
    pub project_id: String,
    pub access_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reports_every_problem_at_once() {
        let vars: HashMap<&str, &str> = [("PORT", "eighty"), ("NAME", "x")].into();
        let mut env = Env::from_fn(|k| vars.get(k).map(|v| v.to_string()));
        assert_eq!(env.required("NAME"), "x");
        let _ = env.required("DATABASE_URL");
        assert_eq!(env.parse_or("PORT", 8080u16), 8080);
        assert_eq!(env.parse_or("WORKERS", 4u16), 4);
        let err = env.finish().unwrap_err();
        assert_eq!(err.0.len(), 2);
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL is not set"), "{text}");
        assert!(text.contains("PORT=eighty: invalid digit"), "{text}");
    }
}
