//! Virtual keys: clients present a token, the configuration holds only its
//! SHA-256. A lookup hashes the token once and finds the key in a map.

// Looked up on every request with a key (by the token's SHA-256):
// foldhash, not std's SipHash.
use foldhash::HashMap;

use sha2::{Digest, Sha256};

use crate::config::{Config, KeyConfig};
use crate::error::{ErrorKind, GatewayError};

#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], KeyConfig>,
}

impl KeyTable {
    pub fn new(config: &Config) -> Self {
        Self::from_keys(config.keys.iter().cloned())
    }

    pub fn from_keys(keys: impl IntoIterator<Item = KeyConfig>) -> Self {
        Self {
            by_hash: keys.into_iter().map(|k| (k.sha256, k)).collect(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyConfig> {
        self.by_hash.values()
    }

    /// No keys configured: the API is open.
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The key for `token` if it exists and has not expired at `now_unix()`
    /// (the clock read only for a key with an expiry).
    pub fn check(
        &self,
        token: Option<&str>,
        now_unix: impl FnOnce() -> u64,
    ) -> Result<&KeyConfig, GatewayError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key' on /v1/messages)",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(key) = self.by_hash.get(&hash) else {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "invalid API key",
            ));
        };
        if key.expires_at.is_some_and(|t| now_unix() >= t) {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                format!("API key '{}' has expired", key.name),
            ));
        }
        Ok(key)
    }
}

impl KeyConfig {
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| &**m == model))
    }

    /// Whether this key sees and may call the MCP tool (or prompt)
    /// `name` (`server__tool`): its `mcp_tools` globs, none = all.
    pub fn allows_tool(&self, name: &str) -> bool {
        self.mcp_tools
            .as_ref()
            .is_none_or(|gs| gs.iter().any(|g| glob(g, name)))
    }
}

/// `*` matches any run of characters (also none), `?` one character;
/// everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it now covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The lowercase hex SHA-256 of a token, as the configuration wants it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn token_hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_globs() {
        for (p, t, want) in [
            ("weather__*", "weather__forecast", true),
            ("weather__*", "weather__", true),
            ("weather__*", "everything__echo", false),
            ("everything__echo", "everything__echo", true),
            ("everything__echo", "everything__echo2", false),
            ("*__echo", "everything__echo", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("agent.*__*", "agent.a1__lookup", true),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }

    fn table() -> KeyTable {
        let text = format!(
            "[[providers]]\nname=\"p\"\nkind=\"mock\"\n[[models]]\nname=\"a\"\ntargets=[{{provider=\"p\"}}]\n[[models]]\nname=\"b\"\ntargets=[{{provider=\"p\"}}]\n\
             [[keys]]\nname=\"team\"\nsha256=\"{}\"\nmodels=[\"a\"]\n\
             [[keys]]\nname=\"old\"\nsha256=\"{}\"\nexpires_at=\"2020-01-01T00:00:00Z\"\n",
            token_hash_hex("sk-team"),
            token_hash_hex("sk-old")
        );
        KeyTable::new(&crate::config::parse(&text, "t", &|_| None).unwrap())
    }

    #[test]
    fn known_hash_of_a_token() {
        // printf abc | sha256sum
        assert_eq!(
            token_hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn checks_presence_hash_and_expiry() {
        let t = table();
        let now = 1_800_000_000;
        assert_eq!(
            t.check(None, || now).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            t.check(Some("nope"), || now).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        let e = t.check(Some("sk-old"), || now).unwrap_err();
        assert!(e.message.contains("expired"), "{}", e.message);
        assert!(t.check(Some("sk-old"), || 1_500_000_000).is_ok());
        let k = t.check(Some("sk-team"), || now).unwrap();
        assert!(k.allows("a") && !k.allows("b"));
    }
}
