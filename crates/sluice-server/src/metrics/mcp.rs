//! The MCP gateway: tool calls by server, tool and outcome, their
//! duration, and each upstream server's state (read at scrape).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub server: String,
    pub tool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub server: String,
    pub tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
}

fn seconds() -> Histogram {
    // 100 µs … ~100 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub struct McpMetrics {
    pub tool_calls: Family<CallLabels, Counter>,
    pub duration: Family<ToolLabels, Histogram, fn() -> Histogram>,
    pub server_up: Family<ServerLabels, Gauge>,
    pub server_tools: Family<ServerLabels, Gauge>,
    pub server_restarts: Family<ServerLabels, Gauge>,
    pub sessions: Gauge,
}

impl Default for McpMetrics {
    fn default() -> Self {
        Self {
            tool_calls: Family::default(),
            duration: Family::new_with_constructor(seconds),
            server_up: Family::default(),
            server_tools: Family::default(),
            server_restarts: Family::default(),
            sessions: Gauge::default(),
        }
    }
}

impl McpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls through /mcp, by server, tool and outcome (ok, tool_error, error, timeout, unavailable, rate_limited, cancelled)",
            self.tool_calls.clone(),
        );
        registry.register(
            "mcp_tool_call_duration_seconds",
            "Duration of MCP tool calls through /mcp, by server and tool",
            self.duration.clone(),
        );
        registry.register(
            "mcp_server_up",
            "1 while an upstream MCP server is connected and initialized, else 0 (its tools are withdrawn)",
            self.server_up.clone(),
        );
        registry.register(
            "mcp_server_tools",
            "Tools an upstream MCP server offers",
            self.server_tools.clone(),
        );
        registry.register(
            "mcp_server_restarts",
            "Times an upstream MCP server was started again after going away",
            self.server_restarts.clone(),
        );
        registry.register(
            "mcp_sessions",
            "MCP sessions (initialized clients) held by this replica",
            self.sessions.clone(),
        );
    }

    /// Reads each server's state into the gauges (at scrape).
    pub fn refresh(&self, fed: &sluice_mcp::Federation) {
        self.server_up.clear();
        self.server_tools.clear();
        self.server_restarts.clear();
        for u in &fed.upstreams {
            let l = ServerLabels {
                server: u.name.clone(),
            };
            let s = u.status();
            self.server_up
                .get_or_create(&l)
                .set(i64::from(u.is_ready()));
            self.server_tools
                .get_or_create(&l)
                .set(u.catalog().tools.len() as i64);
            self.server_restarts
                .get_or_create(&l)
                .set(s.restarts as i64);
        }
    }
}
