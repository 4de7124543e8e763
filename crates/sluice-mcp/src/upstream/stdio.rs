//! A tool server as a child process: newline-delimited JSON-RPC on its
//! stdin and stdout, its stderr logged line by line.

use std::process::Stdio as Pipe;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::router::{Inbound, Router};
use sluice_core::secret::Secret;

/// Messages waiting to be written to the child.
const WRITE_QUEUE: usize = 1024;

pub struct Stdio {
    tx: mpsc::Sender<Vec<u8>>,
    pub pid: Option<u32>,
}

impl Stdio {
    /// Starts the child and the tasks that read and write it. The child is
    /// returned to the caller, who waits on it and kills it.
    pub fn spawn(
        name: &str,
        (command, env, cwd): (&[String], &[(String, Secret)], Option<&std::path::Path>),
        router: Arc<Router>,
        max_line: usize,
    ) -> std::io::Result<(Self, Child)> {
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .envs(env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Pipe::piped())
            .stdout(Pipe::piped())
            .stderr(Pipe::piped())
            .kill_on_drop(true);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write(stdin, rx));
        tokio::spawn(read(stdout, router, tx.clone(), max_line as u64));
        tokio::spawn(log_stderr(name.to_owned(), stderr));
        Ok((Self { tx, pid }, child))
    }

    /// Queues one message for the child; `false` when it is gone or the
    /// queue is full.
    pub fn send(&self, msg: &Value) -> bool {
        let mut line = serde_json::to_vec(msg).expect("a message serializes");
        line.push(b'\n');
        self.tx.try_send(line).is_ok()
    }
}

async fn write(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

async fn read(
    stdout: tokio::process::ChildStdout,
    router: Arc<Router>,
    tx: mpsc::Sender<Vec<u8>>,
    max_line: u64,
) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::with_capacity(8 << 10);
    let why = loop {
        buf.clear();
        match (&mut reader)
            .take(max_line + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => break "its stdout closed (exited)".to_owned(),
            Ok(n) if n as u64 > max_line => break format!("a message over {max_line} bytes"),
            Ok(_) => {}
            Err(e) => break format!("reading its stdout: {e}"),
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            tracing::debug!(target: "sluice::mcp", line = %String::from_utf8_lossy(line), "not JSON on a tool server's stdout");
            continue;
        };
        if let Inbound::Answer(a) = router.dispatch(v) {
            let mut out = serde_json::to_vec(&a).expect("a message serializes");
            out.push(b'\n');
            let _ = tx.try_send(out);
        }
    };
    router.closed(why);
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "sluice::mcp", server = %name, "stderr: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::router::Event;
    use std::time::Duration;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_line_over_the_limit_closes_the_connection() {
        let (etx, mut events) = mpsc::unbounded_channel();
        let router = Arc::new(Router::new("big", etx));
        let cmd = sh("printf '%02000d\\n' 0; sleep 5");
        let (_s, _child) = Stdio::spawn("big", (&cmd, &[], None), router, 1000).unwrap();
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Closed(why))) => assert!(why.contains("over 1000 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_are_written_and_answers_read_back() {
        let (etx, _events) = mpsc::unbounded_channel();
        let router = Arc::new(Router::new("cat", etx));
        // An echo server of sorts: answers each request line with a result.
        let cmd = sh(
            r#"while read -r l; do id=$(echo "$l" | sed 's/.*"id":\([0-9]*\).*/\1/'); echo "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"ok\":$id}}"; done"#,
        );
        let (s, _child) = Stdio::spawn("cat", (&cmd, &[], None), router.clone(), 1 << 20).unwrap();
        let (id, rx) = router.register(&mut None, None);
        assert!(s.send(&crate::rpc::request(&serde_json::json!(id), "ping", None)));
        let r = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r["ok"], id);
    }
}
