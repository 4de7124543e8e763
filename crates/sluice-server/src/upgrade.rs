//! Zero-downtime binary upgrade, as Pingora and Envoy do it.
//!
//! With `[server] upgrade_socket = "PATH"`, the running process listens on
//! that Unix socket. A new process started with `sluice serve --upgrade`
//! connects, receives the listening sockets (SCM_RIGHTS), starts serving
//! on them, and says so; the old process then stops accepting, drains what
//! it has in flight (up to `shutdown_grace_ms`) and exits. Both processes
//! accept from the same kernel sockets during the handover, so no
//! connection is refused and none waits in a queue nobody reads.
//!
//! The exchange, one line each way (the first reply carries the sockets):
//! ```text
//! new → old   sluice-upgrade 1 <pid>
//! old → new   listeners api admin          + SCM_RIGHTS [api, admin]
//! new → old   ready
//! old → new   draining
//! ```
//! A new process that fails before `ready` (a bad binary, a port it cannot
//! use) just closes the socket: the old one goes on serving as before.
//! Only the same user may take the sockets over (SO_PEERCRED).

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const HELLO: &str = "sluice-upgrade 1";
/// How long one side waits for the other's next line while handing over.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The listening sockets, as handed over.
pub struct Sockets {
    pub api: std::net::TcpListener,
    pub admin: std::net::TcpListener,
}

/// The new process's side, between receiving the sockets and serving.
pub struct Handover {
    stream: BufReader<UnixStream>,
    path: PathBuf,
}

/// Connects to the running process at `path` and takes its listeners.
pub fn receive(path: &Path) -> anyhow::Result<(Sockets, Handover)> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "--upgrade: no running sluice answers at {} (upgrade_socket)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    (&stream).write_all(format!("{HELLO} {}\n", std::process::id()).as_bytes())?;
    let mut line = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut line)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("--upgrade: reading the running process's answer")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let text = String::from_utf8_lossy(&line[..got.bytes]);
    let text = text.trim_end();
    if text != "listeners api admin" || fds.len() != 2 {
        bail!(
            "--upgrade: the running process at {} refused: {text}",
            path.display()
        );
    }
    let mut fds = fds.into_iter();
    let mut next = || -> anyhow::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::from(fds.next().context("a socket is missing")?);
        l.set_nonblocking(true)?;
        l.local_addr()
            .context("a handed-over socket is not a TCP listener")?;
        Ok(l)
    };
    let sockets = Sockets {
        api: next()?,
        admin: next()?,
    };
    Ok((
        sockets,
        Handover {
            stream: BufReader::new(stream),
            path: path.to_owned(),
        },
    ))
}

impl Handover {
    /// Tells the old process this one is serving, waits until it has
    /// stopped accepting, and takes the upgrade socket over for the next
    /// upgrade.
    pub fn ready(mut self) -> anyhow::Result<std::os::unix::net::UnixListener> {
        self.stream.get_mut().write_all(b"ready\n")?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .context("--upgrade: waiting for the old process to stop accepting")?;
        if line.trim_end() != "draining" {
            bail!("--upgrade: the old process answered '{}'", line.trim_end());
        }
        let _ = std::fs::remove_file(&self.path);
        bind(&self.path)
    }
}

/// Binds the upgrade socket, readable and writable by this user only.
fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {} (upgrade_socket)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Binds the upgrade socket at start. A socket file nobody answers on is
/// left over from a process that died, and replaced; one that answers
/// belongs to a running Sluice, which this start must not take from.
pub fn bind_fresh(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if UnixStream::connect(path).is_ok() {
        bail!(
            "another sluice serves upgrades at {} (upgrade_socket): start with --upgrade to \
             take over from it",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    bind(path)
}

/// The running process's side: answers upgrade requests until one new
/// process has taken the listeners and is serving; returns then (the
/// caller stops accepting and drains). Attempts that fail leave this
/// process serving as before.
pub async fn offer(
    listener: std::os::unix::net::UnixListener,
    fds: Arc<Mutex<[OwnedFd; 2]>>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stream = stream.into_std()?;
        let fds = fds.clone();
        let outcome = tokio::task::spawn_blocking(move || hand_over(stream, &fds)).await;
        match outcome {
            Ok(Ok(pid)) => {
                tracing::info!(new_pid = pid, "upgrade: the new process serves; draining");
                return Ok(());
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade attempt failed; still serving"),
            Err(e) => tracing::warn!(error = %e, "upgrade attempt failed; still serving"),
        }
    }
}

/// One attempt, blocking: returns the new process's pid once it serves.
fn hand_over(stream: UnixStream, fds: &Mutex<[OwnedFd; 2]>) -> anyhow::Result<u32> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let peer = rustix::net::sockopt::socket_peercred(&stream)?;
    let me = rustix::process::getuid();
    if peer.uid != me && !me.is_root() {
        (&stream).write_all(b"refused: not the same user\n")?;
        bail!("refused a process of user {}", peer.uid.as_raw());
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let pid = line
        .trim_end()
        .strip_prefix(HELLO)
        .and_then(|rest| rest.trim().parse::<u32>().ok())
        .with_context(|| format!("not an upgrade request: '{}'", line.trim_end()))?;
    tracing::info!(new_pid = pid, "upgrade: handing the listeners over");
    {
        let fds = fds.lock().expect("fd lock is never poisoned");
        let borrowed = [fds[0].as_fd(), fds[1].as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&borrowed));
        rustix::net::sendmsg(
            reader.get_ref(),
            &[IoSlice::new(b"listeners api admin\n")],
            &mut control,
            SendFlags::empty(),
        )?;
    }
    let stream = reader.get_mut();
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim_end() != "ready" {
        bail!("the new process (pid {pid}) ended before serving");
    }
    reader.get_mut().write_all(b"draining\n")?;
    Ok(pid)
}
