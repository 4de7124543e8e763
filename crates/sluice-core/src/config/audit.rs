//! `[audit]`: one event per request, identifier fields encrypted.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAudit, RawConfig};
use super::validate::Collector;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditSinkKind {
    File,
    Redis,
    /// A NATS JetStream stream (`url`, `subject`, `stream`).
    Nats,
}

/// `sink = "nats"`: where and how events are published.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    /// `nats://[user:pass@]host:port` (several comma-separated); `tls://`
    /// for TLS. Secret: it may hold credentials.
    pub url: Secret,
    /// The subject events are published on (`sluice.audit`).
    pub subject: String,
    /// The JetStream stream holding the subject, created if missing
    /// (`SLUICE_AUDIT`).
    pub stream: String,
    /// The stream's de-duplication window when Sluice creates it: a
    /// replay within it of an event already stored is dropped by its
    /// message id.
    pub duplicate_window: Duration,
    /// How long a batch waits for its acknowledgements.
    pub timeout: Duration,
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
    /// `sink = "nats"` only.
    pub nats: Option<NatsSinkConfig>,
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
        Some((_, "nats")) => AuditSinkKind::Nats,
        Some((s, other)) => {
            c.at(
                s.span(),
                format!("unknown audit sink '{other}' (file, redis, nats)"),
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
    let nats = (sink == AuditSinkKind::Nats).then(|| nats(c, a));
    if sink != AuditSinkKind::Nats {
        for (v, name) in [(&a.url, "url"), (&a.subject, "subject")] {
            if let Some(v) = v {
                c.at(v.span(), format!("`{name}` is for sink = \"nats\""));
            }
        }
    }
    Some(AuditConfig {
        nats,
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
        queue_capacity: c.positive(
            a.queue_capacity.as_ref(),
            crate::cgroup::fit(8192, 2 << 10, 16, 256),
            1 << 24,
            "queue_capacity",
        ) as usize,
        retry: Duration::from_millis(c.positive(a.retry_ms.as_ref(), 1000, 600_000, "retry_ms")),
    })
}

fn nats(c: &mut Collector<'_>, a: &RawAudit) -> NatsSinkConfig {
    let url = a
        .url
        .as_ref()
        .map_or("nats://127.0.0.1:4222", |u| u.get_ref().as_str());
    if let Some(u) = &a.url {
        let ok = url.split(',').all(|one| {
            one.trim()
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "nats" | "tls") && !rest.is_empty())
        });
        if !ok {
            c.at(
                u.span(),
                // Not echoed: it may hold credentials.
                "url is not a NATS address (nats://[user:pass@]host:port, or tls://…; several comma-separated)",
            );
        }
    }
    let subject = a
        .subject
        .as_ref()
        .map_or("sluice.audit", |s| s.get_ref().as_str());
    if let Some(s) = &a.subject {
        let bad = subject.is_empty()
            || subject
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ', '\t']));
        if bad {
            c.at(
                s.span(),
                format!("subject: '{subject}' is not a literal NATS subject (tokens split by '.', no wildcards)"),
            );
        }
    }
    let stream = a
        .stream
        .as_ref()
        .map_or("SLUICE_AUDIT", |s| s.get_ref().as_str());
    if let Some(s) = &a.stream
        && (stream.is_empty() || stream.contains(['.', '*', '>', ' ', '/', '\\']))
    {
        c.at(
            s.span(),
            format!(
                "stream: '{stream}' is not a JetStream stream name (no '.', '*', '>', '/', spaces)"
            ),
        );
    }
    if let Some(m) = &a.stream_maxlen {
        c.at(
            m.span(),
            "stream_maxlen is for sink = \"redis\" (limit the JetStream stream on the server)",
        );
    }
    NatsSinkConfig {
        url: Secret::new(url),
        subject: subject.to_owned(),
        stream: stream.to_owned(),
        duplicate_window: Duration::from_millis(c.positive(
            a.duplicate_window_ms.as_ref(),
            600_000,
            7 * 86_400_000,
            "duplicate_window_ms",
        )),
        timeout: Duration::from_millis(c.positive(
            a.timeout_ms.as_ref(),
            5_000,
            600_000,
            "timeout_ms",
        )),
    }
}

/// A 128-bit key written as 32 hex digits.
pub fn parse_key_hex(s: &str) -> Option<[u8; 16]> {
    super::keys::hex_bytes::<16>(s)
}
