"""The API listener's HTTP/1.1 connections byte by byte: keep-alive,
pipelining, heads and bodies in pieces, `connection: close`, a connection
that turns to other routes or HTTP features half-way (the lean loop hands it
to hyper), bodies that arrive slowly, too large or not at all, idle
connections, and a client that leaves while its request is served."""

import json
import socket
import time

from conftest import MOCK_MODEL, UPSTREAM_KEY, Gateway, proxy_config, wait_for
from test_connections import closed_within

MSGS = [{"role": "user", "content": "hello there"}]
CHAT = json.dumps({"model": "mock-1", "messages": MSGS}).encode()


def post(path, body, *extra, version="HTTP/1.1"):
    head = [f"POST {path} {version}", "host: x", "content-type: application/json",
            f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Conn:
    """One client connection that reads HTTP/1.1 responses as they come."""

    def __init__(self, g, timeout=10):
        host, port = g.url.removeprefix("http://").split(":")
        self.s = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        data = self.s.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _head(self):
        status = int(self._line().split(b" ")[1])
        headers = {}
        while line := self._line():
            k, v = line.split(b":", 1)
            headers.setdefault(k.decode().lower(), []).append(v.strip().decode())
        return status, headers

    def response(self):
        """(status, headers, body, framing) of the next final response."""
        status, headers = self._head()
        while 100 <= status < 200:
            status, headers = self._head()
        if "content-length" in headers:
            assert len(headers["content-length"]) == 1, headers
            assert "transfer-encoding" not in headers, headers
            return status, headers, self._take(int(headers["content-length"][0])), "length"
        assert headers.get("transfer-encoding") == ["chunked"], headers
        body = b""
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                while self._line():
                    pass
                return status, headers, body, "chunked"
            body += self._take(size)
            assert self._take(2) == b"\r\n"

    def closed_within(self, limit):
        """Seconds until the gateway closed the connection, or None."""
        return closed_within(self.s, limit)

    def close(self):
        self.s.close()


def chat_ok(resp):
    status, headers, body, _ = resp
    assert status == 200, body
    assert headers["content-type"] == ["application/json"], headers
    assert len(headers["date"]) == 1 and headers["date"][0].endswith(" GMT"), headers
    reply = json.loads(body)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"], reply
    return reply


def test_pipelined_split_and_streamed_requests_keep_one_connection(tmp_path):
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    c = Conn(g)
    try:
        # Two requests in one write: two answers, in order.
        c.send(post("/v1/chat/completions", CHAT) + post("/v1/chat/completions/", CHAT))
        chat_ok(c.response())
        chat_ok(c.response())
        # A head cut in the middle of its lines, then the body in two.
        raw = post("/v1/chat/completions", CHAT)
        cut = raw.index(b"\r\n\r\n") + 4
        for piece in (raw[:7], raw[7:30], raw[30:cut - 1], raw[cut - 1:cut + 5], raw[cut + 5:]):
            c.send(piece)
            time.sleep(0.05)
        chat_ok(c.response())
        # A stream is chunked and ends, and the connection goes on.
        streamed = json.dumps({"model": "mock-1", "messages": MSGS, "stream": True}).encode()
        c.send(post("/v1/chat/completions", streamed))
        status, headers, body, framing = c.response()
        assert (status, framing) == (200, "chunked"), body
        assert headers["content-type"][0].startswith("text/event-stream")
        events = [l for l in body.decode().split("\n") if l.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3, body
        # An error answer is framed as well, and keeps the connection.
        c.send(post("/v1/chat/completions", b'{"model": "nope", "messages": []}'))
        status, _, body, _ = c.response()
        assert status in (400, 404) and json.loads(body)["error"], body
        c.send(post("/v1/chat/completions", CHAT, "connection: keep-alive"))
        chat_ok(c.response())
        assert c.buf == b""
    finally:
        c.close()
        g.stop()


def test_connection_close_is_honoured_and_answered(tmp_path):
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    try:
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT, "Connection: close"))
        status, headers, body, _ = c.response()
        chat_ok((status, headers, body, None))
        assert headers["connection"] == ["close"], headers
        assert c.closed_within(5) is not None
        c.close()
        # HTTP/1.0 without keep-alive: answered, then closed.
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT, version="HTTP/1.0"))
        status, _, body, _ = c.response()
        assert status == 200, body
        assert c.closed_within(5) is not None
        c.close()
    finally:
        g.stop()


def test_a_connection_turning_to_other_routes_and_features_is_served_throughout(tmp_path):
    g = Gateway(MOCK_MODEL, tmp_path=tmp_path)
    try:
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT))
        chat_ok(c.response())
        c.send(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body, _ = c.response()
        assert status == 200 and any(m["id"] == "mock-1" for m in json.loads(body)["data"]), body
        c.send(post("/v1/chat/completions", CHAT))
        chat_ok(c.response())
        c.close()

        # Expect: 100-continue: the interim answer, then the body.
        c = Conn(g)
        raw = post("/v1/chat/completions", CHAT, "expect: 100-continue")
        cut = raw.index(b"\r\n\r\n") + 4
        c.send(raw[:cut])
        assert c._line().startswith(b"HTTP/1.1 100"), c.buf
        assert c._line() == b""
        c.send(raw[cut:])
        chat_ok(c.response())
        c.close()

        # A chunked request body.
        c = Conn(g)
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        half = len(CHAT) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (CHAT[:half], CHAT[half:]))
        c.send(head + chunks + b"0\r\n\r\n")
        chat_ok(c.response())
        c.send(post("/v1/chat/completions", CHAT))
        chat_ok(c.response())
        c.close()
    finally:
        g.stop()


def test_bodies_slow_large_or_missing_get_the_limits_answers(tmp_path):
    g = Gateway("[server]\nbody_read_timeout_ms = 1000\nmax_body_bytes = 4000\n" + MOCK_MODEL,
                tmp_path=tmp_path)
    try:
        # Half the body now, the rest later: served, and the connection
        # stays in step for the next request.
        c = Conn(g)
        raw = post("/v1/chat/completions", CHAT)
        c.send(raw[:-20])
        time.sleep(0.3)
        c.send(raw[-20:])
        chat_ok(c.response())
        c.send(post("/v1/chat/completions", CHAT))
        chat_ok(c.response())
        c.close()

        # A body declared over the limit: 413, whole or still arriving.
        big = json.dumps({"model": "mock-1", "messages": MSGS, "pad": "x" * 6000}).encode()
        for split in (False, True):
            c = Conn(g)
            raw = post("/v1/chat/completions", big)
            c.send(raw[:300] if split else raw)
            if split:
                time.sleep(0.1)
                c.send(raw[300:])
            status, _, body, _ = c.response()
            assert status == 413 and json.loads(body)["error"], body
            c.close()

        # A body that never arrives whole: 408 after the timeout, not twice it.
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT)[:-10])
        t0 = time.monotonic()
        status, _, body, _ = c.response()
        waited = time.monotonic() - t0
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout", body
        assert 0.9 <= waited < 1.8, waited
        c.close()
    finally:
        g.stop()


def test_a_body_that_came_with_its_head_is_held_to_the_limit(tmp_path):
    """A small body that arrives in the same read as its head is handed to
    the handler as it is (not read again): it is still held to
    max_body_bytes, and the connection stays in step afterwards."""
    g = Gateway("[server]\nmax_body_bytes = 512\n" + MOCK_MODEL, tmp_path=tmp_path)
    try:
        c = Conn(g)
        over = json.dumps({"model": "mock-1", "messages": MSGS, "pad": "x" * 700}).encode()
        assert 512 < len(over) < 1024
        c.send(post("/v1/chat/completions", over))
        status, _, body, _ = c.response()
        assert status == 413, body
        assert json.loads(body)["error"]["code"] == "request_too_large", body
        # Exactly at the limit: served, on the same connection.
        at = json.dumps({"model": "mock-1", "messages": MSGS, "pad": ""}).encode()
        at = at.replace(b'"pad": ""', b'"pad": "' + b"y" * (512 - len(at)) + b'"')
        assert len(at) == 512
        c.send(post("/v1/chat/completions", at))
        chat_ok(c.response())
        c.close()
    finally:
        g.stop()


def test_heads_over_the_limit_and_idle_connections(tmp_path):
    g = Gateway("[server]\nheader_read_timeout_ms = 1000\nmax_header_bytes = 1024\n" + MOCK_MODEL,
                tmp_path=tmp_path)
    try:
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT, "x-pad: " + "p" * 1500))
        status, _, body, _ = c.response()
        assert status == 431 and json.loads(body)["error"], body
        c.close()
        # Headers the handlers never read (an SDK's telemetry, user-agent)
        # still count toward the limit.
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT,
                    "user-agent: " + "u" * 700, "x-stainless-lang: " + "p" * 700))
        status, _, body, _ = c.response()
        assert status == 431 and json.loads(body)["error"], body
        c.close()
        # After an answer, a silent connection is closed after the head timeout.
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT))
        chat_ok(c.response())
        t = c.closed_within(10)
        assert t is not None and t >= 0.8, t
        c.close()
        # A connection kept busy is not: each head gets the whole timeout
        # (three requests over 1.4 s on one connection, 1 s each).
        c = Conn(g)
        for i in range(3):
            if i:
                time.sleep(0.7)
            c.send(post("/v1/chat/completions", CHAT))
            chat_ok(c.response())
        c.close()
        # Half a head, then nothing: closed too.
        c = Conn(g)
        c.send(post("/v1/chat/completions", CHAT)[:40])
        t = c.closed_within(10)
        assert t is not None and t >= 0.8, t
        c.close()
    finally:
        g.stop()


def test_a_client_that_leaves_cancels_its_upstream_call(tmp_path, upstream):
    g = Gateway(proxy_config(upstream.url), tmp_path=tmp_path,
                env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        # Waiting for the answer (the upstream would time out after 1 s).
        c = Conn(g)
        body = json.dumps({"model": "slow-3000", "messages": MSGS}).encode()
        c.send(post("/v1/chat/completions", body))
        time.sleep(0.3)
        c.close()
        cancelled = 'sluice_requests_total{route="/v1/chat/completions",model="slow-3000"'
        wait_for(lambda: any(l.startswith(cancelled) and 'status="499"' in l
                             for l in g.metrics_text().splitlines()),
                 timeout=5, what="a 499 for the request whose client left")
        # Between two events of a stream.
        before = upstream.stats()["cancelled"]
        c = Conn(g)
        body = json.dumps({"model": "drip-50", "messages": MSGS, "stream": True}).encode()
        c.send(post("/v1/chat/completions", body))
        status, headers = c._head()
        assert status == 200 and headers["transfer-encoding"] == ["chunked"], headers
        c._line()
        c.close()
        wait_for(lambda: upstream.stats()["cancelled"] > before, timeout=5, what="upstream cancel")
    finally:
        g.stop()


def test_bodies_of_every_size_reach_the_upstream_byte_for_byte(tmp_path, upstream):
    """Bodies from under a read to past the MiB the loop reads at once,
    whole, in pieces, and pipelined behind a large one, on one connection:
    each reaches the upstream as it was sent (model aside) and the
    connection stays in step. The mock answers with the body it got."""
    g = Gateway(proxy_config(upstream.url), tmp_path=tmp_path,
                env={"SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY})

    def body(n, tag):
        turns = [{"role": "user" if i % 2 == 0 else "assistant",
                  "content": f"{tag} turn {i}: " + "lorem ipsum ünïcode 0123 " * 8}
                 for i in range(max(1, n // 230))]
        return {"model": "gpt-test", "messages": turns}

    def got_upstream():
        sent = json.loads(upstream.last()["body"])
        assert sent["model"] == "upstream-model", sent["model"]
        return sent["messages"]

    c = Conn(g)
    try:
        for n in (500, 3_000, 7_000, 20_000, 300_000, 1_500_000):
            want = body(n, f"whole {n}")
            c.send(post("/v1/chat/completions", json.dumps(want).encode()))
            chat_ok(c.response())
            assert got_upstream() == want["messages"], n
        # The head and part of the body, a pause, the rest.
        for n in (7_000, 300_000):
            want = body(n, f"split {n}")
            raw = post("/v1/chat/completions", json.dumps(want).encode())
            c.send(raw[:len(raw) // 3])
            time.sleep(0.2)
            c.send(raw[len(raw) // 3:])
            chat_ok(c.response())
            assert got_upstream() == want["messages"], n
        # A large body with two more requests right behind it, in one write.
        bodies = [body(n, f"pipelined {n}") for n in (40_000, 2_000, 5_000)]
        c.send(b"".join(post("/v1/chat/completions", json.dumps(b).encode()) for b in bodies))
        for _ in bodies:
            chat_ok(c.response())
        assert got_upstream() == bodies[-1]["messages"]
        assert c.buf == b""
    finally:
        c.close()
        g.stop()
