//! HTTP framing at the edge, as a demanding client sees it over raw sockets (issue 10, part 1):
//! an upstream dying mid-body, pipelining, `Host`, request targets, `Content-Length` lists and
//! paths that spell the same route differently.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until the server closes (`true`) or `quiet` passes without a byte (`false`).
async fn read_until_close(s: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(2)).await;
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// An upstream that answers every request with `head`, then `body`, then closes the connection
/// (a process dying mid-response).
async fn dying_upstream(head: &'static str, body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                // dropped: the connection closes with the response unfinished
            });
        }
    });
    addr
}

/// See: issue 10, "An upstream that dies mid-response is presented as complete".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_body_aborts_the_clients_response() {
    let cl = dying_upstream("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", vec![b'x'; 1000]).await;
    let mut chunk = b"3e8\r\n".to_vec();
    chunk.extend(vec![b'y'; 1000]);
    chunk.extend(b"\r\n");
    let chunked = dying_upstream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk).await;
    let body = Routes::new()
        .upstream("legacy", &format!("http://{cl}"))
        .upstream("chunky", &format!("http://{chunked}"))
        .route("chunky", "/chunked", "chunky", "extracted", "fallback = false")
        .build();
    let proxy = Proxy::start_opts(&body, Opts { server: "h2c = true\n", ..Opts::default() }).await;

    // Content-Length: the client gets the 1000 bytes the upstream sent, then the connection
    // closes short of the length: nothing appended, nothing that looks complete.
    let (out, closed) = exchange(proxy.addr, b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(closed, "the connection stayed open after an aborted response");
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("Content-Length: 100000"), "{head}");
    assert_eq!(rest, "x".repeat(1000), "bytes the upstream never sent reached the client");

    // Chunked: the chunks that arrived, then the close, and never the final `0` chunk.
    let (out, closed) = exchange(proxy.addr, b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(closed);
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    assert!(rest.contains(&"y".repeat(1000)), "{rest}");
    assert!(!rest.contains("0\r\n\r\n") && !rest.contains("statusCode"), "the response was finished: {rest:?}");

    // h2: the stream is reset, so the client knows the answer is incomplete.
    let out = tokio::task::spawn_blocking({
        let url = proxy.url("/cl");
        move || std::process::Command::new("curl").args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null", &url]).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "curl took the truncated h2 answer as complete");
    assert!(stderr.contains("was not closed cleanly"), "{stderr}");

    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    assert!(metrics.contains("strangler_responses_aborted_total{route=\"default\",reason=\"upstream\"} 2"), "{metrics}");
    assert!(metrics.contains("strangler_responses_aborted_total{route=\"chunky\",reason=\"upstream\"} 1"), "{metrics}");
    // (the fields may be coloured: look for the parts)
    proxy.wait_for_log_line(|l| l.contains("/cl") && l.contains("aborted") && l.contains("\"upstream\"")).await;
}

/// See: issue 10, "Pipelined requests hang".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let legacy = TestUpstream::start("legacy").await;
    let proxy = Proxy::start(&Routes::new().upstream("legacy", &legacy.url()).build()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /p3 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_millis(1500)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let at = |p: &str| out.find(&format!("\"uri\":\"{p}\"")).unwrap_or_else(|| panic!("no answer for {p}: {out}"));
    assert!(at("/p1") < at("/p2") && at("/p2") < at("/p3"), "answers out of order: {out}");
    assert!(out.contains("\"body_len\":5"), "the pipelined POST lost its body: {out}");
    assert!(!closed, "the connection was closed although every request was answered");
    // the connection is still good for another request
    s.write_all(b"GET /p4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(2)).await;
    assert!(closed && String::from_utf8_lossy(&out).contains("\"uri\":\"/p4\""));
}

/// See: issue 10, "Host" and "Request target with a space".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_and_never_reach_the_upstream() {
    let legacy = TestUpstream::start("legacy").await;
    let proxy = Proxy::start(&Routes::new().upstream("legacy", &legacy.url()).build()).await;
    for (what, raw) in [
        ("no host", &b"GET /nohost HTTP/1.1\r\n\r\n"[..]),
        ("two hosts", b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("invalid host", b"GET /badhost HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("conflicting lengths", b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello"),
    ] {
        let (out, closed) = exchange(proxy.addr, raw).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request"), "{what}: {out}");
        assert!(out.to_ascii_lowercase().contains("connection: close") && closed, "{what}: {out}");
        assert!(out.contains("\"statusCode\":400"), "{what}: not the monolith's error shape: {out}");
    }
    assert_eq!(legacy.hits(), 0, "a malformed request reached the upstream: {:?}", legacy.seen.lock().unwrap());
    // HTTP/1.0 may omit Host
    let (out, _) = exchange(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    for reason in ["missing_host", "duplicate_host", "invalid_host", "malformed_request_line", "conflicting_content_length"] {
        assert!(metrics.contains(&format!("strangler_requests_refused_total{{reason=\"{reason}\"}} 1")), "{reason}: {metrics}");
    }
}

/// See: issue 10, "`Content-Length: 5, 5` is forwarded verbatim".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_is_forwarded_as_one_value() {
    let legacy = TestUpstream::start("legacy").await;
    let proxy = Proxy::start(&Routes::new().upstream("legacy", &legacy.url()).build()).await;
    for raw in [
        &b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello"[..],
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ] {
        let (out, _) = exchange(proxy.addr, raw).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\"content-length\":\"5\"") && out.contains("\"body_len\":5"), "{out}");
    }
}

/// See: issue 10, "Encoded paths route differently from their decoded form".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_routes_and_forwards_as_its_normal_form() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let routes = Routes::new().upstream("legacy", &legacy.url()).upstream("svc", &svc.url()).route("api", "/api", "svc", "extracted", "");
    let proxy = Proxy::start(&routes.build()).await;
    let c = reqwest::Client::new();
    for (sent, served_by, forwarded) in [
        ("/%61pi/x", "svc", "/api/x"),
        ("/api/%2E%2E/x", "legacy", "/x"),
        ("/api/%2e%2e/%2e%2e/etc", "legacy", "/etc"),
        ("/api//x/./y", "svc", "/api/x/y"),
        ("/x/../api/y?q=%2E", "svc", "/api/y?q=%2E"),
        ("/api/a%2fb", "svc", "/api/a%2Fb"),
        ("/api%2Fx", "legacy", "/api%2Fx"),
    ] {
        // reqwest would normalise dots itself: send the target as written
        let (out, _) = exchange(proxy.addr, format!("GET {sent} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(out.contains(&format!("x-served-by: {served_by}")), "{sent}: {out}");
        assert!(out.contains(&format!("\"uri\":\"{forwarded}\"")), "{sent} should be forwarded as {forwarded}: {out}");
    }
    let r = c.get(proxy.url("/api/bad%zz")).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // encoded_slash = "reject": %2F is refused instead of kept
    let strict = Proxy::start_opts(&routes.build(), Opts { server: "encoded_slash = \"reject\"\n", ..Opts::default() }).await;
    let (out, _) = exchange(strict.addr, b"GET /api/a%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("encoded slash"), "{out}");
}

/// An upstream on raw sockets answering by path: `/chunked` (a chunked body), `/length`
/// (`Content-Length`), `/until-close` (no length: the body ends when the connection does),
/// `/stale` (`Content-Length`, then the connection closes without saying so, as an upstream
/// dropping idle keep-alive connections does). Counts connections and keeps each request head.
async fn framing_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (acc, hs) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            acc.fetch_add(1, Ordering::SeqCst);
            let hs = hs.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end);
                    hs.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let answer: &[u8] = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                        "/until-close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: X-Private\r\nX-Private: secret\r\n\r\nfive!",
                    };
                    if s.write_all(answer).await.is_err() || path == "/until-close" || path == "/stale" {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

/// The lean HTTP/1 path (`edge::lean`) and Pingora's proxy frame answers alike: a chunked body
/// whole with its trailers and the connection kept, a body delimited by the upstream's close
/// ends the client's connection too, an upstream that drops its idle connections costs no
/// request, and both send the upstream the same headers. Run once with each path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_path_and_pingora_frame_answers_alike() {
    use std::sync::atomic::Ordering;
    for lean in ["1", "0"] {
        let (up, accepted, heads) = framing_upstream().await;
        let routes = Routes::new().upstream("legacy", &format!("http://{up}")).build();
        let proxy = Proxy::start_opts(&routes, Opts { env: &[("STRANGLER_LEAN_HTTP1", lean)], ..Opts::default() }).await;

        // three pipelined requests on one client connection, over one upstream connection
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nGET /length HTTP/1.1\r\nHost: a\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 10.9.8.7\r\nX-Request-Id: mine\r\n\r\nGET /length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let (out, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(closed, "lean={lean}: the connection was not closed after `Connection: close`: {out}");
        // the lean path passes the chunks as they came (extensions, trailers); Pingora re-chunks
        let chunked =
            if lean == "1" { "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" } else { "B\r\nhello world\r\n0\r\n\r\n" };
        assert!(out.contains(chunked), "lean={lean}: the chunked body was not passed whole: {out:?}");
        assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "lean={lean}: {out}");
        assert_eq!(out.matches("\r\n\r\nfive!").count(), 2, "lean={lean}: {out}");
        assert!(!out.contains("X-Private"), "lean={lean}: a header the upstream's Connection named was forwarded: {out}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "lean={lean}: the upstream connection was not reused");
        let seen = heads.lock().unwrap().clone();
        let second = seen[1].to_ascii_lowercase();
        assert!(!second.contains("x-hop") && !second.contains("connection:"), "lean={lean}: hop-by-hop forwarded: {second}");
        assert!(second.contains("x-forwarded-for: 10.9.8.7, 127.0.0.1\r\n"), "lean={lean}: {second}");
        assert!(second.contains("x-forwarded-proto: http\r\n") && second.contains("x-request-id: mine\r\n"), "lean={lean}: {second}");
        assert!(seen[0].to_ascii_lowercase().contains("x-request-id: "), "lean={lean}: no request id made: {}", seen[0]);

        // a body that ends with the upstream's connection: whole, chunked for the client, whose
        // connection stays good for another request
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /until-close HTTP/1.1\r\nHost: a\r\n\r\nGET /length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (out, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(closed && out.contains("\r\n\r\n9\r\nall of it\r\n0\r\n\r\nHTTP/1.1 200"), "lean={lean}: {out:?}");
        assert!(out.ends_with("five!") && out.to_ascii_lowercase().contains("transfer-encoding: chunked"), "lean={lean}: {out}");

        // an upstream that closes every connection after one answer, without saying so: the
        // pooled connection is found dead or the request retried on a fresh one, never a 502
        for i in 0..10 {
            let (out, _) = exchange(proxy.addr, b"GET /stale HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
            assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("five!"), "lean={lean}, request {i}: {out}");
        }
        let metrics = proxy.admin_get("/metrics").await.unwrap().1;
        let lean_served = metrics.lines().find(|l| l.starts_with("strangler_lean_requests_total")).map(|l| l.to_string());
        match lean {
            "1" => assert_eq!(lean_served.as_deref(), Some("strangler_lean_requests_total 15"), "{metrics}"),
            _ => assert_eq!(lean_served, None, "the lean path served with STRANGLER_LEAN_HTTP1=0"),
        }
    }
}
