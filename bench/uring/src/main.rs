//! How much could an io_uring data plane save? One minimal HTTP/1.1 proxy
//! loop on monoio, run on its io_uring driver or on its epoll driver, so
//! the two differ in nothing but the driver (`bench/uring.py` runs both
//! beside nginx and Sluice against the same upstream).
//!
//!     uring-probe uring|uring-defer|epoll LISTEN_ADDR UPSTREAM_ADDR
//!
//! `uring-defer` sets up the ring with `COOP_TASKRUN | SINGLE_ISSUER |
//! DEFER_TASKRUN` (completions are run when the thread waits for them).
//!
//! One thread. Each client connection gets its own keep-alive upstream
//! connection; a request is read whole (head and `content-length` body) and
//! forwarded as it came, the answer likewise. No header is parsed beyond
//! `content-length`, nothing is rewritten, no pipelining, no chunked bodies:
//! the floor of a proxy's work per request, which is what the driver's
//! share of it is measured against. A bench tool, not a server.

use std::io;
use std::net::SocketAddr;

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const BUFFER: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        || io::Error::other("usage: uring-probe uring|uring-defer|epoll LISTEN_ADDR UPSTREAM_ADDR");
    let (Some(driver), Some(listen), Some(upstream)) = (args.get(1), args.get(2), args.get(3))
    else {
        return Err(usage());
    };
    let listen: SocketAddr = listen.parse().map_err(|_| usage())?;
    let upstream: SocketAddr = upstream.parse().map_err(|_| usage())?;
    match driver.as_str() {
        "uring" => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()?
            .block_on(serve(listen, upstream)),
        "uring-defer" => {
            // Completions run only when the thread asks for them (one
            // thread submits and reaps): no task-work interrupts.
            let mut urb = io_uring::IoUring::builder();
            urb.setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun();
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(urb)
                .build()?
                .block_on(serve(listen, upstream))
        }
        "epoll" => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()?
            .block_on(serve(listen, upstream)),
        _ => Err(usage()),
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("listening on {listen}");
    loop {
        let (client, _) = listener.accept().await?;
        monoio::spawn(async move {
            if let Err(e) = relay(client, upstream).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// Serves one client connection until it closes.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut up: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(BUFFER);
    loop {
        let Some(n) = message(&mut client, &mut buf).await? else {
            return Ok(());
        };
        if n != buf.len() {
            return Err(io::Error::other("pipelined requests are not supported"));
        }
        let u = match up.as_mut() {
            Some(u) => u,
            None => {
                let s = TcpStream::connect(upstream).await?;
                s.set_nodelay(true)?;
                up.insert(s)
            }
        };
        buf = send(u, buf).await?;
        let Some(n) = message(u, &mut buf).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        if n != buf.len() {
            return Err(io::Error::other("upstream sent more than one answer"));
        }
        buf = send(&mut client, buf).await?;
    }
}

/// Writes all of `buf`; gives it back emptied.
async fn send(s: &mut TcpStream, buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let (r, mut buf) = s.write_all(buf).await;
    r?;
    buf.clear();
    Ok(buf)
}

/// Reads until `buf` holds one whole message; its length, or `None` at a
/// close before its first byte.
async fn message(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(n) = complete(buf)? {
            return Ok(Some(n));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let owned = std::mem::take(buf);
        let len = owned.len();
        let (r, tail): (_, SliceMut<Vec<u8>>) = s.read(owned.slice_mut(len..)).await;
        *buf = tail.into_inner();
        if r? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

/// The length of the whole message at the start of `buf`, once it is there.
fn complete(buf: &[u8]) -> io::Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let mut length = 0usize;
    for line in buf[..end].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other("bad content-length"))?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(io::Error::other("chunked bodies are not supported"));
        }
    }
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn a_message_is_complete_with_its_whole_body() {
        let m = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(complete(&m[..m.len() - 1]).ok(), Some(None));
        assert_eq!(complete(m).ok(), Some(Some(m.len())));
        assert_eq!(complete(b"GET / HTTP/1.1\r\n\r\n").ok(), Some(Some(18)));
        assert!(complete(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
