//! HTTP/1.1 on the wire for the plain upstream pool (`pool.rs`): a
//! request's head written in one buffer, a response head parsed with
//! httparse (the parser hyper uses), and the response body's framing
//! decoded from the connection's read buffer.
//!
//! The rules are RFC 9112's, as hyper's client applies them: a `HEAD`
//! request and a 204 or 304 answer have no body; a `transfer-encoding`
//! ending in `chunked` wins over a `content-length` (and the connection is
//! not reused then); several `content-length`s must agree; without either
//! the body runs to the connection's close. 1xx answers before the final
//! one are skipped.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};

/// Most headers a response head may carry (hyper's client default).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest response head (hyper's client default buffer limit).
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// Most bytes of trailers after the last chunk (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Chunks smaller than this that are in the read buffer together are
/// handed on as one frame (see [`Framing::decode_joined`]).
const JOIN_BELOW: usize = 4 * 1024;
/// The most bytes joined into one frame.
const JOIN_MAX: usize = 64 * 1024;

/// Writes `method target HTTP/1.1`, the headers (`host` when missing, the
/// body's own `content-length` in place of any given length or transfer
/// coding) and the blank line.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    host: &HeaderValue,
    body_len: usize,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        line(out, b"host", host.as_bytes());
    }
    for (name, value) in &parts.headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let bodiless = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if body_len > 0 || !bodiless {
        let mut n = itoa::Buffer::new();
        line(out, b"content-length", n.format(body_len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed final response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub response: http::Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this body.
    pub keep_alive: bool,
}

/// Parses the final response head at the start of `buf` and takes it out
/// of `buf` (1xx heads before it too). `Ok(None)`: not all of it is here.
pub(crate) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, String> {
    loop {
        // Room for a usual head first: the slots are zeroed on every parse.
        let parsed = match parse_one::<FEW_HEADERS>(buf, method) {
            Err(Refused::TooManyHeaders) => parse_one::<MAX_HEADERS>(buf, method),
            other => other,
        };
        match parsed {
            Ok(Parsed::Final(head)) => return Ok(Some(head)),
            Ok(Parsed::Interim) => continue,
            Ok(Parsed::Partial) => return Ok(None),
            Err(Refused::TooManyHeaders) => return Err(format!("over {MAX_HEADERS} headers")),
            Err(Refused::Bad(why)) => return Err(why),
        }
    }
}

/// Headers a head is first parsed with room for.
const FEW_HEADERS: usize = 24;

enum Parsed {
    Partial,
    /// A 1xx head, taken out of the buffer.
    Interim,
    Final(Head),
}

enum Refused {
    TooManyHeaders,
    Bad(String),
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Refused::Bad(why)
    }
}

fn parse_one<const N: usize>(buf: &mut BytesMut, method: &Method) -> Result<Parsed, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; N];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("response head over {MAX_HEAD} bytes").into());
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooManyHeaders),
        Err(e) => return Err(format!("malformed response head: {e}").into()),
    };
    let code = resp.code.unwrap_or(0);
    if code == 101 {
        return Err(String::from("the upstream switched protocols unasked").into());
    }
    if (100..200).contains(&code) {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code).map_err(|e| format!("status {code}: {e}"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each header's name and value sit in `buf` (a head is at most
    // `MAX_HEAD` bytes), so the values can be slices of the head's bytes
    // rather than copies.
    let base = buf.as_ptr() as usize;
    let mut at = [[0u32; 4]; N];
    let n = resp.headers.len();
    for (slot, h) in at.iter_mut().zip(resp.headers.iter()) {
        let name = (h.name.as_ptr() as usize - base) as u32;
        let value = (h.value.as_ptr() as usize - base) as u32;
        *slot = [
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        ];
    }
    let head = buf.split_to(len).freeze();
    // With room for what a gateway adds before relaying the answer.
    let mut map = HeaderMap::with_capacity(n + crate::ADDED_HEADERS);
    let mut noted = Noted::default();
    for &[ns, ne, vs, ve] in &at[..n] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = crate::header_names::header_name(&head[ns..ne]).map_err(|_| {
            format!(
                "bad header name {:?}",
                String::from_utf8_lossy(&head[ns..ne])
            )
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| format!("bad value for header {name}"))?;
        noted.note(&name, &value);
        if !hop_only(&name) {
            map.append(name, value);
        }
    }
    let (framing, framed_apart) = framing(&map, method, status, &noted)?;
    let keep_alive = !framed_apart && reusable(version, &noted);
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// Headers about the hop to the upstream alone (RFC 9110 §7.6.1): read
/// into [`Noted`] and left out of the answer's map. Nothing relays them,
/// and each cost an insert, then a removal when the answer was relayed
/// (~450 instructions; nearly every upstream sends `connection:
/// keep-alive`).
fn hop_only(name: &http::HeaderName) -> bool {
    // Names against names: a name against a `&str` is a case-blind byte
    // compare for every header (~30 instructions each, ~730 for an
    // answer with a hosted provider's 24 headers).
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    *name == CONNECTION || *name == KEEP_ALIVE || *name == PROXY_CONNECTION
}

/// What an answer's framing and reuse depend on, noted as its headers are
/// read, so that the common answer (one length, perhaps `connection:
/// keep-alive`) is judged without looking names up in the map again.
#[derive(Default)]
struct Noted {
    transfer_encoding: bool,
    connection: bool,
    /// A `connection` value (of visible ASCII) has this token.
    close: bool,
    keep_alive: bool,
    length_given: bool,
    /// The length every `content-length` agrees on so far.
    length: Option<u64>,
    /// The first thing wrong with the lengths, in header order.
    bad_length: Option<&'static str>,
}

impl Noted {
    fn note(&mut self, name: &http::HeaderName, value: &HeaderValue) {
        if name == CONTENT_LENGTH {
            self.length_given = true;
            if self.bad_length.is_none() {
                self.bad_length = self.add_length(value.as_bytes()).err();
            }
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == CONNECTION {
            self.connection = true;
            // A value that is not visible ASCII is passed over, as it was
            // when values were read as `str`.
            if value.to_str().is_ok() {
                for token in tokens(value.as_bytes()) {
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
    }

    fn add_length(&mut self, value: &[u8]) -> Result<(), &'static str> {
        for part in value.split(|&b| b == b',') {
            let n = content_length(part.trim_ascii()).ok_or("invalid content-length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("content-lengths that disagree");
            }
            self.length = Some(n);
        }
        Ok(())
    }
}

/// The body's framing, and whether it makes the connection unfit for reuse
/// (a body that ends at the close, or both a transfer coding and a length).
fn framing(
    map: &HeaderMap,
    method: &Method,
    status: StatusCode,
    noted: &Noted,
) -> Result<(Framing, bool), String> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Sized(0), false));
    }
    if noted.transfer_encoding {
        let last = map
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), noted.length_given)
        } else {
            (Framing::Close, true)
        });
    }
    if let Some(why) = noted.bad_length {
        return Err(why.into());
    }
    Ok(match noted.length {
        Some(n) => (Framing::Sized(n), false),
        None => (Framing::Close, true),
    })
}

/// The comma-separated tokens of a header value (`connection`), ASCII
/// whitespace trimmed, compared as bytes: `str` splitting with Unicode
/// trimming cost ~470 instructions for one `keep-alive`. The lean server
/// loop and the upstream client both read `connection` with it.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// A `content-length` value: one or more ASCII digits and nothing else
/// (`str::parse` would take `+5`, which hyper refuses), within `u64`. The
/// lean server loop and the upstream client both judge lengths with it.
pub fn content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn reusable(version: Version, noted: &Noted) -> bool {
    if !noted.connection {
        return version == Version::HTTP_11;
    }
    if version == Version::HTTP_10 {
        noted.keep_alive && !noted.close
    } else {
        !noted.close
    }
}

/// How a response body is delimited, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are still to come.
    Sized(u64),
    Chunked(Chunk),
    /// Up to the connection's close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are next.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// Trailer lines (so many bytes of them so far), then the blank line.
    Trailers(usize),
    Done,
}

/// What the read buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// More bytes must be read first.
    More,
    End,
}

impl Framing {
    /// Takes the body's next data out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, String> {
        self.settle(buf)?;
        let (rem, next) = match self {
            Framing::Sized(0) | Framing::Chunked(Chunk::Done) => return Ok(Step::End),
            _ if buf.is_empty() => return Ok(Step::More),
            Framing::Close => return Ok(Step::Data(buf.split().freeze())),
            Framing::Sized(rem) => (rem, None),
            Framing::Chunked(Chunk::Data(rem)) => (rem, Some(Chunk::DataEnd)),
            Framing::Chunked(_) => return Ok(Step::More),
        };
        let n = (*rem).min(buf.len() as u64);
        *rem -= n;
        if *rem == 0
            && let Some(next) = next
        {
            *self = Framing::Chunked(next);
        }
        // `n` is at most `buf.len()`, a usize.
        Ok(Step::Data(buf.split_to(n as usize).freeze()))
    }

    /// [`Framing::decode`], with the data of the small chunks that are in
    /// `buf` together joined into one frame (copied once, up to
    /// [`JOIN_MAX`] bytes). An upstream writes each SSE event of a stream as
    /// its own chunk, and a read of a fast one brings dozens: handed on one
    /// by one, each paid the whole per-frame path (the stream's checks, its
    /// timers, a buffer split shared by an atomic count, its own write to
    /// the client). A lone chunk, or a large one, is still handed on as it
    /// lies in the buffer, without a copy, and so is a chunk not yet read
    /// whole. The framing after the data is read past (settled) before
    /// this returns; framing that is wrong there is refused by the next
    /// call, after the data before it.
    pub(crate) fn decode_joined(&mut self, buf: &mut BytesMut) -> Result<Step, String> {
        let first = match self.decode(buf)? {
            Step::Data(d) => d,
            other => return Ok(other),
        };
        let mut joined = BytesMut::new();
        // Settled after the data in any case (the caller need not), an
        // error left for the next call.
        while self.settle(buf).is_ok() && first.len() < JOIN_BELOW {
            let Framing::Chunked(Chunk::Data(rem)) = self else {
                break;
            };
            // Whole chunks only: an upstream's chunk is often one SSE
            // event, and a frame that ends inside one sends the stream's
            // check down its slower path for the frames after it.
            if *rem >= JOIN_BELOW as u64 {
                break;
            }
            // Below JOIN_BELOW: fits a usize.
            let n = *rem as usize;
            if n > buf.len() || first.len() + joined.len() + n > JOIN_MAX {
                break;
            }
            if joined.is_empty() {
                joined.reserve(first.len() + buf.len().min(JOIN_MAX));
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&buf[..n]);
            buf.advance(n);
            *self = Framing::Chunked(Chunk::DataEnd);
        }
        Ok(Step::Data(if joined.is_empty() {
            first
        } else {
            joined.freeze()
        }))
    }

    /// Whether the whole body has been taken.
    pub(crate) fn ended(&self) -> bool {
        matches!(self, Framing::Sized(0) | Framing::Chunked(Chunk::Done))
    }

    /// Moves past chunk framing in `buf` up to the next data or the end,
    /// so that [`Framing::ended`] is true as soon as the last byte is in.
    pub(crate) fn settle(&mut self, buf: &mut BytesMut) -> Result<(), String> {
        let Framing::Chunked(state) = self else {
            return Ok(());
        };
        loop {
            // Nothing to read past: no state moves on without a byte. A
            // paced stream's body is polled several times per event with
            // its buffer empty; each went through a line search (~390 per
            // 64-token stream; returning here took its instructions from
            // ~435k to ~415k, `bench/instructions.py --stream --model frames`).
            if buf.is_empty() {
                return Ok(());
            }
            match *state {
                Chunk::Data(_) | Chunk::Done => return Ok(()),
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    buf.advance(2);
                    *state = Chunk::Size;
                }
                Chunk::Size => {
                    let Some(n) = line_len(buf, MAX_SIZE_LINE)? else {
                        return Ok(());
                    };
                    let size = chunk_size(&buf[..n])?;
                    buf.advance(n);
                    *state = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Trailers(seen) => {
                    let Some(n) = line_len(buf, MAX_TRAILERS - seen)? else {
                        return Ok(());
                    };
                    buf.advance(n);
                    *state = if n == 2 {
                        Chunk::Done
                    } else {
                        Chunk::Trailers(seen + n)
                    };
                }
            }
        }
    }
}

/// The length of the next CRLF-ended line of `buf`, CRLF included; `None`
/// until it has all arrived; an error past `max` bytes.
fn line_len(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i + 1 > max => Err("chunk framing line too long".into()),
        Some(i) if i == 0 || buf[i - 1] != b'\r' => {
            Err("chunk framing line not ended by CRLF".into())
        }
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= max => Err("chunk framing line too long".into()),
        None => Ok(None),
    }
}

/// The hex size at the start of a chunk-size line (extensions ignored).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let hex = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[hex..line.len() - 2];
    let rest_ok = rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t');
    if hex == 0 || hex > 15 || !rest_ok {
        return Err(format!(
            "bad chunk size line {:?}",
            String::from_utf8_lossy(&line[..line.len() - 2])
        ));
    }
    // At most 15 hex digits: no overflow.
    Ok(line[..hex].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
    }))
}

#[cfg(test)]
#[path = "h1wire_tests.rs"]
mod tests;
