//! One error taxonomy for the whole gateway. Every kind maps to a status, an
//! OpenAI error `type` and `code`, and a source tag (who is at fault) with no
//! catch-all arm, so adding a kind forces a decision everywhere it matters.

use std::borrow::Cow;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not valid JSON.
    InvalidJson,
    /// Valid JSON, but a required field is missing or has the wrong type.
    InvalidRequest,
    /// No API key, an unknown one, or an expired one.
    Unauthorized,
    /// The key may not use this model.
    Forbidden,
    /// A request part of a kind (image, audio) the model's targets do not
    /// take, with no converter configured for it.
    UnsupportedModality,
    /// A part's conversion to text failed (under `on_failure = "fail"`).
    ConversionFailed,
    /// A part's conversion ran past its deadline (under `on_failure = "fail"`).
    ConversionTimeout,
    /// A key's or model's requests or tokens per minute are used up.
    RateLimited,
    /// Too many streams open at once for a key.
    ConcurrencyLimited,
    /// The client took too long to send its request body.
    RequestTimeout,
    /// The key's token budget for the period is spent.
    BudgetExceeded,
    /// The `model` names nothing this gateway serves.
    ModelNotFound,
    /// No route for this path.
    RouteNotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    /// The request head (request line and headers) exceeds the limit.
    HeadersTooLarge,
    /// The content type is not JSON.
    UnsupportedMediaType,
    /// This model's provider cannot serve this operation (e.g. embeddings).
    UnsupportedOperation,
    /// The upstream could not be reached (refused, DNS, TLS, reset before a response).
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered with something we could not use.
    UpstreamProtocol,
    /// The upstream refused the gateway's own credentials (its 401/403):
    /// the client's key is fine, ours is not, so this is not the client's 401.
    UpstreamAuth,
    /// Every target of the model (and its fallbacks) is unavailable:
    /// breakers open, or cooling down after the provider asked us to wait.
    NoHealthyTarget,
    /// The agent hub: the caller's key may not see or instruct this agent.
    AgentNotAllowed,
    /// The agent hub: no agent by that id is connected.
    AgentNotFound,
    /// The agent hub: the agent's send queue is full (it is not keeping up).
    AgentQueueFull,
    /// The agent hub: new connections come faster than
    /// `[agents] max_connects_per_sec` (a reconnect storm is paced).
    AgentConnectsPaced,
    /// Local inference: the model's queue is full.
    PredictQueueFull,
    /// The gateway's cgroup is near its memory limit: new work is refused
    /// until it is not.
    MemoryPressure,
    /// The agent hub: no instruction by that id (unknown, or dropped).
    InstructionNotFound,
    /// The admin API: the admin token sent is not the configured one.
    AdminTokenInvalid,
    /// The admin API on a non-loopback address with no admin token set.
    AdminTokenRequired,
    /// The admin API: no key by that name.
    KeyNotFound,
    /// The admin API: a key change conflicts with the keys there are.
    KeyConflict,
    /// A configuration file to reload is invalid (every problem listed).
    InvalidConfig,
    /// No stored response by that id (unknown, expired, or another key's).
    ResponseNotFound,
    /// No file or batch by that id (unknown, deleted, or another key's).
    ObjectNotFound,
    /// A bug or an impossible state in the gateway itself.
    Internal,
}

/// Who caused an error: decides retries (later) and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Downstream,
    Upstream,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidJson | ErrorKind::InvalidRequest | ErrorKind::UnsupportedModality => {
                400
            }
            ErrorKind::ConversionFailed => 502,
            ErrorKind::ConversionTimeout => 504,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::RateLimited | ErrorKind::ConcurrencyLimited | ErrorKind::BudgetExceeded => {
                429
            }
            ErrorKind::RequestTimeout => 408,
            ErrorKind::ModelNotFound | ErrorKind::RouteNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::UnsupportedOperation => 400,
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamAuth => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::NoHealthyTarget
            | ErrorKind::MemoryPressure
            | ErrorKind::AgentConnectsPaced => 503,
            ErrorKind::AgentNotAllowed | ErrorKind::AdminTokenRequired => 403,
            ErrorKind::AgentNotFound
            | ErrorKind::InstructionNotFound
            | ErrorKind::KeyNotFound
            | ErrorKind::ResponseNotFound
            | ErrorKind::ObjectNotFound => 404,
            ErrorKind::AgentQueueFull | ErrorKind::PredictQueueFull => 429,
            ErrorKind::AdminTokenInvalid => 401,
            ErrorKind::KeyConflict => 409,
            ErrorKind::InvalidConfig => 400,
            ErrorKind::Internal => 500,
        }
    }

    /// The OpenAI error `type` field.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedModality
            | ErrorKind::ModelNotFound
            | ErrorKind::RouteNotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::UnsupportedOperation
            | ErrorKind::AgentNotAllowed
            | ErrorKind::AdminTokenInvalid
            | ErrorKind::AdminTokenRequired
            | ErrorKind::KeyNotFound
            | ErrorKind::KeyConflict
            | ErrorKind::InvalidConfig
            | ErrorKind::ResponseNotFound
            | ErrorKind::ObjectNotFound => "invalid_request_error",
            ErrorKind::AgentNotFound | ErrorKind::InstructionNotFound => "not_found_error",
            ErrorKind::AgentQueueFull | ErrorKind::PredictQueueFull => "rate_limit_error",
            ErrorKind::AgentConnectsPaced => "rate_limit_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited | ErrorKind::ConcurrencyLimited => "rate_limit_error",
            ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::BudgetExceeded => "insufficient_quota",
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamAuth
            | ErrorKind::NoHealthyTarget
            | ErrorKind::ConversionFailed
            | ErrorKind::ConversionTimeout => "upstream_error",
            ErrorKind::Internal | ErrorKind::MemoryPressure => "server_error",
        }
    }

    /// The OpenAI error `code` field; also the low-cardinality metric label.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::Forbidden => "model_not_allowed",
            ErrorKind::UnsupportedModality => "unsupported_modality",
            ErrorKind::ConversionFailed => "conversion_failed",
            ErrorKind::ConversionTimeout => "conversion_timeout",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::ConcurrencyLimited => "concurrency_limit_exceeded",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::RouteNotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::UnsupportedOperation => "unsupported_operation",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol_error",
            ErrorKind::UpstreamAuth => "upstream_auth_error",
            ErrorKind::NoHealthyTarget => "no_healthy_target",
            ErrorKind::AgentNotAllowed => "agent_not_allowed",
            ErrorKind::AgentNotFound => "agent_not_found",
            ErrorKind::AgentQueueFull => "agent_queue_full",
            ErrorKind::AgentConnectsPaced => "agent_connects_paced",
            ErrorKind::PredictQueueFull => "predict_queue_full",
            ErrorKind::MemoryPressure => "memory_pressure",
            ErrorKind::InstructionNotFound => "instruction_not_found",
            ErrorKind::AdminTokenInvalid => "invalid_admin_token",
            ErrorKind::AdminTokenRequired => "admin_token_required",
            ErrorKind::KeyNotFound => "key_not_found",
            ErrorKind::KeyConflict => "key_conflict",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::ResponseNotFound => "response_not_found",
            ErrorKind::ObjectNotFound => "object_not_found",
            ErrorKind::Internal => "internal_error",
        }
    }

    pub fn source(self) -> Source {
        match self {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedModality
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::RateLimited
            | ErrorKind::ConcurrencyLimited
            | ErrorKind::RequestTimeout
            | ErrorKind::BudgetExceeded
            | ErrorKind::ModelNotFound
            | ErrorKind::RouteNotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::UnsupportedOperation
            | ErrorKind::AgentNotAllowed
            | ErrorKind::AgentNotFound
            | ErrorKind::AgentQueueFull
            | ErrorKind::AgentConnectsPaced
            | ErrorKind::PredictQueueFull
            | ErrorKind::InstructionNotFound
            | ErrorKind::AdminTokenInvalid
            | ErrorKind::AdminTokenRequired
            | ErrorKind::KeyNotFound
            | ErrorKind::KeyConflict
            | ErrorKind::InvalidConfig
            | ErrorKind::ResponseNotFound
            | ErrorKind::ObjectNotFound => Source::Downstream,
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamAuth
            | ErrorKind::NoHealthyTarget
            | ErrorKind::ConversionFailed
            | ErrorKind::ConversionTimeout => Source::Upstream,
            ErrorKind::Internal | ErrorKind::MemoryPressure => Source::Internal,
        }
    }
}

impl ErrorKind {
    /// Whether another target may do better: the upstream's fault (it could
    /// not be reached, was too slow, answered garbage, refused our key). The
    /// client's own faults and the gateway's are not retried.
    pub fn retryable(self) -> bool {
        match self.source() {
            // A conversion already had its own retries.
            Source::Upstream => !matches!(
                self,
                ErrorKind::NoHealthyTarget
                    | ErrorKind::ConversionFailed
                    | ErrorKind::ConversionTimeout
            ),
            Source::Downstream | Source::Internal => false,
        }
    }
}

/// Whether an upstream's error status is about the upstream's state (busy,
/// failing, our credentials) rather than about the request: those are
/// retried on another target; the others (400, 404, 422, …) are relayed,
/// since every target would say the same.
pub fn upstream_status_retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 429) || (500..600).contains(&status)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// The request field at fault, when there is one (OpenAI `param`).
    pub param: Option<&'static str>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The Anthropic error body: `{"type":"error","error":{"type","message"}}`.
    pub fn to_anthropic_json(&self) -> Vec<u8> {
        let kind = match self.kind.status() {
            400 | 405 | 415 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            404 => "not_found_error",
            413 => "request_too_large",
            503 => "overloaded_error",
            _ => "api_error",
        };
        serde_json::to_vec(&serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.message},
        }))
        .expect("a json! value always serializes")
    }

    /// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
    pub fn to_openai_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": self.param,
                "code": self.kind.code(),
            }
        }))
        .expect("a json! value always serializes")
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 34] = [
        ErrorKind::MemoryPressure,
        ErrorKind::PredictQueueFull,
        ErrorKind::ObjectNotFound,
        ErrorKind::ResponseNotFound,
        ErrorKind::AgentNotAllowed,
        ErrorKind::AgentNotFound,
        ErrorKind::AgentQueueFull,
        ErrorKind::InstructionNotFound,
        ErrorKind::AdminTokenInvalid,
        ErrorKind::AdminTokenRequired,
        ErrorKind::KeyNotFound,
        ErrorKind::KeyConflict,
        ErrorKind::InvalidConfig,
        ErrorKind::HeadersTooLarge,
        ErrorKind::BudgetExceeded,
        ErrorKind::RequestTimeout,
        ErrorKind::ConcurrencyLimited,
        ErrorKind::InvalidJson,
        ErrorKind::InvalidRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::RateLimited,
        ErrorKind::ModelNotFound,
        ErrorKind::RouteNotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::UnsupportedOperation,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamProtocol,
        ErrorKind::UpstreamAuth,
        ErrorKind::NoHealthyTarget,
        ErrorKind::Internal,
    ];

    #[test]
    fn statuses_are_truthful() {
        assert_eq!(ErrorKind::InvalidJson.status(), 400);
        assert_eq!(ErrorKind::InvalidRequest.status(), 400);
        assert_eq!(ErrorKind::ModelNotFound.status(), 404);
        assert_eq!(ErrorKind::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorKind::UpstreamUnreachable.status(), 502);
        assert_eq!(ErrorKind::UpstreamTimeout.status(), 504);
        for k in ALL {
            let s = k.status();
            match k.source() {
                Source::Downstream => assert!((400..500).contains(&s), "{k:?}"),
                Source::Upstream | Source::Internal => assert!(s >= 500, "{k:?}"),
            }
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
    }

    #[test]
    fn body_has_openai_shape() {
        let e = GatewayError::new(ErrorKind::ModelNotFound, "model 'x' does not exist")
            .with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&e.to_openai_json()).unwrap();
        assert_eq!(v["error"]["message"], "model 'x' does not exist");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
    }

    #[test]
    fn only_the_upstreams_faults_are_retried() {
        for k in ALL {
            let expected = k.source() == Source::Upstream && k != ErrorKind::NoHealthyTarget;
            assert_eq!(k.retryable(), expected, "{k:?}");
        }
        for s in [401, 403, 429, 500, 502, 503, 529] {
            assert!(upstream_status_retryable(s), "{s}");
        }
        for s in [400, 404, 409, 413, 422] {
            assert!(!upstream_status_retryable(s), "{s}");
        }
    }
}
