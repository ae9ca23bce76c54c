//! `--scenario delivery`: how long a message takes from `sendMessage` to the other member's
//! socket (NFR-3: p99 < 1 s at 100 messages/s).
//!
//! Pairs of seeded users (2k+1, 2k+2) share a direct chat. The second of each pair subscribes to
//! `messageAdded` over `graphql-transport-ws` (the token in `connection_init`, as the apps do) at
//! `--sub-target` (default: the same URL), and every subscription is proven live by a probe
//! before measuring. Then the first users send `--rate` messages a second in total, round robin,
//! each body naming its sequence number; the time from just before the send to the message's
//! arrival on the socket is recorded. At the end: sent, delivered, missing, duplicated, and the
//! latency percentiles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::Args;

#[derive(Default)]
struct Book {
    sent_at: HashMap<u64, Instant>,
    received: HashMap<u64, u32>,
    latency: Option<Histogram<u64>>,
    send_latency: Option<Histogram<u64>>,
    send_errors: u64,
    first_error: Option<String>,
    /// subscriber sockets that failed and were opened again
    reconnects: u64,
}

pub(crate) async fn login(http: &reqwest::Client, base: &str, n: u32, args: &Args) -> Result<(String, String)> {
    let body = json!({ "email": format!("user{n}@{}", args.domain), "password": args.password });
    let v: Value = http.post(format!("{base}/auth/login")).json(&body).send().await?.error_for_status()?.json().await?;
    let token = v["accessToken"].as_str().context("no accessToken")?.to_string();
    let id = v["user"]["id"].as_str().context("no user id")?.to_string();
    Ok((token, id))
}

/// Signs in seeded users `a` and `b` and gives them a direct chat: (a's token, b's token, b's
/// id, the chat id).
pub(crate) async fn direct_pair(
    http: &reqwest::Client,
    base: &str,
    a: u32,
    b: u32,
    args: &Args,
) -> Result<(String, String, String, String)> {
    let (ta, _) = login(http, base, a, args).await.with_context(|| format!("login user{a}"))?;
    let (tb, ib) = login(http, base, b, args).await.with_context(|| format!("login user{b}"))?;
    let chat =
        gql(http, base, &ta, "mutation($i: CreateChatInput!) { createChat(input: $i) { id } }", json!({ "i": { "memberIds": [ib] } }))
            .await?["createChat"]["id"]
            .as_str()
            .context("no chat id")?
            .to_string();
    Ok((ta, tb, ib, chat))
}

pub(crate) async fn gql(http: &reqwest::Client, base: &str, token: &str, query: &str, variables: Value) -> Result<Value> {
    let v: Value = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await?;
    if let Some(e) = v.get("errors") {
        bail!("GraphQL errors: {e}");
    }
    Ok(v["data"].clone())
}

pub(crate) const SEND: &str = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }";

/// Opens a subscription to `chat` and feeds every `d:<seq>` body it sees to the book.
async fn subscribe(
    ws_base: &str,
    token: &str,
    chat: &str,
    pair: u32,
    book: Arc<Mutex<Book>>,
    live: tokio::sync::mpsc::Sender<u32>,
) -> Result<()> {
    let mut req = format!("{ws_base}/graphql").into_client_request()?;
    req.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.context("WebSocket upgrade")?;
    ws.send(Message::Text(
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }).to_string().into(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => break,
            Some(Ok(Message::Text(_))) | Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {}
            other => bail!("no connection_ack: {other:?}"),
        }
    }
    let sub = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($c: ID!) { messageAdded(chatId: $c) { body } }", "variables": { "c": chat } } });
    ws.send(Message::Text(sub.to_string().into())).await?;
    let mut announced = false;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let now = Instant::now();
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        let Some(body) = v["payload"]["data"]["messageAdded"]["body"].as_str() else {
            if v["type"] == "error" || v["type"] == "complete" {
                bail!("subscription ended: {t}");
            }
            continue;
        };
        if body.starts_with("probe") {
            if !announced {
                announced = true;
                let _ = live.send(pair).await;
            }
            continue;
        }
        let Some(seq) = body.strip_prefix("d:").and_then(|s| s.parse::<u64>().ok()) else { continue };
        let mut b = book.lock().unwrap();
        *b.received.entry(seq).or_default() += 1;
        if b.received[&seq] == 1 {
            if let Some(at) = b.sent_at.get(&seq).copied() {
                let us = now.duration_since(at).as_micros().max(1) as u64;
                b.latency.as_mut().unwrap().saturating_record(us);
            }
        }
    }
    Ok(())
}

pub async fn run(args: Arc<Args>, http: reqwest::Client) -> Result<()> {
    let base = args.target.trim_end_matches('/').to_string();
    let sub_base = args.sub_target.clone().unwrap_or_else(|| base.clone());
    let ws_base = sub_base.replacen("http", "ws", 1);
    let pairs = args.pairs;
    let book = Arc::new(Mutex::new(Book {
        latency: Some(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        send_latency: Some(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        ..Book::default()
    }));
    // sign in, pair up, subscribe
    let (live_tx, mut live_rx) = tokio::sync::mpsc::channel::<u32>(pairs as usize * 4);
    let mut senders = Vec::new();
    let mut subs = Vec::new();
    for p in 0..pairs {
        let (a, b) = (args.first_user + 2 * p, args.first_user + 2 * p + 1);
        let (ta, tb, _, chat) = direct_pair(&http, &base, a, b, &args).await?;
        let (ws, book, live) = (ws_base.clone(), book.clone(), live_tx.clone());
        let chat2 = chat.clone();
        subs.push(tokio::spawn(async move {
            // as the apps' graphql-ws client does: reconnect when the socket fails before the
            // subscription is up (counted; the probe below proves every one live before measuring)
            for attempt in 1..=3 {
                match subscribe(&ws, &tb, &chat2, p, book.clone(), live.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        eprintln!("subscriber of pair {p}, attempt {attempt}: {e:#}");
                        book.lock().unwrap().reconnects += 1;
                    }
                }
            }
        }));
        senders.push((ta, chat));
    }
    // prove every subscription live: probe each chat until its subscriber has seen one
    let mut up = std::collections::HashSet::new();
    let mut live = 0;
    let probe_deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while live < pairs {
        if Instant::now() > probe_deadline {
            bail!("only {live} of {pairs} subscriptions came up within 60 s");
        }
        for (token, chat) in &senders {
            let body = json!({ "input": { "chatId": chat, "body": format!("probe {round}"), "clientMessageId": uuid::Uuid::new_v4().to_string() } });
            let _ = gql(&http, &base, token, SEND, body).await;
        }
        round += 1;
        let wait = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                Some(p) = live_rx.recv() => {
                    up.insert(p);
                    live = up.len() as u32;
                }
                _ = &mut wait => break,
            }
        }
    }
    eprintln!("{pairs} subscriptions live; sending {} messages/s for {} s", args.rate, args.duration);
    // send at the rate, round robin over the pairs, each send on its own task
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(args.duration);
    let mut seq = 0u64;
    let mut inflight = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        seq += 1;
        let (token, chat) = senders[(seq % u64::from(pairs)) as usize].clone();
        let (http, base, book) = (http.clone(), base.clone(), book.clone());
        inflight.push(tokio::spawn(async move {
            let at = Instant::now();
            book.lock().unwrap().sent_at.insert(seq, at);
            let body =
                json!({ "input": { "chatId": chat, "body": format!("d:{seq}"), "clientMessageId": uuid::Uuid::new_v4().to_string() } });
            let r = gql(&http, &base, &token, SEND, body).await;
            let mut b = book.lock().unwrap();
            b.send_latency.as_mut().unwrap().saturating_record(at.elapsed().as_micros().max(1) as u64);
            if let Err(e) = r {
                b.send_errors += 1;
                b.first_error.get_or_insert(e.to_string());
                b.sent_at.remove(&seq);
            }
        }));
    }
    for t in inflight {
        let _ = t.await;
    }
    let wall = begin.elapsed().as_secs_f64();
    // stragglers: up to 5 s more for what was sent to arrive
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        let done = {
            let b = book.lock().unwrap();
            b.sent_at.keys().all(|s| b.received.contains_key(s))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in subs {
        s.abort();
    }
    let b = book.lock().unwrap();
    let sent = b.sent_at.len() as u64;
    let delivered = b.sent_at.keys().filter(|s| b.received.contains_key(s)).count() as u64;
    let duplicated = b.received.values().filter(|n| **n > 1).count();
    let ms = |us: u64| us as f64 / 1000.0;
    let (l, s) = (b.latency.as_ref().unwrap(), b.send_latency.as_ref().unwrap());
    println!(
        "\n{} — delivery: {} pairs, {} messages/s for {} s, send {}, subscribe {}\n",
        args.label, pairs, args.rate, args.duration, base, sub_base
    );
    println!("| what | count | per s | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", crate::latency_row("sendMessage (HTTP)", s, wall, 1000.0));
    println!("{}", crate::latency_row("send → other member's socket", l, wall, 1000.0));
    println!(
        "\nsent {sent} (send errors {}), delivered {delivered}, missing {}, duplicated {duplicated}, subscriber reconnects {}",
        b.send_errors,
        sent - delivered,
        b.reconnects
    );
    if let Some(e) = &b.first_error {
        println!("first send error: {e}");
    }
    if let Some(path) = &args.json {
        let doc = json!({ "label": args.label, "scenario": "delivery", "pairs": pairs, "rate": args.rate, "duration_s": args.duration,
            "sent": sent, "delivered": delivered, "missing": sent - delivered, "duplicated": duplicated, "send_errors": b.send_errors, "reconnects": b.reconnects,
            "send_p99_ms": ms(s.value_at_quantile(0.99)), "delivery_p50_ms": ms(l.value_at_quantile(0.5)),
            "delivery_p99_ms": ms(l.value_at_quantile(0.99)), "delivery_max_ms": ms(l.max()) });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
