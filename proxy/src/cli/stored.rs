//! Reading a shadow store, whichever back end holds it: `strangler report` and `strangler
//! corpus` take a folder of JSONL files or a Postgres database and read the same records.

use std::path::PathBuf;

use crate::shadow::record::{Record, Summary};
use crate::shadow::store::{jsonl, postgres, Filter};

/// A store to read.
pub enum StoredRecords {
    /// A JSONL store folder (or one file).
    Jsonl(PathBuf),
    Postgres(Box<postgres::Database>),
}

impl StoredRecords {
    /// Calls `f` for every record `filter` admits; returns (records read, lines that did not
    /// parse).
    pub async fn for_each(&self, filter: &Filter, f: impl FnMut(Record)) -> anyhow::Result<(usize, usize)> {
        match self {
            StoredRecords::Jsonl(path) => {
                Ok(jsonl::for_each(path, filter, f).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?)
            }
            StoredRecords::Postgres(db) => postgres::for_each(db, filter, f).await,
        }
    }

    /// Every admitted record as one summary, with the counts of [`Self::for_each`].
    pub async fn summarize(&self, filter: &Filter) -> anyhow::Result<(Summary, usize, usize)> {
        let mut summary = Summary::default();
        let (read, bad) = self.for_each(filter, |r| summary.add(&r)).await?;
        Ok((summary, read, bad))
    }

    /// A route's recorded requests as corpus lines, in the order they were recorded, with the
    /// requests of the `setup` routes among them marked as setup (a session's sign-in).
    pub async fn corpus(&self, route: &str, setup: &[String]) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let filter = Filter { since: None, route: None };
        self.for_each(&filter, |r| {
            if r.route == route {
                out.push(r.corpus_line(false));
            } else if setup.contains(&r.route) {
                out.push(r.corpus_line(true));
            }
        })
        .await?;
        Ok(out)
    }
}
