//! `bm-chat move`: moves chat data onto the user-id shards (from the monolith's tables) and
//! between shards (adding one), online, resumable and verified — docs/chat-sharding.md.
//!
//! * [`pgoutput`]: PostgreSQL's logical replication messages, decoded (pure);
//! * [`plan`]: which buckets leave which database for which shard, and the SQL of each stage (pure);
//! * [`mover`]: the stages against the databases, the lock, the state, abort;
//! * [`routing`]: where each bucket's reads and writes go, as the move's state says (what the
//!   chat service follows);
//! * [`status`]: what `bm-chat move status` shows;
//! * [`cli`]: the command line;
//! * `testkit`: databases, a seeded monolith and a routing-aware writer for the tests and the
//!   rehearsal.

pub mod cli;
pub mod mover;
pub mod pgoutput;
pub mod plan;
pub mod routing;
pub mod status;
#[doc(hidden)]
pub mod testkit;
