use bytes::BytesMut;
use http::{HeaderValue, Method};

use super::*;

fn head_of(text: &str, method: &Method) -> Result<Option<Head>, String> {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_head(&mut buf, method)
}

fn framing_of(text: &str) -> (Framing, bool) {
    let h = head_of(text, &Method::POST)
        .expect("a good head")
        .expect("a whole head");
    (h.framing, h.keep_alive)
}

/// Decodes `wire` fed to the decoder `step` bytes at a time; the data, and
/// whether the end was seen. Both decoders ([`Framing::decode`] and
/// [`Framing::decode_joined`]) must agree.
fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), String> {
    let plain = decode_with(framing, wire, step, false);
    let joined = decode_with(framing, wire, step, true);
    assert_eq!(plain, joined, "the joining decoder differs, step {step}");
    plain
}

fn decode_with(
    framing: Framing,
    wire: &[u8],
    step: usize,
    joined: bool,
) -> Result<(Vec<u8>, bool), String> {
    let mut f = framing;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in wire.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let next = if joined {
                f.decode_joined(&mut buf)?
            } else {
                f.decode(&mut buf)?
            };
            match next {
                Step::Data(d) => {
                    assert!(!d.is_empty(), "no empty data frames");
                    assert!(d.len() <= JOIN_MAX.max(step), "a frame past the join limit");
                    out.extend_from_slice(&d);
                }
                Step::More => break,
                Step::End => {
                    assert!(f.ended());
                    return Ok((out, buf.is_empty()));
                }
            }
        }
    }
    Ok((out, false))
}

/// `payloads` as a chunked body's wire, with its terminator.
fn chunked(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for p in payloads.iter().filter(|p| !p.is_empty()) {
        wire.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        wire.extend_from_slice(p);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

#[test]
fn small_chunks_read_together_go_on_as_one_frame() {
    let mut f = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n5\r\nfg"[..]);
    // Whole chunks only: the one not read whole goes on by itself.
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::Data("abcde".into())));
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::Data("fg".into())));
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::More));
    buf.extend_from_slice(b"hij\r\n1\r\nk\r\n0\r\n\r\n");
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::Data("hijk".into())));
    // The framing after the data is settled: the end is seen.
    assert!(f.ended() && buf.is_empty());
    // Bad framing after joined data: the data first, then the refusal.
    let mut f = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\ndeXY"[..]);
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::Data("abcde".into())));
    assert!(f.decode_joined(&mut buf).is_err());
}

#[test]
fn a_lone_or_large_chunk_goes_on_without_a_copy() {
    let large = vec![b'L'; JOIN_BELOW];
    let wire = chunked(&[b"abc".to_vec(), large.clone(), b"xy".to_vec()]);
    let mut buf = BytesMut::from(&wire[..]);
    let at = |b: &BytesMut, i: usize| b.as_ptr() as usize + i;
    let mut f = Framing::Chunked(Chunk::Size);
    // "abc" is followed by a large chunk, which is not joined to it.
    let start = at(&buf, 0);
    let Ok(Step::Data(d)) = f.decode_joined(&mut buf) else {
        panic!("data")
    };
    assert_eq!((&d[..], d.as_ptr() as usize), (&b"abc"[..], start + 3));
    // Its framing was read past already, looking for a chunk to join.
    let head = at(&buf, 0);
    let Ok(Step::Data(d)) = f.decode_joined(&mut buf) else {
        panic!("data")
    };
    assert_eq!((d.len(), d.as_ptr() as usize), (JOIN_BELOW, head));
    assert_eq!(f.decode_joined(&mut buf), Ok(Step::Data("xy".into())));
}

proptest::proptest! {
    /// Whatever the chunks' sizes and however the reads cut the wire, the
    /// joining decoder hands on the body the plain one does, in frames
    /// within the join limit.
    #[test]
    fn joined_chunks_are_the_body(
        sizes in proptest::collection::vec(
            proptest::prop_oneof![0usize..64, 64usize..600, 3000usize..5000, 30_000usize..40_000],
            0..40),
        step in proptest::prop_oneof![1usize..40, 40usize..3000, 3000usize..70_000],
    ) {
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + (i % 26) as u8; n])
            .collect();
        let (data, clean) = decode_in_steps(Framing::Chunked(Chunk::Size), &chunked(&payloads), step)
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        proptest::prop_assert_eq!(data, payloads.concat());
        proptest::prop_assert!(clean);
    }
}

#[test]
fn request_head_in_origin_form_with_host_and_length() {
    let req = http::Request::post("http://up:8000/v1/chat/completions?x=1")
        .header("content-type", "application/json")
        .header("content-length", "999")
        .header("transfer-encoding", "chunked")
        .body(())
        .expect("test");
    let (parts, ()) = req.into_parts();
    let mut out = Vec::new();
    write_head(&mut out, &parts, &HeaderValue::from_static("up:8000"), 7);
    assert_eq!(
        String::from_utf8(out).expect("test"),
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: up:8000\r\n\
         content-type: application/json\r\ncontent-length: 7\r\n\r\n"
    );
    // A GET without a body has no length; a given Host is kept.
    let req = http::Request::get("http://up/")
        .header("host", "other")
        .body(())
        .expect("test");
    let (parts, ()) = req.into_parts();
    let mut out = Vec::new();
    write_head(&mut out, &parts, &HeaderValue::from_static("up"), 0);
    assert_eq!(
        String::from_utf8(out).expect("test"),
        "GET / HTTP/1.1\r\nhost: other\r\n\r\n"
    );
}

#[test]
fn response_head_parsed_and_taken_out_of_the_buffer() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
           HTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\nabcHTTP"[..],
    );
    let h = parse_head(&mut buf, &Method::POST)
        .expect("test")
        .expect("test");
    assert_eq!(h.response.status(), 201);
    let a: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(h.framing, Framing::Sized(3));
    assert!(h.keep_alive);
    assert_eq!(&buf[..], b"abcHTTP");
    // More headers than the first parse has room for.
    let many: String = (0..MAX_HEADERS)
        .map(|i| format!("x-{i}: {i}\r\n"))
        .collect();
    let h = head_of(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::POST)
        .expect("test")
        .expect("test");
    assert_eq!(h.response.headers().len(), MAX_HEADERS);
    assert_eq!(h.response.headers()["x-99"], "99");
    // The headers about the hop itself are read, not kept.
    let h = head_of(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nx-kept: 1\r\ncontent-length: 0\r\n\r\n",
        &Method::POST,
    )
    .expect("test")
    .expect("test");
    assert!(h.keep_alive, "read before it was left out");
    let names: Vec<_> = h.response.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept", "content-length"]);
    // Not all here yet: nothing taken.
    let mut part = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(
        parse_head(&mut part, &Method::POST)
            .expect("test")
            .is_none()
    );
    assert_eq!(part.len(), 27);
}

#[test]
fn bad_heads_are_refused() {
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "SMTP ready\r\n\r\n",
    ] {
        assert!(head_of(bad, &Method::POST).is_err(), "{bad:?}");
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    assert!(head_of(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::POST).is_err());
    let long = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD));
    assert!(head_of(&long, &Method::POST).is_err());
    // Agreeing repeated lengths are one length.
    let same = "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n";
    assert_eq!(framing_of(same), (Framing::Sized(3), true));
}

#[test]
fn framing_follows_rfc_9112() {
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
        (Framing::Chunked(Chunk::Size), true)
    );
    // Both: the coding wins and the connection is not reused.
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
        (Framing::Chunked(Chunk::Size), false)
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
        (Framing::Close, false)
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\n\r\n"),
        (Framing::Close, false)
    );
    assert_eq!(
        framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
        (Framing::Sized(0), true)
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\n\r\n"),
        (Framing::Sized(0), true)
    );
    let head = head_of(
        "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
        &Method::HEAD,
    )
    .expect("test")
    .expect("test");
    assert_eq!(head.framing, Framing::Sized(0));
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n"),
        (Framing::Sized(1), false)
    );
    assert_eq!(
        framing_of("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
        (Framing::Sized(1), false)
    );
    assert_eq!(
        framing_of("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n"),
        (Framing::Sized(1), true)
    );
}

#[test]
fn chunked_bodies_decode_at_every_read_boundary() {
    let wire = b"5;ext=1\r\nhello\r\n1 \r\n,\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n";
    for step in 1..=wire.len() {
        let (data, clean) =
            decode_in_steps(Framing::Chunked(Chunk::Size), wire, step).expect("test");
        assert_eq!(data, b"hello,0123456789abcdef", "step {step}");
        assert!(clean, "nothing left after the end, step {step}");
    }
}

#[test]
fn sized_and_close_bodies_decode() {
    let (data, clean) = decode_in_steps(Framing::Sized(5), b"hellomore", 2).expect("test");
    assert_eq!(data, b"hello");
    assert!(!clean, "bytes after a sized body stay in the buffer");
    let mut f = Framing::Close;
    let mut buf = BytesMut::from(&b"all of it"[..]);
    assert_eq!(f.decode(&mut buf), Ok(Step::Data("all of it".into())));
    assert_eq!(f.decode(&mut buf), Ok(Step::More));
    assert!(!f.ended());
}

#[test]
fn the_end_is_seen_with_the_last_data() {
    // The last chunk and the terminator arrive together: after the data,
    // settling reaches the end without another read.
    let mut f = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
    assert_eq!(f.decode(&mut buf), Ok(Step::Data("abc".into())));
    f.settle(&mut buf).expect("test");
    assert!(f.ended());
    assert!(buf.is_empty());
}

#[test]
fn bad_chunk_framing_is_refused() {
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloXY",
        b"5\nhello\r\n",
        b"1234567890abcdef0\r\n",
        b"5zz\r\n",
        b"\r\n",
    ] {
        assert!(
            decode_in_steps(Framing::Chunked(Chunk::Size), bad, bad.len()).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long_ext = format!("5;{}\r\n", "e".repeat(MAX_SIZE_LINE));
    assert!(decode_in_steps(Framing::Chunked(Chunk::Size), long_ext.as_bytes(), 64).is_err());
    let trailers = format!("0\r\n{}", "x-t: v\r\n".repeat(MAX_TRAILERS / 8 + 1));
    assert!(decode_in_steps(Framing::Chunked(Chunk::Size), trailers.as_bytes(), 100).is_err());
}

#[test]
fn content_lengths_are_digits_within_u64() {
    assert_eq!(content_length(b"0"), Some(0));
    assert_eq!(content_length(b"007"), Some(7));
    assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b""[..],
        b"18446744073709551616",
        b"+5",
        b"-1",
        b"5 ",
        b"0x5",
    ] {
        assert_eq!(
            content_length(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// The framing and reuse rules as they were written before the headers
/// were noted while read (each name looked up in the map afterwards): the
/// reference the noted judgement is held to.
fn judged_by_lookups(head: &Head, method: &Method) -> Result<(Framing, bool), String> {
    let map = head.response.headers();
    let status = head.response.status();
    let tokens = |name, token: &str| {
        map.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let reusable = if !map.contains_key(CONNECTION) {
        head.response.version() == http::Version::HTTP_11
    } else if head.response.version() == http::Version::HTTP_10 {
        tokens(CONNECTION, "keep-alive") && !tokens(CONNECTION, "close")
    } else {
        !tokens(CONNECTION, "close")
    };
    let (framing, apart) = if method == Method::HEAD || status == 204 || status == 304 {
        (Framing::Sized(0), false)
    } else if map.contains_key(TRANSFER_ENCODING) {
        let last = map
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            (
                Framing::Chunked(Chunk::Size),
                map.contains_key(CONTENT_LENGTH),
            )
        } else {
            (Framing::Close, true)
        }
    } else {
        let mut length: Option<u64> = None;
        for v in map.get_all(CONTENT_LENGTH) {
            for part in v.as_bytes().split(|&b| b == b',') {
                let n = content_length(part.trim_ascii()).ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("content-lengths that disagree".into());
                }
                length = Some(n);
            }
        }
        match length {
            Some(n) => (Framing::Sized(n), false),
            None => (Framing::Close, true),
        }
    };
    Ok((framing, !apart && reusable))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

    /// Heads made of the headers that decide framing and reuse, in any
    /// number and order, are judged as the map lookups judged them: the
    /// framing, the reuse and the words of a refusal.
    #[test]
    fn noted_headers_judge_as_lookups_did(
        version in proptest::sample::select(&["1.0", "1.1"][..]),
        status in proptest::sample::select(&[200u16, 204, 304, 404][..]),
        head_request in proptest::bool::ANY,
        lines in proptest::collection::vec(proptest::sample::select(&[
            "content-length: 5", "content-length: 7", "Content-Length: 5, 5",
            "content-length: +5", "content-length: ", "transfer-encoding: chunked",
            "Transfer-Encoding: gzip", "transfer-encoding: gzip, chunked", "connection: keep-alive",
            "Connection: close", "connection: Keep-Alive, Upgrade", "connection: x, CLOSE ",
            "connection: \t", "x-other: close", "server: nginx",
        ][..]), 0..6),
    ) {
        let method = if head_request { Method::HEAD } else { Method::POST };
        let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let text = format!("HTTP/{version} {status} X\r\n{text}\r\n");
        let mut buf = BytesMut::from(text.as_bytes());
        // The head as the lookups read it: every line in the map
        // (`connection` included, which the parse keeps out of its own).
        let looked_up = |version| {
            let mut map = HeaderMap::new();
            for l in &lines {
                let (n, v) = l.split_once(':').expect("test lines have a colon");
                map.append(
                    http::HeaderName::from_bytes(n.as_bytes()).expect("test name"),
                    HeaderValue::from_str(v.trim()).expect("test value"),
                );
            }
            let mut response = http::Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).expect("test status");
            *response.version_mut() = version;
            *response.headers_mut() = map;
            Head { response, framing: Framing::Close, keep_alive: false }
        };
        match parse_one::<FEW_HEADERS>(&mut buf, &method) {
            Ok(Parsed::Final(head)) => {
                proptest::prop_assert!(!head.response.headers().contains_key(CONNECTION));
                proptest::prop_assert_eq!(
                    Ok((head.framing, head.keep_alive)),
                    judged_by_lookups(&looked_up(head.response.version()), &method),
                    "{}", text
                );
            }
            Err(Refused::Bad(why)) => {
                // Refused: the lookups refuse it in the same words.
                let head = looked_up(http::Version::HTTP_11);
                proptest::prop_assert_eq!(Err(why), judged_by_lookups(&head, &method), "{}", text);
            }
            _ => proptest::prop_assert!(false, "not parsed whole: {}", text),
        }
    }
}
