//! Agents as tool providers: an agent connected to the hub that declared
//! tools in its `hello` serves them at `/mcp` as `agent.{agent_id}__{tool}`.
//! A call is an instruction (`{"type":"tool_call","tool","arguments"}`) to
//! that agent — through Redis when it is connected to another replica —
//! and its `result` frame is the answer. The key's `agent_groups` apply.
//! A group's members' tools are also served as `group.{group}__{tool}`: a
//! call goes to one member that declared the tool (this replica's first).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_hub::{SendError, Status, in_scope};
use sluice_mcp::rpc::{self, RpcError};

use super::Ctx;

/// How tools of agents are named: `agent.{id}__{tool}`.
pub const PREFIX: &str = "agent.";
/// And of groups: `group.{group}__{tool}`.
pub const GROUP_PREFIX: &str = "group.";

/// An agent that declared tools, here or on another replica.
struct Provider {
    id: String,
    groups: Vec<Arc<str>>,
    tools: Vec<Value>,
}

fn scope(ctx: &Ctx) -> sluice_hub::Scope {
    ctx.key.as_ref().and_then(|k| k.agent_groups.clone())
}

fn named(agent: &str, tool: &Value) -> Value {
    let mut t = tool.clone();
    if let Some(n) = tool["name"].as_str() {
        t["name"] = json!(format!("{PREFIX}{agent}__{n}"));
    }
    t
}

fn groups_of(presence: &Value) -> Vec<Arc<str>> {
    presence["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(Arc::from).collect())
        .unwrap_or_default()
}

/// The agents with tools this key may reach: this replica's first, then
/// (with Redis) the others'.
async fn providers(ctx: &Ctx) -> Vec<Provider> {
    let Some(hub) = &ctx.app.hub else {
        return Vec::new();
    };
    let scope = scope(ctx);
    let mut out: Vec<Provider> = hub
        .list(None)
        .into_iter()
        .filter(|a| !a.tools.is_empty() && in_scope(&scope, &a.groups))
        .map(|a| Provider {
            id: a.id.to_string(),
            groups: a.groups.clone(),
            tools: a.tools.clone(),
        })
        .collect();
    if let Some(c) = hub.cluster.get() {
        let seen: HashSet<String> = out.iter().map(|p| p.id.clone()).collect();
        for p in c.tool_agents().await {
            let Some(id) = p["agent_id"].as_str() else {
                continue;
            };
            let groups = groups_of(&p);
            if seen.contains(id) || !in_scope(&scope, &groups) {
                continue;
            }
            out.push(Provider {
                id: id.to_owned(),
                groups,
                tools: p["tools"].as_array().cloned().unwrap_or_default(),
            });
        }
    }
    out
}

/// Every connected agent's tools this key may reach, by agent and by
/// group (a group's tool named once, as its first member declared it).
pub async fn tools(ctx: &Ctx) -> Vec<Value> {
    let providers = providers(ctx).await;
    let mut out = Vec::new();
    let mut by_group = Vec::new();
    let mut seen = HashSet::new();
    for p in &providers {
        out.extend(p.tools.iter().map(|t| named(&p.id, t)));
        for g in &p.groups {
            for t in &p.tools {
                let Some(n) = t["name"].as_str() else {
                    continue;
                };
                if seen.insert(format!("{g}__{n}")) {
                    let mut t = t.clone();
                    t["name"] = json!(format!("{GROUP_PREFIX}{g}__{n}"));
                    by_group.push(t);
                }
            }
        }
    }
    out.extend(by_group);
    out
}

/// The member of `group` that takes a call to `tool`: one that declared
/// it, this replica's first.
pub async fn member_for(ctx: &Ctx, group: &str, tool: &str) -> Option<String> {
    providers(ctx)
        .await
        .into_iter()
        .find(|p| {
            p.groups.iter().any(|g| &**g == group) && p.tools.iter().any(|t| t["name"] == tool)
        })
        .map(|p| p.id)
}

/// Whether `agent` (here or on another replica) declared `tool` and the
/// key may reach it.
async fn declares(ctx: &Ctx, hub: &sluice_hub::Hub, agent: &str, tool: &str) -> bool {
    let scope = scope(ctx);
    if let Some(a) = hub.get(agent) {
        return in_scope(&scope, &a.groups) && a.tools.iter().any(|t| t["name"] == tool);
    }
    let Some(c) = hub.cluster.get() else {
        return false;
    };
    c.presence(agent).await.is_some_and(|p| {
        in_scope(&scope, &groups_of(&p))
            && p["tools"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["name"] == tool))
    })
}

/// Calls `tool` on `agent` and waits for its result (up to the hub's
/// `max_wait_ms`).
pub async fn call(ctx: &Ctx, agent: &str, tool: &str, arguments: Value) -> Result<Value, RpcError> {
    let unknown = || {
        RpcError::new(
            rpc::INVALID_PARAMS,
            format!("Unknown tool: {PREFIX}{agent}__{tool}"),
        )
    };
    let Some(hub) = ctx.app.hub.clone() else {
        return Err(unknown());
    };
    if !declares(ctx, &hub, agent, tool).await {
        return Err(unknown());
    }
    let payload = json!({"type": "tool_call", "tool": tool, "arguments": arguments});
    let id = match crate::hub_routes::queue(&hub, &scope(ctx), agent, &payload).await {
        Ok(id) => id,
        Err(SendError::QueueFull { depth }) => {
            return Err(RpcError::new(
                rpc::UPSTREAM_UNAVAILABLE,
                format!("agent '{agent}' is not keeping up ({depth} frames queued)"),
            ));
        }
        Err(SendError::NotConnected) => {
            return Err(RpcError::new(
                rpc::UPSTREAM_UNAVAILABLE,
                format!("agent '{agent}' is not connected"),
            ));
        }
        Err(SendError::NotAllowed) => return Err(unknown()),
    };
    let wait = hub.cfg.max_wait;
    match hub.wait(&id, Status::Completed, wait).await {
        Some(Status::Completed) => {
            let result = hub
                .record_view(&id)
                .map(|v| v["result"].clone())
                .unwrap_or_default();
            Ok(as_tool_result(result))
        }
        Some(Status::Undelivered) => Err(RpcError::new(
            rpc::UPSTREAM_UNAVAILABLE,
            format!("agent '{agent}' went away before answering"),
        )),
        _ => Err(RpcError::new(
            rpc::REQUEST_TIMEOUT,
            format!(
                "agent '{agent}' did not answer within {} ms",
                wait.as_millis()
            ),
        )),
    }
}

/// An agent's result as a `CallToolResult`: one already in that shape
/// (`content`) as it is; text as a text block; anything else as JSON
/// text and, for an object, `structuredContent` too.
pub fn as_tool_result(r: Value) -> Value {
    if r.get("content").is_some_and(Value::is_array) {
        return r;
    }
    match r {
        Value::String(s) => json!({"content": [{"type": "text", "text": s}], "isError": false}),
        Value::Object(_) => {
            json!({"content": [{"type": "text", "text": r.to_string()}], "structuredContent": r, "isError": false})
        }
        other => {
            json!({"content": [{"type": "text", "text": other.to_string()}], "isError": false})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_become_tool_results() {
        let shaped = json!({"content": [{"type": "text", "text": "x"}], "isError": true});
        assert_eq!(as_tool_result(shaped.clone()), shaped);
        assert_eq!(as_tool_result(json!("hi"))["content"][0]["text"], "hi");
        let o = as_tool_result(json!({"temp": 21}));
        assert_eq!(o["structuredContent"]["temp"], 21);
        assert_eq!(o["content"][0]["text"], r#"{"temp":21}"#);
        assert_eq!(as_tool_result(json!(3))["content"][0]["text"], "3");
    }
}
