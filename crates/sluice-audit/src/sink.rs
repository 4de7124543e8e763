//! The audit writer task, its sinks, and the disk buffer behind them.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use redis::aio::ConnectionManager;
use sluice_core::config::{AuditConfig, AuditDurability, AuditSinkKind, RedisConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// The `outcome` label of `sluice_audit_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub enum Msg {
    Event(String),
    /// An event whose request waits until it is durable (`durability =
    /// "sync"`): answered once it is written and synced, or buffered.
    Durable(String, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Written to the sink.
    Written,
    /// Put in the disk buffer (sink down, or queue full).
    Buffered,
    /// Could not be written anywhere.
    Lost,
}

/// `sluice_audit_events_total{outcome}`.
#[derive(Clone)]
pub struct Counts(pub Family<OutcomeLabels, Counter>);

impl Default for Counts {
    /// Every outcome's series from the start, at zero: a `rate()` over a
    /// series that appears later misses its first increments.
    fn default() -> Self {
        let family = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["written", "buffered", "lost"] {
            let _ = family.get_or_create(&OutcomeLabels { outcome });
        }
        Self(family)
    }
}

impl Counts {
    pub fn add(&self, o: Outcome, n: u64) {
        let outcome = match o {
            Outcome::Written => "written",
            Outcome::Buffered => "buffered",
            Outcome::Lost => "lost",
        };
        self.0.get_or_create(&OutcomeLabels { outcome }).inc_by(n);
    }
}

/// Events per write to the sink.
const BATCH: usize = 512;
/// How long the writer waits for more events before writing a batch: at
/// 20k requests/s that is ~100 events per write instead of one. With the
/// write itself, an event reaches the sink within ~10 ms of its request's
/// end (the documented bound for `durability = "batched"`).
const LINGER: Duration = Duration::from_millis(5);

pub enum Sink {
    File {
        path: PathBuf,
        file: Option<tokio::fs::File>,
        size: u64,
        max_bytes: u64,
        max_files: u32,
        /// fsync after each write (`durability = "sync"`).
        sync: bool,
        /// The batch's bytes, kept from write to write: a fresh buffer of
        /// a batch's size (~100 KiB at 20k requests/s) came from pages the
        /// allocator had handed back, faulted in again on every write.
        buf: Vec<u8>,
    },
    Redis {
        conn: ConnectionManager,
        stream: String,
        maxlen: Option<u64>,
        timeout: Duration,
    },
    Nats(crate::nats::Nats),
}

impl Sink {
    pub fn new(cfg: &AuditConfig, redis: Option<&RedisConfig>) -> anyhow::Result<Self> {
        Ok(match cfg.sink {
            AuditSinkKind::File => Sink::File {
                path: cfg.path.clone(),
                file: None,
                size: 0,
                max_bytes: cfg.max_file_bytes,
                max_files: cfg.max_files,
                sync: cfg.durability == AuditDurability::Sync,
                buf: Vec::new(),
            },
            AuditSinkKind::Redis => {
                let r =
                    redis.ok_or_else(|| anyhow::anyhow!("[audit] sink = redis needs [redis]"))?;
                Sink::Redis {
                    conn: sluice_core::redis_conn::connect(r).map_err(anyhow::Error::msg)?,
                    stream: cfg.stream.clone(),
                    maxlen: cfg.stream_maxlen,
                    timeout: r.timeout,
                }
            }
            AuditSinkKind::Nats => {
                Sink::Nats(crate::nats::Nats::new(cfg.nats.clone().ok_or_else(
                    || anyhow::anyhow!("[audit] sink = nats without its settings"),
                )?))
            }
        })
    }

    /// Writes every line or fails as a whole (a retry may then write some
    /// twice: delivery is at least once).
    async fn write(&mut self, lines: &[String]) -> io::Result<()> {
        match self {
            Sink::File {
                path,
                file,
                size,
                max_bytes,
                max_files,
                sync,
                buf,
            } => {
                let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
                if *size > 0 && *size + bytes as u64 > *max_bytes {
                    *file = None;
                    rotate(path, *max_files).await?;
                    *size = 0;
                }
                if file.is_none() {
                    let f = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&*path)
                        .await?;
                    *size = f.metadata().await?.len();
                    *file = Some(f);
                }
                buf.clear();
                buf.reserve(bytes);
                for l in lines {
                    buf.extend_from_slice(l.as_bytes());
                    buf.push(b'\n');
                }
                let f = file.as_mut().expect("opened above");
                let r = async {
                    f.write_all(buf).await?;
                    f.flush().await?;
                    if *sync {
                        f.sync_data().await?;
                    }
                    Ok(())
                }
                .await;
                if r.is_err() {
                    // Reopen next time (the file may have been removed).
                    *file = None;
                } else {
                    *size += bytes as u64;
                }
                r
            }
            Sink::Redis {
                conn,
                stream,
                maxlen,
                timeout,
            } => {
                let mut pipe = redis::pipe();
                for l in lines {
                    let cmd = pipe.cmd("XADD").arg(&*stream);
                    if let Some(n) = maxlen {
                        cmd.arg("MAXLEN").arg("~").arg(*n);
                    }
                    cmd.arg("*").arg("event").arg(l.as_str()).ignore();
                }
                match tokio::time::timeout(*timeout * 2, pipe.query_async::<()>(conn)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(io::Error::other(e)),
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "redis timed out")),
                }
            }
            Sink::Nats(n) => n.write(lines).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Sink::File { path, .. } => format!("file {}", path.display()),
            Sink::Redis { stream, .. } => format!("redis stream {stream}"),
            Sink::Nats(n) => n.describe(),
        }
    }
}

/// `path` → `path.1` → `path.2` …, dropping the oldest past `keep`.
async fn rotate(path: &Path, keep: u32) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let _ = tokio::fs::remove_file(numbered(keep)).await;
    for n in (1..keep).rev() {
        let _ = tokio::fs::rename(numbered(n), numbered(n + 1)).await;
    }
    match tokio::fs::rename(path, numbered(1)).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The disk buffer: a JSONL file events are appended to while the sink is
/// down. Replay renames it aside first, so appends never race a replay.
pub struct Spill {
    path: PathBuf,
    replaying: PathBuf,
    lock: Mutex<()>,
}

impl Spill {
    pub fn new(path: PathBuf) -> Self {
        let mut replaying = path.as_os_str().to_owned();
        replaying.push(".replaying");
        Self {
            path,
            replaying: PathBuf::from(replaying),
            lock: Mutex::new(()),
        }
    }

    /// Appends and syncs: once this returns, the events survive a crash.
    pub fn append(&self, lines: &[String]) -> io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut buf = Vec::new();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    fn non_empty(p: &Path) -> bool {
        std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
    }

    pub fn has_data(&self) -> bool {
        Self::non_empty(&self.replaying) || Self::non_empty(&self.path)
    }

    /// The file to replay next: one left from an earlier replay, else the
    /// buffer moved aside.
    fn take(&self) -> io::Result<Option<PathBuf>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if Self::non_empty(&self.replaying) {
            return Ok(Some(self.replaying.clone()));
        }
        if Self::non_empty(&self.path) {
            std::fs::rename(&self.path, &self.replaying)?;
            return Ok(Some(self.replaying.clone()));
        }
        Ok(None)
    }
}

/// Replays the disk buffer into the sink. True when it is empty now.
async fn replay(sink: &mut Sink, spill: &Spill, counts: &Counts) -> bool {
    loop {
        let file = match spill.take() {
            Ok(Some(f)) => f,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "audit buffer cannot be read");
                return false;
            }
        };
        let lines: Vec<String> = match std::fs::File::open(&file) {
            Ok(f) => io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(_) => return false,
        };
        for chunk in lines.chunks(BATCH) {
            if sink.write(chunk).await.is_err() {
                return false;
            }
        }
        counts.add(Outcome::Written, lines.len() as u64);
        tracing::info!(events = lines.len(), sink = %sink.describe(), "audit buffer replayed");
        if let Err(e) = std::fs::remove_file(&file) {
            tracing::warn!(error = %e, "audit buffer replayed but not removed: events may repeat");
            return false;
        }
    }
}

/// The writer: batches events, writes them, and while the sink is down
/// buffers them on disk and retries every `retry`.
pub async fn run(
    mut rx: mpsc::Receiver<Msg>,
    mut sink: Sink,
    spill: Arc<Spill>,
    retry: Duration,
    counts: Counts,
) {
    let mut pending = spill.has_data();
    // Events neither the sink nor the disk buffer took: kept and retried.
    let mut held: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(retry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let mut closed = false;
        tokio::select! {
            msg = rx.recv() => match msg {
                None => closed = true,
                Some(m) => {
                    let deadline = tokio::time::Instant::now() + LINGER;
                    let mut next = Some(m);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Event(l) => batch.push(l),
                            Msg::Durable(l, a) => {
                                batch.push(l);
                                acks.push(a);
                            }
                            Msg::Flush(a) => acks.push(a),
                        }
                        if batch.len() >= BATCH {
                            break;
                        }
                        next = match rx.try_recv() {
                            Ok(m) => Some(m),
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                            // Someone waits: write what has come (a group
                            // commit), don't linger for more.
                            Err(mpsc::error::TryRecvError::Empty) if !acks.is_empty() => None,
                            Err(mpsc::error::TryRecvError::Empty) => {
                                tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                            }
                        };
                    }
                }
            },
            _ = tick.tick(), if pending || !held.is_empty() => {}
        }
        if !held.is_empty() {
            let mut h = std::mem::take(&mut held);
            h.append(&mut batch);
            batch = h;
        }
        if pending {
            pending = !replay(&mut sink, &spill, &counts).await;
        }
        if !batch.is_empty() {
            let written = !pending && sink.write(&batch).await.is_ok();
            if written {
                counts.add(Outcome::Written, batch.len() as u64);
            } else {
                if !pending {
                    tracing::warn!(sink = %sink.describe(), "audit sink unavailable: buffering events on disk");
                }
                pending = true;
                match spill.append(&batch) {
                    Ok(()) => counts.add(Outcome::Buffered, batch.len() as u64),
                    Err(e) => {
                        tracing::error!(error = %e, "audit disk buffer failed: holding events in memory");
                        held = std::mem::take(&mut batch);
                        if held.len() > 1 << 20 {
                            let n = held.len() - (1 << 20);
                            held.drain(..n);
                            counts.add(Outcome::Lost, n as u64);
                        }
                    }
                }
            }
            batch.clear();
        }
        for a in acks.drain(..) {
            let _ = a.send(());
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn file_sink(path: &Path, max_bytes: u64) -> Sink {
        Sink::File {
            path: path.to_owned(),
            file: None,
            size: 0,
            max_bytes,
            max_files: 2,
            sync: true,
            buf: Vec::new(),
        }
    }

    #[tokio::test]
    async fn file_rotates_and_keeps_max_files() {
        let d = tmp("rotate");
        let p = d.join("a.jsonl");
        let mut s = file_sink(&p, 100);
        for i in 0..20 {
            s.write(&[format!("{{\"i\":{i},\"pad\":\"0123456789\"}}")])
                .await
                .unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(read(&p).len() <= 100);
        assert!(!read(&d.join("a.jsonl.1")).is_empty());
        assert!(!read(&d.join("a.jsonl.2")).is_empty());
        assert!(!d.join("a.jsonl.3").exists(), "only max_files kept");
        assert!(read(&p).contains("\"i\":19"));
    }

    #[tokio::test]
    async fn batches_are_written_whole_from_one_kept_buffer() {
        let d = tmp("kept");
        let p = d.join("a.jsonl");
        let mut s = file_sink(&p, 1 << 20);
        let big: Vec<String> = (0..300).map(|i| format!("{{\"i\":{i}}}")).collect();
        s.write(&big).await.unwrap();
        let Sink::File { buf, .. } = &s else {
            unreachable!()
        };
        let at = buf.as_ptr();
        s.write(&["{\"i\":300}".to_string()]).await.unwrap();
        let Sink::File { buf, .. } = &s else {
            unreachable!()
        };
        assert_eq!(buf.as_ptr(), at, "the buffer was made again");
        let text = std::fs::read_to_string(&p).unwrap();
        let want: String = (0..=300).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        assert_eq!(text, want);
    }

    /// What an earlier run left on disk (a replay cut short, and a buffer)
    /// is written first, oldest first, when the writer starts again.
    #[tokio::test]
    async fn a_restart_replays_what_an_earlier_run_buffered() {
        let d = tmp("restart");
        let buf = d.join("buf.jsonl");
        std::fs::write(d.join("buf.jsonl.replaying"), "{\"i\":0}\n{\"i\":1}\n").unwrap();
        std::fs::write(&buf, "{\"i\":2}\n").unwrap();
        let p = d.join("a.jsonl");
        let spill = Arc::new(Spill::new(buf));
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(
            rx,
            file_sink(&p, 1 << 20),
            spill.clone(),
            Duration::from_millis(20),
            Counts::default(),
        ));
        tx.send(Msg::Event("{\"i\":3}".into())).await.unwrap();
        let (a, done) = oneshot::channel();
        tx.send(Msg::Flush(a)).await.unwrap();
        done.await.unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert_eq!(got, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"i\":3}\n");
        assert!(!spill.has_data());
        drop(tx);
        task.await.unwrap();
    }

    /// Events that keep coming over several lingers (each batch written at
    /// its linger's end or when full, the next one begun) are all written,
    /// in order.
    #[tokio::test]
    async fn events_arriving_while_a_batch_lingers_are_all_written_in_order() {
        let d = tmp("linger");
        let p = d.join("a.jsonl");
        let spill = Arc::new(Spill::new(d.join("buf.jsonl")));
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(
            rx,
            file_sink(&p, 1 << 20),
            spill,
            Duration::from_millis(20),
            Counts::default(),
        ));
        let started = std::time::Instant::now();
        for i in 0..1200 {
            tx.send(Msg::Event(format!("{{\"i\":{i}}}"))).await.unwrap();
            if i % 100 == 99 {
                // Several lingers' worth of time, events arriving in each.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let (a, done) = oneshot::channel();
        tx.send(Msg::Flush(a)).await.unwrap();
        done.await.unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        let want: String = (0..1200).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        assert_eq!(got, want);
        assert!(
            started.elapsed() >= 2 * LINGER,
            "the sends took at least two lingers"
        );
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn outage_buffers_then_replays_in_order() {
        let d = tmp("outage");
        let p = d.join("sub/a.jsonl"); // the directory is missing: the sink fails
        let spill = Arc::new(Spill::new(d.join("buf.jsonl")));
        let (tx, rx) = mpsc::channel(4);
        let counts = Counts::default();
        let task = tokio::spawn(run(
            rx,
            file_sink(&p, 1 << 20),
            spill.clone(),
            Duration::from_millis(20),
            counts.clone(),
        ));
        for i in 0..10 {
            tx.send(Msg::Event(format!("{{\"i\":{i}}}"))).await.unwrap();
        }
        let (a, done) = oneshot::channel();
        tx.send(Msg::Flush(a)).await.unwrap();
        done.await.unwrap();
        assert!(spill.has_data());
        std::fs::create_dir_all(d.join("sub")).unwrap(); // the sink is back
        for _ in 0..100 {
            if !spill.has_data() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(Msg::Event("{\"i\":10}".into())).await.unwrap();
        let (a, done) = oneshot::channel();
        tx.send(Msg::Flush(a)).await.unwrap();
        done.await.unwrap();
        let got: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = (0..11).map(|i| format!("{{\"i\":{i}}}")).collect();
        assert_eq!(got, want);
        assert!(!spill.has_data());
        drop(tx);
        task.await.unwrap();
    }
}
