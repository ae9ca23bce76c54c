//! The HTTP clients the proxy itself uses — shadow copies and health checks — with the TLS
//! trust each upstream's configuration gives it: its `ca_file` when it has one (the same
//! certificates Pingora checks its connections against), else the system's CA store. TLS is
//! OpenSSL throughout (Pingora's connector and reqwest's native-tls).
//!
//! One client per distinct CA set, made on first use and kept (keyed by the certificates'
//! digest, so a reload that changes the file gets a new client).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Upstream;

pub struct Clients {
    /// for upstreams without `ca_file`: the system's CAs
    system: reqwest::Client,
    /// by the digest of an upstream's CA certificates
    // A std mutex: held for a map lookup, never across an `.await`.
    by_ca: Mutex<HashMap<String, reqwest::Client>>,
    max_idle_per_host: usize,
}

fn builder(max_idle_per_host: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_native()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(max_idle_per_host)
}

impl Clients {
    pub fn new(max_idle_per_host: usize) -> Clients {
        Clients {
            system: builder(max_idle_per_host).build().expect("a client with the system's CAs builds"),
            by_ca: Mutex::default(),
            max_idle_per_host,
        }
    }

    /// The client to reach `upstream` with.
    pub fn for_upstream(&self, upstream: &Upstream) -> reqwest::Client {
        let Some(ca) = upstream.ca.as_ref().filter(|_| upstream.tls) else { return self.system.clone() };
        let mut map = self.by_ca.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(ca.digest.clone())
            .or_insert_with(|| {
                let certs = ca.der.iter().filter_map(|d| reqwest::Certificate::from_der(d).ok());
                builder(self.max_idle_per_host).tls_certs_only(certs).build().unwrap_or_else(|_| self.system.clone())
            })
            .clone()
    }
}
