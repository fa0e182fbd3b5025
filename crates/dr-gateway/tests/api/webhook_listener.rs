//! The webhook listener against clients that are slow, silent, lying or many, over
//! raw TCP: every connection ends within its timeouts, an announced oversize body
//! is refused before it is read, the connection cap holds, and every error answer
//! is JSON.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::MockServer;

use crate::helpers::{settings, spawn_app_with, TestApp};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a loaded machine on top of a timeout, before a test gives up.
const SLACK: Duration = Duration::from_secs(5);

async fn gateway(max_connections: usize) -> (TestApp, MockServer) {
    let dr = MockServer::start().await;
    let mut s = settings(&dr.uri());
    s.webhook_header_timeout = HEADER_TIMEOUT;
    s.webhook_body_timeout = BODY_TIMEOUT;
    s.webhook_idle_timeout = IDLE_TIMEOUT;
    s.webhook_max_connections = max_connections;
    (spawn_app_with(s).await, dr)
}

/// Reads until the server closes the connection (or resets it), at most `within`;
/// returns everything it sent.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"));
    got
}

/// The status and JSON body of the first HTTP answer in `raw`.
fn answer(raw: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or_default())
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn a_client_sending_its_headers_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let (app, _dr) = gateway(16).await;
    let mut stream = connect(app.http_addr).await;
    let started = Instant::now();
    let request =
        b"POST /webhooks/digitalriver HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n";
    // The attack: one byte every 100 ms, never finishing the head (pacing, not a wait).
    let mut closed = false;
    for byte in request.iter().cycle().take(200) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() < HEADER_TIMEOUT + SLACK,
        "closed after {:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_a_json_408_at_the_body_timeout() {
    let (app, _dr) = gateway(16).await;
    let mut stream = connect(app.http_addr).await;
    stream
        .write_all(b"POST /webhooks/digitalriver HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{\"id\":")
        .await
        .unwrap();
    let started = Instant::now();

    let raw = until_closed(&mut stream, BODY_TIMEOUT + SLACK).await;

    assert_eq!(
        answer(&raw),
        (
            408,
            serde_json::json!({"error": "body_timeout", "message": "webhook body did not arrive within 1s"})
        )
    );
    assert!(started.elapsed() >= BODY_TIMEOUT / 2);
    app.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout_before_and_after_a_request() {
    let (app, _dr) = gateway(16).await;
    // Never a byte.
    let mut silent = connect(app.http_addr).await;
    let started = Instant::now();
    assert!(until_closed(&mut silent, IDLE_TIMEOUT + SLACK)
        .await
        .is_empty());
    assert!(
        started.elapsed() >= IDLE_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    // Kept alive after an answer, then silent.
    let mut kept = connect(app.http_addr).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let raw = until_closed(&mut kept, IDLE_TIMEOUT + SLACK).await;
    assert_eq!(answer(&raw).0, 200);
    app.stop().await;
}

#[tokio::test]
async fn an_announced_oversize_body_is_refused_with_413_before_it_is_read() {
    let (app, _dr) = gateway(16).await;
    let mut stream = connect(app.http_addr).await;
    let started = Instant::now();
    stream
        .write_all(b"POST /webhooks/digitalriver HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000000\r\n\r\n{}")
        .await
        .unwrap();

    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(BODY_TIMEOUT / 2, stream.read(&mut buf))
        .await
        .expect("answered before the body timeout")
        .expect("read");

    let (status, body) = answer(&buf[..n]);
    assert_eq!(status, 413);
    assert_eq!(body["error"], "body_too_large");
    assert_eq!(body["limit_bytes"], 1024 * 1024);
    assert!(started.elapsed() < BODY_TIMEOUT);
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (app, _dr) = gateway(4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(app.http_addr).await);
    }
    // Each held connection has been accepted once it can be answered.
    for stream in &mut held {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(answer(&buf[..n]).0, 200);
    }
    let mut fifth = connect(app.http_addr).await;
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a fifth connection was served while four were open"
    );

    drop(held.pop());

    let n = tokio::time::timeout(SLACK, fifth.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(answer(&buf[..n]).0, 200);
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let (app, _dr) = gateway(16).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.http_addr);

    let missing = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("a JSON 404");
    assert_eq!(body["error"], "not_found");

    let wrong = http
        .get(format!("{base}/webhooks/digitalriver"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.headers().contains_key("allow"));
    let body: serde_json::Value = wrong.json().await.expect("a JSON 405");
    assert_eq!(body["error"], "method_not_allowed");
    assert!(body["message"].is_string());
    app.stop().await;
}
