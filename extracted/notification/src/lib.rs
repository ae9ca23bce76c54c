//! BrainMessenger's notification service (extracted/notification/README.md): the REST routes
//! `/notifications/*` ([`rest`]), the push job on `message.sent` ([`job`]), its shadow against the
//! in-process pushes ([`shadow`]), and the switch of who pushes ([`owner`]).

pub mod config;
pub mod fcm;
pub mod job;
pub mod jsonb;
pub mod offsets;
pub mod owner;
pub mod rest;
pub mod shadow;
pub mod store;
