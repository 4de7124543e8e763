//! Load tool for the agent hub.
//!
//! `agents-load --url http://127.0.0.1:8080 --agents 10000 --pid <sluice pid>`
//! `[--id-prefix P]` (agent ids `P0`, `P1`, …: several processes side by side)
//! `[--push-url URL [--push-pid PID]]` (instructions posted to another
//! replica than the agents' own: the cross-replica path)
//! `[--wait-ack-ms MS]` (each POST waits for the agent's ack: the
//! instruction → ack round trip is timed, `ack_round_trip_us_*`)
//! `[--failover-url URL]` (an agent whose connection drops reconnects
//! there, after a random wait up to welcome's `reconnect_jitter_ms`,
//! honouring 503 + `x-sluice-retry-after-ms`)
//! `[--kill-pid PID [--kill-after-ms MS]]` (SIGKILLs the agents' replica
//! that long into the pushes; `reconnect_seconds` is the time until every
//! dropped agent is back, `push_http_errors` the instructions lost)
//! `[--sources N] [--source-net X]` (source addresses 127.X.0.2 to
//! 127.X.0.N+1; a fresh X per process and run avoids the TIME_WAIT ports
//! of earlier ones, which otherwise stall connects for seconds)
//! `[--start-file F]` (pushes wait until F exists: processes side by side
//! push at the same time), `[--linger-secs S]` (agents stay S s after the
//! pushes), `[--samples-out F]` (each push's latencies as JSON lines, for
//! merging several processes' percentiles; send times are µs after
//! `base_unix_us`) — see `bench/cluster.py`
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
//!   share measured while idle (`push_gateway_cpu_us_net`), and the
//!   kernel's part of it (`push_gateway_sys_us_each`: system calls, the
//!   TCP stack, wake-ups).
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
    /// The second octet of the source addresses (127.N.0.2…): processes
    /// and runs on distinct ones never meet each other's TIME_WAIT ports.
    source_net: u8,
    pushes: usize,
    rate: u64,
    idle_secs: u64,
    heartbeat_ms: u64,
    pid: Option<u32>,
    id_prefix: String,
    push_url: Option<String>,
    push_pid: Option<u32>,
    wait_ack_ms: Option<u64>,
    failover_url: Option<String>,
    kill_pid: Option<u32>,
    kill_after_ms: u64,
    start_file: Option<String>,
    linger_secs: u64,
    samples_out: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        agents: 1000,
        sources: 4,
        source_net: 0,
        pushes: 5000,
        rate: 1000,
        idle_secs: 10,
        heartbeat_ms: 5000,
        pid: None,
        id_prefix: "a".into(),
        push_url: None,
        push_pid: None,
        wait_ack_ms: None,
        failover_url: None,
        kill_pid: None,
        kill_after_ms: 2000,
        start_file: None,
        linger_secs: 0,
        samples_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--agents" => a.agents = v.parse().expect("--agents N"),
            "--sources" => a.sources = v.parse().expect("--sources N"),
            "--source-net" => a.source_net = v.parse().expect("--source-net N (0-255)"),
            "--pushes" => a.pushes = v.parse().expect("--pushes N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--idle-secs" => a.idle_secs = v.parse().expect("--idle-secs N"),
            "--heartbeat-ms" => a.heartbeat_ms = v.parse().expect("--heartbeat-ms N"),
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--id-prefix" => a.id_prefix = v,
            "--push-url" => a.push_url = Some(v),
            "--push-pid" => a.push_pid = Some(v.parse().expect("--push-pid N")),
            "--wait-ack-ms" => a.wait_ack_ms = Some(v.parse().expect("--wait-ack-ms N")),
            "--failover-url" => a.failover_url = Some(v),
            "--kill-pid" => a.kill_pid = Some(v.parse().expect("--kill-pid N")),
            "--kill-after-ms" => a.kill_after_ms = v.parse().expect("--kill-after-ms N"),
            "--start-file" => a.start_file = Some(v),
            "--linger-secs" => a.linger_secs = v.parse().expect("--linger-secs N"),
            "--samples-out" => a.samples_out = Some(v),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// This process's soft open-files limit (from /proc: no libc needed).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Max open files"))?;
            l.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
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
    let (user, sys) = cpu_split(pid);
    user + sys
}

/// A process's user and system CPU so far, in clock ticks.
fn cpu_split(pid: Option<u32>) -> (u64, u64) {
    let Some(pid) = pid else { return (0, 0) };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
        })
        .unwrap_or((0, 0))
}

struct Shared {
    base: Instant,
    /// `base` on the wall clock (µs since the Unix epoch): lets
    /// `--samples-out` times be lined up with other processes' clocks.
    base_unix_us: u64,
    connected: AtomicUsize,
    closed: AtomicUsize,
    received: AtomicUsize,
    /// Agents whose connection dropped after they were welcomed (with
    /// `--failover-url` they reconnect there).
    dropped: AtomicUsize,
    reconnected: AtomicUsize,
    /// Connects refused with 503 (paced) and retried.
    refused: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

/// How one connection ended.
enum Ended {
    /// Welcomed, then the connection dropped; reconnect after a random
    /// wait up to the jitter the gateway advised.
    Dropped { jitter_ms: u64 },
    /// Refused with 503: retry after the advised wait.
    Paced { retry_ms: u64 },
    /// Could not connect at all.
    Failed,
}

/// A cheap per-agent random number (no crate needed for a jitter).
fn jitter(id: &str, salt: u64, max: u64) -> u64 {
    let mut x = id.bytes().fold(salt ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % max.max(1)
}

/// One agent: connects to `url`; when its connection drops and a
/// `failover` URL is given, reconnects there (spread over the advised
/// jitter, honouring 503 + `x-sluice-retry-after-ms`).
async fn agent(
    id: String,
    url: String,
    failover: Option<String>,
    source: IpAddr,
    shared: Arc<Shared>,
) {
    let mut url = url;
    let mut first = true;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        match session(&id, &url, source, &shared, first).await {
            Ended::Paced { retry_ms } => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(retry_ms.max(1))).await;
                continue;
            }
            Ended::Failed if !first => {
                tokio::time::sleep(Duration::from_millis(50 + jitter(&id, attempt, 200))).await;
                continue;
            }
            Ended::Failed => {}
            Ended::Dropped { jitter_ms } => {
                if let Some(f) = &failover {
                    if first {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    first = false;
                    url = f.clone();
                    let wait = jitter(&id, attempt, jitter_ms);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
            }
        }
        shared.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
}

async fn session(id: &str, ws_url: &str, source: IpAddr, shared: &Shared, first: bool) -> Ended {
    let addr: SocketAddr = {
        let rest = ws_url.trim_start_matches("ws://");
        let hostport = rest.split('/').next().expect("host:port");
        hostport.parse().expect("an IP:port URL")
    };
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    // A source port still in TIME_WAIT from an earlier run (or an earlier
    // connection of this one) may be taken again: without this, binding
    // port 0 skips every such port and, with tens of thousands of them,
    // connects stall for seconds — a property of the load tool, not of
    // the gateway.
    let _ = sock.set_reuseaddr(true);
    // Closed with a reset, not a FIN: the tens of thousands of connections
    // of a run leave no TIME_WAIT sockets behind, whose expiry 60 s later
    // (the kernel frees them in bursts of 10–30 ms, in softirq on whatever
    // process runs) would land in the next run's latencies.
    let _ = sock.set_zero_linger();
    sock.bind(SocketAddr::new(source, 0)).expect("bind source");
    let stream = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            if first {
                eprintln!("agent {id}: connect: {e}");
            }
            return Ended::Failed;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        match tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config)).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status().as_u16() == 503 => {
                let retry_ms = r
                    .headers()
                    .get("x-sluice-retry-after-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1000);
                return Ended::Paced { retry_ms };
            }
            Err(e) => {
                if first {
                    eprintln!("agent {id}: handshake: {e}");
                }
                return Ended::Failed;
            }
        };
    let group = format!("g{}", id.bytes().map(usize::from).sum::<usize>() % 100);
    let hello = json!({"type": "hello", "agent_id": id, "groups": [group]});
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        return Ended::Failed;
    }
    let mut jitter_ms = 0;
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        if v["type"] == "welcome" {
            jitter_ms = v["reconnect_jitter_ms"].as_u64().unwrap_or(1000);
            let counter = if first {
                &shared.connected
            } else {
                &shared.reconnected
            };
            counter.fetch_add(1, Ordering::Relaxed);
        } else if v["type"] == "instruction" {
            let now = shared.base.elapsed().as_micros() as u64;
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
    if jitter_ms == 0 {
        return Ended::Failed;
    }
    Ended::Dropped { jitter_ms }
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
        base_unix_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        connected: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        received: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        latencies_us: Mutex::new(Vec::with_capacity(a.pushes)),
    });
    let ws = |u: &str| format!("{}/v1/agents/connect", u.replacen("http://", "ws://", 1));
    let ws_url = ws(&a.url);
    let failover = a.failover_url.as_deref().map(ws);
    let rss_before = rss_kib(a.pid);

    // Connect, a few hundred at a time.
    let t0 = Instant::now();
    let mut started = 0;
    while started < a.agents {
        let batch = (a.agents - started).min(250);
        for i in started..started + batch {
            let host = 2 + (i % a.sources as usize) as u8;
            let source = IpAddr::V4(Ipv4Addr::new(127, a.source_net, 0, host));
            let id = format!("{}{i}", a.id_prefix);
            let (url, f, sh) = (ws_url.clone(), failover.clone(), shared.clone());
            tokio::spawn(agent(id, url, f, source, sh));
        }
        started += batch;
        let deadline = Instant::now() + Duration::from_secs(60);
        while shared.connected.load(Ordering::Relaxed) + shared.closed.load(Ordering::Relaxed)
            < started
        {
            assert!(Instant::now() < deadline, "agents did not connect in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "connected {} agents in {connect_secs:.2} s",
        shared.connected.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(a.pid);
    let connected = shared.connected.load(Ordering::Relaxed);

    // Idle: the gateway only pings.
    let hz = 100.0; // USER_HZ on Linux
    let c0 = cpu_ticks(a.pid);
    let i0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let idle_cpu_s = cpu_ticks(a.pid).saturating_sub(c0) as f64 / hz;
    let idle_wall = i0.elapsed().as_secs_f64();
    let heartbeats = connected as f64 * idle_wall * 1000.0 / a.heartbeat_ms as f64;

    if let Some(f) = &a.start_file {
        while !std::path::Path::new(f).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (p0_user, p0_sys) = cpu_split(a.pid);
    let p0 = p0_user + p0_sys;
    let q0 = cpu_ticks(a.push_pid);
    let pt = Instant::now();
    let kill = a.kill_pid.map(|pid| {
        let after = Duration::from_millis(a.kill_after_ms);
        tokio::spawn(kill_and_watch(pid, after, shared.clone()))
    });
    let push = push(&a, connected, &shared).await;
    let (p1_user, p1_sys) = cpu_split(a.pid);
    let push_cpu_s = (p1_user + p1_sys).saturating_sub(p0) as f64 / hz;
    // The kernel's part (system calls, the TCP stack, wake-ups) of it.
    let push_sys_s = p1_sys.saturating_sub(p0_sys) as f64 / hz;
    let push_replica_cpu_s = cpu_ticks(a.push_pid).saturating_sub(q0) as f64 / hz;
    let push_wall = pt.elapsed().as_secs_f64();
    let reconnect_seconds = match kill {
        Some(k) => k.await.ok().flatten(),
        None => None,
    };
    // What the agents' gateway would have spent on heartbeats anyway.
    let idle_share = if idle_wall > 0.0 {
        idle_cpu_s / idle_wall
    } else {
        0.0
    };
    let push_net_s = (push_cpu_s - idle_share * push_wall).max(0.0);
    let mut lat = shared.latencies_us.lock().await.clone();
    lat.sort_unstable();
    let mut rtt: Vec<u64> = push.round_trips_us.iter().map(|(_, r)| *r).collect();
    rtt.sort_unstable();
    if let Some(f) = &a.samples_out {
        let lines = json!({"one_way_us": lat, "round_trip_us": rtt,
                           "sent_at_and_round_trip_us": push.round_trips_us,
                           "base_unix_us": shared.base_unix_us})
        .to_string();
        std::fs::write(f, lines).expect("write --samples-out");
    }

    let per_agent =
        (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / connected.max(1) as f64;
    let out = json!({
        "agents_requested": a.agents,
        "agents_connected": connected,
        "agents_lost": shared.closed.load(Ordering::Relaxed),
        "connect_seconds": (connect_secs * 100.0).round() / 100.0,
        "connects_refused_paced": shared.refused.load(Ordering::Relaxed),
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
        "push_http_errors": push.errors,
        "push_failures": push.failures,
        "push_latency_us_p50": percentile(&lat, 0.50),
        "push_latency_us_p99": percentile(&lat, 0.99),
        "push_latency_us_max": lat.last().copied().unwrap_or(0),
        "ack_round_trip_us_p50": a.wait_ack_ms.map(|_| percentile(&rtt, 0.50)),
        "ack_round_trip_us_p99": a.wait_ack_ms.map(|_| percentile(&rtt, 0.99)),
        "ack_round_trip_us_max": a.wait_ack_ms.map(|_| rtt.last().copied().unwrap_or(0)),
        "push_gateway_cpu_us_each": (push_cpu_s * 1e6 / a.pushes.max(1) as f64).round(),
        "push_gateway_cpu_us_net": (push_net_s * 1e6 / a.pushes.max(1) as f64).round(),
        "push_gateway_sys_us_each": (push_sys_s * 1e6 / a.pushes.max(1) as f64).round(),
        "push_replica_cpu_us_each": a.push_pid.map(|_| (push_replica_cpu_s * 1e6 / a.pushes.max(1) as f64).round()),
        "agents_dropped": shared.dropped.load(Ordering::Relaxed),
        "agents_reconnected": shared.reconnected.load(Ordering::Relaxed),
        "reconnect_seconds": reconnect_seconds,
        "id_prefix": a.id_prefix,
        "push_url": a.push_url.as_deref().unwrap_or(&a.url),
        "push_seconds": (push_wall * 10.0).round() / 10.0,
    });
    println!("{out}");
    tokio::time::sleep(Duration::from_secs(a.linger_secs)).await;
}

struct Pushed {
    /// Posts that did not end as asked (202, or 200 = acked when waiting).
    errors: usize,
    /// (sent at, round trip), µs, in the order they ended.
    round_trips_us: Vec<(u64, u64)>,
    /// What the failed ones got: status code or client error, counted.
    failures: std::collections::BTreeMap<String, usize>,
}

/// Posts instructions to agents at a fixed rate (with `--wait-ack-ms`,
/// each waits for the agent's ack and its round trip is timed).
async fn push(a: &Args, connected: usize, shared: &Arc<Shared>) -> Pushed {
    // Posts waiting for acks hold a connection each: stay under the
    // open-files limit the agents leave (the rest wait here to be sent).
    // (Half of what is left: the client may open a connection while
    // another is being freed.)
    let budget = (open_files_limit().saturating_sub(connected + 100) / 2).max(16);
    let inflight = Arc::new(tokio::sync::Semaphore::new(budget));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(budget)
        .build_http();
    let interval_us = 1_000_000 / a.rate.max(1);
    let mut tick = tokio::time::interval(Duration::from_micros(interval_us));
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let rtts = Arc::new(Mutex::new(Vec::with_capacity(a.pushes)));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let push_url = a.push_url.clone().unwrap_or_else(|| a.url.clone());
    for n in 0..a.pushes {
        tick.tick().await;
        let target = (n * 7919) % connected.max(1);
        let t = shared.base.elapsed().as_micros() as u64;
        let mut body = json!({"payload": {"t": t, "n": n}});
        if let Some(w) = a.wait_ack_ms {
            body["wait_ack_ms"] = w.into();
        }
        let req = hyper::Request::post(format!(
            "{push_url}/v1/agents/{}{target}/instructions",
            a.id_prefix
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
        let (client, errors, done, rtts) =
            (client.clone(), errors.clone(), done.clone(), rtts.clone());
        let statuses = statuses.clone();
        let inflight = inflight.clone();
        let want = if a.wait_ack_ms.is_some() { 200 } else { 202 };
        tokio::spawn(async move {
            let _permit = inflight.acquire_owned().await;
            let sent = Instant::now();
            match client.request(req).await {
                Ok(r) if r.status().as_u16() == want => {
                    rtts.lock()
                        .await
                        .push((t, sent.elapsed().as_micros() as u64));
                }
                other => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let why = match other {
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(e) => format!("{e:?}").chars().take(300).collect(),
                    };
                    *statuses.lock().await.entry(why).or_insert(0usize) += 1;
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_millis(a.wait_ack_ms.unwrap_or(0) + 10_000);
    while done.load(Ordering::Relaxed) < a.pushes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let errors = errors.load(Ordering::Relaxed) + a.pushes - done.load(Ordering::Relaxed);
    let round_trips_us = rtts.lock().await.clone();
    let failures = statuses.lock().await.clone();
    Pushed {
        errors,
        round_trips_us,
        failures,
    }
}

/// SIGKILLs the agents' replica `after` into the pushes, then times how
/// long until every agent it dropped is connected again elsewhere.
async fn kill_and_watch(pid: u32, after: Duration, shared: Arc<Shared>) -> Option<f64> {
    tokio::time::sleep(after).await;
    let killed = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("could not kill {pid}");
        return None;
    }
    let deadline = killed + Duration::from_secs(120);
    while Instant::now() < deadline {
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > 0 && shared.reconnected.load(Ordering::Relaxed) >= dropped {
            return Some((killed.elapsed().as_secs_f64() * 100.0).round() / 100.0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
