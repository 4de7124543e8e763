//! The audit trail: one JSON event per request.
//!
//! Chosen request fields are recorded; the configured identifier fields are
//! SM4-GCM encrypted ([`cipher`]) and the others PII-redacted before the
//! event leaves the request. Events go through a bounded queue to a writer
//! task ([`sink`]) that appends them to a rotated JSONL file or a Redis
//! stream. While the sink is down, events wait in a file on disk and are
//! replayed, oldest first, when it is back — at least once, never lost; a
//! full queue spills to the same file instead of growing memory.

pub mod cipher;
pub mod durable;
mod fields;
mod line;
mod nats;
mod pick;
mod seal;
mod sink;
pub mod sm4_table;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_core::config::{AuditConfig, AuditDurability, RedisConfig};
use sluice_core::json;
use sluice_core::pii::Redactor;
use tokio::sync::{mpsc, oneshot};

use self::cipher::FieldCipher;
use self::sink::{Msg, Spill};

pub use fields::Fields;
pub use sink::{Counts, Outcome, OutcomeLabels};

/// Room for an event line as first made (a chat request's is ~500 bytes).
const EVENT_CAPACITY: usize = 768;

/// One audit event, as written (one JSON line).
#[derive(serde::Serialize)]
pub struct Event<'a> {
    /// Made by the gateway, unique per event (and the same on a duplicate
    /// delivery): what identifies an event.
    pub id: &'a str,
    pub ts: &'a str,
    /// The request's id: the client's `x-request-id` when it sent a sane
    /// one, else the gateway's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// The client's own `x-request-id`, when it sent one: its word only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<&'a str>,
    pub key: Option<&'a str>,
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub status: u16,
    pub latency_ms: f64,
    pub stream: bool,
    pub attempts: u32,
    pub cancelled: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<&'a Fields>,
    /// Parts converted to text before routing: which, by what, how it went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversions: Option<&'a Value>,
    /// An MCP tool call (`/mcp`): which server and tool, how it ended,
    /// its arguments.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCall<'a>>,
}

/// The part of an event that says which tool was called.
#[derive(serde::Serialize)]
pub struct ToolCall<'a> {
    /// `"mcp_tool_call"`.
    pub kind: &'static str,
    /// The upstream server (or `agent.{id}` for an agent's tool).
    pub server: &'a str,
    /// The tool's own name on that server.
    pub tool: &'a str,
    /// The name the client called (`server__tool`).
    pub called: &'a str,
    /// `ok`, `tool_error`, `error`, `timeout`, `unavailable`,
    /// `rate_limited`, `cancelled`.
    pub outcome: &'a str,
    pub duration_ms: f64,
    /// Redacted, with `encrypt_fields` under `arguments.` encrypted
    /// (see [`Auditor::arguments`]).
    pub arguments: Value,
}

/// An event's id (see [`Auditor::new_id`]): 28 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EventId([u8; 28]);

impl EventId {
    pub fn as_str(&self) -> &str {
        // Hex digits only: never the empty fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded field: its path, split, and whether it is encrypted.
struct Field {
    /// Shared with every event that records it (no copy per request).
    path: Arc<str>,
    parts: Vec<String>,
    encrypt: bool,
}

pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    durability: AuditDurability,
    spill: Arc<Spill>,
    cipher: Option<FieldCipher>,
    fields: Vec<Field>,
    /// The request members the fields are under (their paths' first parts).
    heads: Vec<String>,
    redactor: Option<Arc<Redactor>>,
    counts: sink::Counts,
}

impl Auditor {
    /// Starts the writer task. Events buffered by an earlier run are
    /// replayed first.
    pub fn start(
        cfg: &AuditConfig,
        redis: Option<&RedisConfig>,
        redactor: Option<Arc<Redactor>>,
        counts: sink::Counts,
    ) -> anyhow::Result<Self> {
        let cipher = match &cfg.key {
            Some(k) => Some(
                FieldCipher::from_hex(k.expose(), cfg.key_id.as_deref())
                    .map_err(|e| anyhow::anyhow!("[audit] key: {e}"))?,
            ),
            None => None,
        };
        let spill = Arc::new(Spill::new(cfg.buffer_path.clone()));
        let sink = sink::Sink::new(cfg, redis)?;
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        tokio::spawn(sink::run(
            rx,
            sink,
            spill.clone(),
            cfg.retry,
            counts.clone(),
        ));
        let mut fields: Vec<Field> = cfg
            .fields
            .iter()
            .map(|f| Field {
                path: Arc::from(f.as_str()),
                parts: f.split('.').map(str::to_owned).collect(),
                encrypt: cfg.encrypt_fields.contains(f),
            })
            .collect();
        // Recorded in path order, each once (an event's `fields` object).
        fields.sort_by(|a, b| a.path.cmp(&b.path));
        fields.dedup_by(|a, b| a.path == b.path);
        let mut heads: Vec<String> = fields
            .iter()
            .filter_map(|f| f.parts.first().cloned())
            .collect();
        heads.sort_unstable();
        heads.dedup();
        Ok(Self {
            tx,
            durability: cfg.durability,
            spill,
            cipher,
            fields,
            heads,
            redactor,
            counts,
        })
    }

    /// Whether responses wait for their event (`durability = "sync"`).
    pub fn is_sync(&self) -> bool {
        self.durability == AuditDurability::Sync
    }

    /// Whether any request field is recorded (then the body is looked at).
    pub fn wants_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// The recorded fields of a JSON request body: encrypted or redacted.
    /// Fields the request does not have are left out. Only the objects on
    /// the fields' paths are parsed (as raw slices), never the whole body.
    pub fn fields_of(&self, body: &[u8]) -> Option<Fields> {
        if self.fields.is_empty() {
            return None;
        }
        let root = json::object(std::str::from_utf8(body).ok()?).ok()?;
        let root: Vec<_> = root.into_iter().map(|(k, v)| (k, v.get())).collect();
        Some(self.fields_in(&root))
    }

    /// The top-level request members the recorded fields are found under:
    /// what [`Auditor::fields_in`] needs of a body.
    pub fn field_heads(&self) -> &[String] {
        &self.heads
    }

    /// [`Auditor::fields_of`] a body whose top-level members (at least those
    /// named by [`Auditor::field_heads`]) were read already, e.g. by
    /// `sluice_core::pii::redact_request_json_keeping`: the body is not
    /// parsed again.
    pub fn fields_in(&self, members: &[(Cow<'_, str>, &str)]) -> Fields {
        let mut out = Fields::default();
        let found = self.fields.iter().map(|f| pick::find(members, &f.parts));
        for (f, raw) in self.fields.iter().zip(found) {
            let Some(raw) = raw else { continue };
            match (&self.cipher, f.encrypt) {
                // The picked slice is valid JSON (the parser read it).
                (Some(c), true) => {
                    out.push_with(f.path.clone(), |t| c.encrypt_into(&f.path, raw, t));
                }
                _ => {
                    if let Some(r) = self.redacted_raw(raw) {
                        out.push(f.path.clone(), &r);
                    }
                }
            }
        }
        out
    }

    /// A recorded field's JSON with PII redacted from every string in it: a
    /// string with nothing found is kept as the client wrote it.
    fn redacted_raw<'r>(&self, raw: &'r str) -> Option<Cow<'r, str>> {
        let Some(r) = &self.redactor else {
            return Some(Cow::Borrowed(raw));
        };
        if json::kind_of(raw) == json::Kind::String {
            let text = json::text_of(raw).ok()??;
            return match r.redact(&text) {
                Cow::Borrowed(_) => Some(Cow::Borrowed(raw)),
                Cow::Owned(o) => serde_json::to_string(&o).ok().map(Cow::Owned),
            };
        }
        let v = serde_json::from_str::<Value>(raw).ok()?;
        serde_json::to_string(&self.redacted(&v))
            .ok()
            .map(Cow::Owned)
    }

    /// A tool call's arguments as recorded: PII redacted from every
    /// string; each `encrypt_fields` path under `arguments` (e.g.
    /// `arguments.patient_id`, or `arguments` for all of them) encrypted.
    pub fn arguments(&self, args: &Value) -> Value {
        let mut out = self.redacted(args);
        let Some(c) = &self.cipher else { return out };
        for f in self.fields.iter().filter(|f| f.encrypt) {
            let Some((first, rest)) = f.parts.split_first() else {
                continue;
            };
            if first != "arguments" {
                continue;
            }
            if rest.is_empty() {
                return c.encrypt(&f.path, args);
            }
            let (mut src, mut dst) = (Some(args), Some(&mut out));
            for p in rest {
                src = src.and_then(|v| v.get(p));
                dst = dst.and_then(|v| v.get_mut(p));
            }
            if let (Some(s), Some(d)) = (src, dst) {
                *d = c.encrypt(&f.path, s);
            }
        }
        out
    }

    /// `v` with PII redacted from every string in it.
    fn redacted(&self, v: &Value) -> Value {
        let Some(r) = &self.redactor else {
            return v.clone();
        };
        match v {
            Value::String(s) => Value::String(r.redact(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.redacted(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), self.redacted(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Hands one event to the writer; never waits. A full queue spills to
    /// the disk buffer instead. With `durability = "sync"`, the receiver
    /// answers once the event is durable (the response waits for it).
    pub fn record(&self, event: &Event<'_>) -> Option<oneshot::Receiver<()>> {
        // Sized for a typical event: grown from serde_json's 128 bytes, a
        // line was reallocated three times.
        let mut buf = Vec::with_capacity(EVENT_CAPACITY);
        event.write_line(&mut buf);
        let line = String::from_utf8(buf).expect("the line is JSON text, UTF-8");
        let (msg, durable) = match self.durability {
            AuditDurability::Batched => (Msg::Event(line), None),
            AuditDurability::Sync => {
                let (ack, durable) = oneshot::channel();
                (Msg::Durable(line, ack), Some(durable))
            }
        };
        let line = match self.tx.try_send(msg) {
            Ok(()) => return durable,
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                match m {
                    Msg::Event(l) | Msg::Durable(l, _) => l,
                    Msg::Flush(_) => return None,
                }
            }
        };
        // Synced to disk by the time this returns: nothing to wait for.
        match self.spill.append(std::slice::from_ref(&line)) {
            Ok(()) => self.counts.add(Outcome::Buffered, 1),
            Err(e) => {
                self.counts.add(Outcome::Lost, 1);
                tracing::error!(error = %e, "audit queue full and the disk buffer failed: event lost");
            }
        }
        None
    }

    /// A new event id: 64 random bits for this process and a counter, so
    /// ids are unique across replicas and restarts.
    pub fn new_id() -> EventId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let p = *PROCESS.get_or_init(rand::random::<u64>);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Written digit by digit (through `format!` this was ~1,500
        // instructions of the production-shaped request's ~128,000), on
        // the stack: the event line copies it.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 28];
        let digits = (0..16).rev().map(|i| (p >> (i * 4)) & 0xf);
        let digits = digits.chain((0..12).rev().map(|i| (n >> (i * 4)) & 0xf));
        for (d, v) in id.iter_mut().zip(digits) {
            *d = HEX[v as usize];
        }
        EventId(id)
    }

    /// Waits (up to `max`) until every event handed over so far is written
    /// to the sink or the disk buffer. Called at shutdown.
    pub async fn flush(&self, max: Duration) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = tokio::time::timeout(max, done).await;
        }
    }
}

/// One audit line with every encrypted field restored, using whichever of
/// `keys` has the field's key id.
pub fn decrypt_line(line: &str, keys: &[FieldCipher]) -> Result<String, String> {
    let mut event: Value =
        serde_json::from_str(line).map_err(|e| format!("not an audit event: {e}"))?;
    if let Some(Value::Object(fields)) = event.get_mut("fields") {
        for (name, v) in fields.iter_mut() {
            if v.get("enc").is_none() {
                continue;
            }
            let kid = v.get("kid").and_then(Value::as_str).unwrap_or_default();
            let c = keys
                .iter()
                .find(|c| c.kid() == kid)
                .ok_or_else(|| format!("field '{name}': no key with id '{kid}' was given"))?;
            *v = c.decrypt(name, v)?;
        }
    }
    // A tool call's arguments: encrypted values anywhere inside, each
    // under its own path (`arguments.city`).
    if let Some(args) = event.get_mut("arguments") {
        decrypt_within(args, "arguments", keys)?;
    }
    Ok(event.to_string())
}

fn decrypt_within(v: &mut Value, path: &str, keys: &[FieldCipher]) -> Result<(), String> {
    if v.get("enc").and_then(Value::as_str) == Some("SM4-GCM") {
        let kid = v.get("kid").and_then(Value::as_str).unwrap_or_default();
        let c = keys
            .iter()
            .find(|c| c.kid() == kid)
            .ok_or_else(|| format!("field '{path}': no key with id '{kid}' was given"))?;
        *v = c.decrypt(path, v)?;
        return Ok(());
    }
    if let Value::Object(o) = v {
        for (k, x) in o.iter_mut() {
            decrypt_within(x, &format!("{path}.{k}"), keys)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An auditor writing to a temporary folder, with `fields` (TOML)
    /// added to its `[audit]` table and the key 00…0f.
    fn auditor(name: &str, fields: &str) -> Auditor {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{name}-{}", std::process::id()));
        let text = format!(
            "[audit]\npath = \"{}/a.jsonl\"\n{fields}\nkey_env = \"K\"\n",
            dir.display()
        );
        let cfg = sluice_core::config::parse(&text, "t", &|k| {
            (k == "K").then(|| "000102030405060708090a0b0c0d0e0f".to_owned())
        })
        .unwrap();
        Auditor::start(
            cfg.audit.as_ref().unwrap(),
            None,
            Some(Arc::new(Redactor::builtin())),
            Counts::default(),
        )
        .unwrap()
    }

    #[test]
    fn event_ids_are_this_process_then_a_counter_in_hex() {
        let (a, b) = (Auditor::new_id(), Auditor::new_id());
        let (a, b) = (a.as_str(), b.as_str());
        for id in [a, b] {
            assert_eq!(id.len(), 28, "{id}");
            assert!(
                id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        assert_eq!(a[..16], b[..16], "one process part");
        let n = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        // Other tests may take ids meanwhile: later, not necessarily next.
        assert!(n(b) > n(a), "{a} then {b}");
        let p = u64::from_str_radix(&a[..16], 16).unwrap();
        assert_eq!(format!("{p:016x}{:012x}", n(a)), a, "as format! wrote it");
    }

    #[tokio::test]
    async fn fields_are_found_on_their_paths_encrypted_or_redacted() {
        let a = auditor(
            "fields",
            "fields = [\"metadata.note\", \"user\", \"a.b.c\", \"missing.x\", \"x\", \"user\"]\nencrypt_fields = [\"metadata.id\"]",
        );
        let body = br#"{"model":"m","user":"bob@example.com","metadata":{"id": { "n" : 42 , "s":"a\u0062" },"note":"call +44 20 7946 0958","x\"y":1},"a":{"b":{"c":[1,"10.0.0.1"]}},"missing":3,"x":"caf\u00e9"}"#;
        let fields = a.fields_of(body).unwrap();
        // As written into the event, each field's JSON verbatim: a string
        // with nothing to redact keeps its escapes.
        assert_eq!(
            fields.paths().collect::<Vec<_>>(),
            ["a.b.c", "metadata.id", "metadata.note", "user", "x"]
        );
        assert_eq!(fields.get("x").unwrap(), r#""caf\u00e9""#);
        let f = serde_json::to_value(&fields).unwrap();
        assert_eq!(f["x"], "café");
        assert_eq!(f["user"], "[EMAIL]");
        assert_eq!(f["metadata.note"], "call [PHONE]");
        assert_eq!(f["a.b.c"], json!([1, "[IP]"]));
        assert!(
            f.get("missing.x").is_none(),
            "a parent that is not an object"
        );
        let c = FieldCipher::from_hex("000102030405060708090a0b0c0d0e0f", None).unwrap();
        assert_eq!(
            c.decrypt("metadata.id", &f["metadata.id"]).unwrap(),
            json!({"n": 42, "s": "ab"}),
            "the value as written (spacing, escapes) decrypts to the same value"
        );
        // The same fields from the members the redaction pass kept.
        let r = Redactor::builtin();
        let mut kept = sluice_core::pii::Members::new();
        sluice_core::pii::redact_request_json_keeping(
            body,
            &r,
            |k| a.field_heads().iter().any(|h| h == k),
            &mut kept,
        )
        .unwrap();
        assert_eq!(a.field_heads(), ["a", "metadata", "missing", "user", "x"]);
        let g = serde_json::to_value(a.fields_in(&kept)).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&g), keys(&f));
        for (k, v) in g.as_object().unwrap() {
            if k == "metadata.id" {
                assert_eq!(c.decrypt(k, v).unwrap(), c.decrypt(k, &f[k]).unwrap());
            } else {
                assert_eq!(v, &f[k], "{k}");
            }
        }
        assert!(a.fields_of(b"not json").is_none());
        assert!(a.fields_of(b"[1,2]").is_none());
    }

    #[tokio::test]
    async fn tool_arguments_are_redacted_and_encrypted_by_path() {
        let a = auditor("args", "encrypt_fields = [\"arguments.patient.id\"]");
        let args =
            json!({"note": "mail bob@example.com", "patient": {"id": 42, "ward": 3}, "n": [1]});
        let rec = a.arguments(&args);
        assert_eq!(rec["note"], "mail [EMAIL]");
        assert_eq!(rec["patient"]["ward"], 3);
        assert_eq!(rec["patient"]["id"]["enc"], "SM4-GCM");
        assert!(!rec.to_string().contains("42"));
        let line = json!({"kind": "mcp_tool_call", "arguments": rec}).to_string();
        let c = FieldCipher::from_hex("000102030405060708090a0b0c0d0e0f", None).unwrap();
        let back: Value = serde_json::from_str(&decrypt_line(&line, &[c]).unwrap()).unwrap();
        assert_eq!(back["arguments"]["patient"]["id"], 42);
        assert_eq!(back["arguments"]["note"], "mail [EMAIL]");
    }
}
