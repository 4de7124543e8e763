//! A tool server over Streamable HTTP: each message is a POST; a request's
//! answer comes back as JSON or as an SSE stream (progress first); the
//! server's own notifications come on a GET stream when it offers one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sluice_providers::transport::{self, ProviderClient, UpstreamBody};

use super::router::{Inbound, Router};
use crate::rpc::{self, RpcError};

pub struct Http {
    client: ProviderClient,
    url: http::Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `Mcp-Session-Id` and `MCP-Protocol-Version` once initialized.
    session: Mutex<(Option<HeaderValue>, Option<HeaderValue>)>,
    router: Arc<Router>,
    /// Largest answer or event.
    max_body: usize,
}

impl Http {
    pub fn new(
        client: ProviderClient,
        url: &str,
        headers: &[(String, sluice_core::secret::Secret)],
        router: Arc<Router>,
        max_body: usize,
    ) -> Result<Self, String> {
        let url = url.parse().map_err(|e| format!("url: {e}"))?;
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                let mut value = HeaderValue::from_str(v.expose()).map_err(|e| e.to_string())?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            client,
            url,
            headers,
            session: Mutex::new((None, None)),
            router,
            max_body,
        })
    }

    fn request(&self, method: http::Method, body: Option<Bytes>) -> http::Request<Full<Bytes>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(self.url.clone());
        let h = b.headers_mut().expect("a fresh builder");
        for (k, v) in &self.headers {
            h.insert(k, v.clone());
        }
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if body.is_some() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = &s.0 {
            h.insert("mcp-session-id", id.clone());
        }
        if let Some(v) = &s.1 {
            h.insert("mcp-protocol-version", v.clone());
        }
        drop(s);
        b.body(Full::new(body.unwrap_or_default()))
            .expect("a valid request")
    }

    /// Remembers the negotiated version (sent as a header from now on).
    pub fn set_version(&self, v: &str) {
        if let Ok(v) = HeaderValue::from_str(v) {
            self.session.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(v);
        }
    }

    /// POSTs one message. The answer to a request (`id`) is dispatched to
    /// the router as it arrives; failures fail that request. A server that
    /// cannot be reached closes the connection (it is down).
    pub async fn post(self: &Arc<Self>, msg: &Value, id: Option<u64>) {
        let body = Bytes::from(serde_json::to_vec(msg).expect("a message serializes"));
        let initialize = msg.get("method").and_then(Value::as_str) == Some("initialize");
        let req = self.request(http::Method::POST, Some(body));
        let res = match transport::send(&self.client, req).await {
            Ok(r) => r,
            Err(e) => {
                let why = format!("cannot reach {}: {}", self.url, e.message);
                self.router.closed(why);
                return;
            }
        };
        let status = res.status();
        if initialize && let Some(s) = res.headers().get("mcp-session-id") {
            self.session.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(s.clone());
        }
        if status == http::StatusCode::ACCEPTED {
            return;
        }
        let sse = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status == http::StatusCode::NOT_FOUND
            && self
                .session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .is_some()
        {
            // The server forgot the session: start over.
            self.router
                .closed("the server ended its session (404)".into());
            return;
        }
        let body = res.into_body();
        let outcome = if sse {
            self.read_events(body).await
        } else {
            self.read_json(body).await
        };
        // Whatever was said, a request still waiting got no answer.
        if let Some(id) = id {
            let why = outcome
                .err()
                .unwrap_or_else(|| format!("HTTP {status} without an answer"));
            self.router.fail(
                id,
                RpcError::new(
                    rpc::UPSTREAM_UNAVAILABLE,
                    format!("mcp server answered badly: {why}"),
                ),
            );
        }
    }

    async fn read_json(self: &Arc<Self>, body: UpstreamBody) -> Result<(), String> {
        let bytes = http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if bytes.is_empty() {
            return Ok(());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(msgs)) => msgs.into_iter().for_each(|m| self.take(m)),
            Ok(m) => self.take(m),
            Err(e) => return Err(format!("the answer is not JSON: {e}")),
        }
        Ok(())
    }

    /// Reads an SSE stream to its end, dispatching each event's message.
    async fn read_events(self: &Arc<Self>, mut body: UpstreamBody) -> Result<(), String> {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the event stream broke: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(event) = next_event(&mut buf) {
                if let Ok(v) = serde_json::from_slice::<Value>(&event) {
                    self.take(v);
                }
            }
            if buf.len() > self.max_body {
                return Err("an event over the size limit".into());
            }
        }
        Ok(())
    }

    fn take(self: &Arc<Self>, v: Value) {
        if let Inbound::Answer(a) = self.router.dispatch(v) {
            let me = self.clone();
            tokio::spawn(async move { me.post(&a, None).await });
        }
    }

    /// Listens on the server's GET stream for its notifications (list
    /// changes), reconnecting while the server offers one.
    pub async fn listen(self: Arc<Self>) {
        loop {
            let req = self.request(http::Method::GET, None);
            let Ok(res) = transport::send(&self.client, req).await else {
                return;
            };
            if res.status() != http::StatusCode::OK {
                return;
            }
            let _ = self.read_events(res.into_body()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Ends the session (best effort).
    pub async fn close(&self) {
        if self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .is_none()
        {
            return;
        }
        let req = self.request(http::Method::DELETE, None);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), transport::send(&self.client, req)).await;
    }
}

/// Takes one complete SSE event's data (its `data:` lines joined) off the
/// front of `buf`; `None` until an event is complete.
pub fn next_event(buf: &mut BytesMut) -> Option<Vec<u8>> {
    loop {
        let (end, sep) = [&b"\n\n"[..], b"\r\n\r\n"]
            .iter()
            .filter_map(|s| memchr::memmem::find(buf, s).map(|i| (i, s.len())))
            .min()?;
        let event = buf.split_to(end + sep);
        let mut data = Vec::new();
        for line in event[..end].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(d) = line.strip_prefix(b"data:") {
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
        if !data.is_empty() {
            return Some(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_cut_whole() {
        let mut b = BytesMut::from(&b"event: message\ndata: {\"a\":1}\n\n: ping\n\ndata: {\"b\"\r\ndata: :2}\r\n\r\ndata: {\"c\""[..]);
        assert_eq!(next_event(&mut b).unwrap(), br#"{"a":1}"#);
        assert_eq!(next_event(&mut b).unwrap(), b"{\"b\"\n:2}");
        assert_eq!(next_event(&mut b), None);
        b.extend_from_slice(b":3}\n\n");
        assert_eq!(next_event(&mut b).unwrap(), br#"{"c":3}"#);
    }
}
