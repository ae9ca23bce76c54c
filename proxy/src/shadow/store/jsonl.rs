//! The embedded comparison store: JSONL files in a folder, rotated by size, bounded in total.
//!
//! One writer task appends the records the tee offers (see the parent module). When the current
//! file passes a quarter of `max_bytes` it is rotated (`shadow-<n>.jsonl`), and the oldest files
//! are deleted so the folder stays under `max_bytes`.

use std::path::{Path, PathBuf};

use std::future::Future;
use std::pin::Pin;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{Filter, Sink};
use crate::metrics as m;
use crate::shadow::record::Record;

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

/// Reads every record in a store folder (or one JSONL file) that `filter` admits, oldest first.
/// Lines that do not parse (a torn last line after a crash) are counted in the second number and
/// skipped. Blocking (file I/O): for the command line.
pub fn for_each(path: &Path, filter: &Filter, mut f: impl FnMut(Record)) -> std::io::Result<(usize, usize)> {
    let paths = if path.is_dir() { files(path)? } else { vec![path.to_path_buf()] };
    let (mut read, mut bad) = (0, 0);
    for p in paths {
        for line in std::fs::read_to_string(&p)?.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Record>(line) {
                Ok(r) if !filter.admits(&r) => {}
                Ok(r) => {
                    f(r);
                    read += 1;
                }
                Err(_) => bad += 1,
            }
        }
    }
    Ok((read, bad))
}

/// Records written together at most (what is queued when the writer wakes), and their bytes.
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
/// How long the writer lets records gather after the first of a batch: at most 100 wake-ups a
/// second, and well inside the queue (`STORE_QUEUE`, 1024) at the ~12k comparisons a second one
/// worker makes (100 ms was tried: the queue overflowed at every-request shadowing).
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// The JSONL back end's writer: appends to `dir`, keeping it under `max_bytes`.
pub struct StoreWriter {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Sink for StoreWriter {
    fn run(self: Box<Self>, rx: mpsc::Receiver<Record>, stop: oneshot::Receiver<()>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin((*self).write(rx, stop))
    }
}

impl StoreWriter {
    /// Appends records until every sender is gone or `stop` fires; on stop, what is already
    /// queued is still written.
    pub async fn write(self, mut rx: mpsc::Receiver<Record>, mut stop: oneshot::Receiver<()>) {
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
        // (a oneshot must not be polled again once it has fired)
        let mut stopping = false;
        loop {
            let record = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    rx.close();
                    match rx.recv().await { Some(r) => r, None => break }
                }
            };
            if !stopping {
                // let a batch gather: at a sampled route's pace every record woke this task (a
                // thread wake-up each); what arrives meanwhile is not waited for by anyone
                tokio::select! {
                    _ = tokio::time::sleep(GATHER) => {}
                    _ = &mut stop => {
                        stopping = true;
                        rx.close();
                    }
                }
            }
            // with it, whatever else is already queued (up to a bound): one write and one flush
            // for the lot, not one per record through the blocking pool
            let mut line = Vec::with_capacity(4096);
            let mut queued = Some(record);
            let mut taken = 0;
            while let Some(r) = queued.take() {
                if let Ok(l) = serde_json::to_vec(&r) {
                    line.extend_from_slice(&l);
                    line.push(b'\n');
                }
                taken += 1;
                if taken < BATCH_RECORDS && line.len() < BATCH_BYTES {
                    queued = rx.try_recv().ok();
                }
            }
            if line.is_empty() {
                continue;
            }
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
                // Flushed per batch: `strangler report` may read the store while the proxy runs.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` records queued before the writer starts (it takes them in batches), then the senders
    /// gone: the writer drains and ends.
    async fn write_queued(dir: &Path, max_bytes: u64, n: usize) {
        let (tx, rx) = mpsc::channel(n);
        for i in 0..n {
            tx.try_send(Record { request_id: format!("req-{i}"), ..Record::sample("r", "GET", &format!("/m/{i}")) }).unwrap();
        }
        drop(tx);
        let (_stop_tx, stop) = oneshot::channel();
        StoreWriter { dir: dir.to_path_buf(), max_bytes }.write(rx, stop).await;
    }

    #[tokio::test]
    async fn records_written_in_batches_come_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * BATCH_RECORDS + 17;
        write_queued(dir.path(), 1 << 30, n).await;
        let mut ids = Vec::new();
        let (read, bad) = for_each(dir.path(), &Filter::default(), |r| ids.push(r.request_id)).unwrap();
        assert_eq!((read, bad), (n, 0));
        assert_eq!(ids, (0..n).map(|i| format!("req-{i}")).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn batches_still_rotate_and_keep_the_folder_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        write_queued(dir.path(), max, 2000).await;
        let all = files(dir.path()).unwrap();
        assert!(all.len() > 1, "rotated: {all:?}");
        let total: u64 = all.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        // bounded by max_bytes plus the file being written (a batch may overshoot its quarter)
        let last = std::fs::metadata(all.last().unwrap()).unwrap().len();
        assert!(total <= max + last, "{total} bytes kept for a bound of {max}");
        // what is kept is the newest records, whole
        let mut ids = Vec::new();
        let (_, bad) = for_each(dir.path(), &Filter::default(), |r| ids.push(r.request_id)).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(ids.last().map(String::as_str), Some("req-1999"));
    }
}
