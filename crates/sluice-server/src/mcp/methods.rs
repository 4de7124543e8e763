//! What `/mcp` answers: the federated lists (paged, filtered by the key),
//! and reads, prompts and completions routed to the server that has them.

use serde_json::{Value, json};
use sluice_mcp::rpc::{self, RpcError};
use tokio::sync::mpsc;

use super::Ctx;

pub const INSTRUCTIONS: &str = "Sluice federates several MCP servers: tools, prompts and resources are named {server}__{name}.";

pub fn server_info() -> Value {
    json!({"name": "sluice", "title": "Sluice MCP gateway", "version": env!("CARGO_PKG_VERSION")})
}

pub fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "resources": {"listChanged": true},
        "prompts": {"listChanged": true},
        "completions": {},
        "logging": {},
    })
}

pub async fn dispatch(
    ctx: &Ctx,
    method: &str,
    params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
) -> Result<Value, RpcError> {
    let fed = &ctx.fed;
    match method {
        "ping" | "logging/setLevel" => Ok(json!({})),
        "server/discover" => Ok(discover()),
        "tools/list" => {
            let mut tools = fed.tools();
            tools.extend(super::agents::tools(ctx).await);
            let tools = tools
                .into_iter()
                .filter(|t| t["name"].as_str().is_some_and(|n| ctx.allows_tool(n)))
                .collect();
            page(ctx, params.as_ref(), tools, "tools")
        }
        "prompts/list" => page(ctx, params.as_ref(), fed.prompts(), "prompts"),
        "resources/list" => page(ctx, params.as_ref(), fed.resources(), "resources"),
        "resources/templates/list" => {
            page(ctx, params.as_ref(), fed.templates(), "resourceTemplates")
        }
        "tools/call" => super::call::tool(ctx, params, progress).await,
        "resources/read" => read(ctx, params, progress).await,
        "prompts/get" => prompt(ctx, params, progress).await,
        "completion/complete" => complete(ctx, params).await,
        _ => Err(RpcError::new(
            rpc::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )),
    }
}

fn discover() -> Value {
    let versions: Vec<&str> = super::MODERN_VERSIONS
        .iter()
        .chain(super::HANDSHAKE_VERSIONS.iter().rev())
        .copied()
        .collect();
    json!({
        "supportedVersions": versions,
        "capabilities": capabilities(),
        "instructions": INSTRUCTIONS,
    })
}

/// One page of a federated list; the cursor is the offset of the next.
fn page(
    ctx: &Ctx,
    params: Option<&Value>,
    items: Vec<Value>,
    field: &str,
) -> Result<Value, RpcError> {
    let size = ctx.fed.page_size;
    let start = match params.and_then(|p| p.get("cursor")) {
        None | Some(Value::Null) => 0,
        Some(c) => c
            .as_str()
            .and_then(|c| c.strip_prefix("o"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n <= items.len())
            .ok_or_else(|| RpcError::new(rpc::INVALID_PARAMS, "invalid cursor"))?,
    };
    let end = (start + size).min(items.len());
    let mut out = json!({ field: items[start..end] });
    if end < items.len() {
        out["nextCursor"] = json!(format!("o{end}"));
    }
    Ok(out)
}

fn string_param<'a>(params: &'a Value, name: &str, method: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::new(rpc::INVALID_PARAMS, format!("{method} needs params.{name}")))
}

async fn read(
    ctx: &Ctx,
    params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
) -> Result<Value, RpcError> {
    let mut params = params.unwrap_or_default();
    let uri = string_param(&params, "uri", "resources/read")?.to_owned();
    let Some((upstream, theirs)) = ctx.fed.resource_owner(&uri) else {
        return Err(RpcError::new(-32002, format!("Resource not found: {uri}"))
            .with_data(json!({"uri": uri})));
    };
    params["uri"] = json!(theirs);
    upstream
        .request("resources/read", Some(params), progress)
        .await
}

/// The server a prefixed name belongs to, and the name it knows.
fn owner<'a>(
    ctx: &'a Ctx,
    name: &'a str,
    what: &str,
) -> Result<(&'a std::sync::Arc<sluice_mcp::Upstream>, &'a str), RpcError> {
    sluice_mcp::split(name)
        .and_then(|(server, theirs)| Some((ctx.fed.upstream(server)?, theirs)))
        .ok_or_else(|| RpcError::new(rpc::INVALID_PARAMS, format!("Unknown {what}: {name}")))
}

async fn prompt(
    ctx: &Ctx,
    params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
) -> Result<Value, RpcError> {
    let mut params = params.unwrap_or_default();
    let name = string_param(&params, "name", "prompts/get")?.to_owned();
    let (upstream, theirs) = owner(ctx, &name, "prompt")?;
    params["name"] = json!(theirs);
    upstream
        .request("prompts/get", Some(params), progress)
        .await
}

/// Argument completion for a prompt (`ref/prompt`, by its prefixed name)
/// or a resource template (`ref/resource`, by its URI).
async fn complete(ctx: &Ctx, params: Option<Value>) -> Result<Value, RpcError> {
    let mut params = params.unwrap_or_default();
    let r = params.get("ref").cloned().unwrap_or_default();
    let upstream = match r["type"].as_str() {
        Some("ref/prompt") => {
            let name = string_param(&r, "name", "completion/complete")?.to_owned();
            let (u, theirs) = owner(ctx, &name, "prompt")?;
            params["ref"]["name"] = json!(theirs);
            u.clone()
        }
        Some("ref/resource") => {
            let uri = string_param(&r, "uri", "completion/complete")?;
            ctx.fed.resource_owner(uri).map(|(u, _)| u).ok_or_else(|| {
                RpcError::new(rpc::INVALID_PARAMS, format!("Unknown resource: {uri}"))
            })?
        }
        _ => {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                "completion/complete needs ref.type ref/prompt or ref/resource",
            ));
        }
    };
    upstream
        .request("completion/complete", Some(params), None)
        .await
}
