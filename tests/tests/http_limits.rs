//! End-to-end: rate limits, load shedding and connection hygiene, over
//! real HTTP on loopback (raw TCP where a client must misbehave). The
//! limits do not depend on the store, so these run on SQLite only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/http.rs"]
mod http_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_common::*;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any test here waits for the server to do something.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// The rate limits on (the shared test env turns them off).
const LIMITS_ON: (&str, &str) = ("DISABLE_RATE_LIMIT_FOR_TESTS", "");

/// Reads from `stream` until `buf` holds `needle`.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(WAIT_MAX, stream.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes the connection (EOF or reset), failing
/// after [`WAIT_MAX`]; returns what was read and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT_MAX, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the server kept the connection open; read so far: {}",
                String::from_utf8_lossy(&read)
            ),
            Ok(Ok(0)) => return (read, Instant::now()),
            Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ),
                    "{e}"
                );
                return (read, Instant::now());
            }
        }
    }
}

/// A keep-alive `GET /healthz` on `stream`, asserting a 200.
async fn healthz_on(stream: &mut TcpStream, addr: SocketAddr) {
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(stream, &mut buf, b"\r\n\r\n").await;
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // The small body follows the head; read it so the next request starts clean.
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let body_start = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut have = buf.len() - body_start;
    let mut chunk = [0u8; 1024];
    while have < length {
        have += stream.read(&mut chunk).await.unwrap();
    }
}

/// Starts `POST /v1/orders` with `Expect: 100-continue` on a raw socket and
/// returns once the handler is reading the body (the server sends
/// `100 Continue` only then): the request is in flight until the body
/// comes, which it never does unless the test sends it.
async fn start_order_in_flight(addr: SocketAddr, body_len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {API_TOKEN}\r\n\
         idempotency-key: in-flight-{}\r\ncontent-type: application/json\r\n\
         content-length: {body_len}\r\nexpect: 100-continue\r\n\r\n",
        uuid::Uuid::new_v4()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"HTTP/1.1 100 Continue\r\n\r\n").await;
    stream
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {} {}", r.status, r.text()))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_another_token_does_not() {
    let app = spawn_app(
        Kind::Sqlite,
        &[
            LIMITS_ON,
            ("RATE_LIMIT_PER_TOKEN", "1"),
            ("RATE_LIMIT_PER_TOKEN_BURST", "2"),
        ],
    )
    .await;
    // 1/s with a burst of 2: five requests in a row cannot all pass.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let r = app.get("/v1/orders").await;
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(
        statuses.len() >= 3,
        "limited before the burst: {statuses:?}"
    );
    r.assert_error(429, "rate_limited");
    assert!((1..=2).contains(&retry_after(&r)), "{:?}", r.headers);
    assert!(r.header("x-request-id").is_some());

    // The admin token has its own bucket.
    let admin = app
        .send(app.anon(Method::GET, "/v1/orders").bearer_auth(ADMIN_TOKEN))
        .await;
    assert_eq!(admin.status, 200, "{}", admin.text());
    // A wrong token is refused by authentication, not charged or limited.
    let wrong = app
        .send(
            app.anon(Method::GET, "/v1/orders")
                .bearer_auth("not-a-token"),
        )
        .await;
    wrong.assert_error(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_bypass_flag_really_turns_the_limits_off() {
    let app = spawn_app(
        Kind::Sqlite,
        &[
            ("RATE_LIMIT_PER_TOKEN", "1"),
            ("RATE_LIMIT_PER_TOKEN_BURST", "1"),
        ],
    )
    .await;
    for _ in 0..5 {
        let r = app.get("/v1/orders").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_source_over_its_rate_gets_429() {
    let app = spawn_app(
        Kind::Sqlite,
        &[
            LIMITS_ON,
            ("RATE_LIMIT_WEBHOOK_PER_IP", "1"),
            ("RATE_LIMIT_WEBHOOK_PER_IP_BURST", "1"),
        ],
    )
    .await;
    let body = br#"{"event_type":"payment_succeeded"}"#;
    // The first is charged and then refused by its (missing) signature.
    let first = app.deliver(body, Sig::Missing, None).await;
    assert_eq!(first.status, 401, "{}", first.text());
    let mut limited = None;
    for _ in 0..4 {
        let r = app.deliver(body, Sig::Missing, None).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the webhook source was never limited");
    r.assert_error(429, "rate_limited");
    assert!(retry_after(&r) >= 1);
    let metrics = app.send(app.anon(Method::GET, "/metrics")).await.text();
    assert!(
        metrics.contains("ledger_webhook_deliveries_total{result=\"rate_limited\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_cap_a_request_is_shed_with_503_and_retry_after() {
    let app = spawn_app(Kind::Sqlite, &[("MAX_IN_FLIGHT_REQUESTS", "1")]).await;
    let addr = app.server().addr;
    let body = serde_json::to_vec(&two_seller_order("buyer-shed")).unwrap();
    let mut holder = start_order_in_flight(addr, body.len()).await;

    let shed = app.get("/v1/orders").await;
    shed.assert_error(503, "overloaded");
    assert_eq!(retry_after(&shed), 1);
    assert!(shed.header("x-request-id").is_some());
    // Probes are never shed.
    let health = app.send(app.anon(Method::GET, "/healthz")).await;
    assert_eq!(health.status, 200);

    // The held request completes, and frees its slot.
    holder.write_all(&body).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut holder, &mut buf, b"\r\n\r\n").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let after = app.get("/v1/orders").await;
    assert_eq!(after.status, 200, "{}", after.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_headers_is_cut_off_at_the_header_read_timeout() {
    let app = spawn_app(Kind::Sqlite, &[("HEADER_READ_TIMEOUT", "200ms")]).await;
    let addr = app.server().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HT").await.unwrap();
    let sent = Instant::now();
    let (read, closed) = read_until_closed(&mut stream).await;
    let took = closed - sent;
    assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
    assert!(
        took >= Duration::from_millis(150),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");

    // A connection that sends nothing at all owes its headers just the same.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let (_, closed) = read_until_closed(&mut silent).await;
    assert!(
        closed - opened < Duration::from_secs(3),
        "{:?}",
        closed - opened
    );

    // A client that sends its headers in time is served.
    let mut good = TcpStream::connect(addr).await.unwrap();
    healthz_on(&mut good, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let app = spawn_app(
        Kind::Sqlite,
        &[
            ("HTTP_IDLE_TIMEOUT", "300ms"),
            ("HEADER_READ_TIMEOUT", "5s"),
        ],
    )
    .await;
    let addr = app.server().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    healthz_on(&mut stream, addr).await;
    let idle_from = Instant::now();
    let (read, closed) = read_until_closed(&mut stream).await;
    let took = closed - idle_from;
    assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    // Well before the 5 s header clock: this was the idle timeout.
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_a_new_connection_is_closed() {
    let app = spawn_app(Kind::Sqlite, &[("MAX_CONNECTIONS", "1")]).await;
    let addr = app.server().addr;
    let mut first = TcpStream::connect(addr).await.unwrap();
    healthz_on(&mut first, addr).await;

    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await;
    let (read, _) = read_until_closed(&mut second).await;
    assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));

    // The first is still served; once it closes, its slot is free again.
    healthz_on(&mut first, addr).await;
    drop(first);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let mut next = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
        let _ = next.write_all(request.as_bytes()).await;
        let (read, _) = read_until_closed_or_answered(&mut next).await;
        if read.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::task::yield_now().await;
    }
    // The last probe's connection closes asynchronously: retry until the
    // slot is free again.
    let deadline = Instant::now() + WAIT_MAX;
    let metrics = loop {
        match app.anon(Method::GET, "/metrics").send().await {
            Ok(resp) => break http_common::read(resp).await,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l.starts_with("ledger_http_connections_refused_total ") && !l.ends_with(" 0")),
        "{}",
        metrics.text()
    );
}

/// Reads until a response head arrives or the server closes.
async fn read_until_closed_or_answered(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT_MAX, stream.read(&mut chunk)).await {
            Err(_) => panic!("no answer and no close"),
            Ok(Ok(0)) | Ok(Err(_)) => return (read, Instant::now()),
            Ok(Ok(n)) => {
                read.extend_from_slice(&chunk[..n]);
                if read.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (read, Instant::now());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_request_still_in_flight_after_the_grace() {
    let mut app = spawn_app(Kind::Sqlite, &[("SHUTDOWN_GRACE", "300ms")]).await;
    let addr = app.server().addr;
    // Its body never comes: only REQUEST_TIMEOUT (15 s) would end it.
    let mut stuck = start_order_in_flight(addr, 100).await;

    let server = app.take_server();
    let started = Instant::now();
    tokio::time::timeout(WAIT_MAX, server.shutdown())
        .await
        .expect("shutdown did not complete within the grace and a margin")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "did not wait the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (read, _) = read_until_closed(&mut stuck).await;
    let text = String::from_utf8_lossy(&read);
    assert!(!text.contains("HTTP/1.1 201"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_method_is_counted_as_other_without_a_new_series() {
    let app = spawn_app(Kind::Sqlite, &[]).await;
    for name in ["FOO", "BAR", "PROPFIND"] {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let r = app.send(app.req(method, "/v1/orders")).await;
        r.assert_error(405, "method_not_allowed");
    }
    let metrics = app.send(app.anon(Method::GET, "/metrics")).await.text();
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    for name in ["FOO", "BAR", "PROPFIND"] {
        assert!(
            !metrics.contains(&format!("method=\"{name}\"")),
            "{metrics}"
        );
    }
    let other_series = metrics
        .lines()
        .filter(|l| l.starts_with("ledger_http_requests_total") && l.contains("method=\"other\""))
        .count();
    assert_eq!(other_series, 1, "{metrics}");
}
