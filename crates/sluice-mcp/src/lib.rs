//! The MCP gateway's protocol side. Upstream tool servers (stdio children
//! and Streamable HTTP endpoints) are kept connected by [`upstream`]; the
//! [`Federation`] puts what they offer under one name space
//! (`{server}__{name}`) and routes calls back. What a client may see and
//! call, limits, audit and the HTTP endpoint are the server crate's.

pub mod rpc;
pub mod upstream;

use std::sync::Arc;

use serde_json::{Value, json};
use sluice_core::config::McpConfig;
use tokio::sync::broadcast;

pub use upstream::{State, Status, Upstream};

/// Between a server's name and its own tool, prompt or resource name.
pub const SEPARATOR: &str = "__";

/// The upstream servers of one configuration.
pub struct Federation {
    pub upstreams: Vec<Arc<Upstream>>,
    changed: broadcast::Sender<&'static str>,
    pub page_size: usize,
    /// What it was started from (a reload compares it).
    pub config: McpConfig,
}

/// `server__tool` → (`server`, `tool`).
pub fn split(name: &str) -> Option<(&str, &str)> {
    name.split_once(SEPARATOR)
        .filter(|(s, t)| !s.is_empty() && !t.is_empty())
}

/// A copy of `item` with its `field` prefixed by `server__`.
fn prefixed(server: &str, item: &Value, field: &str) -> Value {
    let mut v = item.clone();
    if let Some(n) = v.get(field).and_then(Value::as_str) {
        v[field] = Value::String(format!("{server}{SEPARATOR}{n}"));
    }
    v
}

impl Federation {
    /// Starts the servers of `cfg`, keeping those of `prev` whose
    /// configuration did not change (their connections and children live
    /// on); the rest of `prev` is stopped.
    pub fn start(cfg: &McpConfig, prev: Option<&Federation>) -> Arc<Self> {
        let changed = prev.map_or_else(|| broadcast::channel(64).0, |p| p.changed.clone());
        let mut upstreams = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            let kept = prev
                .and_then(|p| p.upstreams.iter().find(|u| u.cfg == *s))
                .cloned();
            upstreams.push(kept.unwrap_or_else(|| {
                Upstream::start(s.clone(), changed.clone(), cfg.max_message_bytes)
            }));
        }
        if let Some(p) = prev {
            for u in &p.upstreams {
                if !upstreams.iter().any(|n| Arc::ptr_eq(n, u)) {
                    u.shutdown();
                }
            }
            for k in ["tools", "resources", "prompts"] {
                let _ = changed.send(k);
            }
        }
        Arc::new(Self {
            upstreams,
            changed,
            page_size: cfg.page_size,
            config: cfg.clone(),
        })
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Told when a list changes (`tools`, `resources`, `prompts`).
    pub fn subscribe(&self) -> broadcast::Receiver<&'static str> {
        self.changed.subscribe()
    }

    pub fn notify_changed(&self, what: &'static str) {
        let _ = self.changed.send(what);
    }

    /// Every ready server's tools, named `server__tool`.
    pub fn tools(&self) -> Vec<Value> {
        self.collect(|c| &c.tools, "name")
    }

    pub fn prompts(&self) -> Vec<Value> {
        self.collect(|c| &c.prompts, "name")
    }

    /// Resources keep their URIs (routed by them); names are prefixed.
    pub fn resources(&self) -> Vec<Value> {
        self.collect(|c| &c.resources, "name")
    }

    pub fn templates(&self) -> Vec<Value> {
        self.collect(|c| &c.templates, "name")
    }

    fn collect(&self, pick: impl Fn(&upstream::Catalog) -> &Vec<Value>, field: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for u in self.upstreams.iter().filter(|u| u.is_ready()) {
            let c = u.catalog();
            out.extend(pick(&c).iter().map(|i| prefixed(&u.name, i, field)));
        }
        out
    }

    /// The server that has the resource `uri`, and the URI it knows it by:
    /// listed URIs first, then templates (by their fixed start), then an
    /// explicit `server__uri`.
    pub fn resource_owner(&self, uri: &str) -> Option<(Arc<Upstream>, String)> {
        let ready = || self.upstreams.iter().filter(|u| u.is_ready());
        for u in ready() {
            if u.catalog().resources.iter().any(|r| r["uri"] == uri) {
                return Some((u.clone(), uri.to_owned()));
            }
        }
        let mut best: Option<(usize, &Arc<Upstream>)> = None;
        for u in ready() {
            for t in &u.catalog().templates {
                let Some(tpl) = t["uriTemplate"].as_str() else {
                    continue;
                };
                let fixed = &tpl[..tpl.find('{').unwrap_or(tpl.len())];
                if !fixed.is_empty()
                    && uri.starts_with(fixed)
                    && best.is_none_or(|(n, _)| fixed.len() > n)
                {
                    best = Some((fixed.len(), u));
                }
            }
        }
        if let Some((_, u)) = best {
            return Some((u.clone(), uri.to_owned()));
        }
        let (server, theirs) = split(uri)?;
        let u = self.upstream(server)?;
        Some((u.clone(), theirs.to_owned()))
    }

    /// Each server's state, for the admin API.
    pub fn status(&self) -> Vec<Value> {
        self.upstreams
            .iter()
            .map(|u| {
                let s = u.status();
                let c = u.catalog();
                let transport = match &u.cfg.transport {
                    sluice_core::config::McpTransport::Stdio { .. } => "stdio",
                    sluice_core::config::McpTransport::Http { .. } => "http",
                };
                json!({
                    "name": u.name,
                    "transport": transport,
                    "state": s.state.name(),
                    "tools": c.tools.len(),
                    "resources": c.resources.len(),
                    "resource_templates": c.templates.len(),
                    "prompts": c.prompts.len(),
                    "in_flight": u.in_flight(),
                    "restarts": s.restarts,
                    "pid": s.pid,
                    "protocol_version": s.protocol_version,
                    "server_info": s.server_info,
                    "last_error": s.last_error,
                })
            })
            .collect()
    }

    /// Stops every server (children are killed).
    pub fn shutdown(&self) {
        for u in &self.upstreams {
            u.shutdown();
        }
    }
}
