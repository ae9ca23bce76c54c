//! The service's settings: the monolith's variable names and defaults where they mean the same
//! (docs/api.md "Configuration"), so one environment file configures both during the migration,
//! plus the service's own (`PORT` defaults to 4002).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bm_common::config::{ConfigError, Env, Fcm};

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub database: bm_common::config::Database,
    pub redis_url: String,
    /// Where access tokens are verified (`JWT_JWKS_URL`, e.g. the auth service's, or
    /// `JWT_PUBLIC_KEY_FILE`) and what they must name.
    pub jwt: bm_common::jwt::JwtSettings,
    pub fcm: Fcm,
    pub http_timeout: Duration,
    /// Verifies the proxy's signed dry runs (`DRY_RUN_SECRET`); unset: dry runs are refused.
    pub dry_run_key: Option<bm_common::DryRunKey>,
    /// HTTPS to FCM and the JWKS: the system's CAs plus `EXTRA_CA_CERTS`.
    pub tls: bm_common::http::OutboundTls,
    /// Whether `__schema`/`__type` are answered (the monolith: unless `NODE_ENV=production`).
    pub introspection: bool,
    /// The brokers the outbox relay publishes to (`KAFKA_BROKERS`, `KAFKA_CONFIG`); unset: the
    /// service writes events to the outbox and leaves publishing to another relay (the monolith's).
    pub kafka: Option<bm_events::KafkaConfig>,
    /// The consumer group of the inbox projection (`CHAT_INBOX_GROUP`, default `chat-inbox`):
    /// every instance of the service joins it (docs/chat-sharding.md).
    pub inbox_group: String,
}

impl Config {
    pub fn from_env(mut env: Env) -> Result<Config, ConfigError> {
        let e = &mut env;
        let port: u16 = e.parse_or("PORT", 4002);
        let host: IpAddr = e.parse_or("HOST", IpAddr::from([127, 0, 0, 1]));
        let jwt = bm_common::jwt::JwtSettings::from_env(e);
        let fcm = e.fcm();
        let timeout: u64 = e.parse_or("HTTP_TIMEOUT_MS", 10_000);
        let cfg = Config {
            addr: SocketAddr::new(host, port),
            database: e.database(),
            redis_url: e.required("REDIS_URL"),
            jwt,
            fcm,
            http_timeout: Duration::from_millis(timeout),
            dry_run_key: e.dry_run_key(),
            tls: bm_common::http::OutboundTls::from_env(e),
            introspection: e.optional("NODE_ENV").as_deref() != Some("production"),
            kafka: bm_events::KafkaConfig::from_env(e, "bm-chat"),
            inbox_group: e.optional("CHAT_INBOX_GROUP").unwrap_or_else(|| "chat-inbox".into()),
        };
        env.finish().map(|()| cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_problem_at_once() {
        let vars: HashMap<&str, &str> = [("PORT", "x"), ("DB_POOL_MAX", "0"), ("FCM_BASE_URL", "not a url")].into();
        let err = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap_err().to_string();
        for want in ["PORT=x", "DATABASE_URL is not set", "REDIS_URL is not set", "JWT_JWKS_URL", "DB_POOL_MAX=0", "FCM_BASE_URL"] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
        let vars: HashMap<&str, &str> =
            [("DATABASE_URL", "postgres://x"), ("REDIS_URL", "redis://x"), ("JWT_JWKS_URL", "http://a/jwks.json")].into();
        let c = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap();
        assert_eq!(c.addr.port(), 4002);
        assert!(c.introspection);
    }
}
