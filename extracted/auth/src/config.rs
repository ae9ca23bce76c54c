//! The service's settings: the monolith's variable names and defaults (docs/api.md
//! "Configuration"), so one environment file configures both during the migration, plus the
//! service's own (`PORT` defaults to 4001, pool size, rate limits).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bm_common::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub database_url: String,
    pub db_pool_max: u32,
    pub redis_url: String,
    /// Public base URL of the API (links in e-mails, the OAuth redirect).
    pub app_url: String,
    pub jwt_private_key_file: String,
    pub jwt_key_id: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub bcrypt_cost: u32,
    pub google: Google,
    pub gmail: Gmail,
    pub limits: Limits,
    pub http_timeout: Duration,
    /// Verifies the proxy's signed dry-run headers (`DRY_RUN_SECRET`); unset: dry runs are refused.
    pub dry_run_key: Option<bm_common::DryRunKey>,
    /// HTTPS to Google and Gmail: the system's CAs plus `EXTRA_CA_CERTS`.
    pub tls: bm_common::http::OutboundTls,
}

#[derive(Debug, Clone)]
pub struct Google {
    pub client_id: String,
    pub client_secret: String,
    pub accounts_base_url: String,
    pub oauth2_base_url: String,
    pub openid_base_url: String,
    pub redirect_uri: String,
}

#[derive(Debug, Clone)]
pub struct Gmail {
    pub base_url: String,
    pub access_token: String,
    pub from: String,
}

/// Failed sign-in attempts allowed per window before `429` (the monolith had none).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window_secs: u64,
    /// wrong passwords for one e-mail address (known or not: no enumeration through limits)
    pub login_failures_per_account: u64,
    /// wrong passwords from one client address (credential stuffing)
    pub login_failures_per_ip: u64,
    /// wrong two-factor codes for one user, across challenges
    pub two_factor_failures_per_user: u64,
}

fn url(env: &mut Env, name: &str, default: &str) -> String {
    let v = env.or(name, default).trim_end_matches('/').to_string();
    if url::Url::parse(&v).is_err() {
        env.problem(format!("{name}={v} is not a URL"));
    }
    v
}

fn ranged<T: PartialOrd + std::fmt::Display + std::str::FromStr + Copy>(env: &mut Env, name: &str, default: T, min: T, max: T) -> T
where
    T::Err: std::fmt::Display,
{
    let v = env.parse_or(name, default);
    if v < min || v > max {
        env.problem(format!("{name}={v} is not in {min}..{max}"));
    }
    v
}

impl Config {
    pub fn from_env(mut env: Env) -> Result<Config, ConfigError> {
        let e = &mut env;
        let port: u16 = e.parse_or("PORT", 4001);
        let host: IpAddr = e.parse_or("HOST", IpAddr::from([127, 0, 0, 1]));
        let app_url = url(e, "APP_URL", &format!("http://127.0.0.1:{port}"));
        let cfg = Config {
            addr: SocketAddr::new(host, port),
            database_url: e.required("DATABASE_URL"),
            db_pool_max: ranged(e, "DB_POOL_MAX", 20, 1, 500),
            redis_url: e.required("REDIS_URL"),
            jwt_private_key_file: e.required("JWT_PRIVATE_KEY_FILE"),
            jwt_key_id: e.or("JWT_KEY_ID", "brainmessenger-1"),
            jwt_issuer: e.or("JWT_ISSUER", "https://brainmessenger.local"),
            jwt_audience: e.or("JWT_AUDIENCE", "brainmessenger-api"),
            access_ttl_secs: ranged(e, "JWT_ACCESS_TTL_SECS", 900, 10, 86_400),
            refresh_ttl_secs: ranged(e, "JWT_REFRESH_TTL_SECS", 30 * 86_400, 60, 365 * 86_400),
            bcrypt_cost: ranged(e, "BCRYPT_COST", 10, 4, 15),
            google: Google {
                client_id: e.or("GOOGLE_CLIENT_ID", "brainmessenger-dev.apps.googleusercontent.com"),
                client_secret: e.or("GOOGLE_CLIENT_SECRET", "dev-secret"),
                accounts_base_url: url(e, "GOOGLE_ACCOUNTS_BASE_URL", "https://accounts.google.com"),
                oauth2_base_url: url(e, "GOOGLE_OAUTH2_BASE_URL", "https://oauth2.googleapis.com"),
                openid_base_url: url(e, "GOOGLE_OPENID_BASE_URL", "https://openidconnect.googleapis.com"),
                redirect_uri: url(e, "GOOGLE_REDIRECT_URI", &format!("{app_url}/auth/google/callback")),
            },
            gmail: Gmail {
                base_url: url(e, "GMAIL_BASE_URL", "https://gmail.googleapis.com"),
                access_token: e.or("GMAIL_ACCESS_TOKEN", "dev-gmail-token"),
                from: e.or("MAIL_FROM", "BrainMessenger <no-reply@brainmessenger.local>"),
            },
            limits: Limits {
                window_secs: ranged(e, "RATE_LIMIT_WINDOW_SECS", 900, 1, 86_400),
                login_failures_per_account: ranged(e, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 10, 1, 1_000_000),
                login_failures_per_ip: ranged(e, "LOGIN_MAX_FAILURES_PER_IP", 100, 1, 1_000_000),
                two_factor_failures_per_user: ranged(e, "TWO_FACTOR_MAX_FAILURES_PER_USER", 10, 1, 1_000_000),
            },
            http_timeout: Duration::from_millis(ranged(e, "HTTP_TIMEOUT_MS", 10_000, 100, 120_000)),
            dry_run_key: e.dry_run_key(),
            tls: bm_common::http::OutboundTls::from_env(e),
            app_url,
        };
        env.finish().map(|()| cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_problem_at_once_and_monolith_defaults() {
        let vars: HashMap<&str, &str> = [("PORT", "x"), ("BCRYPT_COST", "3"), ("GMAIL_BASE_URL", "not a url")].into();
        let err = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap_err().to_string();
        for want in [
            "PORT=x",
            "DATABASE_URL is not set",
            "REDIS_URL is not set",
            "JWT_PRIVATE_KEY_FILE is not set",
            "BCRYPT_COST=3",
            "GMAIL_BASE_URL",
        ] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
        let vars: HashMap<&str, &str> =
            [("DATABASE_URL", "postgres://x"), ("REDIS_URL", "redis://x"), ("JWT_PRIVATE_KEY_FILE", "/k")].into();
        let c = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap();
        assert_eq!(c.addr.port(), 4001);
        assert_eq!(c.google.redirect_uri, "http://127.0.0.1:4001/auth/google/callback");
        assert_eq!((c.access_ttl_secs, c.bcrypt_cost, c.jwt_audience.as_str()), (900, 10, "brainmessenger-api"));
    }
}
