//! Who may call the API and how much: the virtual keys (from the
//! configuration and from the admin API) with their limiters, swapped as
//! one when keys change. Counters of a key that stays are carried over, so
//! adding or removing one key does not refill everyone's buckets.

use foldhash::HashMap;
use std::sync::Arc;

use sluice_core::GatewayError;
use sluice_core::auth::KeyTable;
use sluice_core::config::{Config, KeyConfig};
use sluice_core::limits::{Budget, Limiter, Limits, StreamGate};

pub struct Access {
    pub keys: KeyTable,
    pub limiter: Limiter,
    /// The keys added through the admin API (the rest are the file's).
    pub api_keys: Vec<KeyConfig>,
}

impl Access {
    pub fn build(config: &Config, api_keys: Vec<KeyConfig>, prev: Option<&Access>) -> Self {
        let now = crate::clock::now_secs();
        let mut limiter = Limiter::default();
        let keep = |map: Option<&HashMap<Arc<str>, Arc<Limits>>>, name: &Arc<str>, rpm, tpm| {
            map.and_then(|m| m.get(name))
                .filter(|l| l.rpm == rpm && l.tpm == tpm)
                .cloned()
                .unwrap_or_else(|| Arc::new(Limits::new(rpm, tpm, now)))
        };
        let all: Vec<&KeyConfig> = config.keys.iter().chain(&api_keys).collect();
        for k in &all {
            if k.rpm.is_some() || k.tpm.is_some() {
                let l = keep(prev.map(|p| &p.limiter.keys), &k.name, k.rpm, k.tpm);
                limiter.keys.insert(k.name.clone(), l);
            }
            if let Some((tokens, period)) = k.budget {
                let b = prev
                    .and_then(|p| p.limiter.budgets.get(&k.name))
                    .filter(|b| b.limit == tokens && b.period == period)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Budget::new(tokens, period)));
                limiter.budgets.insert(k.name.clone(), b);
            }
            if let Some((usd, period)) = k.budget_usd {
                let micros = (usd * 1e6).round() as u64;
                let b = prev
                    .and_then(|p| p.limiter.cost_budgets.get(&k.name))
                    .filter(|b| b.limit == micros && b.period == period)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Budget::new(micros, period)));
                limiter.cost_budgets.insert(k.name.clone(), b);
            }
            if let Some(n) = k.max_streams {
                let g = prev
                    .and_then(|p| p.limiter.streams.get(&k.name))
                    .filter(|g| g.max() == n)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(StreamGate::new(n)));
                limiter.streams.insert(k.name.clone(), g);
            }
        }
        for m in config
            .models
            .iter()
            .filter(|m| m.rpm.is_some() || m.tpm.is_some())
        {
            let l = keep(prev.map(|p| &p.limiter.models), &m.name, m.rpm, m.tpm);
            limiter.models.insert(m.name.clone(), l);
        }
        Self {
            keys: KeyTable::from_keys(all.into_iter().cloned()),
            limiter,
            api_keys,
        }
    }
}

/// The caller's key, when keys exist: `Ok(None)` on an open API.
pub fn authenticate<'a>(
    access: &'a Access,
    headers: &http::HeaderMap,
) -> Result<Option<&'a KeyConfig>, GatewayError> {
    if access.keys.is_open() {
        return Ok(None);
    }
    access
        .keys
        .check(api_token(headers), crate::clock::now_unix)
        .map(Some)
}

/// The caller's token: `Authorization: Bearer …` (the scheme in any case,
/// as RFC 9110 says), else `x-api-key` (as the Anthropic SDK sends it).
pub fn api_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| bearer(v.to_str().ok()?))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The token of a `Bearer` credential, whatever the scheme's case.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_either_header_and_any_scheme_case() {
        let mut h = http::HeaderMap::new();
        assert_eq!(api_token(&h), None);
        h.insert("x-api-key", http::HeaderValue::from_static(" sk-x "));
        assert_eq!(api_token(&h), Some("sk-x"));
        for v in [
            "Bearer sk-a",
            "BEARER sk-a",
            "bearer   sk-a ",
            "bEaReR sk-a",
        ] {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(api_token(&h), Some("sk-a"), "{v}");
        }
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearersk-a"), None);
    }
}
