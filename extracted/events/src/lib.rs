//! BrainMessenger's domain events on Kafka (docs/events.md): what they are
//! ([`event`], pure), how a service writes them in its transaction ([`outbox`]), how they reach
//! the broker ([`relay`]), and the Kafka client settings every service shares ([`kafka`]).

pub mod event;
pub mod kafka;
pub mod outbox;
pub mod relay;

pub use event::MessageSent;
pub use kafka::KafkaConfig;
