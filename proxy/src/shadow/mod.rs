//! Shadow traffic and response diffing.
//!
//! Pure parts (this foundation): [`path`] (field paths and rule patterns), [`diff`]
//! (comparing two answers), [`noise`] (learning what differs between two monolith answers),
//! [`template`] (grouping URLs into endpoints), [`record`] (redacted records and summaries),
//! [`report`] (Markdown, JUnit, JSON). I/O: [`tee`] (the off-path copy), [`store`] (JSONL, and
//! the writer service) and [`pgstore`] (Postgres, shared by several proxies).

pub mod diff;
pub mod noise;
pub mod path;
pub mod pgstore;
pub mod record;
pub mod replay;
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
