//! Load tool for the agent hub.
//!
//! `agents-load --url http://127.0.0.1:8080 --agents 10000 --pid <sluice pid>`
//! `[--id-prefix P]` (agent ids `P0`, `P1`, …: several processes side by side)
//! `[--push-url URL [--push-pid PID]]` (instructions posted to another
//! replica than the agents' own: the cross-replica path)
//!
//! Connects N idle agents (spread over several 127.0.0.x source addresses,
//! past the ephemeral-port limit of one), then reports:
//! - the gateway's RSS per connected agent (RSS after − before, ÷ N);
//! - the gateway's CPU while the agents sit idle and are pinged (per
//!   heartbeat, and as a share of one core);
//! - instruction push latency: POSTs to random agents at a fixed rate; each
//!   agent notes when the instruction frame arrives (one-way, on this
//!   process's monotonic clock: the POST carries its send time);
//! - agents lost on the way (should be 0);
//! - the gateway's CPU per pushed instruction, also net of the heartbeat
//!   share measured while idle (`push_gateway_cpu_us_net`).
//!
//! Prints one JSON object on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

struct Args {
    url: String,
    agents: usize,
    sources: u8,
    pushes: usize,
    rate: u64,
    idle_secs: u64,
    heartbeat_ms: u64,
    pid: Option<u32>,
    id_prefix: String,
    push_url: Option<String>,
    push_pid: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        agents: 1000,
        sources: 4,
        pushes: 5000,
        rate: 1000,
        idle_secs: 10,
        heartbeat_ms: 5000,
        pid: None,
        id_prefix: "a".into(),
        push_url: None,
        push_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--agents" => a.agents = v.parse().expect("--agents N"),
            "--sources" => a.sources = v.parse().expect("--sources N"),
            "--pushes" => a.pushes = v.parse().expect("--pushes N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--idle-secs" => a.idle_secs = v.parse().expect("--idle-secs N"),
            "--heartbeat-ms" => a.heartbeat_ms = v.parse().expect("--heartbeat-ms N"),
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--id-prefix" => a.id_prefix = v,
            "--push-url" => a.push_url = Some(v),
            "--push-pid" => a.push_pid = Some(v.parse().expect("--push-pid N")),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

struct Shared {
    base: Instant,
    connected: AtomicUsize,
    closed: AtomicUsize,
    received: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

async fn agent(id: String, ws_url: String, source: IpAddr, shared: Arc<Shared>) {
    let addr: SocketAddr = {
        let rest = ws_url.trim_start_matches("ws://");
        let hostport = rest.split('/').next().expect("host:port");
        hostport.parse().expect("an IP:port URL")
    };
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(source, 0)).expect("bind source");
    let stream = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agent {id}: connect: {e}");
            shared.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        match tokio_tungstenite::client_async_with_config(ws_url.as_str(), stream, Some(config))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                eprintln!("agent {id}: handshake: {e}");
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    let group = format!("g{}", id.bytes().map(usize::from).sum::<usize>() % 100);
    let hello = json!({"type": "hello", "agent_id": id, "groups": [group]});
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        shared.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut welcomed = false;
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        let Message::Text(t) = msg else { continue };
        if !welcomed {
            welcomed = true;
            shared.connected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = shared.base.elapsed().as_micros() as u64;
        if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
            && v["type"] == "instruction"
        {
            let sent = v["payload"]["t"].as_u64().unwrap_or(now);
            shared
                .latencies_us
                .lock()
                .await
                .push(now.saturating_sub(sent));
            shared.received.fetch_add(1, Ordering::Relaxed);
            let ack = json!({"type": "ack", "id": v["id"]});
            let _ = ws.send(Message::text(ack.to_string())).await;
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        connected: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        received: AtomicUsize::new(0),
        latencies_us: Mutex::new(Vec::with_capacity(a.pushes)),
    });
    let ws_url = format!(
        "{}/v1/agents/connect",
        a.url.replacen("http://", "ws://", 1)
    );
    let rss_before = rss_kib(a.pid);

    // Connect, a few hundred at a time.
    let t0 = Instant::now();
    let mut started = 0;
    while started < a.agents {
        let batch = (a.agents - started).min(250);
        for i in started..started + batch {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % a.sources as usize) as u8));
            let id = format!("{}{i}", a.id_prefix);
            tokio::spawn(agent(id, ws_url.clone(), source, shared.clone()));
        }
        started += batch;
        let deadline = Instant::now() + Duration::from_secs(20);
        while shared.connected.load(Ordering::Relaxed) + shared.closed.load(Ordering::Relaxed)
            < started
        {
            assert!(Instant::now() < deadline, "agents did not connect in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(a.pid);
    let connected = shared.connected.load(Ordering::Relaxed);

    // Idle: the gateway only pings.
    let hz = 100.0; // USER_HZ on Linux
    let c0 = cpu_ticks(a.pid);
    let i0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let idle_cpu_s = (cpu_ticks(a.pid) - c0) as f64 / hz;
    let idle_wall = i0.elapsed().as_secs_f64();
    let heartbeats = connected as f64 * idle_wall * 1000.0 / a.heartbeat_ms as f64;

    // Push latency at a fixed rate.
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let interval_us = 1_000_000 / a.rate.max(1);
    let mut tick = tokio::time::interval(Duration::from_micros(interval_us));
    let http_errors = Arc::new(AtomicUsize::new(0));
    let push_url = a.push_url.clone().unwrap_or_else(|| a.url.clone());
    let p0 = cpu_ticks(a.pid);
    let q0 = cpu_ticks(a.push_pid);
    let pt = Instant::now();
    for n in 0..a.pushes {
        tick.tick().await;
        let target = (n * 7919) % connected.max(1);
        let t = shared.base.elapsed().as_micros() as u64;
        let body = json!({"payload": {"t": t, "n": n}}).to_string();
        let req = hyper::Request::post(format!(
            "{push_url}/v1/agents/{}{target}/instructions",
            a.id_prefix
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
        let client = client.clone();
        let errors = http_errors.clone();
        tokio::spawn(async move {
            match client.request(req).await {
                Ok(r) if r.status().as_u16() == 202 => {}
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.received.load(Ordering::Relaxed) + http_errors.load(Ordering::Relaxed) < a.pushes
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let push_cpu_s = (cpu_ticks(a.pid) - p0) as f64 / hz;
    let push_replica_cpu_s = (cpu_ticks(a.push_pid) - q0) as f64 / hz;
    let push_wall = pt.elapsed().as_secs_f64();
    // What the agents' gateway would have spent on heartbeats anyway.
    let idle_share = if idle_wall > 0.0 {
        idle_cpu_s / idle_wall
    } else {
        0.0
    };
    let push_net_s = (push_cpu_s - idle_share * push_wall).max(0.0);
    let mut lat = shared.latencies_us.lock().await.clone();
    lat.sort_unstable();

    let per_agent =
        (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / connected.max(1) as f64;
    let out = json!({
        "agents_requested": a.agents,
        "agents_connected": connected,
        "agents_lost": shared.closed.load(Ordering::Relaxed),
        "connect_seconds": (connect_secs * 100.0).round() / 100.0,
        "gateway_rss_before_mib": rss_before as f64 / 1024.0,
        "gateway_rss_after_mib": rss_after as f64 / 1024.0,
        "gateway_rss_per_agent_bytes": per_agent.round(),
        "idle_seconds": (idle_wall * 10.0).round() / 10.0,
        "idle_gateway_cpu_seconds": idle_cpu_s,
        "idle_gateway_core_share": (idle_cpu_s / idle_wall * 1000.0).round() / 1000.0,
        "heartbeat_cpu_us_each": if heartbeats > 0.0 { (idle_cpu_s * 1e6 / heartbeats * 100.0).round() / 100.0 } else { 0.0 },
        "pushes": a.pushes,
        "push_rate_per_s": a.rate,
        "pushes_received": lat.len(),
        "push_http_errors": http_errors.load(Ordering::Relaxed),
        "push_latency_us_p50": percentile(&lat, 0.50),
        "push_latency_us_p99": percentile(&lat, 0.99),
        "push_latency_us_max": lat.last().copied().unwrap_or(0),
        "push_gateway_cpu_us_each": (push_cpu_s * 1e6 / a.pushes.max(1) as f64).round(),
        "push_gateway_cpu_us_net": (push_net_s * 1e6 / a.pushes.max(1) as f64).round(),
        "push_replica_cpu_us_each": a.push_pid.map(|_| (push_replica_cpu_s * 1e6 / a.pushes.max(1) as f64).round()),
        "id_prefix": a.id_prefix,
        "push_url": push_url,
        "push_seconds": (push_wall * 10.0).round() / 10.0,
    });
    println!("{out}");
}
