//! `tools/call`: what the key may call, the rate limits, the call routed
//! to its server, and a record of it (audit event, span, metrics) however
//! it ends — also when the client cancels or goes away.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use sluice_mcp::rpc::{self, RpcError};
use tokio::sync::mpsc;

use super::Ctx;
use crate::app::App;
use crate::metrics::mcp::{CallLabels, ToolLabels};

pub async fn tool(
    ctx: &Ctx,
    params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
) -> Result<Value, RpcError> {
    let mut params = params.unwrap_or_default();
    let Some(name) = params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Err(RpcError::new(
            rpc::INVALID_PARAMS,
            "tools/call needs params.name",
        ));
    };
    // A tool the key may not see answers exactly as one that does not exist.
    let unknown = || RpcError::new(rpc::INVALID_PARAMS, format!("Unknown tool: {name}"));
    if !ctx.allows_tool(&name) {
        return Err(unknown());
    }
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(rest) = name.strip_prefix(super::agents::GROUP_PREFIX) {
        let (group, theirs) = rest.split_once(sluice_mcp::SEPARATOR).ok_or_else(unknown)?;
        let agent = super::agents::member_for(ctx, group, theirs)
            .await
            .ok_or_else(unknown)?;
        let server = format!("{}{group}", super::agents::GROUP_PREFIX);
        let mut rec = Record::new(ctx, &server, theirs, &name, arguments.clone());
        limit(ctx, &mut rec, None)?;
        let result = super::agents::call(ctx, &agent, theirs, arguments).await;
        rec.finish(&result);
        return result;
    }
    if let Some(rest) = name.strip_prefix(super::agents::PREFIX) {
        let (agent, theirs) = rest.split_once(sluice_mcp::SEPARATOR).ok_or_else(unknown)?;
        let mut rec = Record::new(
            ctx,
            &format!("{}{agent}", super::agents::PREFIX),
            theirs,
            &name,
            arguments.clone(),
        );
        limit(ctx, &mut rec, None)?;
        let result = super::agents::call(ctx, agent, theirs, arguments).await;
        rec.finish(&result);
        return result;
    }
    let (server, theirs) = sluice_mcp::split(&name).ok_or_else(unknown)?;
    let upstream = ctx.fed.upstream(server).ok_or_else(unknown)?.clone();
    if upstream.is_ready() && !upstream.catalog().tools.iter().any(|t| t["name"] == theirs) {
        return Err(unknown());
    }
    let mut rec = Record::new(ctx, server, theirs, &name, arguments);
    limit(ctx, &mut rec, upstream.cfg.rpm)?;
    params["name"] = json!(theirs);
    let result = upstream.request("tools/call", Some(params), progress).await;
    rec.finish(&result);
    result
}

/// Takes the call from the key's and the tool's `mcp_rpm` buckets; a
/// refused call is recorded as `rate_limited`.
fn limit(ctx: &Ctx, rec: &mut Record, tool_rpm: Option<u64>) -> Result<(), RpcError> {
    let key_rpm = ctx
        .key
        .as_ref()
        .and_then(|k| k.mcp_rpm.map(|r| (&k.name, r)));
    let Err(wait) = ctx.app.mcp_limits.take(key_rpm, &rec.called, tool_rpm) else {
        return Ok(());
    };
    let e = RpcError::new(
        rpc::RATE_LIMITED,
        format!(
            "rate limit for tool {} reached (mcp_rpm): retry in {wait:.1} s",
            rec.called
        ),
    )
    .with_data(json!({"retry_after_ms": (wait * 1000.0).ceil() as u64}));
    rec.finish(&Err(e.clone()));
    Err(e)
}

/// One tool call's record, written when it is dropped: an unfinished one
/// was cancelled.
struct Record {
    app: Arc<App>,
    server: String,
    tool: String,
    called: String,
    key: Option<Arc<str>>,
    arguments: Value,
    started: Instant,
    span: Option<sluice_telemetry::Span>,
    outcome: Option<&'static str>,
    error: Option<String>,
}

impl Record {
    fn new(ctx: &Ctx, server: &str, tool: &str, called: &str, arguments: Value) -> Self {
        Self {
            app: ctx.app.clone(),
            server: server.to_owned(),
            tool: tool.to_owned(),
            called: called.to_owned(),
            key: ctx.key.as_ref().map(|k| k.name.clone()),
            arguments,
            started: Instant::now(),
            span: ctx.app.tracing.as_ref().map(|t| {
                let mut s = t.server_span(&ctx.headers, "/mcp");
                s.rename("execute_tool", &Arc::from(called));
                s
            }),
            outcome: None,
            error: None,
        }
    }

    fn finish(&mut self, result: &Result<Value, RpcError>) {
        self.outcome = Some(match result {
            Ok(r) if r.get("isError").and_then(Value::as_bool) == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(e) => {
                self.error = Some(e.message.clone());
                e.outcome()
            }
        });
    }
}

/// The status an audit event gives each outcome.
fn status(outcome: &str) -> u16 {
    match outcome {
        "ok" | "tool_error" => 200,
        "rate_limited" => 429,
        "timeout" => 504,
        "unavailable" => 502,
        "cancelled" => 499,
        "not_found" => 404,
        _ => 500,
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        let elapsed = self.started.elapsed();
        let m = &self.app.metrics.mcp;
        m.tool_calls
            .get_or_create(&CallLabels {
                server: self.server.clone(),
                tool: self.tool.clone(),
                outcome,
            })
            .inc();
        m.duration
            .get_or_create(&ToolLabels {
                server: self.server.clone(),
                tool: self.tool.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(mut span) = self.span.take() {
            span.str("gen_ai.operation.name", "execute_tool");
            span.str("gen_ai.tool.name", &self.called);
            span.str("mcp.method.name", "tools/call");
            span.str("sluice.mcp.server", &self.server);
            span.str("sluice.mcp.outcome", outcome);
            if let Some(k) = &self.key {
                span.str("sluice.key", k);
            }
            match (outcome, &self.error) {
                ("ok", _) => {}
                (o, Some(e)) => span.fail(o, e),
                (o, None) => span.fail(o, o),
            }
            span.end();
        }
        tracing::info!(
            target: "sluice::access",
            route = "/mcp",
            tool = %self.called,
            outcome,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "tool call"
        );
        let Some(auditor) = &self.app.audit else {
            return;
        };
        let now_ms = sluice_hub::unix_ms();
        let ms = elapsed.as_secs_f64() * 1000.0;
        let (id, ts) = (
            crate::audit::Auditor::new_id(),
            sluice_core::config::time::rfc3339_millis(now_ms),
        );
        auditor.record(&crate::audit::Event {
            id: id.as_str(),
            ts: ts.as_str(),
            request_id: None,
            client_request_id: None,
            key: self.key.as_deref(),
            route: "/mcp",
            model: None,
            provider: None,
            status: status(outcome),
            latency_ms: ms,
            stream: false,
            attempts: 1,
            cancelled: outcome == "cancelled",
            input_tokens: None,
            output_tokens: None,
            // A code, as on every other event (the message is the span's).
            error: (outcome != "ok").then_some(outcome),
            fields: None,
            conversions: None,
            tool_call: Some(crate::audit::ToolCall {
                kind: "mcp_tool_call",
                server: &self.server,
                tool: &self.tool,
                called: &self.called,
                outcome,
                duration_ms: ms,
                arguments: auditor.arguments(&self.arguments),
            }),
        });
    }
}
