"""Fixtures that start the real binaries: `sluice` and the mock upstream.

Every process is started on 127.0.0.1 port 0 and tells us its address on its
first stdout line; every test checks at teardown that the gateway is still
alive (no input may crash it).
"""

import json
import shutil
import socket
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("SLUICE_PROFILE", "debug")
SLUICE = Path(os.environ.get("SLUICE_BIN", TARGET / PROFILE / "sluice"))
MOCK_UPSTREAM = Path(os.environ.get("MOCK_UPSTREAM_BIN", TARGET / PROFILE / "mock-upstream"))


def _read_first_line(proc, timeout=30.0):
    """The process's first stdout line, waited for at most `timeout` seconds
    (a process that neither prints nor exits must not hang the suite)."""
    import queue

    got = queue.Queue()
    threading.Thread(target=lambda: got.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = got.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise RuntimeError(f"no ready line within {timeout} s") from None
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"process exited before its ready line: {err}")
    return line.strip()


class MockUpstream:
    def __init__(self):
        self.proc = subprocess.Popen(
            [str(MOCK_UPSTREAM), "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = _read_first_line(self.proc)
        assert line.startswith("listening on "), line
        self.addr = line.removeprefix("listening on ")
        self.url = f"http://{self.addr}"

    def stats(self):
        return httpx.get(f"{self.url}/_stats").json()

    def last(self):
        return httpx.get(f"{self.url}/_last").json()

    def control(self, **faults):
        r = httpx.post(f"{self.url}/_control", json=faults)
        assert r.status_code == 200

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Gateway:
    def __init__(self, config_text=None, tmp_path=None, env=None, extra_args=(), listen="127.0.0.1:0",
                 preexec_fn=None, admin_listen="127.0.0.1:0"):
        # None: the address comes from the configuration file.
        args = [str(SLUICE), "serve"]
        args += ["--listen", listen] if listen else []
        args += ["--admin-listen", admin_listen] if admin_listen else []
        if config_text is not None:
            path = tmp_path / "sluice.toml"
            path.write_text(config_text)
            args += ["--config", str(path)]
        args += list(extra_args)
        full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        full_env.update(env or {})
        self.stderr_path = (tmp_path or Path("/tmp")) / f"sluice-{os.getpid()}-{id(self)}.log"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=full_env,
            preexec_fn=preexec_fn,
        )
        self.ready_line = _read_first_line(self.proc)
        assert self.ready_line.startswith("sluice ready: "), self.ready_line
        words = self.ready_line.split()
        self.url = words[words.index("api") + 1]
        self.admin_url = words[words.index("admin") + 1]
        self.base_url = f"{self.url}/v1"

    def logs(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    def metric(self, series, default=None):
        """The value of one series, e.g. 'sluice_audit_events_total{outcome="buffered"}'.
        A series that is absent fails the test (a misspelt name must not read
        as 0) unless `default` says what absence means here."""
        for line in self.metrics_text().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        if default is None:
            raise AssertionError(f"no series {series} in /metrics")
        return default

    # The same, by the name the connection tests use.
    series = metric

    def metrics_text(self):
        r = httpx.get(f"{self.admin_url}/metrics")
        assert r.status_code == 200
        return r.text

    def assert_alive(self):
        assert self.proc.poll() is None, f"gateway died: {self.logs()}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._stderr.close()


@pytest.fixture(scope="session")
def upstream():
    u = MockUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="session")
def default_gateway(tmp_path_factory):
    g = Gateway(tmp_path=tmp_path_factory.mktemp("default"))
    yield g
    g.assert_alive()
    g.stop()


def proxy_config(upstream_url, **server):
    server_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in server.items())
    return f"""
[server]
{server_lines}

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key = "${{SLUICE_TEST_UPSTREAM_KEY}}"
timeout_ms = 1000
idle_timeout_ms = 400

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{DEAD.url}/v1"
connect_timeout_ms = 500

[[models]]
name = "gpt-test"
targets = [{{ provider = "up", model = "upstream-model" }}]

[[models]]
name = "text-embed"
targets = [{{ provider = "up" }}]

[[models]]
name = "status-429"
targets = [{{ provider = "up" }}]

[[models]]
name = "status-500"
targets = [{{ provider = "up" }}]

[[models]]
name = "status-401"
targets = [{{ provider = "up" }}]

[[models]]
name = "slow-3000"
targets = [{{ provider = "up" }}]

[[models]]
name = "drip-50"
targets = [{{ provider = "up" }}]

[[models]]
name = "drip-2000"
targets = [{{ provider = "up" }}]

[[models]]
name = "reset"
targets = [{{ provider = "up" }}]

[[models]]
name = "dead"
targets = [{{ provider = "dead" }}]
"""


UPSTREAM_KEY = "sk-upstream-secret-4242"

# The built-in mock provider behind one model, "mock-1" (3 tokens a reply).
MOCK_MODEL = """
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 3

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
"""


@pytest.fixture(scope="session")
def proxy_gateway(upstream, tmp_path_factory):
    g = Gateway(
        proxy_config(upstream.url, max_body_bytes=65536),
        tmp_path=tmp_path_factory.mktemp("proxy"),
        env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    yield g
    g.assert_alive()
    g.stop()


def replicas(cfg, tmp_path, n=2):
    """`n` gateways with the same configuration (a Redis in it makes them
    replicas of one cluster), each in its own folder."""
    out = []
    for i in range(n):
        folder = tmp_path / f"replica{i}"
        folder.mkdir()
        out.append(Gateway(cfg, tmp_path=folder))
    return out


def wait_for(pred, timeout=10.0, what="condition"):
    """Polls `pred` until it returns something true; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ClosedPort:
    """A loopback port nothing listens on, for as long as this object lives:
    bound but not listening, so connections to it are refused at once and no
    other process can take it meanwhile (unlike a port found free and let go)."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"

    def close(self):
        self.sock.close()


# A port nothing listens on, reserved for the whole session: "dead" upstreams.
DEAD = ClosedPort()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """A server that accepts TCP connections and never answers: a Redis or
    an OTLP collector that hangs. `with SilentServer() as s: ... s.port`."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for s in self.held:
            s.close()
        self.sock.close()


class RedisServer:
    """A real redis-server (Debian's) on a free loopback port, no persistence.
    It can be stopped and started again on the same port (outage tests)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NatsServer:
    """A real nats-server (Debian's) with JetStream on a free loopback port.
    Its store survives a stop and start on the same port (outage tests)."""

    def __init__(self, store_dir):
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = store_dir
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("nats-server") or "/usr/sbin/nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self):
        """SIGKILL: acknowledgements in flight are lost, stored messages kept."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def nats_server(tmp_path):
    n = NatsServer(tmp_path / "nats-store")
    yield n
    n.stop()


@pytest.fixture
def redis_server():
    r = RedisServer()
    yield r
    r.stop()


def key_hash(token):
    """The sha256 a [[keys]] entry holds for `token`, from `sluice hash-key`."""
    r = subprocess.run([str(SLUICE), "hash-key", token], capture_output=True, text=True, check=True)
    return r.stdout.strip()
