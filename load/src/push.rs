//! `--scenario push`: how long a message takes from `sendMessage` (through the proxy) to the FCM
//! request for the other member's device (NFR-3: p99 < 1 s), whoever pushes (the monolith
//! in-process, or the notification push job from Kafka: `bm-notification pushes`).
//!
//! Pairs of seeded users (2k+1, 2k+2) share a direct chat; the second of each pair registers a
//! device of its own for this run (removed at the end, so every run pushes to one device per
//! message). The first users send `--rate` messages a second in total;
//! the send time (wall clock, just before the request) is compared with the millisecond the FCM
//! fake received the push for that message (`GET /_fake/fcm/messages`, `--fakes`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::delivery::{direct_pair, gql, SEND};
use crate::Args;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub async fn run(args: Arc<Args>, http: reqwest::Client) -> Result<()> {
    let base = args.target.trim_end_matches('/').to_string();
    let fakes = args.fakes.trim_end_matches('/').to_string();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut senders = Vec::new();
    let mut devices = Vec::new();
    for p in 0..args.pairs {
        let (a, b) = (args.first_user + 2 * p, args.first_user + 2 * p + 1);
        let (ta, tb, _, chat) = direct_pair(&http, &base, a, b, &args).await?;
        let token = format!("bench-push-{run}-{p}");
        http.post(format!("{base}/notifications/devices"))
            .bearer_auth(&tb)
            .json(&json!({ "token": token, "platform": "android" }))
            .send()
            .await?
            .error_for_status()
            .context("registering a device")?;
        senders.push((ta, chat));
        devices.push((tb, token));
    }
    eprintln!("{} pairs ready; sending {} messages/s for {} s", args.pairs, args.rate, args.duration);
    let sent_at: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let errors = Arc::new(Mutex::new((0u64, None::<String>)));
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let begin = Instant::now();
    let begin_ms = now_ms();
    let deadline = begin + Duration::from_secs(args.duration);
    let mut n = 0u64;
    let mut inflight = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        n += 1;
        let (token, chat) = senders[(n % u64::from(args.pairs)) as usize].clone();
        let (http, base, sent_at, errors) = (http.clone(), base.clone(), sent_at.clone(), errors.clone());
        inflight.push(tokio::spawn(async move {
            let at = now_ms();
            let body =
                json!({ "input": { "chatId": chat, "body": format!("p:{n}"), "clientMessageId": uuid::Uuid::new_v4().to_string() } });
            match gql(&http, &base, &token, SEND, body).await {
                Ok(d) => {
                    if let Some(id) = d["sendMessage"]["id"].as_str() {
                        sent_at.lock().unwrap().insert(id.to_string(), at);
                    }
                }
                Err(e) => {
                    let mut e2 = errors.lock().unwrap();
                    e2.0 += 1;
                    e2.1.get_or_insert(e.to_string());
                }
            }
        }));
    }
    for t in inflight {
        let _ = t.await;
    }
    let wall = begin.elapsed().as_secs_f64();
    let sent = sent_at.lock().unwrap().clone();
    // the pushes: wait up to 30 s for every message to reach the fake
    let prefix = format!("bench-push-{run}-");
    let settle = Instant::now() + Duration::from_secs(30);
    let received: Vec<(String, String, u64)> = loop {
        let v: Value = http.get(format!("{fakes}/_fake/fcm/messages")).send().await?.json().await?;
        let ours: Vec<(String, String, u64)> = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["message"]["token"].as_str().is_some_and(|t| t.starts_with(&prefix)))
                    .filter_map(|m| {
                        Some((
                            m["message"]["data"]["messageId"].as_str()?.to_string(),
                            m["message"]["token"].as_str()?.to_string(),
                            m["received_at_ms"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let got: std::collections::HashSet<&String> = ours.iter().map(|(m, _, _)| m).collect();
        if sent.keys().all(|k| got.contains(k)) || Instant::now() > settle {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // this run's devices go: the next run's recipients have one device each again
    for (tb, token) in &devices {
        let _ = http.delete(format!("{base}/notifications/devices/{token}")).bearer_auth(tb).send().await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    // keyed by (message, device): a message of another load in a group chat that two of this
    // run's receivers share reaches both devices once each, which is not a double
    let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
    // per second of the run (by send time): the slowest push and how many took over 500 ms, to
    // see a pause (a consumer joining or leaving the group) where it happened
    let mut by_second: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    for (m, token, at) in &received {
        if !sent.contains_key(m) {
            continue; // a push of another load's message to one of this run's devices
        }
        let c = seen.entry((m.as_str(), token.as_str())).or_default();
        *c += 1;
        if *c == 1 {
            if let Some(s) = sent.get(m) {
                let delay = at.saturating_sub(*s).max(1);
                hist.saturating_record(delay);
                let slot = by_second.entry(s.saturating_sub(begin_ms) / 1000).or_default();
                slot.0 = slot.0.max(delay);
                slot.1 += u64::from(delay > 500);
            }
        }
    }
    let pushed: std::collections::HashSet<&str> = seen.keys().map(|(m, _)| *m).collect();
    let delivered = sent.keys().filter(|k| pushed.contains(k.as_str())).count();
    let duplicated = seen.values().filter(|c| **c > 1).count();
    let (send_errors, first_error) = errors.lock().unwrap().clone();
    println!("\n{} — push: {} pairs, {} messages/s for {} s, through {base}\n", args.label, args.pairs, args.rate, args.duration);
    println!("| what | count | per s | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", crate::latency_row("sendMessage → FCM request", &hist, wall, 1.0));
    println!(
        "\nsent {} (send errors {send_errors}), pushed {delivered}, missing {}, duplicated {duplicated}",
        sent.len(),
        sent.len() - delivered
    );
    if let Some(e) = first_error {
        println!("first send error: {e}");
    }
    let slow: Vec<String> = by_second
        .iter()
        .filter(|(_, (max, _))| *max > 250)
        .map(|(s, (max, over))| format!("{s} s: max {max} ms, {over} over 500 ms"))
        .collect();
    if !slow.is_empty() {
        println!("seconds with a push slower than 250 ms (by send time): {}", slow.join("; "));
    }
    if let Some(path) = &args.json {
        let doc = json!({ "label": args.label, "scenario": "push", "pairs": args.pairs, "rate": args.rate, "duration_s": args.duration,
            "sent": sent.len(), "pushed": delivered, "missing": sent.len() - delivered, "duplicated": duplicated, "send_errors": send_errors,
            "push_p50_ms": hist.value_at_quantile(0.5), "push_p95_ms": hist.value_at_quantile(0.95),
            "push_p99_ms": hist.value_at_quantile(0.99), "push_max_ms": hist.max(), "achieved_per_s": hist.len() as f64 / wall });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
