//! The plain-HTTP upstream pool, against a raw HTTP/1.1 server that counts
//! the connections it accepts: keep-alive reuse, `Connection: close`, an
//! idle connection the upstream closed, a body dropped half-read, and a refused
//! connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_core::ErrorKind;
use sluice_core::config::{self, ProviderConfig};
use sluice_providers::transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test server answers each request on a connection.
#[derive(Clone, Copy)]
enum Mode {
    KeepAlive,
    /// `Connection: close` on every answer.
    Close,
    /// Answers one request, then closes the connection while idle.
    OneThenClose,
    /// A large chunked body, 64 KiB.
    Large,
    /// A 1xx first, then a chunked body written a few bytes at a time with
    /// a trailer.
    Trickle,
    /// No length: the body ends at the close.
    UntilClose,
    /// A length of 10 and 5 bytes, then the close.
    Truncated,
    /// A 1 MiB body of known length.
    Big,
}

struct Upstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn upstream(mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("pool test");
    let addr = listener.local_addr().expect("pool test");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.expect("pool test");
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock, mode));
        }
    });
    Upstream { addr, accepted }
}

async fn serve(mut sock: TcpStream, mode: Mode) {
    let mut buf = Vec::new();
    loop {
        // Read one request: head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        assert!(
            head.starts_with("post /v1/x http/1.1\r\n"),
            "origin-form target: {head}"
        );
        assert!(
            head.contains("\r\nhost: 127.0.0.1:"),
            "a Host header: {head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().expect("pool test"));
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let reply = match mode {
            Mode::Close => {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
            }
            Mode::Large => {
                let chunk = "x".repeat(1024);
                let mut r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
                for _ in 0..64 {
                    r.push_str(&format!("400\r\n{chunk}\r\n"));
                }
                r.push_str("0\r\n\r\n");
                r
            }
            Mode::Trickle => {
                let reply = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
                             transfer-encoding: chunked\r\n\r\n\
                             2;x=y\r\nok\r\n3\r\n!!!\r\n0\r\nx-trailer: 1\r\n\r\n";
                for piece in reply.as_bytes().chunks(7) {
                    if sock.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                continue;
            }
            Mode::UntilClose => "HTTP/1.1 200 OK\r\n\r\nuntil close".to_owned(),
            Mode::Big => {
                let body: String = (0..1 << 20)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Mode::Truncated => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.".to_owned(),
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned(),
        };
        if sock.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        match mode {
            Mode::Close | Mode::UntilClose | Mode::Truncated => return,
            Mode::OneThenClose => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            _ => {}
        }
    }
}

fn provider(addr: std::net::SocketAddr) -> ProviderConfig {
    let text = format!(
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\n\
         connect_timeout_ms = 500\n\
         [[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}]\n"
    );
    let mut cfg = config::parse(&text, "pool.toml", &|_| None).expect("pool test");
    cfg.providers.remove(0)
}

fn request(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/v1/x"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .expect("pool test")
}

async fn call(client: &transport::ProviderClient, addr: std::net::SocketAddr) -> Bytes {
    let resp = transport::send(client, request(addr))
        .await
        .expect("pool test");
    assert_eq!(resp.status(), 200);
    resp.into_body()
        .collect()
        .await
        .expect("pool test")
        .to_bytes()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = upstream(Mode::KeepAlive).await;
    let client = transport::client_for(&provider(up.addr));
    for _ in 0..20 {
        assert_eq!(call(&client, up.addr).await, "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn a_reader_that_stops_at_the_end_of_stream_still_returns_the_connection() {
    let up = upstream(Mode::KeepAlive).await;
    let client = transport::client_for(&provider(up.addr));
    let resp = transport::send(&client, request(up.addr))
        .await
        .expect("pool test");
    let mut body = resp.into_body();
    let frame = body.frame().await.expect("pool test").expect("pool test");
    assert_eq!(frame.into_data().expect("pool test"), "ok");
    // Not polled for its end: the last byte was enough.
    assert!(http_body::Body::is_end_stream(&body));
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_and_keep_them() {
    let up = upstream(Mode::KeepAlive).await;
    let client = transport::client_for(&provider(up.addr));
    let calls = (0..8).map(|_| call(&client, up.addr));
    futures_util::future::join_all(calls).await;
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!((1..=8).contains(&opened), "{opened} connections");
    assert_eq!(client.idle_connections(), opened);
    // The next round reuses them.
    futures_util::future::join_all((0..8).map(|_| call(&client, up.addr))).await;
    assert!(up.accepted.load(Ordering::SeqCst) <= 8);
}

#[tokio::test]
async fn connection_close_is_not_reused() {
    let up = upstream(Mode::Close).await;
    let client = transport::client_for(&provider(up.addr));
    for _ in 0..3 {
        assert_eq!(call(&client, up.addr).await, "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    let up = upstream(Mode::OneThenClose).await;
    let client = transport::client_for(&provider(up.addr));
    assert_eq!(call(&client, up.addr).await, "ok");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call(&client, up.addr).await, "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_half_read_closes_its_connection() {
    let up = upstream(Mode::Large).await;
    let client = transport::client_for(&provider(up.addr));
    let resp = transport::send(&client, request(up.addr))
        .await
        .expect("pool test");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("pool test").expect("pool test");
    assert!(first.is_data());
    drop(body);
    assert_eq!(client.idle_connections(), 0);
    // A whole read returns the connection; the body came through intact.
    let all = call(&client, up.addr).await;
    assert_eq!(all.len(), 64 * 1024);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("pool test");
        l.local_addr().expect("pool test")
    };
    let client = transport::client_for(&provider(addr));
    let err = transport::send(&client, request(addr))
        .await
        .expect_err("pool test");
    assert_eq!(err.kind, ErrorKind::UpstreamUnreachable, "{err:?}");
}

#[tokio::test]
async fn a_body_in_small_pieces_after_an_interim_answer_comes_whole_and_keeps_the_connection() {
    let up = upstream(Mode::Trickle).await;
    let client = transport::client_for(&provider(up.addr));
    for _ in 0..3 {
        assert_eq!(call(&client, up.addr).await, "ok!!!");
        assert_eq!(client.idle_connections(), 1);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_length_runs_to_the_close_and_its_connection_is_not_kept() {
    let up = upstream(Mode::UntilClose).await;
    let client = transport::client_for(&provider(up.addr));
    for _ in 0..2 {
        assert_eq!(call(&client, up.addr).await, "until close");
    }
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_shorter_body() {
    let up = upstream(Mode::Truncated).await;
    let client = transport::client_for(&provider(up.addr));
    let resp = transport::send(&client, request(up.addr))
        .await
        .expect("pool test");
    assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(10));
    let err = resp.into_body().collect().await.expect_err("pool test");
    assert!(err.to_string().contains("before the body's end"), "{err}");
    assert_eq!(client.idle_connections(), 0);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_let_go_without_another_request() {
    let up = upstream(Mode::OneThenClose).await;
    let client = transport::client_for(&provider(up.addr));
    assert_eq!(call(&client, up.addr).await, "ok");
    assert_eq!(client.idle_connections(), 1);
    // The upstream closes it after 50 ms; the pool sweeps every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while client.idle_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_large_body_of_known_length_comes_whole_and_keeps_the_connection() {
    let up = upstream(Mode::Big).await;
    let client = transport::client_for(&provider(up.addr));
    for _ in 0..2 {
        let body = call(&client, up.addr).await;
        assert_eq!(body.len(), 1 << 20);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, &b)| b == b'a' + (i % 26) as u8)
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}
