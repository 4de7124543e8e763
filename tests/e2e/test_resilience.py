"""Routing and resilience against mock upstreams that fail, hang, ask us to
wait, or die in the middle of a load run."""

import threading
import time

import httpx
import openai
import pytest

from conftest import DEAD, Gateway, MockUpstream

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def config(ups, extra_models="", provider_timeout_ms=400, **routing):
    routing_lines = "\n".join(f"{k} = {v}" for k, v in routing.items())
    providers = "".join(
        f"""
[[providers]]
name = "u{i}"
kind = "openai"
base_url = "{u.url}/v1"
timeout_ms = {provider_timeout_ms}
connect_timeout_ms = 300
"""
        for i, u in enumerate(ups)
    )
    targets = ", ".join(f'{{ provider = "u{i}", model = "m{i}" }}' for i in range(len(ups)))
    return f"""
[routing]
max_attempts = 3
backoff_base_ms = 1
backoff_max_ms = 5
{routing_lines}
breaker = {{ consecutive_failures = 3, cooldown_ms = 500, half_open_probes = 1, success_threshold = 1 }}
{providers}
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{DEAD.url}/v1"

[[models]]
name = "pool"
targets = [{targets}]

[[models]]
name = "primary"
fallbacks = ["backup"]
targets = [{{ provider = "dead" }}]

[[models]]
name = "backup"
targets = [{{ provider = "u0", model = "backup-model" }}]
{extra_models}
"""


@pytest.fixture
def ups():
    us = [MockUpstream() for _ in range(3)]
    yield us
    for u in us:
        u.stop()


@pytest.fixture
def gw(ups, tmp_path):
    g = Gateway(config(ups), tmp_path=tmp_path)
    yield g
    g.assert_alive()
    g.stop()


def chat(g, model="pool", client=None, **kw):
    c = client or httpx
    return c.post(f"{g.base_url}/chat/completions", json={"model": model, **CHAT}, **kw)


def metric(g, name, **labels):
    from test_cli_and_metrics import value

    return value(g.metrics_text(), name, **labels)


def load(g, total, threads, on_progress=None):
    """Sends `total` requests from `threads` workers; returns status counts."""
    statuses, lock, sent = {}, threading.Lock(), [0]

    def worker():
        with httpx.Client(timeout=10) as c:
            while True:
                with lock:
                    if sent[0] >= total:
                        return
                    sent[0] += 1
                    n = sent[0]
                if on_progress:
                    on_progress(n)
                try:
                    code = chat(g, client=c).status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


def test_one_target_dies_during_load(ups, tmp_path):
    # A head timeout a loaded machine cannot miss: the failures counted here
    # are the dead target's, not slow answers from the live ones.
    gw = Gateway(config(ups, provider_timeout_ms=3000), tmp_path=tmp_path)
    try:
        one_target_dies_during_load(gw, ups)
    finally:
        gw.stop()


def one_target_dies_during_load(gw, ups):
    killed = threading.Event()
    t0 = [0.0]

    def kill_at(n):
        if n == 300 and not killed.is_set():
            killed.set()
            t0[0] = time.monotonic()
            ups[1].stop()

    start = time.monotonic()
    statuses = load(gw, 1500, 8, kill_at)
    elapsed_after_kill = time.monotonic() - t0[0]
    ok = statuses.get(200, 0)
    assert ok / 1500 >= 0.999, statuses
    # After it trips, the dead target only gets probes: one per cooldown (0.5 s),
    # plus the requests that were in flight or picked before the trip.
    failures = metric(gw, "sluice_upstream_attempts_total", model="pool", provider="u1", outcome="failure")
    bound = 3 + 8 + (elapsed_after_kill / 0.5 + 1) * 1
    assert 3 <= failures <= bound, (failures, bound, time.monotonic() - start)
    assert metric(gw, "sluice_target_breaker_state", model="pool", provider="u1") in (1.0, 2.0)
    assert metric(gw, "sluice_target_effective_weight", model="pool", provider="u1") < 1.0
    assert metric(gw, "sluice_target_breaker_state", model="pool", provider="u0") == 0.0


def test_failing_target_gets_only_probe_traffic(gw, ups):
    ups[2].control(fail_rate=1.0, fail_status=500)
    start = time.monotonic()
    statuses = load(gw, 600, 4)
    elapsed = time.monotonic() - start
    assert statuses == {200: 600}, statuses
    seen = ups[2].stats()["requests"]
    # 3 to trip, then at most one probe per 0.5 s cooldown (+ races at the edges).
    assert 3 <= seen <= 3 + 4 + elapsed / 0.5 + 1, (seen, elapsed)
    total = sum(u.stats()["requests"] for u in ups)
    assert total == 600 + ups[2].stats()["failed"]


def test_all_targets_dead_is_a_fast_clear_503(ups, tmp_path):
    g = Gateway(config(ups), tmp_path=tmp_path)
    try:
        for u in ups:
            u.stop()
        codes = [chat(g).status_code for _ in range(6)]
        assert set(codes) <= {502, 503}, codes
        t = time.monotonic()
        r = chat(g)
        if r.status_code == 502:
            # Priming outlasted the 0.5 s cooldown on a slow machine: that was
            # a half-open probe, which failed and opened the breakers again.
            t = time.monotonic()
            r = chat(g)
        # No connection is tried: the breakers are open.
        assert time.monotonic() - t < 1.0
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "no_healthy_target"
        assert "pool" in r.json()["error"]["message"]
    finally:
        g.stop()


def test_retry_after_cools_the_target(gw, ups):
    ups[0].control(fail_rate=1.0, fail_status=429, retry_after="3")
    with httpx.Client() as c:
        for _ in range(12):
            assert chat(gw, client=c).status_code == 200
    assert ups[0].stats()["requests"] == 1, "a target that said Retry-After: 3 was picked again"


def test_single_target_retry_after_is_waited_out(ups, tmp_path):
    extra = """
[[models]]
name = "solo"
targets = [{ provider = "u1", model = "solo" }]
"""
    g = Gateway(config(ups, extra), tmp_path=tmp_path)
    try:
        ups[1].control(fail_next=1, fail_status=429, retry_after="0.3")
        t = time.monotonic()
        r = chat(g, "solo")
        assert r.status_code == 200, r.text
        assert time.monotonic() - t >= 0.3
        assert r.headers["x-sluice-attempts"] == "2"
        # Too long a wait (over max_retry_after, 5 s by default): the 429 is relayed.
        ups[1].control(fail_next=1, fail_status=429, retry_after="60")
        r = chat(g, "solo")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "60"
        assert r.json()["error"]["code"] == "injected"
    finally:
        g.stop()


def test_hanging_target_is_retried_elsewhere_within_timeout(gw, ups):
    ups[0].control(hang_ms=5000)
    ups[1].control(hang_ms=5000)
    t = time.monotonic()
    with httpx.Client() as c:
        for _ in range(3):
            r = chat(gw, client=c)
            assert r.status_code == 200
            assert r.json()["model"] == "m2"
    # Each hanging target costs its 0.4 s timeout, not its 5 s hang.
    assert time.monotonic() - t < 12


def test_slow_first_token_is_retried(ups, tmp_path):
    """A target whose first token is later than ttft_timeout_ms is left for
    the next one: the answer comes from the fast target, on the second
    attempt, long before the slow one would have answered."""
    extra = """
[[models]]
name = "slow-then-fast"
targets = [{ provider = "u0", model = "slow" }]
fallbacks = ["fast"]

[[models]]
name = "fast"
targets = [{ provider = "u2", model = "fast" }]
"""
    g = Gateway(config(ups, extra_models=extra, ttft_timeout_ms=300), tmp_path=tmp_path)
    try:
        ups[0].control(first_chunk_delay_ms=5000)
        client = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
        for _ in range(2):
            t0 = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(model="slow-then-fast", stream=True, **CHAT)
            chunks = list(raw.parse())
            took = time.monotonic() - t0
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "Hello from the mock upstream"
            assert {c.model for c in chunks} == {"fast"}, "answered by the fast target"
            assert raw.headers["x-sluice-attempts"] == "2"
            # Without the deadline the slow target answers after 5 s.
            assert took < 4.0, took
    finally:
        g.stop()


def test_fallback_chain(gw, ups):
    r = chat(gw, "primary")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "backup-model"
    assert ups[0].last()["headers"]["x-request-id"] == r.headers["x-request-id"]


def test_client_deadline_header(gw, ups):
    for u in ups:
        u.control(hang_ms=5000)
    t = time.monotonic()
    r = chat(gw, headers={"x-request-timeout": "0.25"})
    took = time.monotonic() - t
    assert r.status_code == 504
    assert r.json()["error"]["message"] == "request deadline of 250 ms exceeded"
    assert took < 4  # the upstreams hang for 5 s
    assert chat(gw, headers={"x-request-timeout": "soon"}).status_code == 400


def test_client_errors_are_not_retried(gw, ups):
    for u in ups:
        u.control(fail_rate=1.0, fail_status=400)
    r = chat(gw)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "injected"
    assert sum(u.stats()["requests"] for u in ups) == 1
    assert metric(gw, "sluice_target_breaker_state", model="pool", provider="u0") == 0.0


def test_5xx_retried_on_another_target(gw, ups):
    ups[0].control(fail_next=1, fail_status=502)
    ups[1].control(fail_next=1, fail_status=502)
    r = chat(gw)
    assert r.status_code == 200
    assert r.json()["model"] in ("m0", "m1", "m2")
    assert int(r.headers.get("x-sluice-attempts", "1")) == 1 + sum(u.stats()["failed"] for u in ups)
    # Every target fails once: attempts run out and the last upstream answer
    # is relayed as it came.
    for u in ups:
        u.control(fail_next=5, fail_status=502)
    r = chat(gw)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "injected"
    assert sum(u.stats()["failed"] for u in ups) >= 3
