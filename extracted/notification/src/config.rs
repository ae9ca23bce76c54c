//! The service's settings from the environment: the monolith's names where they mean the same
//! (`DATABASE_URL`, `FCM_*`, `HTTP_TIMEOUT_MS`, `JWT_ISSUER`/`JWT_AUDIENCE`), the token keys and
//! dry-run secret as the other services take them, the Kafka ones of bm-events, and the push
//! job's own (extracted/notification/README.md).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bm_common::config::{ConfigError, Env, Fcm};
use bm_events::KafkaConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub database: bm_common::config::Database,
    /// Where access tokens of the REST routes are verified (`JWT_JWKS_URL`/`JWT_PUBLIC_KEY_FILE`).
    pub jwt: bm_common::jwt::JwtSettings,
    /// Verifies the proxy's signed dry runs (`DRY_RUN_SECRET`); unset: dry runs are refused.
    pub dry_run_key: Option<bm_common::DryRunKey>,
    pub fcm: Fcm,
    /// One FCM request's timeout (the monolith: 10 s).
    pub http_timeout: Duration,
    pub tls: bm_common::http::OutboundTls,
    pub kafka: KafkaConfig,
    pub job: JobConfig,
}

#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The consumer group (`PUSH_GROUP`): every instance of the job shares it.
    pub group: String,
    /// Events handled at once (`PUSH_LANES`); one chat's events always share a lane, in order.
    pub lanes: usize,
    /// FCM attempts per device before the event goes to the dead-letter topic.
    pub max_attempts: u32,
    /// First retry after this long, doubling each time (capped at 10 s).
    pub retry_base: Duration,
    /// How long a claimed push is ours before another instance may take it over.
    pub lease: Duration,
    /// How long the shadow waits for the in-process sender's pushes of a message to be logged.
    pub shadow_wait: Duration,
}

impl Config {
    pub fn from_env(mut env: Env) -> Result<Config, ConfigError> {
        let e = &mut env;
        let port: u16 = e.parse_or("PORT", 4003);
        let host: IpAddr = e.parse_or("HOST", IpAddr::from([127, 0, 0, 1]));
        let fcm = e.fcm();
        let jwt = bm_common::jwt::JwtSettings::from_env(e);
        let lanes: usize = e.parse_or("PUSH_LANES", 16);
        if !(1..=1024).contains(&lanes) {
            e.problem(format!("PUSH_LANES={lanes} is not in 1..1024"));
        }
        let max_attempts: u32 = e.parse_or("PUSH_MAX_ATTEMPTS", 5);
        if !(1..=100).contains(&max_attempts) {
            e.problem(format!("PUSH_MAX_ATTEMPTS={max_attempts} is not in 1..100"));
        }
        let retry_base = Duration::from_millis(e.parse_or("PUSH_RETRY_BASE_MS", 200));
        let shadow_wait = Duration::from_millis(e.parse_or("PUSH_SHADOW_WAIT_MS", 10_000));
        let http_timeout = Duration::from_millis(e.parse_or("HTTP_TIMEOUT_MS", 10_000));
        // a whole attempt fits in a lease twice over, with room for the database
        let default_lease = (http_timeout * 2 + Duration::from_secs(10)).as_millis() as u64;
        let lease = Duration::from_millis(e.parse_or("PUSH_LEASE_MS", default_lease));
        if lease <= http_timeout {
            e.problem(format!("PUSH_LEASE_MS={} must be longer than HTTP_TIMEOUT_MS={}", lease.as_millis(), http_timeout.as_millis()));
        }
        let kafka = KafkaConfig::from_env(e, "bm-notification");
        if kafka.is_none() {
            e.problem("KAFKA_BROKERS is not set (host:port[,host:port…]): the push job consumes message.sent");
        }
        let cfg = Config {
            addr: SocketAddr::new(host, port),
            database: e.database(),
            jwt,
            dry_run_key: e.dry_run_key(),
            fcm,
            http_timeout,
            tls: bm_common::http::OutboundTls::from_env(e),
            kafka: kafka.unwrap_or_else(|| KafkaConfig { brokers: String::new(), client_id: String::new(), extra: Default::default() }),
            job: JobConfig { group: e.or("PUSH_GROUP", "notification-push"), lanes, max_attempts, retry_base, lease, shadow_wait },
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
        let vars: HashMap<&str, &str> = [("PORT", "x"), ("PUSH_LANES", "0"), ("FCM_BASE_URL", "nope"), ("PUSH_MAX_ATTEMPTS", "0")].into();
        let err = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap_err().to_string();
        for want in [
            "PORT=x",
            "DATABASE_URL is not set",
            "JWT_JWKS_URL",
            "KAFKA_BROKERS is not set",
            "PUSH_LANES=0",
            "FCM_BASE_URL",
            "PUSH_MAX_ATTEMPTS=0",
        ] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
        let vars: HashMap<&str, &str> =
            [("DATABASE_URL", "postgres://x"), ("KAFKA_BROKERS", "127.0.0.1:9092"), ("JWT_PUBLIC_KEY_FILE", "/k.pem")].into();
        let c = Config::from_env(Env::from_fn(|k| vars.get(k).map(|v| v.to_string()))).unwrap();
        assert_eq!(c.addr.port(), 4003);
        assert_eq!(c.job.group, "notification-push");
        assert!(c.job.lease > c.http_timeout);
    }
}
