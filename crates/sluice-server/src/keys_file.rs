//! The keys kept in `[auth] keys_file` (JSON, written atomically): read,
//! validated exactly like the configuration's `[[keys]]`, and saved.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_core::config::{Config, KeyConfig};

/// A key as the API takes it and as the keys file stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: String,
    /// Only in requests: hashed at once, never stored.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct KeysDoc {
    keys: Vec<KeySpec>,
}

/// Validates specs exactly as `[[keys]]` in the configuration file.
pub(crate) fn validate(specs: &[KeySpec], config: &Config) -> Result<Vec<KeyConfig>, String> {
    let text = toml::to_string(&KeysDoc {
        keys: specs.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    let models: Vec<&str> = config
        .models
        .iter()
        .map(|m| &*m.name)
        .chain(config.predictors.iter().map(|p| p.name.as_str()))
        .collect();
    sluice_core::config::parse_keys(&text, "keys", &models).map_err(|errs| {
        errs.0
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The keys kept in `[auth] keys_file`, validated; none when unset or absent.
pub fn load(config: &Config) -> anyhow::Result<(Vec<KeySpec>, Vec<KeyConfig>)> {
    let Some(path) = &config.keys_file else {
        return Ok((Vec::new(), Vec::new()));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => anyhow::bail!("cannot read keys_file {}: {e}", path.display()),
    };
    let specs: Vec<KeySpec> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("keys_file {}: {e}", path.display()))?;
    let keys = validate(&specs, config)
        .map_err(|e| anyhow::anyhow!("keys_file {}: {e}", path.display()))?;
    check_clashes(&keys, &config.keys)
        .map_err(|e| anyhow::anyhow!("keys_file {}: {e}", path.display()))?;
    Ok((specs, keys))
}

pub(crate) fn check_clashes(new: &[KeyConfig], file: &[KeyConfig]) -> Result<(), String> {
    for k in new {
        if file.iter().any(|f| f.name == k.name) {
            return Err(format!(
                "key name '{}' is already in the configuration file",
                k.name
            ));
        }
        if file.iter().any(|f| f.sha256 == k.sha256) {
            return Err(format!(
                "key '{}' has the same sha256 as a key in the configuration file",
                k.name
            ));
        }
    }
    Ok(())
}

pub(crate) fn save(path: &Path, specs: &[KeySpec]) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(specs).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Whether the API may run with no keys at all: on loopback, or when the
/// configuration says so explicitly.
pub fn open_api_allowed(config: &Config) -> bool {
    config.server.listen.ip().is_loopback() || config.allow_open_non_loopback
}
