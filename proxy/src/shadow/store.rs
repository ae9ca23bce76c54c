//! The embedded comparison store: JSONL files in a folder, rotated by size, bounded in total.
//!
//! Records arrive on a bounded channel from the tee ([`offer`]); one writer task appends them.
//! When the current file passes a quarter of `max_bytes` it is rotated (`shadow-<n>.jsonl`), and
//! the oldest files are deleted so the folder stays under `max_bytes`. A full channel drops the
//! record and counts it: storage must never slow the proxy. [`StoreService`] runs this writer or
//! the Postgres one ([`super::pgstore`]) as a Pingora background service.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::warn;

use super::pgstore::PgWriter;
use super::record::{Record, Summary};
use crate::metrics as m;

/// Hands a record to the store writer without waiting: when the channel is full (the writer is
/// behind, or its database is down) the record is dropped and counted as `store_full`. Returns
/// whether it was queued.
pub fn offer(store: &mpsc::Sender<Record>, record: Record) -> bool {
    match store.try_send(record) {
        Ok(()) => true,
        Err(e) => {
            let record = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            metrics::counter!(m::SHADOW_DROPPED_TOTAL, "route" => record.route, "reason" => "store_full").increment(1);
            false
        }
    }
}

/// Files in the folder, oldest first.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("shadow-")?.strip_suffix(".jsonl")?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Reads every record in a store folder (or one JSONL file) into a summary. Lines that do not
/// parse (a torn last line after a crash) are counted and skipped.
pub fn summarize(path: &Path) -> std::io::Result<(Summary, usize, usize)> {
    summarize_since(path, None)
}

/// [`summarize`], counting only records made at or after `since_unix_ms`.
pub fn summarize_since(path: &Path, since_unix_ms: Option<u64>) -> std::io::Result<(Summary, usize, usize)> {
    let paths = if path.is_dir() { files(path)? } else { vec![path.to_path_buf()] };
    let mut summary = Summary::default();
    let (mut read, mut bad) = (0, 0);
    for p in paths {
        for line in std::fs::read_to_string(&p)?.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Record>(line) {
                Ok(r) if since_unix_ms.is_some_and(|since| r.ts_unix_ms < since) => {}
                Ok(r) => {
                    summary.add(&r);
                    read += 1;
                }
                Err(_) => bad += 1,
            }
        }
    }
    Ok((summary, read, bad))
}

pub struct StoreWriter {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// The writer of either store.
pub enum Writer {
    Jsonl(StoreWriter),
    Postgres(Box<PgWriter>),
}

/// The writer as a Pingora background service: it owns the receiving end and stops, after
/// writing what is queued, when the server shuts down.
pub struct StoreService {
    pub writer: std::sync::Mutex<Option<(Writer, mpsc::Receiver<Record>)>>,
}

impl StoreService {
    pub fn new(writer: Writer, rx: mpsc::Receiver<Record>) -> StoreService {
        StoreService { writer: std::sync::Mutex::new(Some((writer, rx))) }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StoreService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some((writer, rx)) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = match writer {
            Writer::Jsonl(w) => tokio::spawn(w.run(rx, stop_rx)),
            Writer::Postgres(w) => tokio::spawn(w.run(rx, stop_rx)),
        };
        let _ = shutdown.changed().await;
        let _ = stop_tx.send(());
        let _ = run.await;
    }
}

impl StoreWriter {
    /// Appends records until every sender is gone or `stop` fires; on stop, what is already
    /// queued is still written.
    pub async fn run(self, mut rx: mpsc::Receiver<Record>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => "open").increment(1);
            warn!(dir = %self.dir.display(), error = %e, "cannot create the shadow store; comparisons will not be stored");
            while rx.recv().await.is_some() {}
            return;
        }
        let rotate_at = (self.max_bytes / 4).max(4096);
        let mut n = files(&self.dir)
            .ok()
            .and_then(|f| f.last().and_then(|p| p.file_stem()?.to_str()?.strip_prefix("shadow-")?.parse::<u64>().ok()))
            .unwrap_or(0);
        let mut file: Option<(tokio::fs::File, u64)> = None;
        loop {
            let record = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = &mut stop => {
                    rx.close();
                    match rx.recv().await { Some(r) => r, None => break }
                }
            };
            let Ok(mut line) = serde_json::to_vec(&record) else { continue };
            line.push(b'\n');
            if file.as_ref().is_none_or(|(_, size)| *size >= rotate_at) {
                n += 1;
                let path = self.dir.join(format!("shadow-{n}.jsonl"));
                match tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await {
                    Ok(f) => file = Some((f, 0)),
                    Err(e) => {
                        metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => "open").increment(1);
                        warn!(path = %path.display(), error = %e, "cannot open a shadow store file");
                        continue;
                    }
                }
                self.trim().await;
            }
            if let Some((f, size)) = file.as_mut() {
                // Flushed per record: `strangler report` may read the store while the proxy runs.
                if let Err(e) = async {
                    f.write_all(&line).await?;
                    f.flush().await
                }
                .await
                {
                    metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => "write").increment(1);
                    warn!(error = %e, "cannot write a shadow record");
                } else {
                    *size += line.len() as u64;
                }
            }
        }
        if let Some((mut f, _)) = file {
            let _ = f.flush().await;
        }
    }

    /// Deletes the oldest files while the folder is over its bound.
    async fn trim(&self) {
        let Ok(all) = files(&self.dir) else { return };
        let mut sizes = Vec::new();
        for p in &all {
            sizes.push(tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0));
        }
        let mut total: u64 = sizes.iter().sum();
        for (p, size) in all.iter().zip(sizes) {
            if total <= self.max_bytes || all.last() == Some(p) {
                break;
            }
            let _ = tokio::fs::remove_file(p).await;
            total -= size;
        }
    }
}
