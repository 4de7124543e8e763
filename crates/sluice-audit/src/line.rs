//! An event as its JSON line, written member by member: the same text
//! serde's derive writes (the derive stays, and the test holds the two
//! equal), without its per-member machinery (a map for the flattened
//! tool call, each key escaped at run time). `Auditor::record` of the
//! production-shaped bench (`bench/instructions.py --prod`): 5,600 → 3,500
//! instructions per request.

use serde::Serialize;

use crate::{Event, Fields};

/// A JSON object being written into a line.
struct Object<'b> {
    out: &'b mut Vec<u8>,
    first: bool,
}

impl<'b> Object<'b> {
    fn new(out: &'b mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// The comma before every member but the first.
    fn next(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    /// A member's key; `key` is a literal with nothing to escape.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.next();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn value(&mut self, key: &str, v: &(impl Serialize + ?Sized)) {
        let out = self.key(key);
        serde_json::to_writer(out, v).expect("writing JSON to a Vec cannot fail");
    }

    /// A string member (see [`write_str`]).
    fn text(&mut self, key: &str, v: &str) {
        write_str(self.key(key), v);
    }

    /// A string member, `null` when `None`.
    fn text_or_null(&mut self, key: &str, v: Option<&str>) {
        match v {
            Some(v) => self.text(key, v),
            None => self.key(key).extend_from_slice(b"null"),
        }
    }

    /// A string member left out when it is `None`.
    fn some_text(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.text(key, v);
        }
    }

    /// A member left out when it is `None` (`skip_serializing_if`).
    fn some(&mut self, key: &str, v: Option<&(impl Serialize + ?Sized)>) {
        if let Some(v) = v {
            self.value(key, v);
        }
    }

    /// A member's key that may need escapes (a field's path).
    fn key_escaped(&mut self, key: &str) -> &mut Vec<u8> {
        self.next();
        serde_json::to_writer(&mut *self.out, key).expect("writing JSON to a Vec cannot fail");
        self.out.push(b':');
        self.out
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

impl Event<'_> {
    /// The event's JSON line (without its newline), appended to `out`.
    pub(crate) fn write_line(&self, out: &mut Vec<u8>) {
        let mut o = Object::new(out);
        o.text("id", self.id);
        o.text("ts", self.ts);
        o.some_text("request_id", self.request_id);
        o.some_text("client_request_id", self.client_request_id);
        o.text_or_null("key", self.key);
        o.text("route", self.route);
        o.text_or_null("model", self.model);
        o.text_or_null("provider", self.provider);
        o.value("status", &self.status);
        o.value("latency_ms", &self.latency_ms);
        o.value("stream", &self.stream);
        o.value("attempts", &self.attempts);
        o.value("cancelled", &self.cancelled);
        o.value("input_tokens", &self.input_tokens);
        o.value("output_tokens", &self.output_tokens);
        o.some_text("error", self.error);
        if let Some(f) = self.fields {
            f.write_json(o.key("fields"));
        }
        o.some("conversions", self.conversions);
        if let Some(t) = &self.tool_call {
            o.value("kind", t.kind);
            o.value("server", t.server);
            o.value("tool", t.tool);
            o.value("called", t.called);
            o.value("outcome", t.outcome);
            o.value("duration_ms", &t.duration_ms);
            o.value("arguments", &t.arguments);
        }
        o.end();
    }
}

/// `s` as a JSON string: copied between quotes when it holds nothing JSON
/// escapes (the gateway's ids, times and names, nearly always), else by
/// serde_json. The test is a pass over whole bytes that vectorizes, where
/// serde_json looks each byte up in a table: ~1,400 instructions per event
/// of the production-shaped bench went to its string writer.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        serde_json::to_writer(out, s).expect("writing JSON to a Vec cannot fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

impl Fields {
    /// `{"path":json,…}`, each recorded JSON as it is.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = Object::new(out);
        for (path, json) in self.entries() {
            let out = o.key_escaped(path);
            out.extend_from_slice(json.as_bytes());
        }
        o.end();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ToolCall;

    fn line(e: &Event<'_>) -> String {
        let mut out = Vec::new();
        e.write_line(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_line_is_what_serde_writes() {
        let mut fields = Fields::default();
        fields.push("metadata.team".into(), r#""caf\u00e9""#);
        fields.push("path \"q\"\n".into(), r#"{"a": [1, 2.50]}"#);
        let conversions = json!([{"part": "image", "by": "ocr", "ok": true}]);
        let mut e = Event {
            id: "0123456789abcdef000000000001",
            ts: "2026-12-04T06:30:00.123Z",
            request_id: Some("req-\"1\"\u{2028}é"),
            client_request_id: None,
            key: None,
            route: "gpt-4o\\mini",
            model: Some("gpt-4o-2024"),
            provider: None,
            status: 200,
            latency_ms: 12.5,
            stream: true,
            attempts: 2,
            cancelled: false,
            input_tokens: Some(17),
            output_tokens: None,
            error: None,
            fields: None,
            conversions: None,
            tool_call: None,
        };
        assert_eq!(line(&e), serde_json::to_string(&e).unwrap());
        e.client_request_id = Some("c\u{1}");
        e.key = Some("team-a");
        e.provider = Some("openai");
        e.latency_ms = 0.0;
        e.output_tokens = Some(u64::MAX);
        e.error = Some("upstream said \"no\"\t");
        e.fields = Some(&fields);
        e.conversions = Some(&conversions);
        e.tool_call = Some(ToolCall {
            kind: "mcp_tool_call",
            server: "files",
            tool: "read",
            called: "files__read",
            outcome: "ok",
            duration_ms: 1e-7,
            arguments: json!({"path": "/tmp/x", "n": [1, null]}),
        });
        assert_eq!(line(&e), serde_json::to_string(&e).unwrap());
        let empty = Fields::default();
        e.fields = Some(&empty);
        e.latency_ms = f64::NAN;
        assert_eq!(line(&e), serde_json::to_string(&e).unwrap());
    }
}
