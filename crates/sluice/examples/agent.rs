//! A reference Sluice agent in Rust (see `docs/agent-protocol.md`).
//!
//! Says hello, acknowledges each instruction, runs it (here: echoes the
//! payload back as the result — put your work in `handle`), and reconnects
//! with back-off when the connection ends.
//!
//! ```sh
//! cargo run --example agent -- ws://127.0.0.1:8080/v1/agents/connect worker-1 workers
//! ```
//! Set `SLUICE_KEY` when the gateway has virtual keys.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

/// The agent's work. Replace with your own.
async fn handle(payload: Value) -> Value {
    payload
}

async fn session(
    url: &str,
    agent_id: &str,
    groups: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut request = url.into_client_request()?;
    if let Ok(key) = std::env::var("SLUICE_KEY") {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}"))?,
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let hello =
        json!({"type": "hello", "agent_id": agent_id, "groups": groups, "capabilities": ["echo"]});
    ws.send(Message::text(hello.to_string())).await?;
    while let Some(msg) = ws.next().await {
        // Pings are answered by the library as they are read.
        let Message::Text(text) = msg? else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("welcome") => println!("connected: {frame}"),
            Some("instruction") => {
                let id = frame["id"].clone();
                ws.send(Message::text(json!({"type": "ack", "id": id}).to_string()))
                    .await?;
                let result = handle(frame["payload"].clone()).await;
                ws.send(Message::text(
                    json!({"type": "result", "id": id, "payload": result}).to_string(),
                ))
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/v1/agents/connect".to_owned());
    let agent_id = args.next().unwrap_or_else(|| "rust-agent".to_owned());
    let groups: Vec<String> = args.collect();
    let mut delay = Duration::from_millis(200);
    loop {
        match session(&url, &agent_id, &groups).await {
            Ok(()) => {
                println!("disconnected");
                delay = Duration::from_millis(200);
            }
            Err(e) => println!("disconnected: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
