//! `sink = "nats"`: events published to a NATS JetStream stream.
//!
//! Each event is one message on `subject`, with `Nats-Msg-Id` set from the
//! event (see [`message_id`]), so a batch re-sent after a lost
//! acknowledgement, or replayed from the disk buffer, is stored once: the
//! stream drops a message whose id it has seen within its duplicate window.
//! A batch counts as written only when JetStream acknowledged every message
//! in it; anything less fails the whole batch and the writer buffers and
//! retries it (at least once, duplicates removed by the stream).

use std::io;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use sluice_core::config::NatsSinkConfig;

pub struct Nats {
    cfg: NatsSinkConfig,
    /// Connected and the stream known to exist; `None` until the first
    /// write, and again after a failure that was not a single late ack.
    ctx: Option<jetstream::Context>,
}

/// The ids in an event line that name it.
#[derive(serde::Deserialize)]
struct Ids<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    request_id: Option<&'a str>,
    #[serde(borrow)]
    client_request_id: Option<&'a str>,
}

/// The message id of an event line: the request id when the gateway made
/// it (unique per request); when the client chose it, the request id and
/// the event id, because a client may send one id twice and two requests
/// must never be merged into one event. The same line always gets the
/// same id, so a replay is recognised.
pub fn message_id(line: &str) -> Option<String> {
    let ids: Ids<'_> = serde_json::from_str(line).ok()?;
    match (ids.request_id, ids.client_request_id, ids.id) {
        (Some(r), None, _) => Some(r.to_owned()),
        (Some(r), Some(_), Some(id)) => Some(format!("{r}/{id}")),
        (_, _, Some(id)) => Some(id.to_owned()),
        (Some(r), Some(_), None) => Some(r.to_owned()),
        (None, _, None) => None,
    }
}

impl Nats {
    pub fn new(cfg: NatsSinkConfig) -> Self {
        Self { cfg, ctx: None }
    }

    pub fn describe(&self) -> String {
        format!(
            "nats stream {} (subject {})",
            self.cfg.stream, self.cfg.subject
        )
    }

    async fn connect(&self) -> io::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .name("sluice-audit")
            .connection_timeout(self.cfg.timeout)
            .request_timeout(Some(self.cfg.timeout))
            .connect(self.cfg.url.expose())
            .await
            .map_err(io::Error::other)?;
        let ctx = jetstream::ContextBuilder::new()
            .timeout(self.cfg.timeout)
            .build(client);
        ctx.get_or_create_stream(jetstream::stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![self.cfg.subject.clone()],
            duplicate_window: self.cfg.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(io::Error::other)?;
        tracing::info!(stream = %self.cfg.stream, subject = %self.cfg.subject, "audit: connected to NATS JetStream");
        Ok(ctx)
    }

    /// Publishes every line and waits for every acknowledgement.
    pub async fn write(&mut self, lines: &[String]) -> io::Result<()> {
        let ctx = match &self.ctx {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(self.cfg.timeout * 2, self.connect())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "NATS connect timed out")
                    })??;
                self.ctx = Some(c.clone());
                c
            }
        };
        let r = tokio::time::timeout(
            self.cfg.timeout * 2,
            publish_all(&ctx, &self.cfg.subject, lines),
        )
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "NATS acks timed out",
            ))
        });
        if r.is_err() {
            // The client reconnects by itself; the stream may have been
            // removed meanwhile, so look for it again next time.
            self.ctx = None;
        }
        r
    }
}

async fn publish_all(ctx: &jetstream::Context, subject: &str, lines: &[String]) -> io::Result<()> {
    let mut acks = Vec::with_capacity(lines.len());
    for l in lines {
        let mut msg = PublishMessage::build().payload(Bytes::copy_from_slice(l.as_bytes()));
        if let Some(id) = message_id(l) {
            msg = msg.message_id(id);
        }
        let ack = ctx
            .send_publish(subject.to_owned(), msg)
            .await
            .map_err(io::Error::other)?;
        acks.push(ack);
    }
    for a in acks {
        a.await.map_err(io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn the_message_id_is_the_request_id_unless_the_client_chose_it() {
        assert_eq!(
            message_id(r#"{"id":"e1","request_id":"req_1"}"#).as_deref(),
            Some("req_1")
        );
        assert_eq!(
            message_id(r#"{"id":"e2","request_id":"mine","client_request_id":"mine"}"#).as_deref(),
            Some("mine/e2")
        );
        assert_eq!(message_id(r#"{"id":"e3"}"#).as_deref(), Some("e3"));
        assert_eq!(message_id("not json"), None);
    }
}
