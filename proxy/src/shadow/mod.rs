//! Shadow traffic and response diffing.
//!
//! Pure parts (this foundation): [`path`] (field paths and rule patterns), [`diff`]
//! (comparing two answers), [`noise`] (learning what differs between two monolith answers),
//! [`template`] (grouping URLs into endpoints), [`record`] (redacted records, summaries, corpus
//! lines), [`report`] (Markdown, JUnit, JSON). I/O on the serving path: [`tee`] (the off-path
//! copy) and [`store`] (where records go: JSONL files or Postgres). The command-line readers
//! (report, corpus, replay) live in `crate::cli`.

pub mod diff;
pub mod noise;
pub mod path;
pub mod record;
pub mod report;
pub mod store;
pub mod tee;
pub mod template;

#[cfg(test)]
mod tests;

pub use diff::{compare, DiffKind, Difference, Exchange, Place, Rules, SortBy, ValueType};
pub use noise::NoiseModel;
pub use path::{FieldPath, PathPattern};
pub use template::endpoint_template;
