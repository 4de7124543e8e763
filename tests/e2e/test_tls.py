"""TLS termination (with reload on change), TLS to an upstream behind a
private CA, and the slow-client limits around them."""

import http.server
import json
import socket
import ssl
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import Gateway, MOCK_MODEL, wait_for

MOCK = MOCK_MODEL


def make_cert(dir, name):
    cert, key = dir / f"{name}.pem", dir / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def make_ca_and_leaf(dir):
    """A private CA and a server certificate it signed (webpki, rightly,
    does not accept a CA certificate as a server's own)."""
    ca_cert, ca_key = make_cert(dir, "ca")
    key, csr, cert = dir / "leaf.key", dir / "leaf.csr", dir / "leaf.pem"
    ext = dir / "leaf.ext"
    ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca_cert, cert, key


def served_cert_der(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def ca(pem_path):
    return ssl.create_default_context(cafile=str(pem_path))


def der(pem_path):
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


def test_tls_termination_and_reload(tmp_path):
    cert, key = make_cert(tmp_path, "one")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    cfg = f"""
[server]
tls_cert_file = "{live_cert}"
tls_key_file = "{live_key}"
tls_reload_ms = 100
header_read_timeout_ms = 500
""" + MOCK
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        assert g.url.startswith("https://127.0.0.1:")
        port = int(g.url.rsplit(":", 1)[1])
        client = openai.OpenAI(base_url=g.base_url, api_key="unused",
                               http_client=httpx.Client(verify=ca(cert)))
        r = client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
        # ALPN offers HTTP/2 and HTTP/1.1, and a client that asks for h2 gets it.
        with httpx.Client(verify=ca(cert)) as c:
            assert c.get(f"{g.url}/healthz").status_code == 200
        for offered, chosen in [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]:
            ctx = ca(cert)
            ctx.set_alpn_protocols(offered)
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                    assert t.selected_alpn_protocol() == chosen
        # Plain HTTP to the TLS port is not served.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

        # A renewed pair: written key first, so for a moment they do not
        # match — the old certificate keeps serving until both are there.
        cert2, key2 = make_cert(tmp_path, "two")
        live_key.write_bytes(key2.read_bytes())
        # The reloader has seen the mismatched pair (and said so) ...
        wait_for(lambda: "TLS certificate not reloaded" in g.logs(), what="the broken pair logged")
        # ... and the old certificate still serves.
        assert served_cert_der(port) == der(cert), "a mismatched pair is not loaded"
        live_cert.write_bytes(cert2.read_bytes())
        deadline = time.monotonic() + 5
        while served_cert_der(port) != der(cert2):
            assert time.monotonic() < deadline, "the new certificate was not loaded"
            time.sleep(0.05)
        with httpx.Client(verify=ca(cert2)) as c:
            assert c.get(f"{g.url}/healthz").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{g.url}/healthz", verify=ca(cert))

        # A client that opens TCP and never handshakes is cut off.
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(30)
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - t0 < 20
        s.close()
        assert "TLS certificate reloaded" in g.logs()
    finally:
        g.stop()


def test_tls_config_problems(tmp_path):
    import subprocess as sp

    from conftest import SLUICE

    p = tmp_path / "t.toml"
    p.write_text(f'[server]\ntls_cert_file = "{tmp_path}/missing.pem"\n' + MOCK)
    r = sp.run([str(SLUICE), "check-config", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and "t.toml:2:17: tls_cert_file and tls_key_file go together" in r.stderr
    p.write_text(f'[server]\ntls_cert_file = "{tmp_path}/missing.pem"\n'
                 f'tls_key_file = "{tmp_path}/missing.key"\n' + MOCK)
    r = sp.run([str(SLUICE), "check-config", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("cannot be read") == 2, r.stderr


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": "private",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "over private TLS"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_upstream_behind_a_private_ca(tmp_path):
    ca_cert, cert, key = make_ca_and_leaf(tmp_path)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{srv.server_address[1]}/v1"
    cfg = f"""
[[providers]]
name = "private"
kind = "openai"
base_url = "{url}"
ca_file = "{ca_cert}"

[[providers]]
name = "public-roots-only"
kind = "openai"
base_url = "{url}"

[[models]]
name = "trusted"
targets = [{{ provider = "private" }}]

[[models]]
name = "untrusted"
targets = [{{ provider = "public-roots-only" }}]
max_attempts = 1
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        body = {"messages": [{"role": "user", "content": "x"}]}
        ok = httpx.post(f"{g.base_url}/chat/completions", json={**body, "model": "trusted"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] == "over private TLS"
        bad = httpx.post(f"{g.base_url}/chat/completions", json={**body, "model": "untrusted"})
        assert bad.status_code in (502, 503), bad.text
        assert "certificate" in bad.text.lower() or "unreachable" in bad.text.lower()
    finally:
        g.stop()
        srv.shutdown()


def test_slow_body_gets_408(tmp_path):
    g = Gateway("[server]\nbody_read_timeout_ms = 500\n" + MOCK, tmp_path=tmp_path)
    try:
        port = int(g.url.rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 100\r\n\r\n{\"model\":")
        s.settimeout(10)
        t0 = time.monotonic()
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            if length and len(rest) >= length[0]:
                break
        waited = time.monotonic() - t0
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data
        err = json.loads(body)["error"]
        assert err["code"] == "request_timeout" and "500 ms" in err["message"], err
        # Not before the limit; the upper bound only guards against a hang.
        assert waited >= 0.45, waited
        s.close()
    finally:
        g.stop()
