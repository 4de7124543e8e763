//! The configuration file as written: every table denies unknown keys and keeps
//! the spans of the values validation may complain about.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    pub models: Vec<Spanned<RawModel>>,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub keys: Vec<Spanned<RawKey>>,
    #[serde(default)]
    pub redis: RawRedis,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub redaction: RawRedaction,
    pub audit: Option<Spanned<RawAudit>>,
    /// `None` when the file has no `[agents]` table (the defaults apply).
    pub agents: Option<RawAgents>,
    #[serde(default)]
    pub responses: RawResponses,
    #[serde(default)]
    pub files: RawFiles,
    #[serde(default)]
    pub predictors: Vec<Spanned<super::predictors::RawPredictor>>,
    #[serde(default)]
    pub plugins: Vec<Spanned<super::plugins::RawPlugin>>,
    #[serde(default)]
    pub processors: Vec<Spanned<super::multimodal::RawProcessor>>,
    #[serde(default)]
    pub image_fetch: super::multimodal::RawImageFetch,
    #[serde(default)]
    pub mcp: super::mcp::RawMcp,
    #[serde(default)]
    pub mcp_servers: Vec<Spanned<super::mcp::RawMcpServer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub provider: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    pub max_stored: Option<Spanned<u64>>,
    pub max_stored_bytes: Option<Spanned<u64>>,
    pub backend: Option<Spanned<String>>,
    pub ttl_hours: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    pub enabled: Option<bool>,
    pub heartbeat_ms: Option<Spanned<u64>>,
    pub missed_heartbeats: Option<Spanned<u64>>,
    pub hello_timeout_ms: Option<Spanned<u64>>,
    pub queue_depth: Option<Spanned<u64>>,
    pub max_frame_bytes: Option<Spanned<u64>>,
    pub read_buffer_bytes: Option<Spanned<u64>>,
    pub max_instructions: Option<Spanned<u64>>,
    pub max_result_bytes: Option<Spanned<u64>>,
    pub max_wait_ms: Option<Spanned<u64>>,
    pub events_buffer: Option<Spanned<u64>>,
    pub presence_ttl_ms: Option<Spanned<u64>>,
    pub max_connects_per_sec: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub backend: Option<Spanned<String>>,
    pub fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedaction {
    pub enabled: Option<bool>,
    pub kinds: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub custom: Vec<Spanned<RawPattern>>,
    pub prompts: Option<bool>,
    pub cache_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPattern {
    pub name: Spanned<String>,
    pub pattern: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub sink: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_file_bytes: Option<Spanned<u64>>,
    pub max_files: Option<Spanned<u64>>,
    pub stream: Option<Spanned<String>>,
    pub stream_maxlen: Option<Spanned<u64>>,
    pub url: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub duplicate_window_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub buffer_path: Option<Spanned<String>>,
    #[serde(default)]
    pub fields: Vec<Spanned<String>>,
    #[serde(default)]
    pub encrypt_fields: Vec<Spanned<String>>,
    pub key_env: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub queue_capacity: Option<Spanned<u64>>,
    pub retry_ms: Option<Spanned<u64>>,
    pub durability: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub allow_open_non_loopback: Option<bool>,
    pub keys_file: Option<Spanned<String>>,
    pub admin_sha256: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: Spanned<String>,
    pub sha256: Spanned<String>,
    pub models: Option<Vec<Spanned<String>>>,
    pub expires_at: Option<Spanned<String>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub rpm: Option<Spanned<u64>>,
    pub tpm: Option<Spanned<u64>>,
    pub max_streams: Option<Spanned<u64>>,
    pub agent_groups: Option<Vec<Spanned<String>>>,
    pub budget_tokens: Option<Spanned<u64>>,
    pub budget_usd: Option<Spanned<f64>>,
    pub budget_period: Option<Spanned<String>>,
    pub mcp_tools: Option<Vec<Spanned<String>>>,
    pub mcp_rpm: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    pub sample_ratio: Option<Spanned<f64>>,
    pub slow_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub routes: BTreeMap<String, RawRouteLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLog {
    pub sample_ratio: Option<Spanned<f64>>,
    pub slow_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<Spanned<String>>,
    pub otlp_protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, Spanned<String>>,
    pub sampling_ratio: Option<Spanned<f64>>,
    pub parent_based: Option<Spanned<bool>>,
    pub service_name: Option<Spanned<String>>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, Spanned<String>>,
    pub max_queue_spans: Option<Spanned<u64>>,
    pub max_batch_spans: Option<Spanned<u64>>,
    pub export_interval_ms: Option<Spanned<u64>>,
    pub export_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub max_attempts: Option<Spanned<u64>>,
    pub backoff_base_ms: Option<Spanned<u64>>,
    pub backoff_max_ms: Option<Spanned<u64>>,
    pub max_retry_after_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub ttft_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default)]
    pub weights: RawWeights,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<Spanned<u64>>,
    pub error_rate: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<u64>>,
    pub window_ms: Option<Spanned<u64>>,
    pub cooldown_ms: Option<Spanned<u64>>,
    pub half_open_probes: Option<Spanned<u64>>,
    pub success_threshold: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    pub growth: Option<Spanned<f64>>,
    pub trip_factor: Option<Spanned<f64>>,
    pub floor: Option<Spanned<f64>>,
    pub reset_after_successes: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub max_upload_bytes: Option<Spanned<u64>>,
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub shutdown_grace_ms: Option<Spanned<u64>>,
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub listen_backlog: Option<Spanned<u64>>,
    #[serde(alias = "max_connections_per_client")]
    pub max_connections_per_ip: Option<Spanned<u64>>,
    pub memory_shed_percent: Option<Spanned<u64>>,
    pub memory_check_ms: Option<Spanned<u64>>,
    pub workers: Option<Spanned<u64>>,
    pub http2_keepalive_interval_ms: Option<Spanned<u64>>,
    pub tls_cert_file: Option<Spanned<String>>,
    pub tls_key_file: Option<Spanned<String>>,
    pub tls_reload_ms: Option<Spanned<u64>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub cors_origins: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub base_url: Option<Spanned<String>>,
    pub api_key: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub max_idle_connections: Option<Spanned<u64>>,
    pub ca_file: Option<Spanned<String>>,
    // azure only
    pub api_version: Option<Spanned<String>>,
    // anthropic only
    pub default_max_tokens: Option<Spanned<u64>>,
    pub responses_api: Option<Spanned<bool>>,
    // mock provider only
    pub tokens_per_response: Option<Spanned<u64>>,
    pub token_delay_ms: Option<Spanned<u64>>,
    pub embedding_dims: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<RawTarget>>>,
    pub strategy: Option<Spanned<String>>,
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub ttft_timeout_ms: Option<Spanned<u64>>,
    pub max_attempts: Option<Spanned<u64>>,
    pub rpm: Option<Spanned<u64>>,
    pub tpm: Option<Spanned<u64>>,
    pub price_input_per_mtok: Option<Spanned<f64>>,
    pub price_output_per_mtok: Option<Spanned<f64>>,
    pub modalities: Option<Spanned<Vec<String>>>,
    pub convert: Option<Spanned<super::multimodal::RawConvert>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: Spanned<String>,
    pub model: Option<Spanned<String>>,
    pub weight: Option<Spanned<u64>>,
}
