//! JSON-RPC 2.0 as MCP uses it: messages are kept as JSON values (a
//! gateway passes through fields it does not know), with the error codes
//! the gateway answers with.

use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// The request did not finish within the server's `timeout_ms`.
pub const REQUEST_TIMEOUT: i64 = -32001;
/// The upstream server is down, restarting, or went away mid-call.
pub const UPSTREAM_UNAVAILABLE: i64 = -32010;
/// A per-key or per-tool rate limit (`mcp_rpm`) was hit.
pub const RATE_LIMITED: i64 = -32029;
/// MCP 2026-07-28: the requested protocol version is not served.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// A JSON-RPC error: code, message, optional data.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// From a JSON-RPC `error` object (anything malformed is an internal error).
    pub fn from_value(v: &Value) -> Self {
        Self {
            code: v
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(INTERNAL_ERROR),
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
            data: v.get("data").cloned(),
        }
    }

    pub fn to_value(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }

    /// The short word metrics and audit events use for this error.
    pub fn outcome(&self) -> &'static str {
        match self.code {
            REQUEST_TIMEOUT => "timeout",
            UPSTREAM_UNAVAILABLE => "unavailable",
            RATE_LIMITED => "rate_limited",
            INVALID_PARAMS | METHOD_NOT_FOUND => "not_found",
            _ => "error",
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// What one received message is.
#[derive(Debug)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    Response {
        id: Value,
        result: Result<Value, RpcError>,
    },
}

impl Message {
    /// Classifies a parsed JSON value; `Err` says why it is not a message.
    pub fn from_value(v: Value) -> Result<Self, &'static str> {
        let Value::Object(mut o) = v else {
            return Err("a JSON-RPC message is an object");
        };
        if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err("jsonrpc must be \"2.0\"");
        }
        let id = o.remove("id");
        if let Some(method) = o.remove("method") {
            let Value::String(method) = method else {
                return Err("method must be a string");
            };
            let params = o.remove("params");
            if params
                .as_ref()
                .is_some_and(|p| !p.is_object() && !p.is_array())
            {
                return Err("params must be an object");
            }
            return Ok(match id {
                Some(id) if valid_id(&id) => Self::Request { id, method, params },
                Some(_) => return Err("id must be a string or an integer"),
                None => Self::Notification { method, params },
            });
        }
        let id = id.ok_or("a message needs a method or an id")?;
        if let Some(r) = o.remove("result") {
            return Ok(Self::Response { id, result: Ok(r) });
        }
        match o.get("error") {
            Some(e) => Ok(Self::Response {
                id,
                result: Err(RpcError::from_value(e)),
            }),
            None => Err("a response needs a result or an error"),
        }
    }
}

fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

pub fn request(id: &Value, method: &str, params: Option<&Value>) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let Some(p) = params {
        m["params"] = p.clone();
    }
    m
}

pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "method": method});
    if let Some(p) = params {
        m["params"] = p;
    }
    m
}

pub fn response(id: &Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_value()}),
    }
}

/// `params._meta`, created when missing.
pub fn meta_mut(params: &mut Value) -> Option<&mut Map<String, Value>> {
    let p = params.as_object_mut()?;
    p.entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

/// `params._meta.progressToken`, when the caller asked for progress.
pub fn progress_token(params: Option<&Value>) -> Option<&Value> {
    params?.get("_meta")?.get("progressToken")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let m = Message::from_value(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).unwrap();
        assert!(matches!(m, Message::Request { ref method, .. } if method == "tools/list"));
        let m = Message::from_value(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::from_value(
            json!({"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"nope"}}),
        )
        .unwrap();
        match m {
            Message::Response { result: Err(e), .. } => assert_eq!(e.code, METHOD_NOT_FOUND),
            other => panic!("{other:?}"),
        }
        for bad in [
            json!([]),
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":3}),
            json!({"jsonrpc":"2.0","id":1}),
        ] {
            assert!(Message::from_value(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_tokens_and_meta() {
        let mut p = json!({"name":"x"});
        assert_eq!(progress_token(Some(&p)), None);
        meta_mut(&mut p)
            .unwrap()
            .insert("progressToken".into(), json!(7));
        assert_eq!(progress_token(Some(&p)), Some(&json!(7)));
    }
}
