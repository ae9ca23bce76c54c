//! What only the command line does, kept off the serving path: reading stored comparisons into
//! reports and corpora ([`stored`]) and replaying a corpus through two services ([`replay`]).

pub mod replay;
pub mod stored;
