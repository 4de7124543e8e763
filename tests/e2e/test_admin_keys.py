"""Virtual keys managed through the admin API: hashed, validated like the
file's, persisted to keys_file, effective at once."""

import json
import subprocess

import httpx

from conftest import SLUICE, Gateway, key_hash


def cfg(tmp_path, extra=""):
    return f"""
[auth]
keys_file = "{tmp_path / 'keys.json'}"
{extra}

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 2

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "mock-2"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "file-key"
sha256 = "{key_hash('sk-file')}"
"""


def chat(g, token, model="mock-1"):
    return httpx.post(f"{g.base_url}/chat/completions", headers={"authorization": f"Bearer {token}"},
                      json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def test_keys_added_used_limited_removed_and_persisted(tmp_path):
    g = Gateway(cfg(tmp_path), tmp_path=tmp_path)
    admin = g.admin_url
    try:
        listed = httpx.get(f"{admin}/keys").json()["data"]
        assert [(k["name"], k["source"]) for k in listed] == [("file-key", "config")]
        assert "sha256" not in listed[0] and "token" not in listed[0]

        r = httpx.post(f"{admin}/keys", json={"name": "gen", "models": ["mock-1"], "rpm": 2,
                                               "metadata": {"team": "a"}})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert token.startswith("sk-sluice-") and len(token) == len("sk-sluice-") + 32
        assert chat(g, token).status_code == 200
        assert chat(g, token, "mock-2").status_code == 403
        # rpm = 2: the 403 took nothing, so one more is let in, then no more.
        assert chat(g, token).status_code == 200
        assert chat(g, token).status_code == 429
        assert chat(g, "sk-file").status_code == 200

        r = httpx.post(f"{admin}/keys", json={"name": "mine", "token": "sk-mine-123"})
        assert r.status_code == 201 and "token" not in r.json()
        assert chat(g, "sk-mine-123").status_code == 200

        # Checked like [[keys]] in the file.
        bad = [
            ({"name": "gen"}, 409),
            ({"name": "file-key"}, 409),
            ({"name": "x", "token": "sk-file"}, 409),
            ({"name": "x", "models": ["nope"]}, 400),
            ({"name": "x", "rpm": 0}, 400),
            ({"name": "x", "expires_at": "tomorrow"}, 400),
            ({"name": "x", "sha256": "abc"}, 400),
            ({"name": "x", "token": "a", "sha256": "b"}, 400),
            ({"name": "x", "colour": "red"}, 400),
        ]
        for body, status in bad:
            r = httpx.post(f"{admin}/keys", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]
        assert "unknown model 'nope'" in httpx.post(f"{admin}/keys", json={"name": "x", "models": ["nope"]}).text

        stored = (tmp_path / "keys.json").read_text()
        assert "sk-mine-123" not in stored and token not in stored
        assert key_hash("sk-mine-123") in stored

        assert httpx.delete(f"{admin}/keys/gen").status_code == 204
        assert chat(g, token).status_code == 401
        assert httpx.delete(f"{admin}/keys/gen").status_code == 404
        assert httpx.delete(f"{admin}/keys/file-key").status_code == 409
        assert [k["name"] for k in json.loads((tmp_path / "keys.json").read_text())] == ["mine"]
    finally:
        g.stop()
    # A restart loads the kept keys.
    g = Gateway(cfg(tmp_path), tmp_path=tmp_path)
    try:
        assert chat(g, "sk-mine-123").status_code == 200
        assert {k["name"] for k in httpx.get(f"{g.admin_url}/keys").json()["data"]} == {"file-key", "mine"}
    finally:
        g.stop()


def test_admin_token_when_configured(tmp_path):
    g = Gateway(cfg(tmp_path, f'admin_sha256 = "{key_hash("sk-admin")}"'), tmp_path=tmp_path)
    try:
        assert httpx.get(f"{g.admin_url}/keys").status_code == 401
        assert httpx.get(f"{g.admin_url}/keys", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{g.admin_url}/keys", headers={"authorization": "Bearer sk-admin"})
        assert ok.status_code == 200
        # Metrics stay scrapeable without it.
        assert httpx.get(f"{g.admin_url}/metrics").status_code == 200
    finally:
        g.stop()


def test_a_broken_keys_file_stops_the_start(tmp_path):
    (tmp_path / "keys.json").write_text('[{"name": "x", "sha256": "zz"}]')
    p = tmp_path / "sluice.toml"
    p.write_text(cfg(tmp_path))
    r = subprocess.run([str(SLUICE), "serve", "--config", str(p), "--listen", "127.0.0.1:0",
                        "--admin-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "keys_file" in r.stderr and "sha256 must be 64 hex digits" in r.stderr
