//! The `sluice` binary: command line and wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_core::config;

/// mimalloc 2, built without transparent huge pages, behind large blocks
/// mapped on their own (the `mimalloc` feature, on by default; see
/// `sluice-alloc`): ~4.5 % fewer instructions per proxied request than
/// glibc's allocator (`bench/README.md`), and a burst's memory handed back.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: sluice_alloc::Allocator = sluice_alloc::allocator();

#[derive(Parser)]
#[command(name = "sluice", version, about = "A real-time AI agent gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the embedded default configuration unless --config is given).
    Serve {
        /// A TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override server.listen (the API listener), e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override server.admin_listen (metrics and admin API).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Take the listeners over from the running process at
        /// [server] upgrade_socket (zero-downtime upgrade); it drains and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file; print every problem with file:line:col.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Exit 0 when a local Sluice answers 200 at URL (a container's
    /// HEALTHCHECK; the image has no curl). Plain HTTP on loopback only.
    Healthcheck {
        #[arg(default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print the SHA-256 to put in a [[keys]] entry for a client token.
    HashKey {
        /// The token clients will send (read from stdin when omitted).
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Restore the SM4-GCM encrypted fields of audit events (JSONL in, JSONL out).
    Decrypt {
        /// An audit file (stdin when omitted or `-`).
        file: Option<PathBuf>,
        /// Environment variables holding keys (32 hex digits); several for rotated keys.
        #[arg(long = "key-env", default_value = "SLUICE_AUDIT_KEY")]
        key_env: Vec<String>,
        /// Files holding keys (32 hex digits); several for rotated keys.
        #[arg(long = "key-file")]
        key_file: Vec<PathBuf>,
        /// The key id of a single key, when the configuration set `key_id`.
        #[arg(long = "key-id")]
        key_id: Option<String>,
    },
}

fn audit_decrypt(
    file: Option<PathBuf>,
    key_env: Vec<String>,
    key_file: Vec<PathBuf>,
    key_id: Option<String>,
) -> Result<(), String> {
    use sluice_server::audit::{self, cipher::FieldCipher};
    use std::io::{BufRead, Write};
    let mut hexes = Vec::new();
    for name in &key_env {
        if let Ok(v) = std::env::var(name) {
            hexes.push((name.clone(), v));
        }
    }
    for f in &key_file {
        let v = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        hexes.push((f.display().to_string(), v));
    }
    if hexes.is_empty() {
        return Err(format!(
            "no key: set {} or pass --key-file",
            key_env.join(" or ")
        ));
    }
    let keys = hexes
        .iter()
        .map(|(src, hex)| {
            FieldCipher::from_hex(hex, key_id.as_deref()).map_err(|e| format!("{src}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let input: Box<dyn BufRead> = match file.as_ref().filter(|p| p.as_os_str() != "-") {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let plain =
            audit::decrypt_line(&line, &keys).map_err(|e| format!("line {}: {e}", n + 1))?;
        writeln!(out, "{plain}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Audit {
            command:
                AuditCommand::Decrypt {
                    file,
                    key_env,
                    key_file,
                    key_id,
                },
        } => match audit_decrypt(file, key_env, key_file, key_id) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice audit decrypt: {e}");
                ExitCode::from(1)
            }
        },
        Command::Healthcheck { url, timeout_ms } => match healthcheck(&url, timeout_ms) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice healthcheck: {e}");
                ExitCode::from(1)
            }
        },
        Command::HashKey { token } => {
            let token = match token {
                Some(t) => t,
                None => {
                    let mut t = String::new();
                    if std::io::stdin().read_line(&mut t).is_err() {
                        eprintln!("sluice: cannot read the token from stdin");
                        return ExitCode::from(1);
                    }
                    t.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            println!("{}", sluice_core::auth::token_hash_hex(&token));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match config::load_file(&file).and_then(|c| {
            // Every local model loads (operators, shapes, the file itself),
            // every plugin starts with its configuration.
            let mut errors = sluice_server::predict::check(&c);
            errors.extend(sluice_server::plugins::check(&c));
            if errors.is_empty() {
                Ok(c)
            } else {
                Err(config::ConfigErrors(errors))
            }
        }) {
            Ok(c) => {
                println!(
                    "{}: ok ({} providers, {} models)",
                    file.display(),
                    c.providers.len(),
                    c.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
                ExitCode::from(1)
            }
        },
        Command::Serve {
            config: path,
            listen,
            admin_listen,
            upgrade,
        } => {
            // The cgroup's limits size the worker threads and the
            // memory-bound defaults, so they are read before the config.
            let limits = sluice_core::cgroup::Limits::detect();
            if let Some(b) = limits.memory_budget() {
                sluice_core::cgroup::set_memory_budget(b);
            }
            let loaded = match &path {
                Some(p) => config::load_file(p),
                None => config::embedded_default(&|k| std::env::var(k).ok()),
            };
            let cfg = match loaded {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let log_control = match init_logging(&cfg.logging) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(1);
                }
            };
            let workers = match cfg.server.workers {
                0 => limits.workers(),
                n => n,
            };
            // On one core (or a quota of one) a single-threaded scheduler
            // does the same work with no cross-thread wakeups or
            // work-stealing bookkeeping.
            let mut builder = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            // Each worker about to sleep hands back what a burst left in its
            // heap (mimalloc would keep it until the worker's next work).
            #[cfg(feature = "mimalloc")]
            builder.on_thread_park(sluice_alloc::on_worker_park);
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sluice: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            #[cfg(feature = "mimalloc")]
            if workers > 1 {
                runtime.spawn(sweep_after_bursts(workers));
            }
            match runtime.block_on(sluice_server::run(
                cfg,
                log_control,
                sluice_server::Start {
                    config_path: path.clone(),
                    upgrade,
                    listen,
                    admin_listen,
                    cgroup: Some((limits, workers)),
                },
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Once a second, when blocks of 24 KiB or more came and went (a burst of
/// large requests, most often): every worker purges at its next park, and
/// the parked ones are woken to park again. A worker no timer wakes would
/// otherwise keep its share of a burst (what it freed after its last
/// purge, and its blocks other workers freed) until its next work. Tasks
/// spawned on a worker past the first wake a parked worker to take them
/// (which wakes the next when it finds some): a few empty ones reach the
/// parked workers.
#[cfg(feature = "mimalloc")]
async fn sweep_after_bursts(workers: usize) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if sluice_alloc::sweep_after_burst() {
            for _ in 0..=workers {
                tokio::spawn(async {});
            }
        }
    }
}

/// One HTTP/1.0 GET with a deadline: 200 or an error saying what came.
fn healthcheck(url: &str, timeout_ms: u64) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs (the admin listener on loopback)")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|_| format!("'{host}' is not an address:port"))?;
    let t = std::time::Duration::from_millis(timeout_ms.max(1));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, t).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(t))
        .and_then(|()| s.set_write_timeout(Some(t)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("none");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{url}: status {status}"))
    }
}

/// Logs go to stderr (stdout carries the ready line). The level comes from
/// the configuration, or `SLUICE_LOG` / `RUST_LOG` when set, and can be
/// changed at run time through the admin API.
fn init_logging(cfg: &config::LoggingConfig) -> Result<sluice_server::LogControl, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, reload};

    let level = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| cfg.level.clone());
    let filter = EnvFilter::try_new(&level).map_err(|e| format!("log level '{level}': {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let tty = std::io::stderr().is_terminal();
    let json = match cfg.format {
        config::LogFormat::Json => true,
        config::LogFormat::Pretty => false,
        config::LogFormat::Auto => !tty,
    };
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(tty)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(sluice_server::LogControl::new(
        level,
        move |directive: &str| {
            let f = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        },
    ))
}
