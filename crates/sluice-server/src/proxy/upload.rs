//! Form uploads (audio to transcribe, images to edit): read whole while
//! they fit in `server.max_body_bytes` — then they can be retried on
//! another target — and streamed through beyond that, up to
//! `server.max_upload_bytes`, without holding the file: the gateway reads
//! only until the `model` field and the start of the file are in, and sends
//! the rest upstream as it arrives (one target: the bytes cannot be sent
//! twice).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Frame;
use sluice_core::media::{self, Media};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::{BodyError, BoxBody};

/// An upload as the request path holds it.
pub enum Intake {
    /// All of it, within `max_body_bytes` (or a form whose model comes after
    /// a large file: held whole, within `max_upload_bytes`).
    Whole(Bytes),
    /// The first bytes (model and the start of the file); the rest is still
    /// arriving.
    Streamed(StreamedUpload),
}

pub struct StreamedUpload {
    pub prefix: Bytes,
    rest: Mutex<Option<Body>>,
    /// The client's declared length, when it sent one.
    declared: Option<u64>,
    /// Most bytes the whole upload may have.
    max: usize,
    /// Set when the upload went past `max` while streaming.
    pub exceeded: Arc<AtomicBool>,
}

pub fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("upload exceeds the limit of {max} bytes"),
    )
}

/// Reads an upload until it is whole or can be streamed.
pub async fn read(
    headers: &HeaderMap,
    mut body: Body,
    (boundary, m): (&str, Media),
    (small, max): (usize, usize),
    timeout: Duration,
) -> Result<Intake, GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        // The common refusal (and its draining) is the whole-body reader's.
        return super::intake::read_body(headers, body, max, timeout)
            .await
            .map(Intake::Whole);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    format!(
                        "the upload's first {} bytes did not arrive within {} ms",
                        buf.len(),
                        timeout.as_millis()
                    ),
                ));
            }
            Ok(None) => return Ok(Intake::Whole(buf.freeze())),
            Ok(Some(Err(e))) => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!("could not read the request body: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&data);
        if buf.len() > small && media::peek_form_prefix(&buf, boundary, m)?.is_some() {
            return Ok(Intake::Streamed(StreamedUpload {
                prefix: buf.freeze(),
                rest: Mutex::new(Some(body)),
                declared,
                max,
                exceeded: Arc::default(),
            }));
        }
    }
}

impl StreamedUpload {
    /// The whole upload as a body: `head` (the prefix as it goes upstream,
    /// model rewritten) then the rest as it arrives, held to the limit; and
    /// its length when the client declared one. `None` once taken.
    pub fn take(&self, head: Bytes) -> Option<(BoxBody, Option<u64>)> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let length = self
            .declared
            .map(|n| n - self.prefix.len() as u64 + head.len() as u64);
        let allowed = self.max.saturating_sub(self.prefix.len());
        let (exceeded, max) = (self.exceeded.clone(), self.max);
        let mut seen = 0usize;
        let rest = futures_util::StreamExt::map(http_body_util::BodyStream::new(rest), move |r| {
            let f = r.map_err(|e| Box::new(e) as BodyError)?;
            seen += f.data_ref().map_or(0, Bytes::len);
            if seen > allowed {
                exceeded.store(true, Ordering::Release);
                return Err(Box::new(too_large(max)) as BodyError);
            }
            Ok(f)
        });
        let head = futures_util::stream::iter([Ok::<_, BodyError>(Frame::data(head))]);
        let stream = futures_util::StreamExt::chain(head, rest);
        Some((
            http_body_util::StreamBody::new(stream).boxed_unsync(),
            length,
        ))
    }

    /// Whether the rest is still here (no attempt took it).
    pub fn available(&self) -> bool {
        self.rest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The whole upload in memory (for an in-process target): `head` (the
    /// first bytes as the request goes on, prompt redacted) then the rest,
    /// read within the limit.
    pub async fn read_all(&self, head: &[u8], timeout: Duration) -> Result<Bytes, GatewayError> {
        let Some(rest) = self.rest.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(GatewayError::new(
                ErrorKind::UpstreamUnreachable,
                "the upload was already sent to another target",
            ));
        };
        let allowed = self.max.saturating_sub(self.prefix.len());
        let read = tokio::time::timeout(
            timeout,
            http_body_util::Limited::new(rest, allowed).collect(),
        )
        .await
        .map_err(|_| {
            GatewayError::new(
                ErrorKind::RequestTimeout,
                "the upload did not arrive in time",
            )
        })?;
        let rest = read.map_err(|_| too_large(self.max))?.to_bytes();
        let mut all = BytesMut::with_capacity(head.len() + rest.len());
        all.extend_from_slice(head);
        all.extend_from_slice(&rest);
        Ok(all.freeze())
    }
}

/// Before an attempt: a streamed upload is read whole for an in-process
/// target (`Some`); one already sent to an earlier target cannot go again.
pub(super) async fn before_attempt(
    call: &super::call::Call<'_>,
    upstream: &crate::app::Upstream,
) -> Result<Option<Bytes>, GatewayError> {
    let Some(u) = call.upload else {
        return Ok(None);
    };
    if !u.available() {
        return Err(GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            "the upload was streamed to a target that failed; it cannot be sent twice",
        ));
    }
    if upstream.adapter.over_network() {
        return Ok(None);
    }
    let left = call
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    u.read_all(call.body, left).await.map(Some)
}

/// Sends a prepared upload request (its body the rewritten first bytes)
/// with the rest of the upload streamed after them.
pub(super) async fn send(
    u: &StreamedUpload,
    upstream: &crate::app::Upstream,
    provider: &sluice_core::config::ProviderConfig,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<sluice_providers::transport::UpstreamBody>, GatewayError> {
    let (mut parts, head) = req.into_parts();
    let head = head
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let Some((body, length)) = u.take(head) else {
        return Err(GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            "the upload was already sent to another target",
        ));
    };
    match length {
        Some(n) => {
            parts
                .headers
                .insert(CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        None => {
            parts.headers.remove(CONTENT_LENGTH);
        }
    }
    let client = upstream
        .upload_client
        .get_or_init(|| sluice_providers::transport::upload_client_for(provider));
    let sent =
        sluice_providers::transport::send_upload(client, http::Request::from_parts(parts, body));
    let r = sent.await;
    if u.exceeded.load(Ordering::Acquire) {
        return Err(too_large(u.max));
    }
    r
}
