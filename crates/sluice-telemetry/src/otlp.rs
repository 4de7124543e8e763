//! OTLP trace protobuf, written straight from our span records.
//!
//! The SDK path turned every span into owned proto structs (each key and
//! value cloned) before prost encoded them; that conversion was most of the
//! cost of tracing. Here a span's attributes are encoded as they are set,
//! and a finished span is appended to its batch as bytes. The field numbers
//! are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `common/v1/common.proto`; tests decode the output with the official
//! generated types.

use prost::encoding::{WireType, encoded_len_varint};

/// A varint, written in place (prost's generic writer is not inlined and
/// showed up in profiles at a dozen calls per span).
#[inline(always)]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline(always)]
fn encode_key(tag: u32, wire: WireType, buf: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire as u32), buf);
}

/// An attribute value.
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    F64(f64),
    Bool(bool),
    Strs(&'a [String]),
}

/// Bytes of a field's key.
fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

/// Bytes of a whole length-delimited field holding `len` bytes.
fn ld_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_ld_head(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_ld(buf: &mut Vec<u8>, tag: u32, data: &[u8]) {
    put_ld_head(buf, tag, data.len());
    buf.extend_from_slice(data);
}

fn put_fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

/// `AnyValue` body: string 1, bool 2, int 3, double 4, array 5.
fn any_len(v: &Value<'_>) -> usize {
    match v {
        Value::Str(s) => ld_len(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::F64(_) => 9,
        Value::Strs(list) => ld_len(5, array_len(list)),
    }
}

/// `ArrayValue` body: `values` (1), each an `AnyValue` string.
fn array_len(list: &[String]) -> usize {
    list.iter().map(|s| ld_len(1, ld_len(1, s.len()))).sum()
}

fn put_any(buf: &mut Vec<u8>, v: &Value<'_>) {
    match v {
        Value::Str(s) => put_ld(buf, 1, s.as_bytes()),
        Value::Bool(b) => put_varint(buf, 2, u64::from(*b)),
        Value::Int(i) => put_varint(buf, 3, *i as u64),
        Value::F64(f) => put_fixed64(buf, 4, f.to_bits()),
        Value::Strs(list) => {
            put_ld_head(buf, 5, array_len(list));
            for s in *list {
                put_ld_head(buf, 1, ld_len(1, s.len()));
                put_ld(buf, 1, s.as_bytes());
            }
        }
    }
}

/// Appends a `KeyValue` (key 1, value 2) as field `tag` of the message
/// being written: 9 for a span's attributes, 1 for a resource's.
pub fn put_attr(buf: &mut Vec<u8>, tag: u32, key: &str, v: &Value<'_>) {
    let any = any_len(v);
    let kv = ld_len(1, key.len()) + ld_len(2, any);
    if tag < 16 && kv < 128 {
        // The common case, every key and length one byte: fixed-size
        // pieces the compiler writes as plain stores (a tenth of a
        // request's tracing cost went to the general path below).
        buf.reserve(2 + kv);
        buf.extend_from_slice(&[(tag << 3) as u8 | 2, kv as u8, 0x0a, key.len() as u8]);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[0x12, any as u8]);
        if let Value::Str(s) = v {
            buf.extend_from_slice(&[0x0a, s.len() as u8]);
            buf.extend_from_slice(s.as_bytes());
        } else {
            put_any(buf, v);
        }
        return;
    }
    buf.reserve(ld_len(tag, kv));
    put_ld_head(buf, tag, kv);
    put_ld(buf, 1, key.as_bytes());
    put_ld_head(buf, 2, any);
    put_any(buf, v);
}

/// Appends a span `Status` (message 2, code 3 = ERROR) as field 15 of a
/// span. Written twice, the later one wins (protobuf merges the two).
pub fn put_error(buf: &mut Vec<u8>, message: &str) {
    put_ld_head(buf, 15, status_len(message));
    if !message.is_empty() {
        put_ld(buf, 2, message.as_bytes());
    }
    put_varint(buf, 3, 2);
}

/// Appends a span `Event` (time 1, name 2) as field 11 of a span.
pub fn put_event(buf: &mut Vec<u8>, time_unix_nano: u64, name: &str) {
    put_ld_head(buf, 11, 9 + ld_len(2, name.len()));
    put_fixed64(buf, 1, time_unix_nano);
    put_ld(buf, 2, name.as_bytes());
}

/// `Span.kind` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// `Span.flags`: the W3C trace flags, and that we know whether the parent
/// was remote (bit 8) and whether it was (bit 9).
pub const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
pub const FLAGS_IS_REMOTE: u32 = 0x200;

/// What a finished span is made of. `fields` holds its attributes, events
/// and status, already encoded ([`put_attr`] with tag 9, [`put_event`],
/// [`put_error`]): protobuf lets fields come in any order.
pub struct SpanFields<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    /// The W3C `tracestate` (Span field 3).
    pub trace_state: Option<&'a str>,
    pub flags: u32,
    /// The span's name: `name`, or `name` and `name_suffix` with a space
    /// between ("chat gpt-4o"), written without joining them first.
    pub name: &'a str,
    pub name_suffix: Option<&'a str>,
    pub kind: Kind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub fields: &'a [u8],
}

fn status_len(message: &str) -> usize {
    let msg = if message.is_empty() {
        0
    } else {
        ld_len(2, message.len())
    };
    msg + 2 // code (3) = 2, one byte each
}

fn name_len(f: &SpanFields<'_>) -> usize {
    f.name.len() + f.name_suffix.map_or(0, |s| 1 + s.len())
}

fn span_len(f: &SpanFields<'_>) -> usize {
    ld_len(1, 16)
        + ld_len(2, 8)
        + f.parent_span_id.map_or(0, |_| ld_len(4, 8))
        + f.trace_state.map_or(0, |s| ld_len(3, s.len()))
        + key_len(16) + 4
        + ld_len(5, name_len(f))
        + 2 // kind
        + 2 * 9 // start, end
        + f.fields.len()
}

/// Appends a `Span` as field 2 of `ScopeSpans` (the batch being built).
pub fn put_span(buf: &mut Vec<u8>, f: &SpanFields<'_>) {
    let len = span_len(f);
    buf.reserve(len + 4);
    put_ld_head(buf, 2, len);
    put_ld(buf, 1, &f.trace_id.to_be_bytes());
    put_ld(buf, 2, &f.span_id.to_be_bytes());
    if let Some(s) = f.trace_state {
        put_ld(buf, 3, s.as_bytes());
    }
    if let Some(p) = f.parent_span_id {
        put_ld(buf, 4, &p.to_be_bytes());
    }
    encode_key(16, WireType::ThirtyTwoBit, buf);
    buf.extend_from_slice(&f.flags.to_le_bytes());
    put_ld_head(buf, 5, name_len(f));
    buf.extend_from_slice(f.name.as_bytes());
    if let Some(s) = f.name_suffix {
        buf.push(b' ');
        buf.extend_from_slice(s.as_bytes());
    }
    put_varint(buf, 6, f.kind as u64);
    put_fixed64(buf, 7, f.start_unix_nano);
    put_fixed64(buf, 8, f.end_unix_nano);
    buf.extend_from_slice(f.fields);
}

/// A `Resource` body with string attributes.
pub fn resource(attrs: &[(String, String)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (k, v) in attrs {
        put_attr(&mut buf, 1, k, &Value::Str(v));
    }
    buf
}

/// An `InstrumentationScope` body (name 1, version 2).
pub fn scope(name: &str, version: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    put_ld(&mut buf, 1, name.as_bytes());
    put_ld(&mut buf, 2, version.as_bytes());
    buf
}

/// An `ExportTraceServiceRequest` holding one `ResourceSpans` with one
/// `ScopeSpans` whose spans are `spans` (as written by [`put_span`]).
pub fn request(resource: &[u8], scope: &[u8], spans: &[u8], out: &mut Vec<u8>) {
    let scope_spans = ld_len(1, scope.len()) + spans.len();
    let resource_spans = ld_len(1, resource.len()) + ld_len(2, scope_spans);
    out.reserve(ld_len(1, resource_spans));
    put_ld_head(out, 1, resource_spans);
    put_ld(out, 1, resource);
    put_ld_head(out, 2, scope_spans);
    put_ld(out, 1, scope);
    out.extend_from_slice(spans);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    fn attr_value(
        kv: &[opentelemetry_proto::tonic::common::v1::KeyValue],
        key: &str,
    ) -> Option<Any> {
        kv.iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    }

    fn encode(spans: &[SpanFields<'_>]) -> ExportTraceServiceRequest {
        let mut batch = Vec::new();
        for s in spans {
            put_span(&mut batch, s);
        }
        let mut out = Vec::new();
        request(
            &resource(&[("service.name".into(), "svc".into())]),
            &scope("sluice", "1.2.3"),
            &batch,
            &mut out,
        );
        ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes")
    }

    #[test]
    fn the_official_types_decode_what_we_write() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 9, "s", &Value::Str("héllo"));
        put_attr(&mut attrs, 9, "neg", &Value::Int(-5));
        put_attr(&mut attrs, 9, "big", &Value::Int(i64::MAX));
        put_attr(&mut attrs, 9, "f", &Value::F64(0.25));
        put_attr(&mut attrs, 9, "t", &Value::Bool(true));
        put_attr(&mut attrs, 9, "no", &Value::Bool(false));
        let list = vec!["stop".to_owned(), String::new(), "x".repeat(300)];
        put_attr(&mut attrs, 9, "list", &Value::Strs(&list));
        put_attr(&mut attrs, 9, "empty", &Value::Strs(&[]));
        let (long_key, long_value) = ("k".repeat(130), "v".repeat(100));
        put_attr(&mut attrs, 9, &long_key, &Value::Str(&long_value));
        put_attr(&mut attrs, 9, "long", &Value::Str(&long_key));
        put_event(&mut attrs, 1_700_000_000_000_000_123, "gen_ai.first_token");
        put_error(&mut attrs, "first");
        put_error(&mut attrs, "status 503");
        let mut second = Vec::new();
        put_error(&mut second, "");
        let long_name = "n".repeat(200);
        let req = encode(&[
            SpanFields {
                trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                span_id: 0x00f0_67aa_0ba9_02b7,
                parent_span_id: Some(0x1122_3344_5566_7788),
                trace_state: Some("congo=t61rcWkgMzE"),
                flags: 1 | FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE,
                name: "chat",
                name_suffix: Some("gpt"),
                kind: Kind::Server,
                start_unix_nano: 1,
                end_unix_nano: u64::MAX,
                fields: &attrs,
            },
            SpanFields {
                trace_id: 1,
                span_id: 2,
                parent_span_id: None,
                trace_state: None,
                flags: 0,
                name: &long_name,
                name_suffix: None,
                kind: Kind::Client,
                start_unix_nano: 5,
                end_unix_nano: 6,
                fields: &second,
            },
        ]);
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(
            attr_value(&res.attributes, "service.name"),
            Some(Any::StringValue("svc".into()))
        );
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("sluice", "1.2.3")
        );
        assert_eq!(ss.spans.len(), 2);

        let a = &ss.spans[0];
        assert_eq!(hex(&a.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&a.span_id), "00f067aa0ba902b7");
        assert_eq!(hex(&a.parent_span_id), "1122334455667788");
        assert_eq!(a.flags, 0x301);
        assert_eq!(a.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(a.name, "chat gpt");
        assert_eq!(a.kind, 2);
        assert_eq!(
            (a.start_time_unix_nano, a.end_time_unix_nano),
            (1, u64::MAX)
        );
        let at = &a.attributes;
        assert_eq!(attr_value(at, "s"), Some(Any::StringValue("héllo".into())));
        assert_eq!(attr_value(at, "neg"), Some(Any::IntValue(-5)));
        assert_eq!(attr_value(at, "big"), Some(Any::IntValue(i64::MAX)));
        assert_eq!(attr_value(at, "f"), Some(Any::DoubleValue(0.25)));
        assert_eq!(attr_value(at, "t"), Some(Any::BoolValue(true)));
        assert_eq!(attr_value(at, "no"), Some(Any::BoolValue(false)));
        let Some(Any::ArrayValue(arr)) = attr_value(at, "list") else {
            panic!("list is an array")
        };
        let got: Vec<_> = arr
            .values
            .iter()
            .map(|v| match &v.value {
                Some(Any::StringValue(s)) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, list);
        assert!(matches!(attr_value(at, "empty"), Some(Any::ArrayValue(a)) if a.values.is_empty()));
        assert_eq!(
            attr_value(at, &long_key),
            Some(Any::StringValue(long_value))
        );
        assert_eq!(
            attr_value(at, "long"),
            Some(Any::StringValue(long_key.clone()))
        );
        let mut resource_attr = Vec::new();
        put_attr(&mut resource_attr, 1, "a", &Value::Str("b"));
        assert_eq!(
            resource_attr,
            [0x0a, 8, 0x0a, 1, b'a', 0x12, 3, 0x0a, 1, b'b']
        );
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].name, "gen_ai.first_token");
        assert_eq!(a.events[0].time_unix_nano, 1_700_000_000_000_000_123);
        let st = a.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (2, "status 503"));

        let b = &ss.spans[1];
        assert!(b.parent_span_id.is_empty());
        assert!(b.trace_state.is_empty());
        assert_eq!(b.name, long_name);
        assert_eq!(b.kind, 3);
        assert!(b.attributes.is_empty());
        assert_eq!(b.status.as_ref().unwrap().code, 2);
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let req = encode(&[]);
        assert!(req.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
