//! Reads that leave no readiness behind: an event read whole clears the
//! socket's readiness, so the next read waits for the next event instead
//! of making a system call that would block, and a connection that got
//! nothing since is taken back without a probing read.

use super::*;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A connected pair: the pool's side as a [`Conn`], the upstream's side.
async fn pair() -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("pool test");
    let addr = listener.local_addr().expect("pool test");
    let (io, up) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let conn = Conn {
        io: io.expect("pool test"),
        buf: BytesMut::new(),
    };
    (conn, up.expect("pool test").0)
}

/// A pool for the upstream at `addr`.
fn pool_for(addr: std::net::SocketAddr) -> Arc<H1Pool> {
    H1Pool::new(
        addr.to_string().parse().expect("pool test"),
        4,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
}

/// A small POST through `pool`: its answer's body.
async fn post(pool: &Arc<H1Pool>, addr: std::net::SocketAddr) -> UpstreamBody {
    let req = http::Request::post(format!("http://{addr}/v1/x"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("pool test");
    pool.send(req).await.expect("pool test").into_body()
}

/// Waits (up to a second) for the upstream's data or close to reach the
/// runtime as a readiness event.
async fn until_loud(conn: &Conn) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while conn.quiet() {
        assert!(Instant::now() < deadline, "no readiness event came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_head_read_whole_leaves_no_readiness_and_skips_the_probe() {
    let (mut conn, mut up) = pair().await;
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .expect("pool test");
    until_loud(&conn).await;
    let (head, len) = read_head(&mut conn, &http::Method::POST, HEAD_ROOM)
        .await
        .expect("pool test");
    assert_eq!(len, 38);
    assert_eq!(head.response.status(), 200);
    assert!(conn.quiet(), "a short read cleared the readiness");
    conn.buf.clear();
    // Recently idle and quiet: alive without a probe. Long idle: probed,
    // and still alive (nothing came).
    assert!(conn.alive(Duration::ZERO));
    assert!(conn.alive(UNPROBED_IDLE));
    // The upstream's close is an event: the probe then sees it.
    drop(up);
    until_loud(&conn).await;
    assert!(!conn.alive(Duration::ZERO), "a closed connection is let go");
}

#[tokio::test]
async fn data_that_arrived_while_idle_is_seen_without_waiting_for_age() {
    let (conn, mut up) = pair().await;
    up.write_all(b"x").await.expect("pool test");
    until_loud(&conn).await;
    assert!(!conn.alive(Duration::ZERO));
}

#[tokio::test]
async fn each_streamed_event_is_read_once_and_leaves_no_readiness() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("pool test");
    let addr = listener.local_addr().expect("pool test");
    // The upstream writes its next piece only when the test asks for it:
    // each event then comes in a read of its own, however slow the run.
    let (next, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let (mut up, _) = listener.accept().await.expect("pool test");
        let mut req = [0u8; 1024];
        let _ = up.read(&mut req).await;
        let _ = up
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for i in 0..3 {
            if asked.recv().await.is_none() {
                return;
            }
            let event = format!("data: {i}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = up.write_all(chunk.as_bytes()).await;
        }
        if asked.recv().await.is_some() {
            let _ = up.write_all(b"0\r\n\r\n").await;
        }
        // Held open: the pool, not the close, ends the exchange.
        let _ = up.read(&mut req).await;
    });
    let pool = pool_for(addr);
    let mut body = post(&pool, addr).await;
    let Inner::Lean(lean) = &mut body.0 else {
        panic!("a plain upstream's body comes from the lean pool");
    };
    for i in 0..3 {
        next.send(()).expect("pool test");
        let data = std::future::poll_fn(|cx| lean.poll_frame(cx))
            .await
            .expect("pool test")
            .expect("pool test");
        assert_eq!(data, format!("data: {i}\n\n"));
        let conn = lean.conn.as_ref().expect("pool test");
        assert!(conn.quiet(), "event {i} left readiness behind");
    }
    next.send(()).expect("pool test");
    assert!(
        std::future::poll_fn(|cx| lean.poll_frame(cx))
            .await
            .is_none()
    );
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn an_answer_the_size_of_the_last_one_is_read_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("pool test");
    let addr = listener.local_addr().expect("pool test");
    // Answers of 20,000, 20,000 and 100 bytes on one connection, each
    // written whole once the request is in.
    tokio::spawn(async move {
        let (mut up, _) = listener.accept().await.expect("pool test");
        for size in [20_000usize, 20_000, 100] {
            let mut req = [0u8; 1024];
            let _ = up.read(&mut req).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            let mut answer = head.into_bytes();
            answer.resize(answer.len() + size, b'a');
            let _ = up.write_all(&answer).await;
        }
        let mut req = [0u8; 1024];
        let _ = up.read(&mut req).await;
    });
    let pool = pool_for(addr);
    let mut in_first_read = Vec::new();
    // Held, as frames on their way to a client are: their storage is not
    // reused for the next answer's read.
    let mut frames = Vec::new();
    for _ in 0..3 {
        let mut body = post(&pool, addr).await;
        let Inner::Lean(lean) = &mut body.0 else {
            panic!("a plain upstream's body comes from the lean pool");
        };
        in_first_read.push(lean.conn.as_ref().map_or(0, |c| c.buf.len()));
        let mut got = 0;
        while let Some(data) = std::future::poll_fn(|cx| lean.poll_frame(cx)).await {
            let data = data.expect("pool test");
            got += data.len();
            frames.push(data);
        }
        assert!(got == 20_000 || got == 100, "{got}");
    }
    // The first answer's read asked for a head's room; the second for
    // the first's size, and got all of it.
    assert!(in_first_read[0] < 20_000, "{in_first_read:?}");
    assert_eq!(in_first_read[1], 20_000, "{in_first_read:?}");
    // A small answer after it: room back down to a head's.
    assert_eq!(pool.answer_room.load(Ordering::Relaxed), HEAD_ROOM);
}
