"""Bad input: clear OpenAI-shaped errors with truthful statuses, never a crash."""

import socket

import httpx
import pytest


def post(g, body, path="/v1/chat/completions", **kw):
    return httpx.post(f"{g.url}{path}", content=body, **kw)


def assert_error(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert err["code"] == code
    return err


def test_malformed_json_names_line_and_column(proxy_gateway):
    err = assert_error(post(proxy_gateway, '{\n "model": "gpt-test",\n oops\n}'), 400, "invalid_json")
    assert "line 3 column 2" in err["message"]


@pytest.mark.parametrize(
    "body,param",
    [
        ('{"messages":[{"role":"user","content":"x"}]}', "model"),
        ('{"model":"gpt-test"}', "messages"),
        ('{"model":"gpt-test","messages":[]}', "messages"),
        ('{"model":5,"messages":[{"role":"user","content":"x"}]}', "model"),
    ],
)
def test_missing_or_wrong_fields_are_400(proxy_gateway, body, param):
    err = assert_error(post(proxy_gateway, body), 400, "invalid_request")
    assert err["param"] == param


def test_non_object_bodies_are_400(proxy_gateway):
    for body in ["", "[]", "null", "\"x\"", "\x00\xff"]:
        assert_error(post(proxy_gateway, body), 400, "invalid_json")


def test_embeddings_need_input(proxy_gateway):
    err = assert_error(post(proxy_gateway, '{"model":"text-embed"}', "/v1/embeddings"), 400, "invalid_request")
    assert err["param"] == "input"


def test_unknown_model_is_404(proxy_gateway):
    err = assert_error(post(proxy_gateway, '{"model":"nope","messages":[{"role":"user","content":"x"}]}'), 404, "model_not_found")
    assert "nope" in err["message"]


def test_body_over_limit_is_413(proxy_gateway):
    big = '{"model":"gpt-test","messages":[{"role":"user","content":"' + "x" * 70000 + '"}]}'
    err = assert_error(post(proxy_gateway, big), 413, "request_too_large")
    assert "65536" in err["message"]


def test_chunked_body_over_limit_is_413(proxy_gateway):
    def gen():
        yield b'{"model":"gpt-test","messages":["'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"]}'

    assert_error(post(proxy_gateway, gen()), 413, "request_too_large")


def test_unknown_route_and_wrong_method(proxy_gateway):
    assert_error(httpx.get(f"{proxy_gateway.url}/v2/nothing"), 404, "not_found")
    assert_error(httpx.get(f"{proxy_gateway.url}/v1/chat/completions"), 405, "method_not_allowed")


def test_oversized_headers_are_rejected(proxy_gateway):
    # Over max_header_bytes (64 KiB): the gateway's own JSON answer.
    r = httpx.get(f"{proxy_gateway.url}/healthz", headers={"x-big": "a" * 100_000})
    assert r.status_code == 431
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "headers_too_large" and "max_header_bytes" in err["message"]
    # Far over it (past twice the limit), hyper refuses before any parsing.
    r = httpx.get(f"{proxy_gateway.url}/healthz", headers={"x-big": "a" * 200_000})
    assert r.status_code == 431


def test_too_many_headers_are_rejected(proxy_gateway):
    # hyper's fixed cap of 100 headers per request (small, all under the size limit).
    many = {f"x-h{i}": "v" for i in range(120)}
    assert httpx.get(f"{proxy_gateway.url}/healthz", headers=many).status_code == 431
    few = {f"x-h{i}": "v" for i in range(50)}
    assert httpx.get(f"{proxy_gateway.url}/healthz", headers=few).status_code == 200


def test_garbage_on_the_socket_does_not_hurt(proxy_gateway):
    host, port = proxy_gateway.url.removeprefix("http://").split(":")
    for payload in [b"\x16\x03\x01\x00\xff garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"]:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            data = s.recv(4096)
            assert data == b"" or data.startswith(b"HTTP/1.1 4"), data
    proxy_gateway.assert_alive()
    assert httpx.get(f"{proxy_gateway.url}/healthz").status_code == 200


def test_slow_header_client_is_cut_off(tmp_path):
    import time

    from conftest import Gateway

    g = Gateway("[server]\nheader_read_timeout_ms = 500\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n"
                "[[models]]\nname = \"mock-1\"\ntargets = [{ provider = \"m\" }]\n", tmp_path=tmp_path)
    try:
        host, port = g.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(0.1)
            t = time.monotonic()
            closed_after = None
            # Trickle a header byte every 100 ms, never finishing the head.
            while time.monotonic() - t < 3:
                try:
                    s.sendall(b"X")
                    data = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_after = time.monotonic() - t
                    break
        assert closed_after is not None, "the slow client was never cut off"
        assert 0.3 <= closed_after < 10, closed_after
        # An idle keep-alive connection is closed after the same time.
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            t = time.monotonic()
            assert s.recv(4096) == b""
            assert 0.3 <= time.monotonic() - t < 10
        g.assert_alive()
        assert httpx.get(f"{g.url}/healthz").status_code == 200
    finally:
        g.stop()
