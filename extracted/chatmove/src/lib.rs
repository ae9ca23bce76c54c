//! `bm-chat move`: moves chat data onto the user-id shards (from the monolith's tables) and
//! between shards (adding one), online, resumable and verified — docs/chat-sharding.md.
//!
//! * [`pgoutput`]: PostgreSQL's logical replication messages, decoded (pure);
//! * [`plan`]: which buckets leave which database for which shard, and the SQL of each stage (pure);
//! * [`mover`]: the stages against the databases, the lock, the state, status and abort;
//! * [`cli`]: the command line.

pub mod cli;
pub mod mover;
pub mod pgoutput;
pub mod plan;
pub mod routing;
#[doc(hidden)]
pub mod testkit;
