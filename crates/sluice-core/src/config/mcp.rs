//! `[mcp]` and `[[mcp_servers]]`: the MCP gateway's upstream tool servers
//! (stdio children or Streamable HTTP endpoints) and how `/mcp` is served.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Collector;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub name: Spanned<String>,
    pub command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub cwd: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub mcp_rpm: Option<Spanned<u64>>,
    pub max_restart_delay_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub page_size: Option<Spanned<u64>>,
    pub session_ttl_ms: Option<Spanned<u64>>,
    pub max_sessions: Option<Spanned<u64>>,
    pub max_message_bytes: Option<Spanned<u64>>,
}

/// How the gateway reaches one upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking newline-delimited JSON-RPC on stdio.
    Stdio {
        command: Vec<String>,
        /// Added to the gateway's own environment (values interpolated).
        env: Vec<(String, Secret)>,
        cwd: Option<PathBuf>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        url: String,
        /// Sent with every request (values interpolated; never logged).
        headers: Vec<(String, Secret)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// Tools, prompts and resources appear as `{name}__{theirs}`.
    pub name: String,
    pub transport: McpTransport,
    /// Longest a request to this server may take.
    pub timeout: Duration,
    /// Calls per minute to each of this server's tools, all keys together.
    pub rpm: Option<u64>,
    /// The back-off between restarts of a stdio child grows to this.
    pub max_restart_delay: Duration,
    /// `${VAR}`s that were unset (replaced by nothing), for a warning.
    pub unset_vars: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    /// Browser origins allowed on `/mcp` besides loopback ones (requests
    /// without an `Origin` header are not from a browser and pass).
    pub allowed_origins: Vec<String>,
    /// Tools, prompts or resources per `*/list` page.
    pub page_size: usize,
    /// A session unused this long is forgotten.
    pub session_ttl: Duration,
    /// Sessions kept at most (oldest forgotten first).
    pub max_sessions: usize,
    /// Largest message an upstream server may send (a stdio line, an HTTP
    /// answer or event); past it the connection is dropped and restarted.
    pub max_message_bytes: usize,
    pub servers: Vec<McpServerConfig>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            page_size: 100,
            session_ttl: Duration::from_secs(3600),
            max_sessions: 10_000,
            max_message_bytes: 16 << 20,
            servers: Vec::new(),
        }
    }
}

/// A server name: letters, digits, `-` and `_`, without `__` (the
/// separator) and not `agent.…` (agents' tools).
pub fn valid_server_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.contains("__")
}

pub(super) fn mcp(
    c: &mut Collector<'_>,
    raw: &RawMcp,
    servers: &[Spanned<RawMcpServer>],
    env: &dyn Fn(&str) -> Option<String>,
) -> McpConfig {
    let allowed_origins = raw
        .allowed_origins
        .iter()
        .flatten()
        .filter_map(|o| {
            let s = o.get_ref().trim_end_matches('/');
            if s == "*" || s.starts_with("http://") || s.starts_with("https://") {
                Some(s.to_ascii_lowercase())
            } else {
                c.at(
                    o.span(),
                    "an allowed origin is like https://app.example.com (scheme and host), or \"*\"",
                );
                None
            }
        })
        .collect();
    let page_size = c.positive(raw.page_size.as_ref(), 100, 10_000, "page_size") as usize;
    let ttl = c.positive(
        raw.session_ttl_ms.as_ref(),
        3_600_000,
        30 * 86_400_000,
        "session_ttl_ms",
    );
    let max_sessions = c.positive(
        raw.max_sessions.as_ref(),
        10_000,
        10_000_000,
        "max_sessions",
    );
    let max_message_bytes = c.positive(
        raw.max_message_bytes.as_ref(),
        16 << 20,
        1 << 30,
        "max_message_bytes",
    ) as usize;
    let mut names = HashSet::new();
    let servers = servers
        .iter()
        .filter_map(|s| {
            let s = s.get_ref();
            if !names.insert(s.name.get_ref().clone()) {
                c.at(
                    s.name.span(),
                    format!("duplicate mcp server name '{}'", s.name.get_ref()),
                );
            }
            server(c, s, env)
        })
        .collect();
    McpConfig {
        allowed_origins,
        page_size,
        session_ttl: Duration::from_millis(ttl),
        max_sessions: max_sessions as usize,
        max_message_bytes,
        servers,
    }
}

/// `s` with `${VAR}`s resolved; an unset one becomes nothing and is
/// named in `unset` (a tool server's token may be optional).
fn lenient(
    c: &mut Collector<'_>,
    v: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> String {
    let seen = std::cell::RefCell::new(Vec::new());
    let look = |k: &str| {
        env(k).filter(|v| !v.is_empty()).or_else(|| {
            seen.borrow_mut().push(k.to_owned());
            Some("\u{0}".to_owned())
        })
    };
    match super::interpolate(v.get_ref(), &look) {
        Ok(s) => {
            unset.extend(seen.into_inner());
            s.replace('\u{0}', "")
        }
        Err(e) => {
            c.at(v.span(), e);
            String::new()
        }
    }
}

fn server(
    c: &mut Collector<'_>,
    s: &RawMcpServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<McpServerConfig> {
    let name = s.name.get_ref();
    if !valid_server_name(name) {
        c.at(
            s.name.span(),
            format!(
                "mcp server name '{name}' must be 1-64 letters, digits, '-' or '_' without '__' \
                 (its tools are named '{{name}}__{{tool}}')"
            ),
        );
    }
    let timeout = c.positive(s.timeout_ms.as_ref(), 30_000, 3_600_000, "timeout_ms");
    let rpm = s
        .mcp_rpm
        .as_ref()
        .map(|v| c.positive(Some(v), 1, 100_000_000, "mcp_rpm"));
    let max_restart = c.positive(
        s.max_restart_delay_ms.as_ref(),
        30_000,
        3_600_000,
        "max_restart_delay_ms",
    );
    let mut unset = Vec::new();
    let transport = match (&s.command, &s.url) {
        (Some(cmd), None) => {
            if cmd.get_ref().is_empty() || cmd.get_ref()[0].trim().is_empty() {
                c.at(
                    cmd.span(),
                    "command is the program and its arguments: [\"node\", \"server.js\"]",
                );
                return None;
            }
            if !s.headers.is_empty() {
                c.at(
                    s.name.span(),
                    "headers are for an mcp server with a url, not a command",
                );
            }
            let env = s
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Secret::new(lenient(c, v, env, &mut unset))))
                .collect();
            McpTransport::Stdio {
                command: cmd.get_ref().clone(),
                env,
                cwd: s.cwd.as_ref().map(|d| PathBuf::from(d.get_ref())),
            }
        }
        (None, Some(url)) => {
            let u = url.get_ref();
            let ok = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_some_and(|rest| {
                    !rest.is_empty()
                        && !rest.starts_with('/')
                        && !rest
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                });
            if !ok {
                c.at(
                    url.span(),
                    format!("url '{u}' is not an http:// or https:// URL"),
                );
                return None;
            }
            if !s.env.is_empty() || s.cwd.is_some() {
                c.at(
                    s.name.span(),
                    "env and cwd are for an mcp server with a command, not a url",
                );
            }
            let mut headers = Vec::new();
            for (k, v) in &s.headers {
                if !super::validate::http_token(k) {
                    c.at(v.span(), format!("'{k}' is not a valid header name"));
                    continue;
                }
                let value = lenient(c, v, env, &mut unset);
                if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                    c.at(
                        v.span(),
                        format!("the value of header '{k}' is not a valid header value"),
                    );
                    continue;
                }
                headers.push((k.to_ascii_lowercase(), Secret::new(value)));
            }
            McpTransport::Http {
                url: u.clone(),
                headers,
            }
        }
        _ => {
            c.at(
                s.name.span(),
                format!("mcp server '{name}' needs exactly one of command (a stdio child) or url (Streamable HTTP)"),
            );
            return None;
        }
    };
    Some(McpServerConfig {
        name: name.clone(),
        transport,
        timeout: Duration::from_millis(timeout),
        rpm,
        max_restart_delay: Duration::from_millis(max_restart),
        unset_vars: unset,
    })
}
