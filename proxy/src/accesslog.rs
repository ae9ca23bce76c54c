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

impl Write for LineWriter {
    /// Appends one formatted line (tracing-subscriber writes each event with one call), or drops
    /// it if the buffer is full.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + line.len() > self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        buf.extend_from_slice(line);
        if self.urgent || buf.len() >= FLUSH_AT {
            self.shared.urgent.store(true, Ordering::Relaxed);
            self.shared.wake.notify_one();
        }
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
