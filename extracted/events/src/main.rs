//! `bm-events`: operator commands for the event stream.
//!
//! - `bm-events ensure-topics`: creates the topics the stack needs (`TOPICS`) on the brokers of
//!   `KAFKA_BROKERS`/`KAFKA_CONFIG`; existing topics are left alone. Brokers here do not
//!   auto-create topics (and production ones should not).

use std::process::ExitCode;

use bm_common::config::Env;
use bm_events::event::TOPICS;
use bm_events::KafkaConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Operator commands for BrainMessenger's Kafka topics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the topics that do not exist yet (KAFKA_BROKERS, KAFKA_CONFIG)
    EnsureTopics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut env = Env::from_process();
    let kafka = KafkaConfig::from_env(&mut env, "bm-events");
    if kafka.is_none() {
        env.problem("KAFKA_BROKERS is not set (host:port[,host:port…])");
    }
    if let Err(e) = env.finish() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let kafka = kafka.expect("checked above");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match cli.command {
        Command::EnsureTopics => match rt.block_on(kafka.ensure_topics(TOPICS)) {
            Ok(created) => {
                for (name, parts) in TOPICS {
                    let what = if created.iter().any(|c| c == name) { "created" } else { "exists" };
                    println!("{name}\t{parts} partitions\t{what}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bm-events: creating topics on {}: {e}", kafka.brokers);
                ExitCode::FAILURE
            }
        },
    }
}
