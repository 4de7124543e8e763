//! Configuration: TOML text → [`raw`] schema → validated [`Config`] snapshot.
//!
//! There is no half-valid state: [`parse`] either returns a complete `Config`
//! or every problem it found, each with file:line:col.

mod audit;
mod env;
mod files;
mod keys;
mod mcp;
mod multimodal;
mod observability;
mod plugins;
mod predictors;
mod providers;
mod raw;
mod redaction;
mod server;
mod shared;
pub mod time;
pub use mcp::{McpConfig, McpServerConfig, McpTransport, valid_server_name};
pub use multimodal::{
    ConvertConfig, Converter, ImageFetchConfig, Modalities, Modality, OnFailure, ProcessorConfig,
    ProcessorKind,
};
pub use plugins::{PluginConfig, SandboxLimits};
pub use predictors::{PredictorConfig, PredictorEngine, WasmPredictor};
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::resilience::{BreakerConfig, WeightConfig};
use crate::secret::Secret;

pub use audit::{AuditConfig, AuditDurability, AuditSinkKind, NatsSinkConfig, parse_key_hex};
pub use env::interpolate;
pub use redaction::RedactionConfig;
pub use shared::{LimitsBackend, LimitsConfig, RedisConfig};

const DEFAULT_TOML: &str = include_str!("default.toml");
const DEFAULT_OPENAI_TOML: &str = include_str!("default-openai.toml");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub routing: RoutingConfig,
    pub logging: LoggingConfig,
    pub telemetry: TelemetryConfig,
    /// Virtual keys; empty = the API is open (allowed on loopback only,
    /// unless `allow_open_non_loopback`).
    pub keys: Vec<KeyConfig>,
    pub allow_open_non_loopback: bool,
    /// Where keys added through the admin API are kept (hashed).
    pub keys_file: Option<std::path::PathBuf>,
    /// SHA-256 of the token the admin key API wants; `None` = no token
    /// (allowed only while the admin listener is on loopback).
    pub admin_sha256: Option<[u8; 32]>,
    pub redis: Option<RedisConfig>,
    pub limits: LimitsConfig,
    pub redaction: RedactionConfig,
    /// `None` = no audit trail.
    pub audit: Option<AuditConfig>,
    pub agents: AgentsConfig,
    pub responses: ResponsesConfig,
    pub files: FilesConfig,
    /// Local models served at `/v1/predict` and `/v2/models/…`.
    pub predictors: Vec<PredictorConfig>,
    /// proxy-wasm filters on the API routes, in file order.
    pub plugins: Vec<PluginConfig>,
    /// Local processors that turn request parts into text (OCR) or trim
    /// them (voice activity).
    pub processors: Vec<ProcessorConfig>,
    /// Image URLs the gateway may fetch for a processor.
    pub image_fetch: ImageFetchConfig,
    /// The MCP gateway (`/mcp`) and its upstream tool servers.
    pub mcp: McpConfig,
}

/// Where `/v1/files` and `/v1/batches` go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesConfig {
    /// Index into `providers`: an OpenAI-format provider (passed through)
    /// or the mock (kept in memory, batches run by the gateway). `None`: no
    /// provider can serve them.
    pub provider: Option<usize>,
}

/// Stored Responses (`/v1/responses` with `store`), in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsesConfig {
    /// Responses kept at most (oldest dropped first).
    pub max_stored: usize,
    /// Bytes of stored responses and conversations at most.
    pub max_stored_bytes: usize,
    /// Kept in Redis too (shared by every replica), not only in memory.
    pub redis: bool,
    /// How long a stored response is kept in Redis.
    pub ttl: Duration,
}
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub enabled: bool,
    /// The hub pings every agent this often.
    pub heartbeat: Duration,
    /// Heartbeats an agent may miss before it is evicted.
    pub missed_heartbeats: u32,
    /// How long a new connection has to say hello.
    pub hello_timeout: Duration,
    /// Frames waiting to be sent to one agent; more is an overflow.
    pub queue_depth: usize,
    /// Largest frame (and message) an agent may send.
    pub max_frame_bytes: usize,
    /// Initial read buffer per connection (grows for larger frames).
    pub read_buffer_bytes: usize,
    /// Instruction records kept for polling (oldest dropped first).
    pub max_instructions: usize,
    /// Bytes of results those records may hold together (oldest dropped first).
    pub max_result_bytes: usize,
    /// Longest `wait_ack_ms` / `wait_result_ms` a caller may ask for.
    pub max_wait: Duration,
    /// Events kept for slow readers of `/v1/agents/events`.
    pub events_buffer: usize,
    /// With Redis: how long an agent's presence key lives unrefreshed.
    pub presence_ttl: Duration,
    /// New agent connections admitted per second at most (a reconnect
    /// storm is paced: `503` + `Retry-After` past it); 0 = not paced.
    pub max_connects_per_sec: u64,
}

/// A virtual key: clients send the token, the configuration holds its hash.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: Arc<str>,
    pub sha256: [u8; 32],
    /// `None` = every model.
    pub models: Option<Vec<Arc<str>>>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
    pub metadata: Vec<(String, String)>,
    /// Requests and tokens per minute for this key.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Streamed responses this key may have open at once.
    pub max_streams: Option<u32>,
    /// The agent groups this key may join and instruct; `None` = all.
    pub agent_groups: Option<Vec<Arc<str>>>,
    /// Tokens (input + output) this key may spend per period.
    pub budget: Option<(u64, crate::limits::BudgetPeriod)>,
    /// US dollars this key may spend per the same period, priced by the
    /// models' `price_*_per_mtok`.
    pub budget_usd: Option<(f64, crate::limits::BudgetPeriod)>,
    /// Globs of the MCP tools (`server__tool`) this key sees and may
    /// call; `None` = all.
    pub mcp_tools: Option<Vec<Arc<str>>>,
    /// Calls per minute to each MCP tool for this key.
    pub mcp_rpm: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON unless stderr is a terminal.
    Auto,
    Json,
    Pretty,
}

/// Which successful requests get an access-log line. Errors always do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Fraction of successful requests logged (0–1).
    pub ratio: f64,
    /// Requests slower than this are always logged.
    pub slow: Duration,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// An `EnvFilter` directive, e.g. `info` or `sluice=debug,hyper=warn`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    pub sampling: Sampling,
    /// Per-route overrides, by path (`/v1/embeddings`).
    pub routes: Vec<(String, Sampling)>,
}

impl LoggingConfig {
    pub fn sampling_for(&self, route: &str) -> Sampling {
        self.routes
            .iter()
            .find(|(r, _)| r == route)
            .map_or(self.sampling, |(_, s)| *s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// OpenTelemetry trace export; `None` endpoint = tracing off (and free).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
    /// The endpoint is the whole traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`):
    /// OTLP/HTTP does not add `/v1/traces` to it.
    pub traces_url: bool,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, Secret)>,
    /// Traces started here are sampled at this ratio (by trace id)...
    pub sampling_ratio: f64,
    /// ...and a client's `traceparent` sampled flag is followed when true;
    /// when false, its trace id is sampled at the ratio too.
    pub parent_based: bool,
    pub service_name: String,
    /// Extra resource attributes (`[telemetry.resource_attributes]`, else
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Finished spans waiting to be sent, at most; more are dropped.
    pub max_queue_spans: usize,
    /// A batch is sent when it holds this many spans...
    pub max_batch_spans: usize,
    /// ...or when this long has passed.
    pub export_interval: Duration,
    /// Time limit of one export request.
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            traces_url: false,
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            sampling_ratio: 1.0,
            parent_based: true,
            service_name: "sluice".to_owned(),
            resource_attributes: Vec::new(),
            max_queue_spans: 8192,
            max_batch_spans: 512,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// How requests find a healthy target: retries, back-off, breakers, weights.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Upstream attempts per request, across targets and fallback models.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` we wait out on the only target left; longer
    /// ones send the provider's answer to the client instead.
    pub max_retry_after: Duration,
    /// Default total deadline per request (models may override).
    pub timeout: Duration,
    /// Default time-to-first-token limit for streamed requests.
    pub ttft_timeout: Duration,
    pub breaker: BreakerConfig,
    pub weights: WeightConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random over effective weights.
    Weighted,
    /// Fewest requests in flight per unit of weight.
    LeastOutstanding,
    /// Lowest EWMA time to first byte (with a little exploration).
    LowestLatency,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest form upload (audio to transcribe, images to edit); larger
    /// ones get 413.
    pub max_upload_bytes: usize,
    /// How long a client may take to send the request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) accepted.
    pub max_header_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a client may take to send the request body.
    pub body_read_timeout: Duration,
    /// Client connections open at once, per listener (also lowered at start
    /// to fit the process's descriptor limit).
    pub max_connections: usize,
    /// The listeners' accept queue (`listen(2)` backlog; the kernel caps
    /// it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Client connections open at once from one address; 0 = no cap.
    pub max_connections_per_ip: usize,
    /// New requests are shed (503) while the cgroup's working set is at or
    /// past this percentage of `memory.high` (else `memory.max`); 0 = never.
    pub memory_shed_percent: u8,
    /// Async worker threads; 0 = one per CPU the cgroup quota and the
    /// affinity mask allow (`crate::cgroup::Limits::workers`).
    pub workers: usize,
    /// How often memory use is read for shedding.
    pub memory_check: Duration,
    /// How often an HTTP/2 client is pinged to see it is still there.
    pub http2_keepalive_interval: Duration,
    /// TLS on the API listener; `None` = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// A Unix socket where this process hands its listeners to a new one
    /// started with `sluice serve --upgrade` (zero-downtime upgrade).
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// Browser origins allowed to call the API (CORS); `*` = any. Empty =
    /// no CORS headers at all.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// How often the files are checked for a change.
    pub reload: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every server that speaks its wire format (vLLM, Ollama,
    /// Groq, Mistral, DeepSeek, Together, OpenRouter, …).
    OpenAi,
    /// Azure OpenAI: the OpenAI format at a deployment URL, with an
    /// `api-version` query and an `api-key` header.
    Azure,
    /// The Anthropic Messages API.
    Anthropic,
    /// Google Gemini's `generateContent`.
    Gemini,
    /// The built-in deterministic provider.
    Mock,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    /// The `kind` as written (`groq`, `ollama`, …).
    pub preset: &'static str,
    /// Azure's `api-version` query parameter.
    pub api_version: String,
    /// Anthropic requires `max_tokens`; used when the client sent none.
    pub default_max_tokens: u64,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// `/v1/responses` goes to this provider's own Responses API (OpenAI
    /// itself by default) rather than through its chat completions.
    pub responses_api: bool,
    pub api_key: Option<Secret>,
    pub headers: Vec<(String, Secret)>,
    pub connect_timeout: Duration,
    /// Until the upstream's response head arrives.
    pub timeout: Duration,
    /// Longest silence allowed between two body chunks of a response.
    pub idle_timeout: Duration,
    pub max_idle_connections: usize,
    /// Extra CA certificates (PEM) trusted for this upstream, besides the
    /// system's.
    pub ca_file: Option<std::path::PathBuf>,
    pub mock: MockConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    pub tokens_per_response: u32,
    pub token_delay: Duration,
    pub embedding_dims: usize,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: Arc<str>,
    pub targets: Vec<TargetConfig>,
    pub strategy: Strategy,
    /// Models tried in order when every target of this one failed.
    pub fallbacks: Vec<Arc<str>>,
    /// Total deadline for a request to this model, retries included.
    pub timeout: Duration,
    pub ttft_timeout: Duration,
    pub max_attempts: u32,
    /// Requests and tokens per minute for this model, all keys together.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// US dollars per million (input, output) tokens, for cost budgets.
    pub price: Option<(f64, f64)>,
    /// What the targets take natively.
    pub modalities: Modalities,
    /// How other parts become text; `None` = they are refused.
    pub convert: Option<Arc<ConvertConfig>>,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// The model name sent upstream.
    pub model: Arc<str>,
    pub weight: u32,
}

/// One problem in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates `text`; `file` names it in errors; `env` resolves `${VAR}`.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    parse_as(text, file, env, false)
}

/// Like [`parse`], for a file to serve from: it must also serve something
/// (a `[[models]]` entry, or an `[agents]` table) and the files it writes
/// must have a folder to go in.
pub fn parse_whole(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    parse_as(text, file, env, true)
}

fn parse_as(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    whole: bool,
) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
    validate::validate(raw, text, file, env, whole)
}

/// A TOML syntax or schema error, located.
fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigErrors {
    let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
    ConfigErrors(vec![ConfigError {
        file: file.to_owned(),
        line,
        column,
        message: e.message().trim().to_owned(),
    }])
}

/// `[[keys]]` tables alone (no other configuration), validated like the
/// file's against the `models` served.
pub fn parse_keys(text: &str, file: &str, models: &[&str]) -> Result<Vec<KeyConfig>, ConfigErrors> {
    keys::keys_only(text, file, models)
}

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read file: {e}"),
        }])
    })?;
    parse_whole(&text, &name, &|k| std::env::var(k).ok())
}

/// The embedded default: the mock provider, plus OpenAI when its key is set.
pub fn embedded_default(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    if env("OPENAI_API_KEY").is_some_and(|k| !k.is_empty()) {
        let text = format!("{DEFAULT_TOML}\n{DEFAULT_OPENAI_TOML}");
        parse(&text, "<embedded default>", env)
    } else {
        parse(DEFAULT_TOML, "<embedded default>", env)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests;
