//! `[redis]` and `[limits]`: the Redis server features share, and where
//! rate limits and budgets are counted.

use std::time::Duration;

use super::raw::{RawLimits, RawRedis};
use super::validate::Collector;
use crate::secret::Secret;

/// `[redis]`: one server shared by every feature that needs one (shared
/// rate limits, the audit stream).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// May hold a password: kept secret.
    pub url: Secret,
    /// Per command; a slower Redis counts as down.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsBackend {
    /// In this process: each replica counts on its own.
    Local,
    /// In Redis: all replicas share one count.
    Redis,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub backend: LimitsBackend,
    /// When Redis cannot be reached: count locally (true) or refuse with
    /// 503 (false).
    pub fail_open: bool,
}

pub(super) fn redis(
    c: &mut Collector<'_>,
    r: &RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<RedisConfig> {
    let url = r.url.as_ref()?;
    let value = c.interpolated(url, env)?;
    if value.is_empty() {
        return None;
    }
    if !(value.starts_with("redis://")
        || value.starts_with("rediss://")
        || value.starts_with("unix://"))
    {
        c.at(
            url.span(),
            "redis url must start with redis://, rediss:// or unix://",
        );
        return None;
    }
    Some(RedisConfig {
        url: Secret::new(value),
        timeout: Duration::from_millis(c.positive(
            r.timeout_ms.as_ref(),
            1000,
            60_000,
            "timeout_ms",
        )),
    })
}

/// A section's `backend` (`local` or `redis`; by default Redis when
/// `[redis]` is configured): whether it is Redis.
pub(super) fn backend(
    c: &mut Collector<'_>,
    b: Option<&toml::Spanned<String>>,
    redis: bool,
    section: &str,
) -> bool {
    match b.map(|b| (b, b.get_ref().as_str())) {
        None => redis,
        Some((_, "local")) => false,
        Some((b, "redis")) => {
            if !redis {
                c.at(b.span(), "backend = \"redis\" needs [redis] url");
            }
            true
        }
        Some((b, other)) => {
            c.at(
                b.span(),
                format!("unknown {section} backend '{other}' (local, redis)"),
            );
            false
        }
    }
}

pub(super) fn limits(c: &mut Collector<'_>, l: &RawLimits, redis: bool) -> LimitsConfig {
    let backend = if backend(c, l.backend.as_ref(), redis, "limits") {
        LimitsBackend::Redis
    } else {
        LimitsBackend::Local
    };
    LimitsConfig {
        backend,
        fail_open: l.fail_open.unwrap_or(true),
    }
}
