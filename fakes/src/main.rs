//! `fakes`: serves the stand-ins on one loopback port and prints `listening on http://ADDR`.
//! Point each service's base URL (STRIPE_API_BASE, FCM_API_BASE, GOOGLE_* URLs, GMAIL_API_BASE)
//! at that address.

use clap::Parser;

#[derive(Parser)]
#[command(name = "fakes", about = "Local fakes of Stripe, FCM, Google OAuth and Gmail")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:0", env = "FAKES_LISTEN")]
    listen: String,
    /// Where Stripe events are delivered (the monolith's or payment service's webhook).
    #[arg(long, env = "FAKES_STRIPE_WEBHOOK_URL")]
    stripe_webhook_url: Option<String>,
    /// The signing secret (`whsec_…`) shared with the webhook receiver.
    #[arg(long, env = "FAKES_STRIPE_WEBHOOK_SECRET", default_value = "whsec_test_secret")]
    stripe_webhook_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    let addr = listener.local_addr()?;
    let state = fakes::FakeState::new(fakes::Settings {
        public_base: format!("http://{addr}"),
        stripe_webhook_url: cli.stripe_webhook_url,
        stripe_webhook_secret: cli.stripe_webhook_secret,
    });
    println!("listening on http://{addr}");
    fakes::run(listener, state, shutdown()).await
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
