//! What only the command line does, kept off the serving path: reading stored comparisons into
//! reports and corpora ([`stored`]), replaying a corpus through two services ([`replay`]), and
//! the migration's progress from a running proxy or a store ([`plan`]).

pub mod plan;
pub mod replay;
pub mod stored;
