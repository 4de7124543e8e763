//! Status updates on their way back to the replicas instructions came
//! from, sent by one task ([`publisher`]) in the order they were made, one
//! pipeline for whatever queued while the last was on its way.
//!
//! A `delivered` is held back up to [`HOLD`]: an agent nearby acks within
//! a fraction of a millisecond, and its `acked` says `delivered` too
//! (statuses only move forward). Sending only the `acked` saves both
//! replicas a Redis message and a wake-up per instruction; the asking
//! replica's record shows `delivered` at most [`HOLD`] later for an agent
//! that acks later or never. `delivered` is not an event, so no event is
//! lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a `delivered` waits for the same instruction's next status.
pub(super) const HOLD: Duration = Duration::from_millis(2);

/// One status update for the replica an instruction came from.
pub(super) struct Update {
    /// That replica's channel.
    pub channel: Arc<str>,
    /// The instruction's id.
    pub id: Arc<str>,
    /// A `delivered`, which a later status makes moot.
    pub delivered: bool,
    /// The message, as published.
    pub msg: String,
}

/// The `delivered` updates held back, oldest first, each with the time
/// it goes anyway.
#[derive(Default)]
pub(super) struct Outbox {
    held: VecDeque<(Instant, Update)>,
}

impl Outbox {
    /// Takes update `u` at `now`: into `out` to be sent, or held.
    pub(super) fn take(&mut self, u: Update, now: Instant, out: &mut Vec<Update>) {
        if u.delivered {
            self.held.push_back((now + HOLD, u));
            return;
        }
        if let Some(at) = self.held.iter().position(|(_, h)| h.id == u.id) {
            self.held.remove(at);
        }
        out.push(u);
    }

    /// Moves the held updates whose time has come (or all, at the end)
    /// into `out`.
    pub(super) fn due(&mut self, now: Option<Instant>, out: &mut Vec<Update>) {
        while let Some((at, _)) = self.held.front() {
            if now.is_some_and(|now| *at > now) {
                break;
            }
            if let Some((_, u)) = self.held.pop_front() {
                out.push(u);
            }
        }
    }

    /// When the oldest held update goes anyway.
    pub(super) fn next(&self) -> Option<Instant> {
        self.held.front().map(|(at, _)| *at)
    }
}

/// Sends the updates queued by `Cluster::status_changed`.
pub(super) async fn publisher(
    mut conn: ConnectionManager,
    timeout: Duration,
    mut queued: mpsc::Receiver<Update>,
) {
    let mut outbox = Outbox::default();
    let (mut incoming, mut batch) = (Vec::with_capacity(64), Vec::with_capacity(64));
    loop {
        let open = match outbox.next() {
            Some(at) => tokio::select! {
                n = queued.recv_many(&mut incoming, 256) => n > 0,
                () = tokio::time::sleep_until(at) => true,
            },
            None => queued.recv_many(&mut incoming, 256).await > 0,
        };
        let now = Instant::now();
        for u in incoming.drain(..) {
            outbox.take(u, now, &mut batch);
        }
        outbox.due(open.then_some(now), &mut batch);
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for u in batch.drain(..) {
                pipe.cmd("PUBLISH").arg(&*u.channel).arg(u.msg).ignore();
            }
            match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "agent hub: redis error"),
                Err(_) => tracing::warn!("agent hub: redis timed out"),
            }
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: &str, delivered: bool) -> Update {
        Update {
            channel: Arc::from("sluice:hub:a"),
            id: Arc::from(id),
            delivered,
            msg: format!("{id}:{delivered}"),
        }
    }

    fn sent(out: &mut Vec<Update>) -> Vec<String> {
        out.drain(..).map(|u| u.msg).collect()
    }

    #[test]
    fn a_delivered_waits_and_a_later_status_of_its_instruction_replaces_it() {
        let (mut o, mut out) = (Outbox::default(), Vec::new());
        let t0 = Instant::now();
        o.take(update("i1", true), t0, &mut out);
        o.take(update("i2", true), t0 + HOLD / 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(o.next(), Some(t0 + HOLD));
        // i1's ack: only the ack goes; i2's delivered still waits.
        o.take(update("i1", false), t0 + HOLD / 4, &mut out);
        o.due(Some(t0 + HOLD / 4), &mut out);
        assert_eq!(sent(&mut out), ["i1:false"]);
        assert_eq!(o.next(), Some(t0 + HOLD / 2 + HOLD));
        // Its time comes: i2's delivered goes after all.
        o.due(Some(t0 + HOLD), &mut out);
        assert!(out.is_empty());
        o.due(Some(t0 + HOLD / 2 + HOLD), &mut out);
        assert_eq!(sent(&mut out), ["i2:true"]);
        assert_eq!(o.next(), None);
        // A status of an instruction with nothing held goes at once.
        o.take(update("i3", false), t0, &mut out);
        assert_eq!(sent(&mut out), ["i3:false"]);
        // At the end, whatever is held goes.
        o.take(update("i4", true), t0, &mut out);
        o.take(update("i5", true), t0, &mut out);
        o.due(None, &mut out);
        assert_eq!(sent(&mut out), ["i4:true", "i5:true"]);
    }
}
