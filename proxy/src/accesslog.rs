//! The proxy's log output: every line — one access line per request (`tracing` target
//! [`TARGET`]) and the rare others (reloads, breakers, errors) — is formatted on the thread that
//! logs it and appended to a shared buffer; a thread of its own writes the buffer to stderr when
//! it passes [`FLUSH_AT`] bytes or every [`FLUSH_EVERY`] — many lines per `write(2)`, no channel
//! operation or wake-up per line. A worker never waits for the log: while the writer is behind
//! (a slow disk, a blocked pipe), access lines are dropped once [`CAPACITY`] bytes wait, other
//! lines only past twice that, each counted (`strangler_log_lines_dropped_total{kind}`), never
//! waited for. (Writing the other lines to stderr directly blocked a worker for good once a
//! stalled reader had filled the pipe: Pingora logs an error now and then under load.)
//!
//! (tracing-appender's non-blocking writer was tried first: a channel send per line and a writer
//! thread that spins before it sleeps cost 9 µs of CPU per request on this 2-core machine —
//! docs/benchmarks.md.)

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The `tracing` target of access lines.
pub const TARGET: &str = "access";
/// Bytes that may wait for the writer before new lines are dropped.
pub const CAPACITY: usize = 4 << 20;
/// Bytes that wake the writer at once.
pub const FLUSH_AT: usize = 64 << 10;
/// The longest a line waits for the writer when traffic is light.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

static DROPPED_ACCESS: AtomicU64 = AtomicU64::new(0);
static DROPPED_OTHER: AtomicU64 = AtomicU64::new(0);

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    /// set (under the lock) when the buffer must be written now
    urgent: AtomicBool,
    stop: AtomicBool,
}

/// The buffered log: [`access`](Self::access) and [`other`](Self::other) are the writers of the
/// two `tracing_subscriber` layers.
#[derive(Clone)]
pub struct AccessLog(Arc<Shared>);

/// One layer's writer: lines up to `limit` buffered bytes, dropped (and counted) past it.
#[derive(Clone)]
pub struct LineWriter {
    shared: Arc<Shared>,
    limit: usize,
    dropped: &'static AtomicU64,
    /// wake the writer at once (rare lines an operator is waiting for)
    urgent: bool,
}

impl AccessLog {
    /// For access lines: dropped first.
    pub fn access(&self) -> LineWriter {
        LineWriter { shared: self.0.clone(), limit: CAPACITY, dropped: &DROPPED_ACCESS, urgent: false }
    }

    /// For every other line: dropped only past twice the access lines' limit; written at once.
    pub fn other(&self) -> LineWriter {
        LineWriter { shared: self.0.clone(), limit: 2 * CAPACITY, dropped: &DROPPED_OTHER, urgent: true }
    }
}

/// Flushes what is left and stops the writer thread when dropped: keep it until the process ends.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The access log writing to `out` (stderr in the binary), and its guard.
pub fn start(out: impl Write + Send + 'static) -> (AccessLog, Guard) {
    let shared = Arc::new(Shared {
        buf: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
        wake: Condvar::new(),
        urgent: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new().name("strangler-access-log".into()).spawn(move || writer(s, out)).expect("a thread");
    (AccessLog(shared.clone()), Guard { shared, thread: Some(thread) })
}

fn writer(s: Arc<Shared>, mut out: impl Write) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT * 2);
    loop {
        let stopping = {
            let guard = s.buf.lock().unwrap_or_else(|e| e.into_inner());
            let (mut guard, _) = s
                .wake
                .wait_timeout_while(guard, FLUSH_EVERY, |_| !s.urgent.load(Ordering::Relaxed) && !s.stop.load(Ordering::Relaxed))
                .unwrap_or_else(|e| e.into_inner());
            s.urgent.store(false, Ordering::Relaxed);
            std::mem::swap(&mut *guard, &mut spare);
            s.stop.load(Ordering::Relaxed)
        };
        if !spare.is_empty() {
            // a failed write (stderr closed) loses these lines; nothing to report them to
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if stopping {
            return;
        }
    }
}

impl LineWriter {
    /// Appends one formatted line, or drops (and counts) it if the buffer is full.
    fn append(&self, line: &[u8]) {
        let mut buf = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + line.len() > self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(line);
        if self.urgent || buf.len() >= FLUSH_AT {
            self.shared.urgent.store(true, Ordering::Relaxed);
            self.shared.wake.notify_one();
        }
    }
}

impl Write for LineWriter {
    /// Appends one formatted line (tracing-subscriber writes each event with one call), or drops
    /// it if the buffer is full.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where access lines go without `tracing`'s formatting (installed by the binary), and whether
/// as JSON.
static DIRECT: std::sync::OnceLock<(LineWriter, bool)> = std::sync::OnceLock::new();

/// Access lines are formatted here, straight into the buffer, in the layout the `tracing`
/// layer for [`TARGET`] would give them (text or JSON) — still filtered by `STRANGLER_LOG`.
/// The generic path (event dispatch, two layers' filters, a field visitor per value, a writer
/// made per event) cost ~6 µs of the ~38 µs of CPU a proxied request takes (docs/benchmarks.md).
pub fn install_direct(log: &AccessLog, json: bool) {
    let _ = DIRECT.set((log.access(), json));
}

/// One request's access line.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub target_upstream: &'a str,
    pub mode: &'a str,
    pub side: &'a str,
    pub fallback: &'a str,
    pub status: u16,
    pub aborted: &'a str,
    pub upstream_status: u16,
    pub duration_ms: f64,
    pub client: Option<std::net::IpAddr>,
    pub error: Option<&'a dyn std::fmt::Display>,
}

thread_local! {
    /// the line being formatted, and the timestamp's text up to the second (for the second it is)
    static SCRATCH: std::cell::RefCell<(String, u64, String)> = const { std::cell::RefCell::new((String::new(), u64::MAX, String::new())) };
}

impl AccessLine<'_> {
    /// Logs the line: straight into the buffer if [`install_direct`] ran, else (a library user)
    /// through `tracing`.
    pub fn log(&self) {
        if !self.write_direct() {
            self.log_through_tracing();
        }
    }

    /// The same line as a `tracing` event (what the direct path stands in for).
    fn log_through_tracing(&self) {
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            route = %self.route,
            target_upstream = %self.target_upstream,
            mode = self.mode,
            side = self.side,
            fallback = self.fallback,
            status = self.status,
            aborted = self.aborted,
            upstream_status = self.upstream_status,
            duration_ms = self.duration_ms,
            client = %self.client.map(|ip| ip.to_string()).unwrap_or_default(),
            error = %self.error.map(|e| e.to_string()).unwrap_or_default(),
            "request"
        );
    }

    /// Writes the line if [`install_direct`] ran (nothing if access lines are filtered out);
    /// `false` when not installed.
    fn write_direct(&self) -> bool {
        let Some((writer, json)) = DIRECT.get() else { return false };
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return true;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        SCRATCH.with(|cell| {
            let (line, second, prefix) = &mut *cell.borrow_mut();
            if *second != now.as_secs() {
                *second = now.as_secs();
                prefix.clear();
                rfc3339_seconds(now.as_secs(), prefix);
            }
            line.clear();
            if *json {
                self.json(line, prefix, now.subsec_micros());
            } else {
                self.text(line, prefix, now.subsec_micros());
            }
            writer.append(line.as_bytes());
        });
        true
    }

    /// `tracing_subscriber::fmt`'s default layout without colours: `%` values as they are,
    /// strings quoted.
    fn text(&self, out: &mut String, prefix: &str, micros: u32) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "{prefix}.{micros:06}Z  INFO access: request request_id={} method={} path={} route={} target_upstream={} mode={:?} side={:?} \
             fallback={:?} status={} aborted={:?} upstream_status={} duration_ms={:?} client=",
            self.request_id,
            self.method,
            self.path,
            self.route,
            self.target_upstream,
            self.mode,
            self.side,
            self.fallback,
            self.status,
            self.aborted,
            self.upstream_status,
            self.duration_ms,
        );
        if let Some(ip) = self.client {
            let _ = write!(out, "{ip}");
        }
        out.push_str(" error=");
        if let Some(e) = self.error {
            let _ = write!(out, "{e}");
        }
        out.push('\n');
    }

    /// `tracing_subscriber::fmt`'s JSON layout with `flatten_event(true)`.
    fn json(&self, out: &mut String, prefix: &str, micros: u32) {
        use std::fmt::Write as _;
        fn string(out: &mut String, key: &str, value: &str) {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            // serde_json's escaping (a path or an error may hold quotes or control characters)
            out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into()));
        }
        let _ = write!(out, "{{\"timestamp\":\"{prefix}.{micros:06}Z\",\"level\":\"INFO\",\"message\":\"request\"");
        string(out, "request_id", self.request_id);
        string(out, "method", self.method);
        string(out, "path", self.path);
        string(out, "route", self.route);
        string(out, "target_upstream", self.target_upstream);
        string(out, "mode", self.mode);
        string(out, "side", self.side);
        string(out, "fallback", self.fallback);
        let _ = write!(out, ",\"status\":{}", self.status);
        string(out, "aborted", self.aborted);
        let _ = write!(out, ",\"upstream_status\":{},\"duration_ms\":{:?}", self.upstream_status, self.duration_ms);
        string(out, "client", &self.client.map(|ip| ip.to_string()).unwrap_or_default());
        string(out, "error", &self.error.map(|e| e.to_string()).unwrap_or_default());
        out.push_str(",\"target\":\"access\"}\n");
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a UNIX time, appended to `out`.
fn rfc3339_seconds(secs: u64, out: &mut String) {
    use std::fmt::Write as _;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // days to a civil date (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
}

/// Whether a log event or span is an access line.
pub fn is_access(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == TARGET
}

/// Access lines dropped so far.
pub fn dropped() -> u64 {
    DROPPED_ACCESS.load(Ordering::Relaxed)
}

/// Brings `strangler_log_lines_dropped_total` up to date (before `/metrics` renders).
pub fn publish_drops() {
    let m = crate::metrics::LOG_LINES_DROPPED_TOTAL;
    metrics::counter!(m, "kind" => "access").absolute(DROPPED_ACCESS.load(Ordering::Relaxed));
    metrics::counter!(m, "kind" => "other").absolute(DROPPED_OTHER.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_796_598_924, "2026-12-06T23:15:24"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            let mut got = String::new();
            rfc3339_seconds(secs, &mut got);
            assert_eq!(got, want, "{secs}");
        }
    }

    /// What `tracing_subscriber::fmt` writes for the same line as a `tracing` event, text or JSON.
    fn through_tracing(json: bool, line: &AccessLine) -> String {
        use tracing_subscriber::prelude::*;
        let sink = Sink::default();
        let writer = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
        let subscriber = tracing_subscriber::registry();
        let emit = || line.log_through_tracing();
        if json {
            tracing::subscriber::with_default(subscriber.with(layer.json().flatten_event(true)), emit);
        } else {
            tracing::subscriber::with_default(subscriber.with(layer), emit);
        }
        let got = sink.got.lock().unwrap().clone();
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn direct_access_lines_read_as_the_tracing_layers_would_write_them() {
        let error = "upstream \"chat\" closed the connection\n mid-body";
        let lines = [
            AccessLine {
                request_id: "0190f3a2-7b1c-7d2e-9f00-aa11bb22cc33",
                method: "POST",
                path: "/graphql",
                route: "chat",
                target_upstream: "chat",
                mode: "canary",
                side: "extracted",
                fallback: "",
                status: 200,
                aborted: "",
                upstream_status: 200,
                duration_ms: 1.234567,
                client: Some("127.0.0.1".parse().unwrap()),
                error: None,
            },
            AccessLine {
                request_id: "r-2",
                method: "GET",
                path: "/a \"quoted\" path",
                route: "(none)",
                target_upstream: "legacy",
                mode: "legacy",
                side: "legacy",
                fallback: "breaker_open",
                status: 502,
                aborted: "upstream",
                upstream_status: 0,
                duration_ms: 30000.0,
                client: None,
                error: Some(&error),
            },
        ];
        for line in &lines {
            // text: the same after the timestamp
            let mut direct = String::new();
            line.text(&mut direct, "2026-12-06T00:00:00", 0);
            let traced = through_tracing(false, line);
            let after_ts = |l: &str| l.split_once("Z ").map(|(_, rest)| rest.to_string()).unwrap_or_default();
            assert_eq!(after_ts(&direct), after_ts(&traced), "\ndirect: {direct}traced: {traced}");
            assert!(direct.starts_with("2026-12-06T00:00:00.000000Z  INFO access: request "), "{direct}");
            // JSON: the same object but for the time
            let mut direct = String::new();
            line.json(&mut direct, "2026-12-06T00:00:00", 0);
            assert!(direct.ends_with("}\n") && direct.matches('\n').count() == 1, "{direct}");
            let mut a: serde_json::Value = serde_json::from_str(&direct).unwrap();
            let mut b: serde_json::Value = serde_json::from_str(&through_tracing(true, line)).unwrap();
            assert_eq!(a["timestamp"], "2026-12-06T00:00:00.000000Z");
            a.as_object_mut().unwrap().remove("timestamp");
            b.as_object_mut().unwrap().remove("timestamp");
            assert_eq!(a, b);
        }
    }

    /// A writer that records what reached it, and can be held (a stalled reader).
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        hold: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _held = self.hold.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_reaches_the_output_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (log, guard) = start(sink.clone());
        let mut log = log.access();
        for i in 0..10_000 {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        let want: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks_the_caller() {
        let sink = Sink::default();
        let held = sink.hold.lock().unwrap();
        let (log, guard) = start(sink.clone());
        let (mut access, mut other) = (log.access(), log.other());
        let before = dropped();
        let line = [b'x'; 1000];
        // three times what the buffer holds: the writer is stuck on its first write at most
        for _ in 0..(3 * CAPACITY / line.len()) {
            access.write_all(&line).unwrap();
        }
        assert!(dropped() - before >= (CAPACITY / line.len()) as u64, "dropped {}", dropped() - before);
        // a rare line still fits while access lines are dropped
        other.write_all(b"circuit breaker opened\n").unwrap();
        drop(held);
        drop(guard);
        let got = sink.got.lock().unwrap();
        assert!(got.len() <= 2 * CAPACITY + 64);
        assert!(got.ends_with(b"circuit breaker opened\n"));
    }
}
