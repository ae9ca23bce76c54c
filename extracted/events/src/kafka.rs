//! Kafka client set-up shared by every service: one place for the settings that matter
//! (../shared/FACTS.md "Kafka"), so that a production Kafka or Redpanda cluster is a change of
//! environment, never of code (README "A production Kafka").
//!
//! - `KAFKA_BROKERS`: `host:port[,host:port…]` (bootstrap servers).
//! - `KAFKA_CONFIG`: extra librdkafka properties, `key=value;key=value` — TLS and SASL for a
//!   production cluster (`security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512;…`), or any
//!   setting below to override it.

use std::collections::BTreeMap;
use std::time::Duration;

use bm_common::config::Env;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub client_id: String,
    /// `KAFKA_CONFIG`, applied last.
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// `None` when `KAFKA_BROKERS` is unset (the caller decides whether that is a problem);
    /// a malformed `KAFKA_CONFIG` is reported on `env`.
    pub fn from_env(env: &mut Env, client_id: &str) -> Option<KafkaConfig> {
        let brokers = env.optional("KAFKA_BROKERS").filter(|b| !b.trim().is_empty());
        let mut extra = BTreeMap::new();
        if let Some(raw) = env.optional("KAFKA_CONFIG") {
            for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                match part.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        extra.insert(k.trim().to_string(), v.trim().to_string());
                    }
                    _ => env.problem(format!("KAFKA_CONFIG: `{part}` is not key=value (separate properties with `;`)")),
                }
            }
        }
        let brokers = brokers?;
        if brokers.split(',').any(|b| b.trim().is_empty()) {
            env.problem(format!("KAFKA_BROKERS={brokers} has an empty entry (host:port[,host:port…])"));
        }
        Some(KafkaConfig { brokers, client_id: client_id.to_string(), extra })
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// A producer that keeps each partition in order across retries (one request in flight per
    /// connection), puts a key where Java and kafkajs producers put it (murmur2), and waits for
    /// every in-sync replica (`acks=all`, free here). `linger.ms=0`: the relay sends a batch at
    /// once and waits for it, so waiting for more only adds latency.
    ///
    /// Not the idempotent producer: duplicates are already expected (at least once, consumers
    /// deduplicate by event id), and tansu 0.6's idempotence check panicked in about one run in
    /// twenty of the relay test (a new producer after a broker restart), wedging the broker.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut c = self.base();
        c.set("acks", "all")
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            // Java's (and kafkajs's) partitioner: a chat's events land in one partition whichever
            // relay (this one or the monolith's kafkajs one) publishes them
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .set("socket.keepalive.enable", "true");
        self.finish(c).create()
    }

    /// A group consumer's settings: it commits only the offsets the caller stored once their work
    /// was done (`enable.auto.offset.store=false`; stored offsets are committed every 500 ms, on a
    /// rebalance and on close), starts a new group from the beginning, fetches without the 500 ms
    /// default wait (`fetch.wait.max.ms=10`: each fetch otherwise sleeps that long with data
    /// waiting), and notices a dead member within 6 s.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // a member that stops polling (or dies: tansu 0.6 waited this long, not the session
            // timeout, for a killed member before rebalancing) is out after 60 s, not 5 min
            .set("max.poll.interval.ms", "60000")
            .set("enable.partition.eof", "false");
        self.finish(c)
    }

    /// A consumer with [`Self::consumer_config`] (no offsets stored: a reader, such as a test).
    pub fn consumer(&self, group: &str) -> Result<StreamConsumer, KafkaError> {
        self.consumer_config(group).create()
    }

    /// Creates the topics that do not exist yet (`TOPICS`); existing ones are left as they are.
    pub async fn ensure_topics(&self, topics: &[(&str, i32)]) -> Result<Vec<String>, KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.finish(self.base()).create()?;
        let new: Vec<NewTopic> = topics.iter().map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let mut created = Vec::new();
        for r in admin.create_topics(new.iter(), &opts).await? {
            match r {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| tracing::error!(%name, ?code, "creating topic"))
                }
            }
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn brokers_and_extra_properties() {
        let vars = env(&[("KAFKA_BROKERS", "a:9092,b:9092"), ("KAFKA_CONFIG", "security.protocol=SASL_SSL; sasl.mechanism=PLAIN;")]);
        let mut e = Env::from_fn(|k| vars.get(k).cloned());
        let c = KafkaConfig::from_env(&mut e, "x").unwrap();
        e.finish().unwrap();
        assert_eq!(c.brokers, "a:9092,b:9092");
        assert_eq!(c.extra.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(c.extra.len(), 2);
    }

    #[test]
    fn unset_brokers_is_none_and_bad_properties_are_problems() {
        let vars = env(&[("KAFKA_CONFIG", "oops;a=b")]);
        let mut e = Env::from_fn(|k| vars.get(k).cloned());
        assert!(KafkaConfig::from_env(&mut e, "x").is_none());
        let err = e.finish().unwrap_err().to_string();
        assert!(err.contains("`oops` is not key=value"), "{err}");
        let vars = env(&[("KAFKA_BROKERS", "a:1,,b:2")]);
        let mut e = Env::from_fn(|k| vars.get(k).cloned());
        KafkaConfig::from_env(&mut e, "x");
        assert!(e.finish().unwrap_err().to_string().contains("empty entry"));
    }
}

/// A group consumer's lag per partition, from librdkafka's statistics (the client must set
/// `statistics.interval.ms`: [`with_lag_statistics`]), as the gauge `name{topic, partition}`.
pub fn export_lag(name: &'static str, stats: &rdkafka::statistics::Statistics) {
    for (t, topic) in &stats.topics {
        for (p, part) in &topic.partitions {
            if *p >= 0 && part.consumer_lag >= 0 {
                metrics::gauge!(name, "topic" => t.clone(), "partition" => p.to_string()).set(part.consumer_lag as f64);
            }
        }
    }
}

/// Partitions revoked from this instance: librdkafka reports lag for assigned partitions only,
/// and a revoked partition's last value would stay on /metrics looking current. NaN says "not
/// measured here" (the alert rules sum `>= 0`).
pub fn forget_lag(name: &'static str, revoked: &rdkafka::TopicPartitionList) {
    for e in revoked.elements() {
        metrics::gauge!(name, "topic" => e.topic().to_string(), "partition" => e.partition().to_string()).set(f64::NAN);
    }
}

/// Statistics once a second (what [`export_lag`] reads), unless `KAFKA_CONFIG` chose otherwise.
pub fn with_lag_statistics(c: &mut ClientConfig) {
    if c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", "1000");
    }
}

/// The context of a consumer that exports its lag as the gauge named here and does nothing
/// else on a rebalance.
pub struct LagContext(pub &'static str);

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        export_lag(self.0, &stats);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = r {
            forget_lag(self.0, tpl);
        }
    }
}
