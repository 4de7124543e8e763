"""Rate limits shared through a real Redis by two gateway processes, the
fallback when Redis is down, and the per-key limit on open streams."""

import threading
import time

import httpx

from conftest import ClosedPort, Gateway, SilentServer, key_hash, wait_for


def config(redis_url=None, rpm=None, extra="", model_extra="", tokens=2, delay_ms=0):
    """A mock model and key 'team' (token sk-team); `extra` goes in the key's table."""
    redis = f'[redis]\nurl = "{redis_url}"\ntimeout_ms = 300\n' if redis_url else ""
    return f"""
{redis}
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = {tokens}
token_delay_ms = {delay_ms}

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]
{model_extra}

[[keys]]
name = "team"
sha256 = "{key_hash('sk-team')}"
{f'rpm = {rpm}' if rpm else ''}
{extra}
"""


def chat(client, url, stream=False):
    return client.post(f"{url}/v1/chat/completions", headers={"authorization": "Bearer sk-team"},
                       json={"model": "mock-1", "stream": stream,
                             "messages": [{"role": "user", "content": "x"}]})


def test_two_replicas_share_one_limit(tmp_path, redis_server):
    rpm = 120  # a burst of 120, then 2 a second
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(config(redis_server.url, rpm), tmp_path=tmp_path / "a")
    b = Gateway(config(redis_server.url, rpm), tmp_path=tmp_path / "b")
    counts = {"ok": 0, "limited": 0, "other": 0}
    retry_after = []
    lock = threading.Lock()
    stop = time.monotonic() + 4.0

    def hammer(url):
        with httpx.Client() as c:
            while time.monotonic() < stop:
                r = chat(c, url)
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                    elif r.status_code == 429:
                        counts["limited"] += 1
                        retry_after.append(r.headers.get("retry-after"))
                    else:
                        counts["other"] += 1

    try:
        start = time.monotonic()
        threads = [threading.Thread(target=hammer, args=(g.url,)) for g in (a, b) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    finally:
        a.stop()
        b.stop()
    allowed = rpm + rpm / 60 * elapsed
    assert counts["other"] == 0, counts
    assert counts["limited"] > 0, counts
    # Each replica alone would let 120 + 2/s through: together twice that.
    assert abs(counts["ok"] - allowed) <= 0.05 * allowed, (counts, allowed)
    assert all(v and int(v) >= 1 for v in retry_after)


def test_redis_down_falls_back_to_local_counting(tmp_path):
    closed = ClosedPort()
    dead = f"redis://{closed.url}"
    g = Gateway(config(dead, rpm=3), tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            codes = [chat(c, g.url).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429], codes
        assert g.metric('sluice_rate_limit_backend_errors_total{outcome="local"}') >= 5
    finally:
        g.stop()


def test_redis_down_fail_closed_refuses(tmp_path):
    closed = ClosedPort()
    dead = f"redis://{closed.url}"
    g = Gateway(config(dead, rpm=3, extra="[limits]\nfail_open = false\n"), tmp_path=tmp_path)
    try:
        r = chat(httpx, g.url)
        assert r.status_code == 503
        assert "fail_open" in r.json()["error"]["message"]
    finally:
        g.stop()


def test_open_streams_per_key_are_limited(tmp_path):
    # mock-1 streams for ~1 s; mock-long for ~40 s, longer than this test.
    long_model = """
[[providers]]
name = "slow"
kind = "mock"
tokens_per_response = 400
token_delay_ms = 100

[[models]]
name = "mock-long"
targets = [{ provider = "slow" }]
"""
    cfg = config(extra="max_streams = 2", tokens=20, delay_ms=50, model_extra=long_model)
    g = Gateway(cfg, tmp_path=tmp_path)
    h = {"authorization": "Bearer sk-team"}

    def body(model, stream=True):
        return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}

    try:
        c = httpx.Client(timeout=10)
        # Keep the context managers: a collected one closes its response.
        cm_long = c.stream("POST", f"{g.base_url}/chat/completions", json=body("mock-long"), headers=h)
        cm_short = c.stream("POST", f"{g.base_url}/chat/completions", json=body("mock-1"), headers=h)
        long1, short = cm_long.__enter__(), cm_short.__enter__()
        assert long1.status_code == 200 and short.status_code == 200
        third = httpx.post(f"{g.base_url}/chat/completions", json=body("mock-1"), headers=h)
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "concurrency_limit_exceeded"
        # Non-streamed requests are not counted against it.
        plain = httpx.post(f"{g.base_url}/chat/completions", json=body("mock-1", False), headers=h)
        assert plain.status_code == 200
        # A stream read to its end makes room.
        assert "[DONE]" in short.read().decode()
        short.close()
        again = httpx.post(f"{g.base_url}/chat/completions", json=body("mock-1"), headers=h)
        assert again.status_code == 200 and "[DONE]" in again.text
        # Two long streams open: full again.
        cm_long2 = c.stream("POST", f"{g.base_url}/chat/completions", json=body("mock-long"), headers=h)
        long2 = cm_long2.__enter__()
        assert long2.status_code == 200
        assert httpx.post(f"{g.base_url}/chat/completions", json=body("mock-1"),
                          headers=h).status_code == 429
        # A client that walks away in the middle of a stream (it has ~40 s
        # to go) makes room too, once the gateway has seen it leave.
        next(long1.iter_bytes())
        long1.close()
        wait_for(lambda: httpx.post(f"{g.base_url}/chat/completions", json=body("mock-1", True),
                                    headers=h).status_code == 200,
                 timeout=10, what="room after a client left mid-stream")
        assert g.metric('sluice_rate_limited_total{outcome="streams"}') >= 2
        long2.close()
        c.close()
    finally:
        g.stop()


def spend_until_refused(client, url, limit=50):
    for i in range(limit):
        r = chat(client, url)
        if r.status_code != 200:
            return i, r
    raise AssertionError("the budget never ran out")


def test_token_budget_per_key_local(tmp_path):
    # Redis is configured but unreachable: with backend = "local" it is never
    # asked, so no backend error is ever counted.
    closed = ClosedPort()
    dead = f"redis://{closed.url}"
    g = Gateway(config(dead, rpm=1000,
                       extra="budget_tokens = 60\nbudget_period = \"day\"\n[limits]\nbackend = \"local\"\n"),
                tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            first = chat(c, g.url).json()["usage"]["total_tokens"]
            served, refused = spend_until_refused(c, g.url)
        # The budget is checked before a request: the one that crosses it is
        # served, the next is refused.
        assert served + 1 == -(-60 // first), (served, first)
        assert refused.status_code == 429
        err = refused.json()["error"]
        assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
        assert "this day" in err["message"]
        assert g.metric('sluice_rate_limit_backend_errors_total{outcome="local"}') == 0
        assert g.metric('sluice_rate_limit_backend_errors_total{outcome="refused"}') == 0
    finally:
        g.stop()


def test_token_budget_shared_across_replicas(tmp_path, redis_server):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = config(redis_server.url, extra="budget_tokens = 60\n")
    a = Gateway(cfg, tmp_path=tmp_path / "a")
    b = Gateway(cfg, tmp_path=tmp_path / "b")
    try:
        with httpx.Client() as c:
            served, refused = spend_until_refused(c, a.url)
            assert served > 1 and refused.json()["error"]["code"] == "budget_exceeded"
            time.sleep(0.3)  # the last charge is recorded in the background
            r = chat(c, b.url)
            assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        keys = redis_server.client.keys("sluice:budget:team:tokens:month:*")
        assert len(keys) == 1 and int(redis_server.client.get(keys[0])) >= 60
    finally:
        a.stop()
        b.stop()


def test_cost_budget_priced_per_model(tmp_path):
    cfg = f"""
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 2

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]
price_input_per_mtok = 0.0
price_output_per_mtok = 1000000.0   # $1 per output token: $2 a request

[[models]]
name = "free"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "team"
sha256 = "{key_hash('sk-team')}"
budget_usd = 7.0
budget_period = "total"
"""
    g = Gateway(cfg, tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            served, refused = spend_until_refused(c, g.url)
            assert served == 4, served  # $2, $4, $6, then $8 crosses $7
            err = refused.json()["error"]
            assert refused.status_code == 429 and err["code"] == "budget_exceeded"
            assert "$8.00 of $7.00" in err["message"] and "this total" in err["message"]
            # A model with no prices is refused too: the budget is spent.
            r = c.post(f"{g.url}/v1/chat/completions", headers={"authorization": "Bearer sk-team"},
                       json={"model": "free", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 429
    finally:
        g.stop()


def test_a_silent_redis_costs_one_timeout_per_backoff_not_one_per_request(tmp_path):
    # A "Redis" that accepts connections and never answers.
    with SilentServer() as silent:
        g = Gateway(config(f"redis://127.0.0.1:{silent.port}", rpm=1000), tmp_path=tmp_path)
        try:
            with httpx.Client() as c:
                t0 = time.monotonic()
                codes = [chat(c, g.url).status_code for _ in range(20)]
                took = time.monotonic() - t0
            assert codes == [200] * 20
            # timeout_ms = 300: the first request waits it out, the rest count
            # locally during the 1 s back-off (at most one more probe).
            # Without the back-off each request would wait 300 ms: 6 s.
            assert took < 4.5, took
            assert g.metric('sluice_rate_limit_backend_errors_total{outcome="local"}') == 20
        finally:
            g.stop()


def test_a_shared_refusal_names_the_bucket_that_refused(tmp_path, redis_server):
    # The key has room (rpm 100); the model does not (rpm 2): the 429 must
    # name the model, and the key's headers still report the key's bucket.
    g = Gateway(config(redis_server.url, rpm=100, model_extra="rpm = 2"), tmp_path=tmp_path)
    try:
        with httpx.Client() as c:
            codes = [chat(c, g.url) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        msg = codes[2].json()["error"]["message"]
        assert "model 'mock-1'" in msg and "key 'team'" not in msg, msg
        assert codes[0].headers["x-ratelimit-limit-requests"] == "100"
    finally:
        g.stop()
