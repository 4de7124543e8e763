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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub shutdown_grace_ms: Option<Spanned<u64>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: Spanned<String>,
    pub model: Option<Spanned<String>>,
    pub weight: Option<Spanned<u64>>,
}
