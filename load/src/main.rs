//! `bmload`: a user-scenario load test for BrainMessenger's HTTP API (the monolith directly, or
//! through the strangler proxy). Each virtual user is one seeded account
//! (`user<i>@seed.brainmessenger.test`, see `legacy/src/seed/cli.ts`) that logs in and then, until
//! the deadline, repeats its scenario with think time between steps:
//!
//! * `chat`: list its chats (GraphQL `chats`), read the newest 20 messages of one
//!   (`messages`), send a message (`sendMessage`, idempotent client id), and now and then `GET /auth/me`;
//! * `auth`: `GET /auth/me` and `POST /auth/refresh` (rotating its refresh token);
//! * `delivery`: send → the other member's socket, at a fixed message rate (`delivery.rs`).
//! * `push`: send → the FCM request for the other member's device (`push.rs`).
//!
//! Users start spread over the ramp-up. Latency is recorded per step in HDR histograms and printed
//! as a Markdown table (p50/p95/p99, throughput, errors); `--json` writes the same figures.
//! Loopback only: the target must be a 127.0.0.0/8 or localhost URL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

mod delivery;
mod push;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Scenario {
    Chat,
    Auth,
    /// The notification module's REST routes as the app uses them: the in-app list, the unread
    /// badge, reading one, read-all now and then, a device registered at start, and a message
    /// sent in one of the user's chats each round (so the others get notifications)
    Notifications,
    Delivery,
    Push,
}

#[derive(Parser, Debug)]
#[command(about = "User-scenario load test for BrainMessenger (loopback only)")]
struct Args {
    /// Base URL of the API (the monolith, or the proxy in front of it).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Concurrent virtual users (seeded accounts user1..userN).
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Measured run time in seconds, ramp-up included.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Users start evenly over this many seconds.
    #[arg(long, default_value_t = 20)]
    ramp_up: u64,
    /// Mean think time between steps, milliseconds (exponentially distributed).
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    #[arg(long, value_enum, default_value = "chat")]
    scenario: Scenario,
    /// E-mail domain and password of the seeded accounts.
    #[arg(long, default_value = "seed.brainmessenger.test")]
    domain: String,
    #[arg(long, default_value = "seed-password")]
    password: String,
    /// First seeded user number (to keep two runs on disjoint accounts).
    #[arg(long, default_value_t = 1)]
    first_user: u32,
    /// Per-request timeout in seconds (a timeout counts as an error).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// A name for this setup in the report (e.g. "monolith direct").
    #[arg(long, default_value = "run")]
    label: String,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Sign every user in before the measured run (a few at a time), so the run measures the
    /// scenario's steps, not a sign-in storm: bcrypt at cost 10 for every user at once saturates
    /// a small machine for the whole ramp-up.
    #[arg(long)]
    login_first: bool,
    /// delivery: messages per second, all pairs together.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// delivery: sender/receiver pairs (seeded users first_user.. first_user+2*pairs-1).
    #[arg(long, default_value_t = 50)]
    pairs: u32,
    /// delivery: where the receivers subscribe (default: --target), e.g. the other side.
    #[arg(long)]
    sub_target: Option<String>,
    /// push: the FCM fake, whose record of received pushes is the finish line.
    #[arg(long, default_value = "http://127.0.0.1:4010")]
    fakes: String,
}

/// One Markdown row of the delivery and push tables: count, rate and latency percentiles of a
/// histogram recorded in `units_per_ms` (1000: microseconds, 1: milliseconds).
pub(crate) fn latency_row(what: &str, h: &Histogram<u64>, wall: f64, units_per_ms: f64) -> String {
    let ms = |v: u64| v as f64 / units_per_ms;
    format!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        h.len(),
        h.len() as f64 / wall,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// Latency and outcome per scenario step.
#[derive(Default)]
struct Stats {
    steps: BTreeMap<&'static str, Step>,
}

struct Step {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Stats {
    fn record(&mut self, step: &'static str, took: Duration, error: Option<String>) {
        let s = self.steps.entry(step).or_insert_with(|| Step {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            errors: 0,
            first_error: None,
        });
        s.hist.saturating_record(took.as_micros().max(1) as u64);
        if let Some(e) = error {
            s.errors += 1;
            s.first_error.get_or_insert(e);
        }
    }
}

struct Vu {
    http: reqwest::Client,
    base: String,
    stats: Arc<Mutex<Stats>>,
    access: String,
    refresh: String,
    rng: u64,
}

impl Vu {
    fn rand(&mut self) -> f64 {
        // xorshift64*: think times only need to be spread, not secure
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends one request, records it under `step`, returns the JSON body when the step succeeded.
    async fn call(&mut self, step: &'static str, method: reqwest::Method, path: &str, body: Option<Value>, auth: bool) -> Option<Value> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if auth {
            req = req.bearer_auth(&self.access);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let start = Instant::now();
        let result = async {
            let res = req.send().await.map_err(|e| format!("transport: {e}"))?;
            let status = res.status();
            let bytes = res.bytes().await.map_err(|e| format!("body: {e}"))?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])));
            }
            // GraphQL reports errors inside a 200
            if let Some(errs) = v.get("errors") {
                return Err(format!("GraphQL errors: {}", errs.to_string().chars().take(200).collect::<String>()));
            }
            Ok(v)
        }
        .await;
        let took = start.elapsed();
        let (value, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        self.stats.lock().unwrap().record(step, took, error);
        value
    }

    async fn gql(&mut self, step: &'static str, query: &str, variables: Value) -> Option<Value> {
        self.call(step, reqwest::Method::POST, "/graphql", Some(json!({ "query": query, "variables": variables })), true)
            .await
            .map(|v| v["data"].clone())
    }

    async fn think(&mut self, mean: Duration, deadline: Instant) {
        let wait = mean.mul_f64(-(1.0 - self.rand()).ln()).min(mean * 5);
        tokio::time::sleep_until((Instant::now() + wait).min(deadline).into()).await;
    }
}

async fn run_user(
    n: u32,
    args: Arc<Args>,
    http: reqwest::Client,
    stats: Arc<Mutex<Stats>>,
    start_at: Instant,
    deadline: Instant,
    tokens: Option<(String, String)>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let (access, refresh) = tokens.unwrap_or_default();
    let mut vu = Vu { http, base: args.target.clone(), stats, access, refresh, rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(n) };
    let email = format!("user{n}@{}", args.domain);
    let think = Duration::from_millis(args.think_ms);
    // log in (again after a failure, a second later)
    while Instant::now() < deadline && vu.access.is_empty() {
        let body = json!({ "email": email, "password": args.password });
        if let Some(v) = vu.call("POST /auth/login", reqwest::Method::POST, "/auth/login", Some(body), false).await {
            vu.access = v["accessToken"].as_str().unwrap_or_default().to_string();
            vu.refresh = v["refreshToken"].as_str().unwrap_or_default().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut i = 0u64;
    while Instant::now() < deadline && !vu.access.is_empty() {
        i += 1;
        match args.scenario {
            Scenario::Chat => {
                let chats = vu.gql("graphql chats", "query { chats { id } }", json!({})).await;
                let ids: Vec<String> = chats
                    .and_then(|d| d["chats"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_string))
                    .collect();
                vu.think(think, deadline).await;
                if ids.is_empty() {
                    continue;
                }
                let chat = ids[(vu.rand() * ids.len() as f64) as usize % ids.len()].clone();
                vu.gql(
                    "graphql messages",
                    "query($chatId: ID!) { messages(chatId: $chatId, first: 20) { edges { node { id body } } pageInfo { hasNextPage } } }",
                    json!({ "chatId": chat }),
                )
                .await;
                vu.think(think, deadline).await;
                vu.gql(
                    "graphql sendMessage",
                    "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
                    json!({ "input": { "chatId": chat, "body": format!("load message {i} from user {n}"), "clientMessageId": uuid::Uuid::new_v4().to_string() } }),
                )
                .await;
                if i % 5 == 0 {
                    vu.call("GET /auth/me", reqwest::Method::GET, "/auth/me", None, true).await;
                }
            }
            Scenario::Notifications => {
                if i == 1 {
                    let device = json!({ "token": format!("load-device-{n}"), "platform": "android" });
                    vu.call("POST /notifications/devices", reqwest::Method::POST, "/notifications/devices", Some(device), true).await;
                }
                vu.call("GET /notifications/unread-count", reqwest::Method::GET, "/notifications/unread-count", None, true).await;
                vu.think(think, deadline).await;
                let list = vu.call("GET /notifications", reqwest::Method::GET, "/notifications?limit=20", None, true).await;
                let unread = list
                    .as_ref()
                    .and_then(|l| l["items"].as_array())
                    .and_then(|items| items.iter().find(|n| n["readAt"].is_null()))
                    .and_then(|n| n["id"].as_str().map(str::to_string));
                vu.think(think, deadline).await;
                if let Some(id) = unread {
                    let path = format!("/notifications/{id}/read");
                    vu.call("POST /notifications/:id/read", reqwest::Method::POST, &path, None, true).await;
                }
                if i % 5 == 0 {
                    vu.call("POST /notifications/read-all", reqwest::Method::POST, "/notifications/read-all", None, true).await;
                }
                let chats = vu.gql("graphql chats", "query { chats { id } }", json!({})).await;
                let first = chats
                    .and_then(|d| d["chats"].as_array().and_then(|c| c.first().cloned()))
                    .and_then(|c| c["id"].as_str().map(str::to_string));
                if let Some(chat) = first {
                    vu.gql(
                        "graphql sendMessage",
                        "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
                        json!({ "input": { "chatId": chat, "body": format!("load message {i} from user {n}"), "clientMessageId": uuid::Uuid::new_v4().to_string() } }),
                    )
                    .await;
                }
            }
            Scenario::Delivery | Scenario::Push => unreachable!("delivery and push run on their own (delivery.rs, push.rs)"),
            Scenario::Auth => {
                vu.call("GET /auth/me", reqwest::Method::GET, "/auth/me", None, true).await;
                vu.think(think, deadline).await;
                let body = json!({ "refreshToken": vu.refresh });
                if let Some(v) = vu.call("POST /auth/refresh", reqwest::Method::POST, "/auth/refresh", Some(body), false).await {
                    vu.access = v["accessToken"].as_str().unwrap_or_default().to_string();
                    vu.refresh = v["refreshToken"].as_str().unwrap_or_default().to_string();
                }
            }
        }
        vu.think(think, deadline).await;
    }
}

fn loopback(url: &str) -> Result<()> {
    let u = reqwest::Url::parse(url).context("--target is not a URL")?;
    match u.host_str() {
        Some("localhost") => Ok(()),
        Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()) => Ok(()),
        Some("[::1]") | Some("::1") => Ok(()),
        _ => bail!("--target {url}: load tests run against loopback only"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    loopback(&args.target)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(args.timeout)).pool_max_idle_per_host(args.users as usize).build()?;
    if args.scenario == Scenario::Delivery {
        if let Some(s) = &args.sub_target {
            loopback(s)?;
        }
        return delivery::run(args, http).await;
    }
    if args.scenario == Scenario::Push {
        loopback(&args.fakes)?;
        return push::run(args, http).await;
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut tokens: Vec<Option<(String, String)>> = vec![None; args.users as usize];
    if args.login_first {
        let signed_in = Arc::new(Mutex::new(Stats::default()));
        let started = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(4));
        let mut logins = Vec::new();
        for k in 0..args.users {
            let (http, args, gate, signed_in) = (http.clone(), args.clone(), gate.clone(), signed_in.clone());
            logins.push(tokio::spawn(async move {
                let _slot = gate.acquire_owned().await.ok()?;
                let mut vu =
                    Vu { http, base: args.target.clone(), stats: signed_in, access: String::new(), refresh: String::new(), rng: 1 };
                let body = json!({ "email": format!("user{}@{}", args.first_user + k, args.domain), "password": args.password });
                let v = vu.call("POST /auth/login", reqwest::Method::POST, "/auth/login", Some(body), false).await?;
                Some((v["accessToken"].as_str()?.to_string(), v["refreshToken"].as_str()?.to_string()))
            }));
        }
        for (k, t) in logins.into_iter().enumerate() {
            tokens[k] = t.await?;
        }
        let ok = tokens.iter().filter(|t| t.is_some()).count();
        eprintln!("signed {ok} of {} users in first, in {:.1} s (not measured)", args.users, started.elapsed().as_secs_f64());
    }
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(args.duration);
    let mut tasks = Vec::with_capacity(args.users as usize);
    for k in 0..args.users {
        let offset = Duration::from_secs(args.ramp_up).mul_f64(f64::from(k) / f64::from(args.users.max(1)));
        let n = args.first_user + k;
        let t = tokens[k as usize].take();
        tasks.push(tokio::spawn(run_user(n, args.clone(), http.clone(), stats.clone(), begin + offset, deadline, t)));
    }
    for t in tasks {
        t.await?;
    }
    let wall = begin.elapsed().as_secs_f64();
    let stats = stats.lock().unwrap();
    report(&args, &stats, wall)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn report(args: &Args, stats: &Stats, wall: f64) -> Result<()> {
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut rows = Vec::new();
    let mut total_err = 0;
    println!(
        "\n{} — {} users, {:?} scenario, {} s (ramp-up {} s), think {} ms, target {}\n",
        args.label, args.users, args.scenario, args.duration, args.ramp_up, args.think_ms, args.target
    );
    println!("| step | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let line = |name: &str, h: &Histogram<u64>, errors: u64| {
        println!(
            "| {name} | {} | {errors} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            h.len(),
            h.len() as f64 / wall,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.95)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
        json!({ "step": name, "requests": h.len(), "errors": errors, "rps": h.len() as f64 / wall,
                "p50_ms": ms(h.value_at_quantile(0.50)), "p95_ms": ms(h.value_at_quantile(0.95)),
                "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max()) })
    };
    for (name, s) in &stats.steps {
        rows.push(line(name, &s.hist, s.errors));
        all.add(&s.hist)?;
        total_err += s.errors;
    }
    rows.push(line("**all**", &all, total_err));
    for (name, s) in &stats.steps {
        if let Some(e) = &s.first_error {
            println!("\nfirst error in {name}: {e}");
        }
    }
    if let Some(path) = &args.json {
        let doc = json!({ "label": args.label, "target": args.target, "users": args.users, "scenario": format!("{:?}", args.scenario),
                          "duration_s": args.duration, "wall_s": wall, "steps": rows });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
