"""The NATS JetStream audit sink: events arrive decryptable, nothing is lost
when nats-server is killed mid-load and restarted, and JetStream drops the
replayed duplicates by message id."""

import asyncio
import json
import os
import subprocess
import threading
import time

import httpx
import nats

from conftest import MOCK_MODEL, SLUICE, Gateway, wait_for

AUDIT_KEY = "00112233445566778899aabbccddeeff"
STREAM = "AUDIT_TEST"
SUBJECT = "audit.events"


def stream_messages(url):
    """Every message in the stream, in order: (headers, event)."""

    async def read():
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(STREAM, seq)
                out.append((dict(m.headers or {}), json.loads(m.data)))
            return out
        finally:
            await nc.close()

    try:
        return asyncio.run(read())
    except Exception:  # the server is down or the stream not made yet
        return None


def config(nats_server, tmp_path):
    return MOCK_MODEL + f"""
[audit]
sink = "nats"
url = "{nats_server.url}"
subject = "{SUBJECT}"
stream = "{STREAM}"
timeout_ms = 500
retry_ms = 200
buffer_path = "{tmp_path / 'audit-buffer.jsonl'}"
encrypt_fields = ["user"]
"""


def test_events_arrive_decryptable_with_the_request_id_as_message_id(tmp_path, nats_server):
    g = Gateway(config(nats_server, tmp_path), tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    try:
        for i in range(3):
            r = httpx.post(f"{g.base_url}/chat/completions",
                           json={"model": "mock-1", "user": f"alice{i}@example.com",
                                 "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text
        r = httpx.post(f"{g.base_url}/chat/completions", headers={"x-request-id": "mine-1"},
                       json={"model": "mock-1", "user": "bob@example.com",
                             "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and len(m) >= 4 and m,
                        what="4 events in the stream")
    finally:
        g.stop()
    assert len(msgs) == 4
    for headers, ev in msgs:
        assert ev["status"] == 200 and ev["model"] == "mock-1"
        assert ev["fields"]["user"]["enc"] == "SM4-GCM"
        if ev.get("client_request_id") is None:
            # The gateway made the request id: it is the message id.
            assert headers["Nats-Msg-Id"] == ev["request_id"]
        else:
            # A client's id may repeat: the event id keeps two requests apart.
            assert headers["Nats-Msg-Id"] == f"mine-1/{ev['id']}"
    raw = "".join(json.dumps(ev) + "\n" for _, ev in msgs)
    assert "example.com" not in raw
    (tmp_path / "from-nats.jsonl").write_text(raw)
    out = subprocess.run([str(SLUICE), "audit", "decrypt", str(tmp_path / "from-nats.jsonl")],
                         capture_output=True, text=True, env={**os.environ, "SLUICE_AUDIT_KEY": AUDIT_KEY})
    assert out.returncode == 0, out.stderr
    users = sorted(json.loads(line)["fields"]["user"] for line in out.stdout.splitlines())
    assert users == ["alice0@example.com", "alice1@example.com", "alice2@example.com", "bob@example.com"]

    # A gateway that crashed after JetStream stored a batch but before its
    # disk buffer was cleared replays the batch at its next start: JetStream
    # drops every replayed event by its message id.
    (tmp_path / "audit-buffer.jsonl").write_text(raw)
    g = Gateway(config(nats_server, tmp_path), tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    try:
        wait_for(lambda: not (tmp_path / "audit-buffer.jsonl").exists()
                 and not (tmp_path / "audit-buffer.jsonl.replaying").exists(), what="the buffer replayed")
        r = httpx.post(f"{g.base_url}/chat/completions", headers={"x-request-id": "after-replay"},
                       json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and any(
            ev.get("client_request_id") == "after-replay" for _, ev in m) and m, what="the next event")
    finally:
        g.stop()
    assert len(msgs) == 5, [ev.get("request_id") for _, ev in msgs]


def test_nats_killed_mid_load_loses_nothing_and_keeps_no_duplicate(tmp_path, nats_server):
    g = Gateway(config(nats_server, tmp_path), tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    sent, failures = [], []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                rid = f"load-{i}"
                r = c.post(f"{g.base_url}/chat/completions", headers={"x-request-id": rid},
                           json={"model": "mock-1", "user": "u", "messages": [{"role": "user", "content": "x"}]})
                if r.status_code != 200:  # the audit sink never fails a request
                    failures.append((rid, r.status_code))
                sent.append(rid)
                i += 1
                time.sleep(0.005)

    t = threading.Thread(target=load)
    try:
        t.start()
        wait_for(lambda: len(sent) >= 50, what="load under way")
        nats_server.kill()
        wait_for(lambda: g.metric('sluice_audit_events_total{outcome="buffered"}') >= 20,
                 what="events buffered while NATS is down")
        nats_server.start()
        time.sleep(1)
        stop.set()
        t.join(timeout=30)
        want = set(sent)
        wait_for(lambda: (m := stream_messages(nats_server.url)) is not None
                 and {ev["client_request_id"] for _, ev in m} >= want, timeout=20,
                 what="every event in the stream")
        msgs = stream_messages(nats_server.url)
        lost = g.metric('sluice_audit_events_total{outcome="lost"}')
    finally:
        stop.set()
        g.stop()
    assert not failures, failures[:5]
    ids = [ev["client_request_id"] for _, ev in msgs]
    assert sorted(ids) == sorted(sent), "every event once: replays were de-duplicated by message id"
    assert len({h["Nats-Msg-Id"] for h, _ in msgs}) == len(msgs)
    assert lost == 0
