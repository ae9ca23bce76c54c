//! HTTPS for the fakes, and a throwaway certificate authority for tests.
//!
//! The real APIs the fakes stand in for are only reachable over HTTPS; serving the fakes over
//! TLS (`fakes --tls-cert … --tls-key …`) checks that a service really speaks HTTPS to its
//! base URL and trusts the CA it is given (`EXTRA_CA_CERTS`, or an upstream's `ca_file`).
//! [`TestPki::generate`] makes a CA and a certificate for `127.0.0.1`/`localhost` signed by it,
//! in memory (OpenSSL, the workspace's one TLS stack); `fakes --write-test-pki DIR` writes them
//! as `ca.pem`, `cert.pem`, `key.pem` for scripts and tests in other languages.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use tokio::net::{TcpListener, TcpStream};

/// A CA and a server certificate it signed, as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    /// PKCS#8
    pub key_pem: String,
}

fn key() -> anyhow::Result<PKey<Private>> {
    Ok(PKey::from_rsa(Rsa::generate(2048)?)?)
}

fn cert(subject: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> anyhow::Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", subject)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(2)?)?;
    match issuer {
        None => {
            b.set_issuer_name(&name)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
            b.sign(key, MessageDigest::sha256())?;
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name())?;
            let san = SubjectAlternativeName::new().ip("127.0.0.1").dns("localhost").build(&b.x509v3_context(Some(ca), None))?;
            b.append_extension(san)?;
            b.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build()?)?;
            b.sign(ca_key, MessageDigest::sha256())?;
        }
    }
    Ok(b.build())
}

impl TestPki {
    pub fn generate() -> anyhow::Result<TestPki> {
        let (ca_key, server_key) = (key()?, key()?);
        let ca = cert("strangler test CA", &ca_key, None)?;
        let server = cert("localhost", &server_key, Some((&ca, &ca_key)))?;
        Ok(TestPki {
            ca_pem: String::from_utf8(ca.to_pem()?)?,
            cert_pem: String::from_utf8(server.to_pem()?)?,
            key_pem: String::from_utf8(server_key.private_key_to_pem_pkcs8()?)?,
        })
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, pem) in [("ca.pem", &self.ca_pem), ("cert.pem", &self.cert_pem), ("key.pem", &self.key_pem)] {
            std::fs::write(dir.join(name), pem).with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        Ok(())
    }
}

/// A TCP listener whose connections are TLS (for `axum::serve`). Handshakes that fail or take
/// longer than 10 s are dropped.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_native_tls::TlsAcceptor,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<TlsListener> {
        let identity = native_tls::Identity::from_pkcs8(cert_pem, key_pem).context("a PEM certificate and PKCS#8 key")?;
        let acceptor = native_tls::TlsAcceptor::new(identity)?;
        Ok(TlsListener { tcp, acceptor: acceptor.into() })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_native_tls::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
