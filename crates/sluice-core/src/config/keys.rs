//! `[[keys]]`: virtual keys, from the configuration file or (the same
//! TOML) from the admin API, checked against the models served.

use std::collections::HashSet;
use std::sync::Arc;

use toml::Spanned;

use super::validate::Collector;
use super::{ConfigErrors, KeyConfig};

/// Keys written in TOML (`[[keys]]` tables) on their own, checked against
/// the models served: for keys added at run time.
pub(super) fn keys_only(
    text: &str,
    file: &str,
    models: &[&str],
) -> Result<Vec<KeyConfig>, ConfigErrors> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Only {
        #[serde(default)]
        keys: Vec<Spanned<super::raw::RawKey>>,
    }
    let only: Only = toml::from_str(text).map_err(|e| super::syntax_error(text, file, &e))?;
    let mut c = Collector {
        text,
        file,
        errors: Vec::new(),
    };
    let out = keys(&mut c, &only.keys, models);
    if c.errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

pub(super) fn keys(
    c: &mut Collector<'_>,
    raw_keys: &[Spanned<super::raw::RawKey>],
    model_names: &[&str],
) -> Vec<KeyConfig> {
    let mut out = Vec::with_capacity(raw_keys.len());
    let mut names = HashSet::new();
    for k in raw_keys {
        let k = k.get_ref();
        if !names.insert(k.name.get_ref().as_str()) {
            c.at(
                k.name.span(),
                format!("duplicate key name '{}'", k.name.get_ref()),
            );
        }
        let Some(sha256) = hex_bytes::<32>(k.sha256.get_ref()) else {
            c.at(
                k.sha256.span(),
                "sha256 must be 64 hex digits (the SHA-256 of the token)",
            );
            continue;
        };
        if out.iter().any(|o: &KeyConfig| o.sha256 == sha256) {
            c.at(k.sha256.span(), "two keys have the same sha256");
        }
        let models = k.models.as_ref().map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    if model_names.contains(&m.get_ref().as_str()) {
                        Some(Arc::from(m.get_ref().as_str()))
                    } else {
                        c.at(
                            m.span(),
                            format!("key allows unknown model '{}'", m.get_ref()),
                        );
                        None
                    }
                })
                .collect()
        });
        let expires_at = match &k.expires_at {
            None => None,
            Some(v) => match super::time::parse_rfc3339_utc(v.get_ref()) {
                Some(t) => Some(t),
                None => {
                    c.at(
                        v.span(),
                        "expires_at must be like 2027-01-31T00:00:00Z (UTC)",
                    );
                    None
                }
            },
        };
        let period = match k.budget_period.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "month")) => crate::limits::BudgetPeriod::Month,
            Some((_, "day")) => crate::limits::BudgetPeriod::Day,
            Some((_, "total")) => crate::limits::BudgetPeriod::Total,
            Some((p, other)) => {
                c.at(
                    p.span(),
                    format!("unknown budget_period '{other}' (day, month, total)"),
                );
                crate::limits::BudgetPeriod::Month
            }
        };
        out.push(KeyConfig {
            name: Arc::from(k.name.get_ref().as_str()),
            sha256,
            models,
            expires_at,
            metadata: k
                .metadata
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            rpm: k
                .rpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000, "rpm")),
            tpm: k
                .tpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000_000, "tpm")),
            budget_usd: k.budget_usd.as_ref().map(|v| {
                (
                    c.float(Some(v), 1.0, 0.000_001..=1e12, "budget_usd"),
                    period,
                )
            }),
            budget: k.budget_tokens.as_ref().map(|v| {
                (
                    c.positive(Some(v), 1, u64::MAX / 2, "budget_tokens"),
                    period,
                )
            }),
            agent_groups: k.agent_groups.as_ref().map(|gs| {
                gs.iter()
                    .map(|g| {
                        if g.get_ref().is_empty() || g.get_ref().len() > 128 {
                            c.at(g.span(), "an agent group is 1-128 characters");
                        }
                        Arc::from(g.get_ref().as_str())
                    })
                    .collect()
            }),
            mcp_tools: k.mcp_tools.as_ref().map(|gs| {
                gs.iter()
                    .map(|g| {
                        let s = g.get_ref();
                        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_whitespace) {
                            c.at(
                                g.span(),
                                "an mcp_tools entry is a glob of tool names like \"weather__*\"",
                            );
                        }
                        Arc::from(s.as_str())
                    })
                    .collect()
            }),
            mcp_rpm: k
                .mcp_rpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000, "mcp_rpm")),
            max_streams: k
                .max_streams
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 1_000_000, "max_streams") as u32),
        });
    }
    out
}

/// `N` bytes written as `2N` hex digits (surrounding space ignored).
pub fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}
