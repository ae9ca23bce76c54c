//! Proving the push job before it sends anything: for an event whose producer pushed in-process
//! (`pushedInProcess`), plan the pushes the job would send and compare them with the pushes the
//! producer logged (`legacy.push_log`), device by device: the same devices, the same
//! `notification` and `data`. Each comparison is a record in the proxy's shadow store
//! (`strangler.shadow_comparisons`, route `notification-push`), so `strangler report` gives the
//! parity report in the same Markdown / JUnit / JSON as for HTTP routes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bm_events::push::{fcm_request, for_event};
use bm_events::MessageSent;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::{retry_db, Device};

/// The route name of the push job's comparisons in the shadow store.
pub const ROUTE: &str = "notification-push";

/// One push: the FCM request's `message` without the token (the key it is filed under).
pub type Planned = BTreeMap<String, Value>;

/// Differences between what the producer sent (`legacy`) and what the job plans (`candidate`),
/// keyed by device token: records in the proxy's difference shape (`place`, `at`, `kind`,
/// `legacy`/`candidate`). A missing or extra push carries its `token` for [`explained`], which
/// removes it before the record is stored: tokens reach the store only as fingerprints.
pub fn differences(legacy: &Planned, candidate: &Planned) -> Vec<Value> {
    let mut out = Vec::new();
    for (token, l) in legacy {
        let at = format!("$.pushes[{}]", fingerprint(token));
        match candidate.get(token) {
            None => out.push(
                json!({ "place": { "in": "field", "path": "$.pushes[*]" }, "at": at, "kind": "missing", "legacy": l, "token": token }),
            ),
            Some(c) if c != l => {
                for part in ["notification", "data"] {
                    if l.get(part) != c.get(part) {
                        out.push(json!({ "place": { "in": "field", "path": format!("$.pushes[*].{part}") }, "at": format!("{at}.{part}"),
                            "kind": "changed", "legacy": l.get(part), "candidate": c.get(part) }));
                    }
                }
            }
            Some(_) => {}
        }
    }
    for (token, c) in candidate {
        if !legacy.contains_key(token) {
            let at = format!("$.pushes[{}]", fingerprint(token));
            out.push(
                json!({ "place": { "in": "field", "path": "$.pushes[*]" }, "at": at, "kind": "extra", "candidate": c, "token": token }),
            );
        }
    }
    out
}

fn without_token(message: &Value) -> Value {
    let mut m = message.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("token");
    }
    m
}

fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Whether a difference in the device set is the devices changing between the producer's push
/// and the job's reading (the job reads devices when it handles the event, as the monolith read
/// them when it pushed): a device the producer pushed to that is gone now, or one the job would
/// push to that was registered (or moved to its user) after the message.
pub fn explained(d: &Value, e: &MessageSent, devices: &[Device]) -> bool {
    let token = d["token"].as_str().unwrap_or_default();
    match d["kind"].as_str() {
        Some("missing") => !devices.iter().any(|x| x.token == token),
        Some("extra") => {
            let sent_at = chrono::DateTime::parse_from_rfc3339(&e.occurred_at).map(|t| t.to_utc()).ok();
            devices.iter().any(|x| x.token == token && sent_at.is_some_and(|t| x.last_seen_at > t))
        }
        _ => false,
    }
}

/// Compares one event's planned pushes (to `devices`) with the logged ones and stores the
/// record; `at` is the event's (partition, offset).
pub async fn compare(pool: &sqlx::PgPool, wait: Duration, e: &MessageSent, devices: &[Device], at: (i32, i64)) {
    let content = for_event(e);
    let planned: Planned = devices.iter().map(|d| (d.token.clone(), without_token(&fcm_request(&d.token, &content)["message"]))).collect();
    // the producer pushes right after its commit; the event can arrive before its log rows
    let deadline = Instant::now() + wait;
    let logged = loop {
        let rows: Vec<(Value,)> = retry_db("reading legacy.push_log", || {
            sqlx::query_as("SELECT request FROM legacy.push_log WHERE message_id = $1 ORDER BY id").bind(e.message_id).fetch_all(pool)
        })
        .await;
        let logged: Planned =
            rows.into_iter().filter_map(|(r,)| Some((r.get("token")?.as_str()?.to_string(), without_token(&r)))).collect();
        if logged.len() >= planned.len() || Instant::now() >= deadline {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (noise, diffs): (Vec<Value>, Vec<Value>) = differences(&logged, &planned).into_iter().partition(|d| explained(d, e, devices));
    let strip = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut d| {
                if let Some(o) = d.as_object_mut() {
                    o.remove("token");
                }
                d
            })
            .collect()
    };
    let (noise, diffs) = (strip(noise), strip(diffs));
    let outcome = match (diffs.is_empty(), noise.is_empty()) {
        (true, true) => "match",
        (true, false) => "noise",
        _ => "mismatch",
    };
    metrics::counter!("notification_shadow_comparisons_total", "outcome" => outcome).increment(1);
    if !diffs.is_empty() {
        tracing::warn!(message = %e.message_id, differences = diffs.len(), "push shadow: the job would push differently");
    }
    let now = chrono::Utc::now();
    let record = json!({
        "ts_unix_ms": now.timestamp_millis(),
        "route": ROUTE,
        "endpoint": "message.sent → FCM",
        "request_id": e.id.to_string(),
        "method": "EVENT",
        "uri": format!("message.sent/{}@{}", at.0, at.1),
        "primary": "legacy",
        "outcome": outcome,
        "legacy_status": null,
        "candidate_status": null,
        "differences": diffs,
        "noise": noise,
        "request_headers": [],
        "request_body": { "messageId": e.message_id, "chatId": e.chat_id, "devices": planned.len(), "logged": logged.len() },
    });
    retry_db("storing a push comparison", || {
        sqlx::query(
            "INSERT INTO strangler.shadow_comparisons (recorded_at, proxy, route, endpoint, outcome, legacy_status, candidate_status, record)
             VALUES ($1, 'bm-notification', $2, 'message.sent → FCM', $3, NULL, NULL, $4)",
        )
        .bind(now)
        .bind(ROUTE)
        .bind(outcome)
        .bind(&record)
        .execute(pool)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn planned(items: &[(&str, &str)]) -> Planned {
        items
            .iter()
            .map(|(t, title)| (t.to_string(), json!({ "notification": { "title": title }, "data": { "kind": "message.new" } })))
            .collect()
    }

    #[test]
    fn the_same_pushes_match() {
        assert!(differences(&planned(&[("a", "Ann"), ("b", "Ann")]), &planned(&[("b", "Ann"), ("a", "Ann")])).is_empty());
    }

    #[test]
    fn missing_extra_and_changed_pushes_are_named_without_tokens() {
        let d = differences(&planned(&[("tok-a", "Ann"), ("tok-b", "Ann")]), &planned(&[("tok-b", "Bob"), ("tok-c", "Ann")]));
        let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["missing", "changed", "extra"]);
        assert_eq!(d[1]["place"]["path"], "$.pushes[*].notification");
        // the raw token only in `token`, which compare removes before storing
        let mut stored = d.clone();
        for x in &mut stored {
            x.as_object_mut().unwrap().remove("token");
        }
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("tok-"), "tokens are fingerprinted: {text}");
    }

    #[test]
    fn device_changes_between_the_two_reads_are_explained() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-02-03T04:05:06Z").unwrap().to_utc();
        let e = MessageSent::new("chat", Uuid::nil(), Uuid::nil(), 1, Uuid::nil(), "Ann", None, "hi", vec![], true, at);
        let device = |token: &str, secs: i64| Device {
            token: token.into(),
            user_id: Uuid::nil(),
            last_seen_at: at + chrono::Duration::seconds(secs),
        };
        let missing = json!({ "kind": "missing", "token": "gone" });
        assert!(explained(&missing, &e, &[device("other", -5)]), "pushed to a device deleted since");
        assert!(!explained(&missing, &e, &[device("gone", -5)]), "the device is still there: a real difference");
        let extra = json!({ "kind": "extra", "token": "new" });
        assert!(explained(&extra, &e, &[device("new", 3)]), "registered after the message");
        assert!(!explained(&extra, &e, &[device("new", -3)]), "registered before: the producer should have pushed to it");
        assert!(!explained(&json!({ "kind": "changed" }), &e, &[]));
    }
}
