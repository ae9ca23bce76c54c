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
