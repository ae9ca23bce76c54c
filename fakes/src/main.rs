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
    /// Serve HTTPS with this certificate (PEM; needs --tls-key), as the real APIs do.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PKCS#8 PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Write a throwaway CA and a certificate for 127.0.0.1/localhost it signed (ca.pem,
    /// cert.pem, key.pem) into DIR, and exit.
    #[arg(long, value_name = "DIR")]
    write_test_pki: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    if let Some(dir) = &cli.write_test_pki {
        return fakes::tls::TestPki::generate()?.write(dir);
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    let addr = listener.local_addr()?;
    let scheme = if cli.tls_cert.is_some() { "https" } else { "http" };
    let state = fakes::FakeState::new(fakes::Settings {
        public_base: format!("{scheme}://{addr}"),
        stripe_webhook_url: cli.stripe_webhook_url,
        stripe_webhook_secret: cli.stripe_webhook_secret,
    });
    match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let listener = fakes::tls::TlsListener::new(listener, &std::fs::read(cert)?, &std::fs::read(key)?)?;
            println!("listening on https://{addr}");
            fakes::run(listener, state, shutdown()).await
        }
        _ => {
            println!("listening on http://{addr}");
            fakes::run(listener, state, shutdown()).await
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
