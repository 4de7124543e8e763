//! A response body offered to the filters chunk by chunk, as it streams:
//! each data frame goes through every filter's `proxy_on_response_body`
//! (end of stream false), then one call with end of stream true when the
//! body ends. A filter that answers `Pause` before the end holds what it
//! was offered, and is offered it again with the next chunk (Envoy's
//! buffering). The contexts end (`proxy_on_log`, `proxy_on_done`) when the
//! body does, or when the client goes away.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use sluice_wasm::filter::{Exchange, Flow};

use super::run::Chain;

pub(super) struct Filtered {
    inner: Body,
    chain: Chain,
    x: Exchange,
    /// What each filter holds back (it paused before the end).
    held: Vec<Vec<u8>>,
    done: bool,
}

impl Filtered {
    pub fn new(inner: Body, chain: Chain, x: Exchange) -> Self {
        let held = vec![Vec::new(); chain.streams.len()];
        Self {
            inner,
            chain,
            x,
            held,
            done: false,
        }
    }

    /// `data` through every filter; what comes out the other end.
    fn offer(&mut self, data: Vec<u8>, end: bool) -> Result<Vec<u8>, axum::Error> {
        let mut data = data;
        for i in 0..self.chain.streams.len() {
            let mut buf = std::mem::take(&mut self.held[i]);
            if buf.is_empty() {
                buf = data;
            } else {
                buf.extend_from_slice(&data);
            }
            self.x.response_body = buf;
            match self.chain.streams[i].response_body(&mut self.x, end) {
                Ok(Flow::Pause) if !end => {
                    self.held[i] = std::mem::take(&mut self.x.response_body);
                    return Ok(Vec::new());
                }
                Ok(_) => data = std::mem::take(&mut self.x.response_body),
                Err(f) => {
                    self.chain.count(self.chain.streams[i].name(), &f);
                    self.end();
                    return Err(axum::Error::new(f.message));
                }
            }
            if self.x.local.take().is_some() {
                tracing::warn!(
                    plugin = self.chain.streams[i].name(),
                    "a local response after the response started is ignored"
                );
            }
        }
        Ok(data)
    }

    fn end(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.x.response_body.clear();
            self.chain.finish(&mut self.x);
        }
    }
}

impl http_body::Body for Filtered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.offer(Vec::from(data), false)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let out = this.offer(Vec::new(), true)?;
                    this.end();
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Filtered {
    fn drop(&mut self) {
        self.end();
    }
}
