"""Connections an attacker holds open: nothing sent, half an HTTP/2 preface,
a preface and SETTINGS and then nothing, an idle keep-alive; descriptor
exhaustion; the per-address cap. Every one must be closed by the gateway,
and health checks must keep answering."""

import http.client
import json
import resource
import socket
import time

import h2.connection
import h2.events
import httpx

from conftest import MOCK_MODEL, Gateway, wait_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def addr(g, admin=False):
    host, port = (g.admin_url if admin else g.url).removeprefix("http://").split(":")
    return host, int(port)


def closed_within(sock, limit):
    """Seconds until the peer closed `sock` (reading whatever it sends), or
    None if it was still open after `limit` seconds."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    return None


def test_connections_that_send_no_request_are_closed(tmp_path):
    g = Gateway(MOCK_MODEL + "[server]\nheader_read_timeout_ms = 1000\n", tmp_path=tmp_path)
    try:
        silent = socket.create_connection(addr(g))
        half = socket.create_connection(addr(g))
        half.sendall(PREFACE[:10])
        h2 = socket.create_connection(addr(g))
        h2.sendall(PREFACE + EMPTY_SETTINGS)
        keepalive = socket.create_connection(addr(g))
        keepalive.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        for name, s in [("silent", silent), ("half preface", half), ("h2 idle", h2),
                        ("idle keep-alive", keepalive)]:
            # Generous for a loaded machine; without the fix none closes at all.
            t = closed_within(s, 20)
            assert t is not None, f"{name}: still open after 20 s"
            s.close()
        assert g.series('sluice_connections_closed_total{listener="api",reason="no_request"}') >= 2
        assert g.series('sluice_connections_closed_total{listener="api",reason="idle"}') >= 1
        # The gateway still serves.
        assert httpx.get(f"{g.url}/healthz").status_code == 200
    finally:
        g.stop()


def test_an_http2_connection_with_a_stream_open_is_not_idle(tmp_path):
    """A slow stream keeps its HTTP/2 connection however long the head timeout."""

    g = Gateway("""
[server]
header_read_timeout_ms = 800

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 12
token_delay_ms = 200

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
""", tmp_path=tmp_path)
    try:
        s = socket.create_connection(addr(g))
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        body = b'{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"x"}]}'
        conn.send_headers(1, [(":method", "POST"), (":path", "/v1/chat/completions"),
                              (":scheme", "http"), (":authority", "x"),
                              ("content-type", "application/json")])
        conn.send_data(1, body, end_stream=True)
        s.sendall(conn.data_to_send())
        s.settimeout(10)
        got, ended, start = b"", False, time.monotonic()
        while not ended:
            data = s.recv(65536)
            assert data, "the connection closed under an open stream"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    got += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            s.sendall(conn.data_to_send())
        # 12 tokens 200 ms apart outlive the 800 ms idle limit several times.
        assert time.monotonic() - start > 1.6
        assert got.rstrip().endswith(b"data: [DONE]")
        # With the stream done, the connection is idle and closed.
        assert closed_within(s, 20) is not None
    finally:
        g.stop()


def test_descriptor_exhaustion_keeps_health_answering(tmp_path):
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    g = Gateway(MOCK_MODEL + "[server]\nheader_read_timeout_ms = 1000\n", tmp_path=tmp_path,
                preexec_fn=low_limit)
    held = []
    try:
        for _ in range(300):
            held.append(socket.create_connection(addr(g)))
        # The admin listener has its own share of descriptors.
        r = httpx.get(f"{g.admin_url}/healthz", timeout=10)
        assert r.status_code == 200
        # The API answers once its place comes (idle ones are cut after 1 s).
        r = httpx.get(f"{g.url}/healthz", timeout=30)
        assert r.status_code == 200
        g.assert_alive()
        # Backing off, not spinning: a handful of warnings at most.
        assert g.logs().count("accept failed") <= 5, g.logs()[-2000:]
    finally:
        for s in held:
            s.close()
        g.stop()


def test_connections_per_address_are_capped(tmp_path):
    g = Gateway(MOCK_MODEL + "[server]\nmax_connections_per_ip = 2\nheader_read_timeout_ms = 30000\n",
                tmp_path=tmp_path)
    try:
        a = socket.create_connection(addr(g))
        b = socket.create_connection(addr(g))
        wait_for(lambda: g.series('sluice_connections_open{listener="api"}') >= 2, what="2 open")
        c = socket.create_connection(addr(g))
        # Closed at once, long before the 30 s head timeout.
        t = closed_within(c, 10)
        assert t is not None and t < 10
        assert g.series('sluice_connections_closed_total{listener="api",reason="per_ip_limit"}') >= 1
        a.close()
        b.close()
        # Room again.
        wait_for(lambda: httpx.get(f"{g.url}/healthz").status_code == 200, what="healthz")
    finally:
        g.stop()


def test_a_full_listener_evicts_silent_connections_for_new_ones(tmp_path):
    """At max_connections, a new client need not wait out the head timeout
    of a flood of silent connections: the oldest silent one makes room."""
    g = Gateway(MOCK_MODEL + "[server]\nmax_connections = 20\nheader_read_timeout_ms = 60000\n",
                tmp_path=tmp_path)
    held = []
    try:
        for _ in range(40):
            held.append(socket.create_connection(addr(g)))
        t0 = time.monotonic()
        r = httpx.get(f"{g.url}/healthz", timeout=20)
        assert r.status_code == 200
        # Without eviction this waits for the 60 s head timeout.
        assert time.monotonic() - t0 < 15
        assert g.series('sluice_connections_closed_total{listener="api",reason="evicted"}') >= 1
        assert g.series('sluice_connections_open{listener="api"}') <= 20
    finally:
        for s in held:
            s.close()
        g.stop()


def _port(url):
    return int(url.rsplit(":", 1)[1])


def _backlog(port):
    """A listening socket's accept-queue size (`ss`: Send-Q of a LISTEN row)."""
    import subprocess
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[2])


def test_each_listeners_accept_queue_is_listen_backlog(tmp_path):
    """`[server] listen_backlog` sizes both listeners' accept queues (std and
    tokio fix it at 128, so a burst of connects had SYNs dropped and retried
    a second later); the kernel caps it at net.core.somaxconn. Out of range
    is a configuration error."""
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    try:
        assert _backlog(_port(g.url)) == min(4096, somaxconn)
        assert _backlog(_port(g.admin_url)) == min(4096, somaxconn)
    finally:
        g.stop()
    (tmp_path / "b").mkdir()
    g = Gateway(MOCK_MODEL + "[server]\nlisten_backlog = 300\n", tmp_path=tmp_path / "b")
    try:
        assert _backlog(_port(g.url)) == min(300, somaxconn)
        assert httpx.get(f"{g.base_url}/models").status_code == 200
    finally:
        g.stop()
    import subprocess

    from conftest import SLUICE
    bad = tmp_path / "bad.toml"
    bad.write_text(MOCK_MODEL + "[server]\nlisten_backlog = 0\n")
    r = subprocess.run([str(SLUICE), "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "listen_backlog must be between 1 and 65535" in r.stdout + r.stderr


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_an_open_keep_alive_connection_holds_little_memory(tmp_path):
    """What a client's keep-alive connection costs the gateway while it sits
    between requests (the SDKs keep pools of them): its task, its buffers,
    its socket's registration. Anonymous memory only."""
    n = 600
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    g = Gateway(MOCK_MODEL + "[server]\nheader_read_timeout_ms = 120000\n", tmp_path=tmp_path)
    body = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})

    held = []

    def open_many(n):
        for _ in range(n):
            c = http.client.HTTPConnection(*addr(g), timeout=30)
            held.append(c)
            c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            r = c.getresponse()
            assert r.status == 200, r.read()
            r.read()

    def close_all():
        while held:
            held.pop().close()

    try:
        # Warmed up on a few (one-time set-up, metric series), not on as
        # many: memory freed by those would hide what the others take.
        open_many(20)
        close_all()
        wait_for(lambda: g.series('sluice_connections_open{listener="api"}') == 0, what="closed")
        before = rss_anon_kib(g.proc.pid)
        open_many(n)
        wait_for(lambda: g.series('sluice_connections_open{listener="api"}') == n, what="open")
        per = (rss_anon_kib(g.proc.pid) - before) * 1024 / n
        # ~5.1 KB in a debug build (its futures are larger than a release
        # build's); 8.7 KB when the TLS handshake's state sized every
        # plaintext connection's task too (6.4 KB of it in a release build).
        assert per < 7 * 1024, f"{per:.0f} bytes per open connection"
        g.assert_alive()
    finally:
        close_all()
        g.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
