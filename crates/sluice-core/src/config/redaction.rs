//! `[redaction]`: PII redaction for what is logged and audited.

use std::sync::Arc;

use super::raw::RawRedaction;
use super::validate::Collector;
use crate::pii::{Kind, Redactor};

/// PII redaction for what is logged and audited, and optionally prompts.
#[derive(Debug, Clone)]
pub struct RedactionConfig {
    /// `None` = redaction off, or nothing to redact (no `prompts`, no
    /// `[audit]`).
    pub redactor: Option<Arc<Redactor>>,
    /// Redact message text before it goes upstream.
    pub prompts: bool,
}

/// `cache_bytes`'s default: what texts already scanned came to (see
/// `Redactor::with_cache`).
pub const CACHE_BYTES: u64 = 4 << 20;
/// Its largest value.
const CACHE_BYTES_MAX: u64 = 1 << 32;

/// `audit`: an `[audit]` section is configured (its fields are redacted).
pub(super) fn redaction(c: &mut Collector<'_>, r: &RawRedaction, audit: bool) -> RedactionConfig {
    let prompts = r.prompts.unwrap_or(false);
    if r.enabled == Some(false) {
        return RedactionConfig {
            redactor: None,
            prompts: false,
        };
    }
    let kinds: Vec<Kind> = match &r.kinds {
        None => Kind::ALL.to_vec(),
        Some(list) => list
            .iter()
            .filter_map(|k| {
                Kind::from_name(k.get_ref()).or_else(|| {
                    let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                    c.at(
                        k.span(),
                        format!("unknown PII kind '{}' ({})", k.get_ref(), names.join(", ")),
                    );
                    None
                })
            })
            .collect(),
    };
    let cache_bytes = match &r.cache_bytes {
        Some(v) if *v.get_ref() > CACHE_BYTES_MAX => {
            c.at(
                v.span(),
                format!("cache_bytes must be between 0 (no cache) and {CACHE_BYTES_MAX}"),
            );
            CACHE_BYTES
        }
        Some(v) => *v.get_ref(),
        None => CACHE_BYTES,
    };
    let mut custom = Vec::new();
    for p in &r.custom {
        let p = p.get_ref();
        let name = p.name.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            c.at(p.name.span(), "pattern name must be letters, digits and _");
            continue;
        }
        if let Err(e) = Redactor::new(&[], &[(name.clone(), p.pattern.get_ref().clone())]) {
            c.at(
                p.pattern.span(),
                format!("pattern '{name}' does not compile: {}", e.message),
            );
            continue;
        }
        custom.push((name.clone(), p.pattern.get_ref().clone()));
    }
    // Built only when something redacts (prompts, or the audit's fields):
    // compiling the patterns costs ~11M instructions, ~0.4 MiB and the
    // regex compiler's code pages, for nothing in a gateway without either.
    let redactor = (prompts || audit)
        .then(|| {
            let r = Redactor::new(&kinds, &custom).ok()?;
            Some(Arc::new(r.with_cache(cache_bytes as usize)))
        })
        .flatten();
    RedactionConfig { redactor, prompts }
}
