//! HTTP fidelity through the proxy: streaming, WebSockets, hop-by-hop headers, smuggling,
//! HEAD/304/chunked/100-continue, TLS with h2.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn legacy_only() -> (TestUpstream, Proxy) {
    let legacy = TestUpstream::start("legacy").await;
    let proxy = Proxy::start(&Routes::new().upstream("legacy", &legacy.url()).build()).await;
    (legacy, proxy)
}

/// Sends raw bytes and reads what comes back until the server closes or `wait` passes quietly.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_with_bounded_proxy_memory() {
    let (_legacy, proxy) = legacy_only().await;
    let c = reqwest::Client::new();
    const SIZE: u64 = 100 * 1024 * 1024;
    let before = proxy.peak_rss();

    // Upload: the body is generated as it is sent, never held whole by the client either.
    let chunks = futures_util::stream::unfold(0u64, |off| async move {
        if off >= SIZE {
            return None;
        }
        let len = (256 * 1024).min(SIZE - off);
        Some((Ok::<_, std::io::Error>(pattern_chunk(off, len as usize)), off + len))
    });
    let r: serde_json::Value =
        c.post(proxy.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["body_len"], SIZE);
    let mut expected = sha2::Sha256::default();
    {
        use sha2::Digest;
        let mut off = 0;
        while off < SIZE {
            let len = (1 << 20).min(SIZE - off);
            expected.update(pattern_chunk(off, len as usize));
            off += len;
        }
        let hex: String = expected.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r["body_sha256"], hex);
    }

    // Download: count and check bytes as they arrive.
    let resp = c.get(proxy.url(&format!("/big/{SIZE}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut off = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk, pattern_chunk(off, chunk.len()), "corrupt bytes at offset {off}");
        off += chunk.len() as u64;
    }
    assert_eq!(off, SIZE);

    let grown = proxy.peak_rss().saturating_sub(before);
    assert!(grown < 48 * 1024 * 1024, "proxy peak memory grew by {} MiB while streaming 2 × 100 MiB", grown >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let (_legacy, proxy) = legacy_only().await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr)).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 1 << 20];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
}

/// Every upgrade carries data both ways, however fast the upstream answers its 101 (Pingora
/// issue 946: a 101 read before the upgrade request's own empty body ended the tunnel at once;
/// vendor/pingora-proxy carries the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_upgrade_stays_open_however_fast_the_upstream_answers() {
    let (_legacy, proxy) = legacy_only().await;
    let url = format!("ws://{}/ws", proxy.addr);
    let mut failures = Vec::new();
    for round in 0..25 {
        let tries = (0..16).map(|i| {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect: {e}"))?;
                let msg = format!("hello {round}/{i}");
                ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await.map_err(|e| format!("send: {e}"))?;
                match ws.next().await {
                    Some(Ok(m)) if m.to_text().ok() == Some(msg.as_str()) => Ok(()),
                    other => Err(format!("no echo: {other:?}")),
                }
            }
        });
        for r in futures_util::future::join_all(tries).await {
            if let Err(e) = r {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} of 400 upgrades failed, e.g. {:?}", failures.len(), failures.first());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarding_headers_set() {
    let (_legacy, proxy) = legacy_only().await;
    let c = reqwest::Client::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(proxy.url("/echo"))
        .header("connection", "keep-alive, x-client-secret")
        .header("x-client-secret", "s")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic eDp5")
        .header("te", "trailers")
        .header("traceparent", traceparent)
        .header("x-strangler-dry-run", "1")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    let v: serde_json::Value = r.json().await.unwrap();
    let h = &v["headers"];
    for gone in ["x-client-secret", "keep-alive", "proxy-connection", "proxy-authorization", "te", "x-strangler-dry-run"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["traceparent"], traceparent);
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 36);

    // A client's own request id is kept.
    let v: serde_json::Value = c.get(proxy.url("/echo")).header("x-request-id", "req-123").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], "req-123");

    // Response side.
    let r = c.get(proxy.url("/hop")).send().await.unwrap();
    for gone in ["x-up-secret", "keep-alive", "proxy-connection"] {
        assert!(!r.headers().contains_key(gone), "{gone} reached the client");
    }
    assert_eq!(r.text().await.unwrap(), "hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_are_rejected_or_neutralised() {
    let (legacy, proxy) = legacy_only().await;

    // CL.TE: Transfer-Encoding wins, Content-Length is dropped, and the connection is closed
    // after the response, so the smuggled request is never parsed as a second request.
    let attack = b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = raw_exchange(proxy.addr, attack, Duration::from_secs(2)).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "more than one response: {out}");

    // Two different Content-Length values.
    let out = raw_exchange(
        proxy.addr,
        b"POST /dup HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // A final transfer coding other than chunked.
    let out = raw_exchange(
        proxy.addr,
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // Transfer-Encoding on HTTP/1.0.
    let out =
        raw_exchange(proxy.addr, b"POST /te10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Duration::from_secs(2))
            .await;
    assert!(out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"), "{out}");

    // Whitespace before the colon (a classic desync vector).
    let out = raw_exchange(proxy.addr, b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let seen = legacy.seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p.contains("smuggled")), "smuggled request reached the upstream: {seen:?}");
    for never in ["/dup", "/te10", "/ws"] {
        assert!(!seen.iter().any(|p| p == never), "{never} reached the upstream: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_304_chunked_and_expect_continue() {
    let (_legacy, proxy) = legacy_only().await;
    let c = reqwest::Client::new();

    let r = c.head(proxy.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().is_empty());

    let r = c.get(proxy.url("/not-modified")).header("if-none-match", "\"v1\"").send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "\"v1\"");

    // A chunked request body arrives whole.
    let out = raw_exchange(proxy.addr, b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":11"), "{out}");
    assert!(out.contains(&sha256_hex(b"hello world")), "{out}");

    // Expect: 100-continue: the client hears 100 before sending the body.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PUT /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("no 100 Continue").unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 200"), "{head}{rest}");
    assert!(rest.contains("\"body_len\":5"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_with_h2_and_http1() {
    let legacy = TestUpstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed by scripts/setup");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let body = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n{}",
        cert.display(),
        key.display(),
        Routes::new().upstream("legacy", &legacy.url()).build()
    );
    let proxy = Proxy::start(&body).await;
    let tls_port = proxy.listeners[1].port();
    for (flag, proto) in [("--http2", "HTTP/2"), ("--http1.1", "HTTP/1.1")] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&cert)
            .args([flag, "-o", "-", "-w", "\n%{http_version} %{http_code}", &format!("https://127.0.0.1:{tls_port}/tls?x=1")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), proxy.logs());
        let version = if proto == "HTTP/2" { "2 200" } else { "1.1 200" };
        assert!(text.trim_end().ends_with(version), "{proto}: {text}");
        assert!(text.contains("\"x-forwarded-proto\":\"https\""), "{text}");
        assert!(text.contains("\"uri\":\"/tls?x=1\""), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (legacy, proxy) = legacy_only().await;
    let c = reqwest::Client::new();
    for i in 0..200 {
        let r = c.get(proxy.url(&format!("/k/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let conns = legacy.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Pingora puts the upstream connection back in its pool after it has forwarded the response,
    // so on a busy machine the client's next request can get there first and open one more (a
    // CI run saw 5). Without reuse this would be 200; 20 still fails below ~90% reuse.
    assert!(conns <= 20, "200 sequential requests opened {conns} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_when_enabled() {
    let legacy = TestUpstream::start("legacy").await;
    let proxy =
        Proxy::start_opts(&Routes::new().upstream("legacy", &legacy.url()).build(), Opts { server: "h2c = true\n", ..Opts::default() })
            .await;
    for flag in ["--http2-prior-knowledge", "--http1.1"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", flag, "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &proxy.url("/h2c")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let expected = if flag.contains("http2") { "2 200" } else { "1.1 200" };
        assert_eq!(text, expected, "{flag}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A log reader that stalls (a full pipe, a stuck collector) never stalls the proxy: access lines
/// beyond the log's buffer are dropped and counted, and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_costs_access_lines_never_answers() {
    let legacy = TestUpstream::start("legacy").await;
    let opts = Opts { stalled_stderr: true, ..Opts::default() };
    let proxy = Proxy::start_opts(&Routes::new().upstream("legacy", &legacy.url()).build(), opts).await;
    let c = reqwest::Client::new();
    // more lines (≥ 200 bytes each) than the buffer and the pipe hold
    let n = strangler::accesslog::CAPACITY / 150;
    let url = proxy.url("/x");
    let answered = futures_util::stream::iter(0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move { c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(32)
        .filter(|s| std::future::ready(*s == 200))
        .count()
        .await;
    assert_eq!(answered, n, "every request is answered while nobody reads the log");
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strangler_log_lines_dropped_total{kind=\"access\"} ")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the lines that did not fit are counted: {metrics}");
}
