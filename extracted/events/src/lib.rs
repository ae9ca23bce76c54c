//! BrainMessenger's domain events on Kafka (docs/events.md): what they are
//! ([`event`], pure), how a service writes them in its transaction ([`outbox`]), how they reach
//! the broker ([`relay`]), the Kafka client settings every service shares ([`kafka`]), and what a
//! push for a new message says ([`push`]).

pub mod event;
pub mod kafka;
pub mod outbox;
pub mod push;
pub mod relay;
pub mod testkit;

pub use event::MessageSent;
pub use kafka::KafkaConfig;
