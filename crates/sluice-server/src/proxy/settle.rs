//! Accounting: what admission took from the limits for one request, settled
//! against the usage it came to when the request ends (however it ends).

use sluice_core::limits::{Reservation, StreamPermit};
use sluice_core::request::Usage;

use crate::shared_limits::{BudgetCharge, SharedReservation};

/// The limits a request holds until it settles.
#[derive(Default)]
pub struct Accounting {
    /// Token reservations in this process's rate limiters: the key's and
    /// the model's at most, inline.
    pub reservations: smallvec::SmallVec<[Reservation; 2]>,
    /// The key's token and cost budgets, charged with the usage.
    pub budget: Option<BudgetCharge>,
    /// Tokens reserved in the shared (Redis) limiter.
    pub shared_reservation: Option<SharedReservation>,
    /// Held while a streamed response is open (per-key stream limit).
    pub stream_permit: Option<StreamPermit>,
    /// A Responses turn to store once its answer completed.
    pub turn: Option<crate::responses_store::PendingTurn>,
}

impl Accounting {
    /// Settles every reservation with the real usage; unknown usage (a
    /// request cut short) keeps what was reserved charged. Releases the
    /// stream permit. `now` is when the request ended.
    pub fn settle(&mut self, usage: Option<Usage>, answered: bool, now: tokio::time::Instant) {
        if let Some(t) = self.turn.take().filter(|_| answered) {
            t.keep();
        }
        let total = usage.map(|u| (u.prompt_tokens + u.completion_tokens) as f64);
        if !self.reservations.is_empty() {
            let now = crate::clock::secs_at(now);
            for r in &self.reservations {
                r.settle(total.unwrap_or(r.tokens), now);
            }
        }
        if let (Some(b), Some(u)) = (self.budget.take(), usage) {
            b.charge(u.prompt_tokens, u.completion_tokens);
        }
        if let Some(r) = self.shared_reservation.take() {
            r.settle(total);
        }
        self.stream_permit = None;
    }
}
