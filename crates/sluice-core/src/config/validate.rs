//! Raw schema → runtime [`Config`], collecting every problem with its location.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawLogging, RawProvider, RawRouting, RawTelemetry};
use super::{
    Config, ConfigError, ConfigErrors, KeyConfig, LogFormat, LoggingConfig, MockConfig,
    ModelConfig, OtlpProtocol, ProviderConfig, ProviderKind, RoutingConfig, Sampling, Strategy,
    TargetConfig, TelemetryConfig, line_col,
};
use crate::resilience::{BreakerConfig, WeightConfig};
use crate::secret::Secret;

const KNOWN_LATER: &[&str] = &["local"];

/// Provider kinds: the wire format each speaks and its default base URL.
/// The OpenAI-compatible family differs only in where it lives.
const PRESETS: &[(&str, ProviderKind, &str)] = &[
    ("openai", ProviderKind::OpenAi, "https://api.openai.com/v1"),
    (
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com/v1",
    ),
    (
        "gemini",
        ProviderKind::Gemini,
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    ("azure", ProviderKind::Azure, ""),
    (
        "groq",
        ProviderKind::OpenAi,
        "https://api.groq.com/openai/v1",
    ),
    ("mistral", ProviderKind::OpenAi, "https://api.mistral.ai/v1"),
    (
        "deepseek",
        ProviderKind::OpenAi,
        "https://api.deepseek.com/v1",
    ),
    (
        "together",
        ProviderKind::OpenAi,
        "https://api.together.xyz/v1",
    ),
    (
        "openrouter",
        ProviderKind::OpenAi,
        "https://openrouter.ai/api/v1",
    ),
    ("ollama", ProviderKind::OpenAi, "http://127.0.0.1:11434/v1"),
    ("vllm", ProviderKind::OpenAi, "http://127.0.0.1:8000/v1"),
    ("mock", ProviderKind::Mock, ""),
];

fn kinds() -> String {
    PRESETS
        .iter()
        .map(|(k, _, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) struct Collector<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    /// A string with `${VAR}` references resolved, or `None` after
    /// recording why not.
    pub(super) fn interpolated(
        &mut self,
        v: &Spanned<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        match super::interpolate(v.get_ref(), env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.at(v.span(), e);
                None
            }
        }
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    pub(super) fn addr(
        &mut self,
        v: Option<&Spanned<String>>,
        default: &str,
        what: &str,
    ) -> SocketAddr {
        let fallback: SocketAddr = default.parse().expect("defaults are valid addresses");
        let Some(v) = v else { return fallback };
        match v.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                self.at(
                    v.span(),
                    format!("{what}: '{}' is not an IP:port address", v.get_ref()),
                );
                fallback
            }
        }
    }

    /// A number in `range`, or the default.
    fn float(
        &mut self,
        v: Option<&Spanned<f64>>,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
        what: &str,
    ) -> f64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if range.contains(&n) {
            n
        } else {
            self.at(
                v.span(),
                format!(
                    "{what} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }

    /// A positive integer no larger than `max`, or the default.
    pub(super) fn positive(
        &mut self,
        v: Option<&Spanned<u64>>,
        default: u64,
        max: u64,
        what: &str,
    ) -> u64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n == 0 || n > max {
            self.at(v.span(), format!("{what} must be between 1 and {max}"));
            default
        } else {
            n
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    // A file to serve from (not a fragment under test): it must serve
    // something, and the paths it will write must be writable here.
    whole: bool,
) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        text,
        file,
        errors: Vec::new(),
    };
    let server = super::server::server(&mut c, &raw.server);
    let routing = routing(&mut c, &raw.routing);
    let logging = logging(&mut c, &raw.logging);
    let telemetry = telemetry(&mut c, &raw.telemetry, env);
    let model_names: Vec<&str> = raw
        .models
        .iter()
        .map(|m| m.get_ref().name.get_ref().as_str())
        .collect();
    let keys = keys(&mut c, &raw.keys, &model_names);
    let admin_sha256 = raw.auth.admin_sha256.as_ref().and_then(|h| {
        let v = hex_bytes::<32>(h.get_ref());
        if v.is_none() {
            c.at(
                h.span(),
                "admin_sha256 must be 64 hex digits (sluice hash-key <token>)",
            );
        }
        v
    });
    let redis = super::security::redis(&mut c, &raw.redis, env);
    let limits = super::security::limits(&mut c, &raw.limits, redis.is_some());
    let redaction = super::security::redaction(&mut c, &raw.redaction);
    let audit = super::security::audit(&mut c, &raw, redis.is_some(), env);
    let agents = agents(&mut c, raw.agents.as_ref().unwrap_or(&Default::default()));
    // A file that serves nothing is a mistake (an empty file, a typo'd
    // table name): say so, unless it is a hub-only gateway.
    if whole && raw.models.is_empty() && raw.agents.is_none() {
        c.errors.push(ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: "no [[models]]: the gateway would serve nothing (add a [[models]] entry, \
                      or an [agents] table for an agent hub alone)"
                .into(),
        });
    }

    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut names = HashSet::new();
    for p in &raw.providers {
        let pr = p.get_ref();
        if !names.insert(pr.name.get_ref().as_str()) {
            c.at(
                pr.name.span(),
                format!("duplicate provider name '{}'", pr.name.get_ref()),
            );
        }
        if let Some(cfg) = provider(&mut c, pr, env) {
            providers.push(cfg);
        }
    }

    let mut models = Vec::with_capacity(raw.models.len());
    let mut model_names = HashSet::new();
    for m in &raw.models {
        let m = m.get_ref();
        let name = m.name.get_ref();
        if name.trim().is_empty() {
            c.at(m.name.span(), "model name must not be empty");
        }
        if !model_names.insert(name.as_str()) {
            c.at(m.name.span(), format!("duplicate model name '{name}'"));
        }
        if m.targets.get_ref().is_empty() {
            c.at(
                m.targets.span(),
                format!("model '{name}' needs at least one target"),
            );
        }
        if m.targets.get_ref().len() > 64 {
            c.at(m.targets.span(), "a model may have at most 64 targets");
        }
        let mut targets = Vec::new();
        for t in m.targets.get_ref() {
            let t = t.get_ref();
            let pname = t.provider.get_ref();
            let Some(idx) = raw
                .providers
                .iter()
                .position(|p| p.get_ref().name.get_ref() == pname)
            else {
                c.at(
                    t.provider.span(),
                    format!("target names unknown provider '{pname}'"),
                );
                continue;
            };
            let weight = c.positive(t.weight.as_ref(), 1, 1_000_000, "weight") as u32;
            let model = match &t.model {
                Some(m) if m.get_ref().is_empty() => {
                    c.at(m.span(), "target model must not be empty");
                    continue;
                }
                Some(m) => m.get_ref().as_str(),
                None => name.as_str(),
            };
            targets.push(TargetConfig {
                provider: idx,
                model: Arc::from(model),
                weight,
            });
        }
        let strategy = match m.strategy.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "weighted")) => Strategy::Weighted,
            Some((_, "least_outstanding")) => Strategy::LeastOutstanding,
            Some((_, "lowest_latency")) => Strategy::LowestLatency,
            Some((s, other)) => {
                c.at(
                    s.span(),
                    format!(
                        "unknown strategy '{other}' (weighted, least_outstanding, lowest_latency)"
                    ),
                );
                Strategy::Weighted
            }
        };
        let mut fallbacks = Vec::new();
        for f in &m.fallbacks {
            let fname = f.get_ref();
            if fname == name {
                c.at(
                    f.span(),
                    format!("model '{name}' cannot fall back to itself"),
                );
            } else if !raw
                .models
                .iter()
                .any(|o| o.get_ref().name.get_ref() == fname)
            {
                c.at(f.span(), format!("fallback names unknown model '{fname}'"));
            } else {
                fallbacks.push(Arc::from(fname.as_str()));
            }
        }
        let timeout = match &m.timeout_ms {
            Some(_) => ms(c.positive(m.timeout_ms.as_ref(), 0, 3_600_000, "timeout_ms")),
            None => routing.timeout,
        };
        let ttft_timeout = match &m.ttft_timeout_ms {
            Some(_) => ms(c.positive(m.ttft_timeout_ms.as_ref(), 0, 3_600_000, "ttft_timeout_ms")),
            None => routing.ttft_timeout,
        };
        let max_attempts = c.positive(
            m.max_attempts.as_ref(),
            u64::from(routing.max_attempts),
            100,
            "max_attempts",
        ) as u32;
        models.push(ModelConfig {
            name: Arc::from(name.as_str()),
            targets,
            strategy,
            fallbacks,
            timeout,
            ttft_timeout,
            max_attempts,
            rpm: m
                .rpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000, "rpm")),
            tpm: m
                .tpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000_000, "tpm")),
            price: (m.price_input_per_mtok.is_some() || m.price_output_per_mtok.is_some()).then(
                || {
                    (
                        c.float(
                            m.price_input_per_mtok.as_ref(),
                            0.0,
                            0.0..=1e6,
                            "price_input_per_mtok",
                        ),
                        c.float(
                            m.price_output_per_mtok.as_ref(),
                            0.0,
                            0.0..=1e6,
                            "price_output_per_mtok",
                        ),
                    )
                },
            ),
        });
    }

    if let Some(f) = raw.auth.keys_file.as_ref().filter(|_| whole) {
        // Written on the first key change: a missing folder would only
        // show then, as a failed request.
        let path = std::path::Path::new(f.get_ref());
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            c.at(
                f.span(),
                format!("keys_file: the folder of '{}' does not exist", f.get_ref()),
            );
        }
    }
    if c.errors.is_empty() {
        Ok(Config {
            server,
            providers,
            models,
            routing,
            logging,
            telemetry,
            keys,
            redis,
            limits,
            redaction,
            audit,
            agents,
            allow_open_non_loopback: raw.auth.allow_open_non_loopback.unwrap_or(false),
            keys_file: raw.auth.keys_file.as_ref().map(|f| f.get_ref().into()),
            admin_sha256,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(c.errors))
    }
}

fn agents(c: &mut Collector<'_>, a: &super::raw::RawAgents) -> super::AgentsConfig {
    let heartbeat = ms(c.positive(a.heartbeat_ms.as_ref(), 5_000, 3_600_000, "heartbeat_ms"));
    super::AgentsConfig {
        enabled: a.enabled.unwrap_or(true),
        heartbeat,
        missed_heartbeats: c.positive(a.missed_heartbeats.as_ref(), 3, 1_000, "missed_heartbeats")
            as u32,
        hello_timeout: ms(c.positive(
            a.hello_timeout_ms.as_ref(),
            5_000,
            600_000,
            "hello_timeout_ms",
        )),
        queue_depth: c.positive(a.queue_depth.as_ref(), 64, 1 << 20, "queue_depth") as usize,
        max_frame_bytes: c.positive(
            a.max_frame_bytes.as_ref(),
            1 << 20,
            64 << 20,
            "max_frame_bytes",
        ) as usize,
        read_buffer_bytes: c.positive(
            a.read_buffer_bytes.as_ref(),
            512,
            16 << 20,
            "read_buffer_bytes",
        ) as usize,
        max_instructions: c.positive(
            a.max_instructions.as_ref(),
            100_000,
            100_000_000,
            "max_instructions",
        ) as usize,
        max_result_bytes: c.positive(
            a.max_result_bytes.as_ref(),
            64 << 20,
            1 << 40,
            "max_result_bytes",
        ) as usize,
        max_wait: ms(c.positive(a.max_wait_ms.as_ref(), 60_000, 3_600_000, "max_wait_ms")),
        events_buffer: c.positive(a.events_buffer.as_ref(), 4096, 1 << 20, "events_buffer")
            as usize,
        presence_ttl: ms(c.positive(
            a.presence_ttl_ms.as_ref(),
            30_000,
            3_600_000,
            "presence_ttl_ms",
        )),
    }
}

/// Keys written in TOML (`[[keys]]` tables) on their own, checked against
/// the models served: for keys added at run time.
pub(super) fn keys_only(
    text: &str,
    file: &str,
    models: &[&str],
) -> Result<Vec<KeyConfig>, ConfigErrors> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Only {
        #[serde(default)]
        keys: Vec<Spanned<super::raw::RawKey>>,
    }
    let only: Only = toml::from_str(text).map_err(|e| super::syntax_error(text, file, &e))?;
    let mut c = Collector {
        text,
        file,
        errors: Vec::new(),
    };
    let out = keys(&mut c, &only.keys, models);
    if c.errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn keys(
    c: &mut Collector<'_>,
    raw_keys: &[Spanned<super::raw::RawKey>],
    model_names: &[&str],
) -> Vec<KeyConfig> {
    let mut out = Vec::with_capacity(raw_keys.len());
    let mut names = HashSet::new();
    for k in raw_keys {
        let k = k.get_ref();
        if !names.insert(k.name.get_ref().as_str()) {
            c.at(
                k.name.span(),
                format!("duplicate key name '{}'", k.name.get_ref()),
            );
        }
        let Some(sha256) = hex_bytes::<32>(k.sha256.get_ref()) else {
            c.at(
                k.sha256.span(),
                "sha256 must be 64 hex digits (the SHA-256 of the token)",
            );
            continue;
        };
        if out.iter().any(|o: &KeyConfig| o.sha256 == sha256) {
            c.at(k.sha256.span(), "two keys have the same sha256");
        }
        let models = k.models.as_ref().map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    if model_names.contains(&m.get_ref().as_str()) {
                        Some(Arc::from(m.get_ref().as_str()))
                    } else {
                        c.at(
                            m.span(),
                            format!("key allows unknown model '{}'", m.get_ref()),
                        );
                        None
                    }
                })
                .collect()
        });
        let expires_at = match &k.expires_at {
            None => None,
            Some(v) => match super::time::parse_rfc3339_utc(v.get_ref()) {
                Some(t) => Some(t),
                None => {
                    c.at(
                        v.span(),
                        "expires_at must be like 2027-01-31T00:00:00Z (UTC)",
                    );
                    None
                }
            },
        };
        let period = match k.budget_period.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "month")) => crate::limits::BudgetPeriod::Month,
            Some((_, "day")) => crate::limits::BudgetPeriod::Day,
            Some((_, "total")) => crate::limits::BudgetPeriod::Total,
            Some((p, other)) => {
                c.at(
                    p.span(),
                    format!("unknown budget_period '{other}' (day, month, total)"),
                );
                crate::limits::BudgetPeriod::Month
            }
        };
        out.push(KeyConfig {
            name: Arc::from(k.name.get_ref().as_str()),
            sha256,
            models,
            expires_at,
            metadata: k
                .metadata
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            rpm: k
                .rpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000, "rpm")),
            tpm: k
                .tpm
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 100_000_000_000, "tpm")),
            budget_usd: k.budget_usd.as_ref().map(|v| {
                (
                    c.float(Some(v), 1.0, 0.000_001..=1e12, "budget_usd"),
                    period,
                )
            }),
            budget: k.budget_tokens.as_ref().map(|v| {
                (
                    c.positive(Some(v), 1, u64::MAX / 2, "budget_tokens"),
                    period,
                )
            }),
            agent_groups: k.agent_groups.as_ref().map(|gs| {
                gs.iter()
                    .map(|g| {
                        if g.get_ref().is_empty() || g.get_ref().len() > 128 {
                            c.at(g.span(), "an agent group is 1-128 characters");
                        }
                        Arc::from(g.get_ref().as_str())
                    })
                    .collect()
            }),
            max_streams: k
                .max_streams
                .as_ref()
                .map(|v| c.positive(Some(v), 1, 1_000_000, "max_streams") as u32),
        });
    }
    out
}

/// `N` bytes written as `2N` hex digits (surrounding space ignored).
pub fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn logging(c: &mut Collector<'_>, l: &RawLogging) -> LoggingConfig {
    let format = match l.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "auto")) => LogFormat::Auto,
        Some((_, "json")) => LogFormat::Json,
        Some((_, "pretty")) => LogFormat::Pretty,
        Some((f, other)) => {
            c.at(
                f.span(),
                format!("unknown log format '{other}' (auto, json, pretty)"),
            );
            LogFormat::Auto
        }
    };
    let sampling = Sampling {
        ratio: c.float(l.sample_ratio.as_ref(), 1.0, 0.0..=1.0, "sample_ratio"),
        slow: ms(c.positive(l.slow_ms.as_ref(), 5_000, 86_400_000, "slow_ms")),
    };
    let routes = l
        .routes
        .iter()
        .map(|(route, r)| {
            let s = Sampling {
                ratio: c.float(
                    r.sample_ratio.as_ref(),
                    sampling.ratio,
                    0.0..=1.0,
                    "sample_ratio",
                ),
                slow: r.slow_ms.as_ref().map_or(sampling.slow, |v| {
                    ms(c.positive(Some(v), 5_000, 86_400_000, "slow_ms"))
                }),
            };
            (route.clone(), s)
        })
        .collect();
    LoggingConfig {
        level: l
            .level
            .as_ref()
            .map_or_else(|| "info".to_owned(), |v| v.get_ref().clone()),
        format,
        access_log: l.access_log.unwrap_or(true),
        sampling,
        routes,
    }
}

fn telemetry(
    c: &mut Collector<'_>,
    t: &RawTelemetry,
    env: &dyn Fn(&str) -> Option<String>,
) -> TelemetryConfig {
    // The standard OTEL_* variables apply where the file is silent.
    let mut traces_url = false;
    let endpoint = match &t.otlp_endpoint {
        Some(v) => match c.interpolated(v, env) {
            Some(s) if s.is_empty() => None,
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => Some(s),
            Some(_) => {
                c.at(v.span(), "otlp_endpoint must be an http:// or https:// URL");
                None
            }
            None => None,
        },
        None if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) => None,
        // The signal-specific URL is used as it is; the general one is a
        // base that `/v1/traces` is added to (OTLP/HTTP).
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|s| !s.is_empty()) {
            Some(url) => {
                traces_url = true;
                Some(url)
            }
            None => env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty()),
        },
    };
    let protocol_text = t
        .otlp_protocol
        .as_ref()
        .map(|p| p.get_ref().clone())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    let protocol = match protocol_text.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            let span = t.otlp_protocol.as_ref().map_or(0..0, |p| p.span());
            c.at(
                span,
                format!("unknown otlp_protocol '{other}' (grpc, http/protobuf)"),
            );
            OtlpProtocol::Grpc
        }
    };
    let env_ratio = env("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    // OTEL_TRACES_SAMPLER: whether a client's sampled flag is followed, and
    // the ratio for the rest; unknown names keep the default
    // (parentbased_traceidratio at OTEL_TRACES_SAMPLER_ARG, else 1.0).
    let (env_parent_based, env_ratio) = match env("OTEL_TRACES_SAMPLER").as_deref() {
        Some("always_on") => (false, Some(1.0)),
        Some("always_off") => (false, Some(0.0)),
        Some("traceidratio") => (false, env_ratio),
        Some("parentbased_always_on") => (true, Some(1.0)),
        Some("parentbased_always_off") => (true, Some(0.0)),
        _ => (true, env_ratio),
    };
    let sampling_ratio = match &t.sampling_ratio {
        Some(_) => c.float(t.sampling_ratio.as_ref(), 1.0, 0.0..=1.0, "sampling_ratio"),
        None => env_ratio.unwrap_or(1.0),
    };
    let parent_based = t
        .parent_based
        .as_ref()
        .map_or(env_parent_based, |v| *v.get_ref());
    let headers = if t.otlp_headers.is_empty() {
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|v| {
                otel_pairs(&v)
                    .into_iter()
                    .filter(|(k, _)| http_token(k))
                    .map(|(k, v)| (k.to_ascii_lowercase(), Secret::new(v)))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        t.otlp_headers
            .iter()
            .filter_map(|(k, v)| {
                if !http_token(k) {
                    c.at(v.span(), format!("'{k}' is not a valid header name"));
                    return None;
                }
                c.interpolated(v, env).map(|s| (k.clone(), Secret::new(s)))
            })
            .collect()
    };
    let resource_attributes = if t.resource_attributes.is_empty() {
        env("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| otel_pairs(&v))
            .unwrap_or_default()
    } else {
        t.resource_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect()
    };
    let d = TelemetryConfig::default();
    let max_queue_spans = c.positive(
        t.max_queue_spans.as_ref(),
        d.max_queue_spans as u64,
        10_000_000,
        "max_queue_spans",
    ) as usize;
    let max_batch_spans = c.positive(
        t.max_batch_spans.as_ref(),
        d.max_batch_spans as u64,
        100_000,
        "max_batch_spans",
    ) as usize;
    TelemetryConfig {
        otlp_endpoint: endpoint,
        traces_url,
        protocol,
        headers,
        sampling_ratio,
        parent_based,
        // The file, then OTEL_SERVICE_NAME, then a `service.name` resource
        // attribute.
        service_name: t
            .service_name
            .as_ref()
            .map(|s| s.get_ref().clone())
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "sluice".to_owned()),
        resource_attributes,
        max_queue_spans,
        max_batch_spans,
        export_interval: ms(c.positive(
            t.export_interval_ms.as_ref(),
            d.export_interval.as_millis() as u64,
            3_600_000,
            "export_interval_ms",
        )),
        export_timeout: ms(c.positive(
            t.export_timeout_ms.as_ref(),
            d.export_timeout.as_millis() as u64,
            3_600_000,
            "export_timeout_ms",
        )),
    }
}

/// `key1=value1,key2=value2` with percent-encoded values, as the
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` variables
/// hold them; malformed members are skipped.
fn otel_pairs(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|member| {
            let (k, v) = member.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| {
                let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
                (k.to_owned(), v.into_owned())
            })
        })
        .collect()
}

fn routing(c: &mut Collector<'_>, r: &RawRouting) -> RoutingConfig {
    let d = BreakerConfig::default();
    let b = &r.breaker;
    let breaker = BreakerConfig {
        consecutive_failures: c.positive(
            b.consecutive_failures.as_ref(),
            u64::from(d.consecutive_failures),
            1_000_000,
            "breaker.consecutive_failures",
        ) as u32,
        error_rate: c.float(
            b.error_rate.as_ref(),
            d.error_rate,
            0.01..=1.0,
            "breaker.error_rate",
        ),
        min_requests: c.positive(
            b.min_requests.as_ref(),
            u64::from(d.min_requests),
            1_000_000,
            "breaker.min_requests",
        ) as u32,
        window: ms(c.positive(
            b.window_ms.as_ref(),
            d.window.as_millis() as u64,
            3_600_000,
            "breaker.window_ms",
        )),
        cooldown: ms(c.positive(
            b.cooldown_ms.as_ref(),
            d.cooldown.as_millis() as u64,
            3_600_000,
            "breaker.cooldown_ms",
        )),
        half_open_probes: c.positive(
            b.half_open_probes.as_ref(),
            u64::from(d.half_open_probes),
            10_000,
            "breaker.half_open_probes",
        ) as u32,
        success_threshold: c.positive(
            b.success_threshold.as_ref(),
            u64::from(d.success_threshold),
            10_000,
            "breaker.success_threshold",
        ) as u32,
    };
    let dw = WeightConfig::default();
    let w = &r.weights;
    let weights = WeightConfig {
        growth: c.float(w.growth.as_ref(), dw.growth, 1.0..=10.0, "weights.growth"),
        trip_factor: c.float(
            w.trip_factor.as_ref(),
            dw.trip_factor,
            0.0..=1.0,
            "weights.trip_factor",
        ),
        floor: c.float(w.floor.as_ref(), dw.floor, 0.001..=1.0, "weights.floor"),
        reset_after: c.positive(
            w.reset_after_successes.as_ref(),
            u64::from(dw.reset_after),
            1_000_000,
            "weights.reset_after_successes",
        ) as u32,
    };
    RoutingConfig {
        max_attempts: c.positive(r.max_attempts.as_ref(), 3, 100, "max_attempts") as u32,
        backoff_base: ms(c.positive(r.backoff_base_ms.as_ref(), 25, 60_000, "backoff_base_ms")),
        backoff_max: ms(c.positive(r.backoff_max_ms.as_ref(), 1_000, 600_000, "backoff_max_ms")),
        max_retry_after: ms(c.positive(
            r.max_retry_after_ms.as_ref(),
            5_000,
            3_600_000,
            "max_retry_after_ms",
        )),
        timeout: ms(c.positive(r.timeout_ms.as_ref(), 600_000, 86_400_000, "timeout_ms")),
        ttft_timeout: ms(c.positive(
            r.ttft_timeout_ms.as_ref(),
            60_000,
            86_400_000,
            "ttft_timeout_ms",
        )),
        breaker,
        weights,
    }
}

fn provider(
    c: &mut Collector<'_>,
    p: &RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProviderConfig> {
    let name = p.name.get_ref();
    if name.trim().is_empty() {
        c.at(p.name.span(), "provider name must not be empty");
    }
    let kind_name = p.kind.get_ref().as_str();
    let (kind, preset_url) = match PRESETS.iter().find(|(k, _, _)| *k == kind_name) {
        Some((_, kind, url)) => (*kind, *url),
        None if KNOWN_LATER.contains(&kind_name) => {
            c.at(
                p.kind.span(),
                format!(
                    "provider kind '{kind_name}' is not supported yet (supported: {})",
                    kinds()
                ),
            );
            return None;
        }
        None => {
            c.at(
                p.kind.span(),
                format!(
                    "unknown provider kind '{kind_name}' (supported: {})",
                    kinds()
                ),
            );
            return None;
        }
    };
    if kind == ProviderKind::Azure && p.base_url.is_none() {
        c.at(
            p.kind.span(),
            "kind = \"azure\" needs base_url: https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT",
        );
    }

    let interp = |c: &mut Collector<'_>, v: &Spanned<String>| c.interpolated(v, env);

    let base_url = match (&p.base_url, kind) {
        (Some(u), _) => match interp(c, u) {
            Some(url) => {
                let has_host = ["http://", "https://"]
                    .iter()
                    .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                if !has_host {
                    c.at(
                        u.span(),
                        "base_url must be an http:// or https:// URL with a host",
                    );
                }
                url.trim_end_matches('/').to_owned()
            }
            None => String::new(),
        },
        (None, _) => preset_url.to_owned(),
    };
    let api_key = p
        .api_key
        .as_ref()
        .and_then(|k| interp(c, k))
        .map(Secret::new);
    let headers = p
        .headers
        .iter()
        .filter_map(|(k, v)| {
            if http_token(k) {
                interp(c, v).map(|v| (k.clone(), Secret::new(v)))
            } else {
                c.at(v.span(), format!("'{k}' is not a valid header name"));
                None
            }
        })
        .collect();

    if kind != ProviderKind::Azure
        && let Some(v) = &p.api_version
    {
        c.at(v.span(), "api_version applies only to kind = \"azure\"");
    }
    if kind != ProviderKind::Anthropic
        && let Some(v) = &p.default_max_tokens
    {
        c.at(
            v.span(),
            "default_max_tokens applies only to kind = \"anthropic\"",
        );
    }
    if let Some(k) = &api_key
        && !k.expose().bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        c.at(
            p.api_key.as_ref().map_or(0..0, |v| v.span()),
            "api_key must be printable ASCII (it goes into an HTTP header)",
        );
    }

    let mock_only = [
        ("tokens_per_response", p.tokens_per_response.as_ref()),
        ("token_delay_ms", p.token_delay_ms.as_ref()),
        ("embedding_dims", p.embedding_dims.as_ref()),
    ];
    if kind != ProviderKind::Mock {
        for (key, v) in mock_only {
            if let Some(v) = v {
                c.at(v.span(), format!("{key} applies only to kind = \"mock\""));
            }
        }
    }
    let token_delay = match &p.token_delay_ms {
        Some(v) if *v.get_ref() > 60_000 => {
            c.at(v.span(), "token_delay_ms must be at most 60000");
            Duration::ZERO
        }
        Some(v) => ms(*v.get_ref()),
        None => Duration::ZERO,
    };

    Some(ProviderConfig {
        name: Arc::from(name.as_str()),
        kind,
        preset: PRESETS
            .iter()
            .find(|(k, _, _)| *k == kind_name)
            .map_or("openai", |(k, _, _)| *k),
        api_version: p
            .api_version
            .as_ref()
            .map_or_else(|| "2024-10-21".to_owned(), |v| v.get_ref().clone()),
        default_max_tokens: c.positive(
            p.default_max_tokens.as_ref(),
            4096,
            1_000_000,
            "default_max_tokens",
        ),
        base_url,
        api_key,
        headers,
        connect_timeout: ms(c.positive(
            p.connect_timeout_ms.as_ref(),
            5_000,
            600_000,
            "connect_timeout_ms",
        )),
        timeout: ms(c.positive(p.timeout_ms.as_ref(), 120_000, 3_600_000, "timeout_ms")),
        idle_timeout: ms(c.positive(
            p.idle_timeout_ms.as_ref(),
            120_000,
            3_600_000,
            "idle_timeout_ms",
        )),
        max_idle_connections: c.positive(
            p.max_idle_connections.as_ref(),
            256,
            100_000,
            "max_idle_connections",
        ) as usize,
        ca_file: p.ca_file.as_ref().map(|f| {
            let path = std::path::PathBuf::from(f.get_ref());
            if std::fs::metadata(&path).is_err() {
                c.at(
                    f.span(),
                    format!("ca_file '{}' cannot be read", f.get_ref()),
                );
            }
            path
        }),
        mock: MockConfig {
            tokens_per_response: c.positive(
                p.tokens_per_response.as_ref(),
                16,
                100_000,
                "tokens_per_response",
            ) as u32,
            token_delay,
            embedding_dims: c.positive(p.embedding_dims.as_ref(), 16, 65_536, "embedding_dims")
                as usize,
        },
    })
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// RFC 9110 token characters.
fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
