//! Raw schema → runtime [`Config`], collecting every problem with its location.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawProvider, RawServer};
use super::{
    Config, ConfigError, ConfigErrors, MockConfig, ModelConfig, ProviderConfig, ProviderKind,
    ServerConfig, TargetConfig, line_col,
};
use crate::secret::Secret;

const KNOWN_LATER: &[&str] = &["anthropic", "gemini", "local"];

struct Collector<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn addr(&mut self, v: Option<&Spanned<String>>, default: &str, what: &str) -> SocketAddr {
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

    /// A positive integer no larger than `max`, or the default.
    fn positive(&mut self, v: Option<&Spanned<u64>>, default: u64, max: u64, what: &str) -> u64 {
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
) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        text,
        file,
        errors: Vec::new(),
    };
    let server = server(&mut c, &raw.server);

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
        models.push(ModelConfig {
            name: Arc::from(name.as_str()),
            targets,
        });
    }

    if c.errors.is_empty() {
        Ok(Config {
            server,
            providers,
            models,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(c.errors))
    }
}

fn server(c: &mut Collector<'_>, s: &RawServer) -> ServerConfig {
    ServerConfig {
        listen: c.addr(s.listen.as_ref(), "127.0.0.1:8080", "listen"),
        admin_listen: c.addr(s.admin_listen.as_ref(), "127.0.0.1:9090", "admin_listen"),
        max_body_bytes: c.positive(
            s.max_body_bytes.as_ref(),
            4 << 20,
            1 << 30,
            "max_body_bytes",
        ) as usize,
        header_read_timeout: ms(c.positive(
            s.header_read_timeout_ms.as_ref(),
            10_000,
            3_600_000,
            "header_read_timeout_ms",
        )),
        max_header_bytes: c.positive(
            s.max_header_bytes.as_ref(),
            64 << 10,
            16 << 20,
            "max_header_bytes",
        ) as usize,
        shutdown_grace: ms(c.positive(
            s.shutdown_grace_ms.as_ref(),
            10_000,
            3_600_000,
            "shutdown_grace_ms",
        )),
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
    let kind = match p.kind.get_ref().as_str() {
        "openai" => ProviderKind::OpenAi,
        "mock" => ProviderKind::Mock,
        other if KNOWN_LATER.contains(&other) => {
            c.at(
                p.kind.span(),
                format!("provider kind '{other}' is not supported yet (supported: openai, mock)"),
            );
            return None;
        }
        other => {
            c.at(
                p.kind.span(),
                format!("unknown provider kind '{other}' (supported: openai, mock)"),
            );
            return None;
        }
    };

    let interp =
        |c: &mut Collector<'_>, v: &Spanned<String>| match super::interpolate(v.get_ref(), env) {
            Ok(s) => Some(s),
            Err(e) => {
                c.at(v.span(), e);
                None
            }
        };

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
        (None, ProviderKind::OpenAi) => "https://api.openai.com/v1".to_owned(),
        (None, ProviderKind::Mock) => String::new(),
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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// RFC 9110 token characters.
fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
