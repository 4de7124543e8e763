//! Admission: whether a key may spend what a request would — its token and
//! cost budgets and the key's and model's rate limits, local or shared
//! through Redis — and the rate-limit state reported on the response.

use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use sluice_core::limits;
use sluice_core::{ErrorKind, GatewayError};

use sluice_core::route::ModelRoute;

use crate::app::App;

use super::record::Recorder;

/// A request about to be admitted.
pub(super) struct Request<'a> {
    pub snap: &'a crate::app::Snapshot,
    pub access: &'a crate::access::Access,
    pub key: Option<&'a sluice_core::config::KeyConfig>,
    pub peek: &'a sluice_core::request::RequestPeek<'a>,
    pub body_len: usize,
}

impl<'a> Request<'a> {
    /// The model's route, once the key may use it, its budgets are not
    /// spent, the rate limits have room (tokens reserved) and, for a
    /// stream, the key may open one more.
    pub(super) async fn admit(
        &self,
        app: &Arc<App>,
        rec: &mut Recorder,
        limits: &mut RateInfo,
    ) -> Result<&'a ModelRoute, GatewayError> {
        let Request {
            snap,
            access,
            key,
            peek,
            body_len,
        } = *self;
        let Some(route) = snap.routes.get(&peek.model) else {
            let e = GatewayError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "The model '{}' does not exist or is not served by this gateway",
                    peek.model
                ),
            )
            .with_param("model");
            return Err(e);
        };
        rec.model = route.name.clone();
        if let Some(k) = key
            && !k.allows(&route.name)
        {
            let e = GatewayError::new(
                ErrorKind::Forbidden,
                format!("API key '{}' may not use model '{}'", k.name, route.name),
            )
            .with_param("model");
            return Err(e);
        }
        if let Some(k) = key {
            check_budgets(app, access, k, route.price, rec).await?;
        }
        let estimate = limits::estimate_tokens(body_len, peek.max_tokens, 1024);
        rate_limit(app, access, key, &route.name, estimate, rec, limits).await?;
        if peek.stream
            && let Some(k) = key
            && let Some(gate) = access.limiter.streams.get(&k.name)
        {
            match gate.try_open() {
                Some(p) => rec.accounting.stream_permit = Some(p),
                None => {
                    app.metrics
                        .limited
                        .get_or_create(&crate::metrics::OutcomeLabels { outcome: "streams" })
                        .inc();
                    let e = GatewayError::new(
                        ErrorKind::ConcurrencyLimited,
                        format!(
                            "key '{}' already has {} streams open, its limit; retry when one ends",
                            k.name,
                            gate.max()
                        ),
                    );
                    return Err(e);
                }
            }
        }
        Ok(route)
    }
}

/// Refuses a key whose token or cost budget for the period is spent;
/// otherwise arranges for the request's usage to be charged. Shared through
/// Redis when the limits are (a Redis outage falls back to this process's
/// count, like the rate limits).
pub(crate) async fn check_budgets(
    app: &Arc<App>,
    access: &crate::access::Access,
    k: &sluice_core::config::KeyConfig,
    price: Option<(f64, f64)>,
    rec: &mut Recorder,
) -> Result<(), GatewayError> {
    let mut charge = crate::shared_limits::BudgetCharge::default();
    if let Some(b) = access.limiter.budgets.get(&k.name) {
        let (used, counter) = budget_used(app, k, b, "tokens").await;
        if used >= b.limit {
            return Err(budget_spent(
                app,
                format!("{used} of {} tokens", b.limit),
                k,
                b,
            ));
        }
        charge.tokens = Some(counter);
    }
    if let Some(b) = access.limiter.cost_budgets.get(&k.name) {
        let (used, counter) = budget_used(app, k, b, "usd").await;
        if used >= b.limit {
            let usd = |m: u64| m as f64 / 1e6;
            return Err(budget_spent(
                app,
                format!("${:.2} of ${:.2}", usd(used), usd(b.limit)),
                k,
                b,
            ));
        }
        // A model with no prices costs nothing.
        charge.cost = price.map(|p| (counter, p));
    }
    if charge.tokens.is_some() || charge.cost.is_some() {
        rec.accounting.budget = Some(charge);
    }
    Ok(())
}

/// What a budget has used this period, and the counter to charge: Redis's
/// when shared and reachable, else this process's.
async fn budget_used(
    app: &Arc<App>,
    k: &sluice_core::config::KeyConfig,
    b: &Arc<limits::Budget>,
    unit: &str,
) -> (u64, crate::shared_limits::Counter) {
    use crate::shared_limits::{Counter, SharedLimiter};
    let now = crate::clock::now_unix();
    if let Some(shared) = &app.shared_limiter {
        let key = SharedLimiter::budget_key(&k.name, unit, b.period, now);
        if let Some(used) = shared.budget_used(&key).await {
            return (
                used,
                Counter::Shared(shared.clone(), key, b.period.ttl_secs()),
            );
        }
    }
    (b.used(now), Counter::Local(b.clone()))
}

fn budget_spent(
    app: &Arc<App>,
    what: String,
    k: &sluice_core::config::KeyConfig,
    b: &limits::Budget,
) -> GatewayError {
    app.metrics
        .limited
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: "budget" })
        .inc();
    GatewayError::new(
        ErrorKind::BudgetExceeded,
        format!(
            "key '{}' has used its budget ({what} this {})",
            k.name,
            b.period.name()
        ),
    )
}

/// Rate limits: the key's, then the model's. Tokens are reserved from the
/// prompt's size and max_tokens, and settled from real usage at the end.
/// Shared (Redis) when configured; local when not, or when Redis cannot
/// answer and `fail_open` allows.
pub(crate) async fn rate_limit(
    app: &Arc<App>,
    access: &crate::access::Access,
    key: Option<&sluice_core::config::KeyConfig>,
    model: &Arc<str>,
    estimate: f64,
    rec: &mut Recorder,
    info: &mut RateInfo,
) -> Result<(), GatewayError> {
    let key_limits = key.and_then(|k| access.limiter.keys.get(&k.name));
    let model_limits = access.limiter.models.get(model);
    if key_limits.is_none() && model_limits.is_none() {
        return Ok(());
    }
    let subject = |is_key: bool| match (is_key, key) {
        (true, Some(k)) => format!("key '{}'", k.name),
        _ => format!("model '{model}'"),
    };
    let refused = |info: &mut RateInfo, refusal: limits::Refusal, is_key: bool| {
        app.metrics
            .limited
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: refusal.what,
            })
            .inc();
        info.retry_after = Some(refusal.retry_after_secs);
        GatewayError::new(
            ErrorKind::RateLimited,
            format!(
                "rate limit reached for {} ({} per minute); retry after {:.1} s",
                subject(is_key),
                refusal.what,
                refusal.retry_after_secs
            ),
        )
    };
    if let Some(shared) = &app.shared_limiter {
        let mut buckets = Vec::with_capacity(4);
        let subjects = [
            (true, "key", key.map(|k| &k.name), key_limits),
            (false, "model", Some(model), model_limits),
        ];
        for (is_key, kind, name, l) in subjects {
            let (Some(name), Some(l)) = (name, l) else {
                continue;
            };
            for (what, cap, amount) in [("requests", l.rpm, 1.0), ("tokens", l.tpm, estimate)] {
                if let Some(cap) = cap {
                    buckets.push(crate::shared_limits::Bucket {
                        key: crate::shared_limits::SharedLimiter::bucket_key(kind, name, what),
                        capacity: cap,
                        amount,
                        what,
                        report: is_key,
                    });
                }
            }
        }
        match shared.admit(&buckets).await {
            Ok((snapshot, reservation)) => {
                if key_limits.is_some() {
                    info.snapshot = Some(snapshot);
                }
                rec.accounting.shared_reservation = Some(reservation);
                return Ok(());
            }
            Err(Some((refusal, i))) => {
                // The key's own buckets are the reported ones.
                return Err(refused(info, refusal, buckets[i].report));
            }
            Err(None) if app.snapshot.load().config.limits.fail_open => {
                app.metrics
                    .limit_backend_errors
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "local" })
                    .inc();
                // Counted by this replica alone until Redis is back.
            }
            Err(None) => {
                app.metrics
                    .limit_backend_errors
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "refused" })
                    .inc();
                return Err(GatewayError::new(
                    ErrorKind::NoHealthyTarget,
                    "the shared rate limiter (redis) is unavailable and limits.fail_open is false",
                ));
            }
        }
    }
    let now = crate::clock::now_secs();
    for (is_key, l) in [(true, key_limits), (false, model_limits)] {
        let Some(l) = l else { continue };
        match l.admit(estimate, now) {
            Ok((reservation, snapshot)) => {
                rec.accounting.reservations.push(reservation);
                if is_key {
                    info.snapshot = Some(snapshot);
                }
            }
            Err(refusal) => return Err(refused(info, refusal, is_key)),
        }
    }
    Ok(())
}

/// Rate-limit state to report on the response.
#[derive(Default)]
pub(crate) struct RateInfo {
    snapshot: Option<limits::Snapshot>,
    retry_after: Option<f64>,
}

/// A limit's header value. A key's limits are the same on every answer,
/// so each is made once per thread (a deployment has a handful) and
/// shared after, instead of allocated on every answer.
fn limit_value(n: u64) -> HeaderValue {
    thread_local! {
        static MADE: std::cell::RefCell<Vec<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    MADE.with_borrow_mut(|made| {
        if let Some((_, v)) = made.iter().find(|(m, _)| *m == n) {
            return v.clone();
        }
        let v = sluice_providers::template::number(n);
        if made.len() >= 16 {
            made.remove(0);
        }
        made.push((n, v.clone()));
        v
    })
}

impl RateInfo {
    pub(crate) fn write(&self, h: &mut HeaderMap) {
        // Names made at compile time (`from_static` checks them at run
        // time otherwise, on every answer).
        const NAMES: [HeaderName; 4] = [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
        ];
        // (value, whether it is a limit: the same on every answer).
        let values = self.snapshot.map(|s| {
            [
                s.requests.map(|r| (r.0, true)),
                s.requests.map(|r| (r.1, false)),
                s.tokens.map(|t| (t.0, true)),
                s.tokens.map(|t| (t.1, false)),
            ]
        });
        // Room for them all at once: inserted one by one into a map sized
        // for the upstream's headers, they regrew it. Nothing reserved
        // when nothing is written (no limit on the key).
        let n = values.iter().flatten().flatten().count() + usize::from(self.retry_after.is_some());
        if n == 0 {
            return;
        }
        h.reserve(n);
        for (name, v) in NAMES.into_iter().zip(values.into_iter().flatten()) {
            if let Some((v, limit)) = v {
                let value = if limit {
                    limit_value(v)
                } else {
                    sluice_providers::template::number(v)
                };
                h.insert(name, value);
            }
        }
        if let Some(secs) = self.retry_after {
            // Whole seconds, rounded up, so a client that waits is let in.
            h.insert(
                http::header::RETRY_AFTER,
                sluice_providers::template::number(secs.ceil().max(1.0) as u64),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_values_are_the_numbers_made_once_or_again() {
        for round in 0..2 {
            for n in [0, 7, 60, 100_000_000, u64::MAX] {
                assert_eq!(
                    limit_value(n).to_str().unwrap(),
                    n.to_string(),
                    "round {round}"
                );
            }
        }
        // More distinct limits than kept: the oldest are made again.
        for n in 0..40u64 {
            assert_eq!(
                limit_value(n * 1000).to_str().unwrap(),
                (n * 1000).to_string()
            );
        }
        assert_eq!(limit_value(7).to_str().unwrap(), "7");
    }
}
