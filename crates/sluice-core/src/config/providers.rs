//! `[[providers]]`: the kinds (presets) and one provider's settings.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawProvider;
use super::validate::{Collector, http_token, ms};
use super::{MockConfig, ProviderConfig, ProviderKind};
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

pub(super) fn provider(
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
    if !matches!(kind, ProviderKind::OpenAi)
        && let Some(v) = p.responses_api.as_ref().filter(|v| *v.get_ref())
    {
        c.at(
            v.span(),
            "responses_api applies only to OpenAI-format providers",
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
        // OpenAI itself has the Responses API; a compatible server may not.
        responses_api: kind == ProviderKind::OpenAi
            && p.responses_api.as_ref().map_or_else(
                || base_url.starts_with("https://api.openai.com/"),
                |v| *v.get_ref(),
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
