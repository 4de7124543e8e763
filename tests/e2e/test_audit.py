"""Audit trail: one event per request, identifiers SM4-GCM encrypted, other
fields PII-redacted, file and Redis Streams sinks, no event lost in an outage;
and prompt redaction before the upstream."""

import json
import os
import subprocess

import httpx
import openai
import pytest

from conftest import MOCK_MODEL, SLUICE, Gateway, wait_for

AUDIT_KEY = "00112233445566778899aabbccddeeff"

MOCK = MOCK_MODEL


def read_events(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# With prompt redaction on, the recorded fields come from the redaction's
# own pass over the body: they must be the same (the client's values, the
# encrypted ones unredacted), `messages` included.
@pytest.mark.parametrize("redact", [False, True], ids=["plain", "with_prompt_redaction"])
def test_file_audit_encrypts_identifiers_and_decrypts_exactly(tmp_path, redact):
    audit = tmp_path / "audit.jsonl"
    cfg = MOCK + f"""
[audit]
path = "{audit}"
fields = ["metadata.note", "metadata.team"]
encrypt_fields = ["user", "metadata.patient_id", "messages"]
"""
    if redact:
        cfg += "[redaction]\nprompts = true\n"
    g = Gateway(cfg, tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    try:
        client = openai.OpenAI(base_url=g.base_url, api_key="unused")
        r = client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "hi, I am carol@example.net"}],
            user="alice@example.com",
            extra_body={"metadata": {"patient_id": 12345, "team": "cardio",
                                     "note": "call +44 20 7946 0958 or bob@example.org"}},
            extra_headers={"x-request-id": "audit-1"},
        )
        assert r.choices[0].message.content
        httpx.post(f"{g.base_url}/chat/completions",
                   json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                   headers={"x-request-id": "audit-2"})
        events = wait_for(lambda: len(read_events(audit)) >= 2 and read_events(audit), what="2 events")
    finally:
        g.stop()
    raw = audit.read_text()
    # No identifier or PII in the clear, anywhere in the file.
    for secret in ["alice@example.com", "12345", "7946", "bob@example.org", "carol@"]:
        assert secret not in raw, secret
    ok, missing = {e["request_id"]: e for e in events}["audit-1"], {e["request_id"]: e for e in events}["audit-2"]
    assert ok["status"] == 200 and ok["model"] == "mock-1" and ok["provider"] == "mock"
    assert ok["input_tokens"] > 0 and ok["output_tokens"] == 3
    assert ok["route"] == "/v1/chat/completions" and ok["latency_ms"] > 0
    f = ok["fields"]
    for name in ["user", "metadata.patient_id"]:
        assert f[name]["enc"] == "SM4-GCM" and f[name]["kid"] and f[name]["nonce"] and f[name]["ct"]
    assert f["user"]["nonce"] != f["metadata.patient_id"]["nonce"]
    assert f["metadata.team"] == "cardio"
    assert f["metadata.note"] == "call [PHONE] or [EMAIL]"
    assert missing["status"] == 404 and missing["error"] == "model_not_found"

    # Someone holding the key gets the original values back, types included.
    out = subprocess.run([str(SLUICE), "audit", "decrypt", str(audit)], capture_output=True,
                         text=True, env={**os.environ, "SLUICE_AUDIT_KEY": AUDIT_KEY})
    assert out.returncode == 0, out.stderr
    restored = {e["request_id"]: e for e in map(json.loads, out.stdout.splitlines())}
    assert restored["audit-1"]["fields"]["user"] == "alice@example.com"
    assert restored["audit-1"]["fields"]["metadata.patient_id"] == 12345
    assert restored["audit-1"]["fields"]["metadata.note"] == "call [PHONE] or [EMAIL]"
    assert restored["audit-1"]["fields"]["messages"] == [
        {"role": "user", "content": "hi, I am carol@example.net"}]

    # The wrong key does not.
    bad = subprocess.run([str(SLUICE), "audit", "decrypt", str(audit)], capture_output=True,
                         text=True, env={**os.environ, "SLUICE_AUDIT_KEY": "ff" * 16})
    assert bad.returncode != 0
    assert "no key with id" in bad.stderr


def test_encrypt_fields_without_a_key_is_a_config_error(tmp_path):
    p = tmp_path / "a.toml"
    text = MOCK + '[audit]\nencrypt_fields = ["user"]\nkey_env = "NO_SUCH_KEY_VAR"\n'
    p.write_text(text)
    line = text.splitlines().index('key_env = "NO_SUCH_KEY_VAR"') + 1
    r = subprocess.run([str(SLUICE), "check-config", str(p)], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "NO_SUCH_KEY_VAR"})
    assert r.returncode == 1
    assert "NO_SUCH_KEY_VAR" in r.stderr and f":{line}:" in r.stderr


def test_redis_stream_sink_outage_loses_no_event(tmp_path, redis_server):
    cfg = MOCK + f"""
[redis]
url = "{redis_server.url}"
timeout_ms = 300

[audit]
sink = "redis"
stream = "audit-test"
buffer_path = "{tmp_path / 'audit-buffer.jsonl'}"
retry_ms = 200
encrypt_fields = ["user"]
"""
    g = Gateway(cfg, tmp_path=tmp_path, env={"SLUICE_AUDIT_KEY": AUDIT_KEY})
    sent = []

    def send(n, prefix):
        for i in range(n):
            rid = f"{prefix}-{i}"
            r = httpx.post(f"{g.base_url}/chat/completions", headers={"x-request-id": rid},
                           json={"model": "mock-1", "user": f"u{i}",
                                 "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text  # the audit sink never fails a request
            sent.append(rid)

    try:
        send(10, "before")
        wait_for(lambda: redis_server.client.xlen("audit-test") == 10, what="10 events in the stream")
        redis_server.stop()
        send(25, "during")
        wait_for(lambda: g.metric('sluice_audit_events_total{outcome="buffered"}') >= 25, what="buffered events")
        redis_server.start()  # empty: no persistence

        def events():
            return [json.loads(f["event"]) for _, f in redis_server.client.xrange("audit-test")]

        wait_for(lambda: {e["client_request_id"] for e in events()} >= set(sent[10:35]), timeout=15,
                 what="the buffer replayed")
        send(5, "after")
        wait_for(lambda: {e["client_request_id"] for e in events()} >= set(sent[10:]), what="30 events")
    finally:
        g.stop()
    # Redis restarted empty (no persistence): what is there now is what was
    # replayed plus what came after; the first 10 were written before it went
    # down. Delivery is at least once: a repeat is the same event (same id).
    got = events()
    by_event = {}
    for e in got:
        by_event.setdefault(e["id"], []).append(e)
    assert all(len({x["client_request_id"] for x in same}) == 1 for same in by_event.values())
    firsts = [same[0]["client_request_id"] for same in by_event.values()]
    assert sorted(firsts) == sorted(sent[10:]), "every event during and after the outage"
    during = [i for i in dict.fromkeys(e["client_request_id"] for e in got) if i.startswith("during")]
    assert during == [f"during-{i}" for i in range(25)], "replayed in order"
    ev = got[0]
    assert ev["fields"]["user"]["enc"] == "SM4-GCM"
    assert not (tmp_path / "audit-buffer.jsonl").exists() or (tmp_path / "audit-buffer.jsonl").stat().st_size == 0


def redacting_config(upstream, redaction):
    """Two models on the mock upstream (`alias` renamed on the way), prompts
    redacted, `redaction` added to the `[redaction]` table."""
    return f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"

[[models]]
name = "gpt-test"
targets = [{{ provider = "up" }}]

[[models]]
name = "alias"
targets = [{{ provider = "up", model = "upstream-model-with-a-longer-name" }}]

[redaction]
prompts = true
{redaction}
"""


def test_prompt_redaction_before_upstream(tmp_path, upstream):
    cfg = redacting_config(upstream, 'custom = [{ name = "mrn", pattern = "MRN-[0-9]{6}" }]')
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        client = openai.OpenAI(base_url=g.base_url, api_key="unused")
        r = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "system", "content": "Patient MRN-123456"},
                      {"role": "user", "content": [
                          {"type": "text", "text": "I'm jane@example.com, card 4111 1111 1111 1111, id 11010519491231002X"}]}],
        )
        assert r.choices[0].message.content is not None
        body = json.dumps(upstream.last())
        for leaked in ["jane@example.com", "4111 1111", "11010519491231002X", "MRN-123456"]:
            assert leaked not in body, leaked
        for tag in ["[EMAIL]", "[CARD]", "[CN_ID]", "[MRN]"]:
            assert tag in body, tag
        # `messages` before `model`: the redacted text moves the model, which
        # the route then renames in place.
        for stream in [False, True]:
            body = json.dumps({"messages": [{"role": "user", "content": "mail jane@example.com, MRN-123456 \u00e9"}],
                               "model": "alias", "stream": stream, "max_tokens": 7})
            r = httpx.post(f"{g.base_url}/chat/completions", content=body,
                           headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert ("data: [DONE]" in r.text) is stream
            sent = json.loads(upstream.last()["body"])
            assert list(sent)[:4] == ["messages", "model", "stream", "max_tokens"], sent
            assert sent["model"] == "upstream-model-with-a-longer-name"
            assert sent["messages"][0]["content"] == "mail [EMAIL], [MRN] \u00e9"
            assert sent["stream"] is stream and sent["max_tokens"] == 7
    finally:
        g.stop()


# An agent resends its conversation with every turn, and the redaction keeps
# what each text came to (`cache_bytes`, 0: off): every turn's body upstream
# must be what a first scan gives, the earlier turns' findings included, with
# texts seen once, twice and many times.
@pytest.mark.parametrize("setting, cached", [("", True), ("cache_bytes = 0", False)],
                         ids=["cached", "uncached"])
def test_prompt_redaction_of_a_resent_conversation(tmp_path, upstream, setting, cached):
    g = Gateway(redacting_config(upstream, setting), tmp_path=tmp_path)
    try:
        client = openai.OpenAI(base_url=g.base_url, api_key="unused")
        system = "You help the on-call team. Escalations go to oncall@example.com, never to customers."
        messages = [{"role": "system", "content": system}]
        clean = "Thanks, that is all for the retry counts of the EU pool; summarise the rest briefly."
        for turn in range(6):
            messages.append({"role": "user", "content":
                             f"Turn {turn}: customer {turn}.doe@example.com called from +44 20 7946 09{turn:02} "
                             f"about card 4111 1111 1111 1111 and ticket 8821{turn}."})
            if turn % 2:
                messages.append({"role": "user", "content": clean})
            for _ in range(2):
                r = client.chat.completions.create(model="gpt-test", messages=messages)
                assert r.choices[0].message.content is not None
                sent = json.loads(upstream.last()["body"])["messages"]
                assert len(sent) == len(messages)
                assert sent[0]["content"] == system.replace("oncall@example.com", "[EMAIL]")
                for i, m in enumerate(sent[1:], 1):
                    text = messages[i]["content"]
                    if messages[i]["role"] == "assistant":
                        continue
                    if text == clean:
                        assert m["content"] == clean
                        continue
                    t = text.split(":")[0]
                    assert m["content"] == (f"{t}: customer [EMAIL] called from [PHONE] about card [CARD] "
                                            f"and ticket {text.split('ticket ')[1]}"), m
            messages.append({"role": "assistant", "content": r.choices[0].message.content})
        hits = g.metric("sluice_redaction_cache_hits_total")
        misses = g.metric("sluice_redaction_cache_misses_total")
        kept = g.metric("sluice_redaction_cache_bytes")
        if cached:
            # Each text is scanned on its first two sightings, then found:
            # the system prompt, and every earlier turn, twice per turn.
            assert misses > 0 and hits > misses, (hits, misses)
            assert kept > len(system)
            assert g.metric("sluice_redaction_cache_hits_total") == hits, "a scrape counts once"
        else:  # cache_bytes = 0: no cache, nothing counted
            assert (hits, misses, kept) == (0, 0, 0)
    finally:
        g.stop()
