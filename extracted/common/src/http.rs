//! Outbound HTTP(S) for the services: the third-party APIs (Google, Gmail, FCM, Stripe), the
//! JWKS, each other.
//!
//! One TLS stack for the workspace: OpenSSL (through reqwest's native-tls), the library Pingora
//! and the auth service's signer already use. Certificates are checked against the system's CA
//! store plus, when `EXTRA_CA_CERTS` names a PEM file, the CAs in it (a company CA, or the
//! self-signed CA of a test fake) — the same idea as Node's `NODE_EXTRA_CA_CERTS` for the
//! monolith. Every client a service makes comes from [`OutboundTls::client_builder`], so none
//! forgets the extra CAs.

use crate::config::Env;

/// The CAs trusted on top of the system's.
#[derive(Clone, Default)]
pub struct OutboundTls {
    extra_ca: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for OutboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutboundTls({} extra CA certificates)", self.extra_ca.len())
    }
}

impl OutboundTls {
    /// From `EXTRA_CA_CERTS` (a PEM file with one or more certificates); a file that cannot be
    /// read or holds no certificate is a configuration problem.
    pub fn from_env(env: &mut Env) -> OutboundTls {
        let Some(path) = env.optional("EXTRA_CA_CERTS") else { return OutboundTls::default() };
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|pem| Self::from_pem(&pem)) {
            Ok(tls) => tls,
            Err(e) => {
                env.problem(format!("EXTRA_CA_CERTS={path}: {e}"));
                OutboundTls::default()
            }
        }
    }

    /// From the text of a PEM bundle.
    pub fn from_pem(pem: &[u8]) -> Result<OutboundTls, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the file".into());
        }
        Ok(OutboundTls { extra_ca: certs })
    }

    /// A client builder that trusts the system's CAs and the extra ones.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_native().tls_certs_merge(self.extra_ca.iter().cloned())
    }
}
