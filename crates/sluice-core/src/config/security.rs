//! The security tables: `[redis]`, `[limits]`, `[redaction]`, `[audit]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAudit, RawConfig, RawLimits, RawRedaction, RawRedis};
use super::validate::Collector;
use crate::pii::{Kind, Redactor};
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

/// PII redaction for what is logged and audited, and optionally prompts.
#[derive(Debug, Clone)]
pub struct RedactionConfig {
    /// `None` = redaction off.
    pub redactor: Option<Arc<Redactor>>,
    /// Redact message text before it goes upstream.
    pub prompts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditSinkKind {
    File,
    Redis,
}

/// `[audit]`: one event per request, identifier fields SM4-GCM encrypted.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub sink: AuditSinkKind,
    pub path: PathBuf,
    /// The file is rotated (`path.1`, `path.2`, …) past this size.
    pub max_file_bytes: u64,
    /// Rotated files kept.
    pub max_files: u32,
    pub stream: String,
    pub stream_maxlen: Option<u64>,
    /// Where events wait while the sink is down; replayed when it is back.
    pub buffer_path: PathBuf,
    /// Request fields recorded (dot paths, e.g. `metadata.team`); the
    /// encrypted ones are recorded too.
    pub fields: Vec<String>,
    pub encrypt_fields: Vec<String>,
    /// 16-byte SM4 key (hex in the environment or file), with its id.
    pub key: Option<Secret>,
    pub key_id: Option<String>,
    pub queue_capacity: usize,
    pub retry: Duration,
    pub durability: AuditDurability,
}

/// When a request's audit event is safe from a crash of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDurability {
    /// Written (file: handed to the OS; Redis: acknowledged) in batches
    /// within a few milliseconds of the request's end; the response does
    /// not wait. A gateway crash loses at most the events of that window.
    Batched,
    /// The response's last byte waits until its event is written and
    /// fsynced (file and disk buffer) or acknowledged by Redis.
    Sync,
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

pub(super) fn limits(c: &mut Collector<'_>, l: &RawLimits, redis: bool) -> LimitsConfig {
    let backend = match l.backend.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None => {
            if redis {
                LimitsBackend::Redis
            } else {
                LimitsBackend::Local
            }
        }
        Some((_, "local")) => LimitsBackend::Local,
        Some((b, "redis")) => {
            if !redis {
                c.at(b.span(), "backend = \"redis\" needs [redis] url");
            }
            LimitsBackend::Redis
        }
        Some((b, other)) => {
            c.at(
                b.span(),
                format!("unknown limits backend '{other}' (local, redis)"),
            );
            LimitsBackend::Local
        }
    };
    LimitsConfig {
        backend,
        fail_open: l.fail_open.unwrap_or(true),
    }
}

pub(super) fn redaction(c: &mut Collector<'_>, r: &RawRedaction) -> RedactionConfig {
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
    let redactor = Redactor::new(&kinds, &custom).ok().map(Arc::new);
    RedactionConfig { redactor, prompts }
}

pub(super) fn audit(
    c: &mut Collector<'_>,
    raw: &RawConfig,
    redis: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<AuditConfig> {
    let spanned = raw.audit.as_ref()?;
    let a: &RawAudit = spanned.get_ref();
    let sink = match a.sink.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "file")) => AuditSinkKind::File,
        Some((s, "redis")) => {
            if !redis {
                c.at(s.span(), "sink = \"redis\" needs [redis] url");
            }
            AuditSinkKind::Redis
        }
        Some((s, other)) => {
            c.at(
                s.span(),
                format!("unknown audit sink '{other}' (file, redis)"),
            );
            AuditSinkKind::File
        }
    };
    let path = PathBuf::from(
        a.path
            .as_ref()
            .map_or("audit.jsonl", |p| p.get_ref().as_str()),
    );
    let buffer_path = a.buffer_path.as_ref().map_or_else(
        || {
            let mut p = path.clone().into_os_string();
            p.push(".buffer");
            PathBuf::from(p)
        },
        |p| PathBuf::from(p.get_ref()),
    );
    let field_path = |c: &mut Collector<'_>, f: &Spanned<String>| {
        let s = f.get_ref();
        if s.is_empty() || s.split('.').any(str::is_empty) {
            c.at(
                f.span(),
                "a field is a dot path like `user` or `metadata.patient_id`",
            );
            None
        } else {
            Some(s.clone())
        }
    };
    let encrypt_fields: Vec<String> = a
        .encrypt_fields
        .iter()
        .filter_map(|f| field_path(c, f))
        .collect();
    let mut fields: Vec<String> = a.fields.iter().filter_map(|f| field_path(c, f)).collect();
    for f in &encrypt_fields {
        if !fields.contains(f) {
            fields.push(f.clone());
        }
    }
    let mut key = None;
    if !encrypt_fields.is_empty() {
        let (value, span, source) = match (&a.key_file, &a.key_env) {
            (Some(file), _) => (
                std::fs::read_to_string(file.get_ref())
                    .map_err(|e| format!("cannot read key_file: {e}")),
                file.span(),
                "key_file",
            ),
            (None, env_name) => {
                let name = env_name
                    .as_ref()
                    .map_or("SLUICE_AUDIT_KEY", |n| n.get_ref().as_str());
                (
                    env(name).ok_or_else(|| {
                        format!("encrypt_fields needs an SM4 key: set {name} to 32 hex digits (or key_file)")
                    }),
                    env_name.as_ref().map_or(spanned.span(), |n| n.span()),
                    "key_env",
                )
            }
        };
        match value {
            Ok(v) if parse_key_hex(v.trim()).is_some() => key = Some(Secret::new(v.trim())),
            Ok(_) => c.at(
                span,
                format!("the audit key ({source}) must be 32 hex digits (128 bits)"),
            ),
            Err(e) => c.at(span, e),
        }
    }
    let durability = match a.durability.as_ref().map(|d| (d, d.get_ref().as_str())) {
        None | Some((_, "batched")) => AuditDurability::Batched,
        Some((_, "sync")) => AuditDurability::Sync,
        Some((d, other)) => {
            c.at(
                d.span(),
                format!("unknown audit durability '{other}' (batched, sync)"),
            );
            AuditDurability::Batched
        }
    };
    Some(AuditConfig {
        durability,
        sink,
        path,
        max_file_bytes: c.positive(
            a.max_file_bytes.as_ref(),
            64 << 20,
            1 << 40,
            "max_file_bytes",
        ),
        max_files: c.positive(a.max_files.as_ref(), 5, 1000, "max_files") as u32,
        stream: a
            .stream
            .as_ref()
            .map_or_else(|| "sluice:audit".to_owned(), |s| s.get_ref().clone()),
        stream_maxlen: a
            .stream_maxlen
            .as_ref()
            .map(|v| c.positive(Some(v), 1, u64::MAX, "stream_maxlen")),
        buffer_path,
        fields,
        encrypt_fields,
        key,
        key_id: a.key_id.as_ref().map(|k| k.get_ref().clone()),
        queue_capacity: c.positive(a.queue_capacity.as_ref(), 8192, 1 << 24, "queue_capacity")
            as usize,
        retry: Duration::from_millis(c.positive(a.retry_ms.as_ref(), 1000, 600_000, "retry_ms")),
    })
}

/// A 128-bit key written as 32 hex digits.
pub fn parse_key_hex(s: &str) -> Option<[u8; 16]> {
    super::keys::hex_bytes::<16>(s)
}
