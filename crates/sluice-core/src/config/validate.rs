//! Raw schema → runtime [`Config`], collecting every problem with its location.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawRouting};
use super::{
    Config, ConfigError, ConfigErrors, ModelConfig, ResponsesConfig, RoutingConfig, Strategy,
    TargetConfig, line_col,
};
use crate::resilience::{BreakerConfig, WeightConfig};

pub(super) struct Collector<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
    pub(super) errors: Vec<ConfigError>,
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
    pub(super) fn float(
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
    let logging = super::observability::logging(&mut c, &raw.logging);
    let telemetry = super::observability::telemetry(&mut c, &raw.telemetry, env);
    // Keys may name routed models and local ones.
    let model_names: Vec<&str> = raw
        .models
        .iter()
        .map(|m| m.get_ref().name.get_ref().as_str())
        .chain(
            raw.predictors
                .iter()
                .map(|p| p.get_ref().name.get_ref().as_str()),
        )
        .collect();
    let keys = super::keys::keys(&mut c, &raw.keys, &model_names);
    let admin_sha256 = raw.auth.admin_sha256.as_ref().and_then(|h| {
        let v = super::keys::hex_bytes::<32>(h.get_ref());
        if v.is_none() {
            c.at(
                h.span(),
                "admin_sha256 must be 64 hex digits (sluice hash-key <token>)",
            );
        }
        v
    });
    let redis = super::shared::redis(&mut c, &raw.redis, env);
    let limits = super::shared::limits(&mut c, &raw.limits, redis.is_some());
    let redaction = super::redaction::redaction(&mut c, &raw.redaction, raw.audit.is_some());
    let audit = super::audit::audit(&mut c, &raw, redis.is_some(), env);
    let agents = agents(&mut c, raw.agents.as_ref().unwrap_or(&Default::default()));
    // A file that serves nothing is a mistake (an empty file, a typo'd
    // table name): say so, unless it is a hub-only gateway.
    if whole
        && raw.models.is_empty()
        && raw.agents.is_none()
        && raw.predictors.is_empty()
        && raw.mcp_servers.is_empty()
    {
        c.errors.push(ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: "no [[models]]: the gateway would serve nothing (add a [[models]] entry, \
                      a [[predictors]] entry, or an [agents] table for an agent hub alone)"
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
        if let Some(cfg) = super::providers::provider(&mut c, pr, env) {
            providers.push(cfg);
        }
    }

    let processors = super::multimodal::processors(&mut c, &raw.processors);
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
        let modalities =
            super::multimodal::modalities(&mut c, m.modalities.as_ref(), m.convert.as_ref());
        let convert = m.convert.as_ref().and_then(|conv| {
            let names: HashSet<&str> = raw
                .models
                .iter()
                .map(|o| o.get_ref().name.get_ref().as_str())
                .collect();
            super::multimodal::convert(&mut c, conv, (name, modalities), &names, &processors)
        });
        models.push(ModelConfig {
            modalities,
            convert,
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

    if whole {
        // Files written later (the keys file on the first key change, the
        // upgrade socket at start): a missing folder would only show then.
        let later = [
            ("keys_file", raw.auth.keys_file.as_ref()),
            ("upgrade_socket", raw.server.upgrade_socket.as_ref()),
        ];
        for (key, f) in later {
            let Some(f) = f else { continue };
            let dir = std::path::Path::new(f.get_ref())
                .parent()
                .filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                c.at(
                    f.span(),
                    format!("{key}: the folder of '{}' does not exist", f.get_ref()),
                );
            }
        }
    }
    let responses = (
        c.positive(
            raw.responses.max_stored.as_ref(),
            10_000,
            100_000_000,
            "max_stored",
        ) as usize,
        c.positive(
            raw.responses.max_stored_bytes.as_ref(),
            256 << 20,
            1 << 40,
            "max_stored_bytes",
        ) as usize,
    );
    let files = super::files::files(&mut c, &raw.files, &providers);
    let predictors = super::predictors::predictors(&mut c, &raw.predictors);
    let plugins = super::plugins::plugins(&mut c, &raw.plugins);
    let image_fetch = super::multimodal::image_fetch(&mut c, &raw.image_fetch);
    let mcp = super::mcp::mcp(&mut c, &raw.mcp, &raw.mcp_servers, env);
    let responses_redis = super::shared::backend(
        &mut c,
        raw.responses.backend.as_ref(),
        redis.is_some(),
        "responses",
    );
    let responses_ttl = c.positive(
        raw.responses.ttl_hours.as_ref(),
        720,
        24 * 3650,
        "ttl_hours",
    );
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
            responses: ResponsesConfig {
                max_stored: responses.0,
                max_stored_bytes: responses.1,
                redis: responses_redis,
                ttl: std::time::Duration::from_secs(responses_ttl * 3600),
            },
            files,
            predictors,
            plugins,
            processors,
            image_fetch,
            mcp,
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
            crate::cgroup::fit(100_000, 1 << 10, 8, 1024),
            100_000_000,
            "max_instructions",
        ) as usize,
        max_result_bytes: c.positive(
            a.max_result_bytes.as_ref(),
            crate::cgroup::fit(64 << 20, 1, 4, 1 << 20),
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
        max_connects_per_sec: match &a.max_connects_per_sec {
            Some(v) if *v.get_ref() > 10_000_000 => {
                c.at(
                    v.span(),
                    "max_connects_per_sec must be at most 10000000 (0 = not paced)",
                );
                0
            }
            Some(v) => *v.get_ref(),
            None => 0,
        },
    }
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

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// RFC 9110 token characters.
pub(super) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
