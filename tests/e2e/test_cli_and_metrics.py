"""The command line (check-config) and the admin listener's metrics."""

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, SLUICE, Gateway


def test_check_config_accepts_examples():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        r = subprocess.run([str(SLUICE), "check-config", str(path)], capture_output=True, text=True,
                           env={"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "PATH": "/usr/bin:/bin",
                                "SLUICE_AUDIT_KEY": "000102030405060708090a0b0c0d0e0f"})
        assert r.returncode == 0, r.stderr
        assert ": ok (" in r.stdout


def test_check_config_reports_every_problem_located(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nlisten = "localhost"\n\n[[providers]]\nname = "p"\nkind = "openai"\n'
        'api_key = "${SLUICE_SURELY_UNSET_VAR}"\n\n[[models]]\nname = "m"\n'
        'targets = [{ provider = "ghost" }]\n'
    )
    r = subprocess.run([str(SLUICE), "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert f"{bad}:2:10: listen: 'localhost' is not an IP:port address" in lines
    assert f"{bad}:7:11: environment variable 'SLUICE_SURELY_UNSET_VAR' is not set" in lines
    assert f"{bad}:11:25: target names unknown provider 'ghost'" in lines
    assert lines[-1] == f"{bad}: 3 problem(s)"


def test_serve_refuses_invalid_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbogus = 1\n")
    r = subprocess.run([str(SLUICE), "serve", "--config", str(bad)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert f"{bad}:2:1:" in r.stderr


def test_the_binary_allocates_with_mimalloc_without_huge_pages(tmp_path):
    # mimalloc 2 (the `mimalloc` feature, on by default): its verbose
    # start-up names its version.
    r = subprocess.run([str(SLUICE), "--version"], capture_output=True, text=True, timeout=20,
                       env={"PATH": "/usr/bin:/bin", "MIMALLOC_VERBOSE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sluice ")
    assert "mimalloc: v2." in r.stderr, r.stderr[:500]
    # Built `no_thp`: it does not ask for transparent huge pages. mimalloc 3,
    # which asks (granted in the kernel's `madvise` mode, Debian's default),
    # got 14 MiB of them at start: an idle gateway peaked at 32 MiB, not 12.
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[madvise]" not in thp.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")
    g = Gateway(tmp_path=tmp_path)
    try:
        for _ in range(3):
            r = httpx.post(f"{g.base_url}/chat/completions",
                           json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        rollup = Path(f"/proc/{g.proc.pid}/smaps_rollup").read_text()
        huge = next(line for line in rollup.splitlines() if line.startswith("AnonHugePages:"))
        assert huge.split()[1] == "0", huge
    finally:
        g.stop()


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(text, name, default=None, **labels):
    """One sample's value. An absent series fails the test (a misspelt name
    must not read as 0) unless `default` says what absence means: a counter
    read before its first event."""
    for s in samples(text).get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    if default is None:
        raise AssertionError(f"no sample {name}{labels} in /metrics")
    return default


def test_metrics_parse_and_move(proxy_gateway):
    labels = dict(route="/v1/chat/completions", model="gpt-test", provider="up", status="200")
    before = proxy_gateway.metrics_text()
    n0 = value(before, "sluice_requests_total", default=0.0, **labels)
    t0 = value(before, "sluice_tokens_total", default=0.0, model="gpt-test", provider="up", kind="output")
    for _ in range(3):
        r = httpx.post(f"{proxy_gateway.base_url}/chat/completions",
                       json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
    r = httpx.post(f"{proxy_gateway.base_url}/chat/completions",
                   json={"model": "status-500", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500
    after = proxy_gateway.metrics_text()
    assert value(after, "sluice_requests_total", **labels) == n0 + 3
    assert value(after, "sluice_request_duration_seconds_count", **labels) >= n0 + 3
    assert value(after, "sluice_tokens_total", model="gpt-test", provider="up", kind="output") == t0 + 15
    assert value(after, "sluice_requests_total", model="status-500", status="500") >= 1
    assert "sluice_active_requests" in samples(after)


def test_genai_runtime_and_process_metrics(proxy_gateway):
    base = proxy_gateway.base_url
    before = proxy_gateway.metrics_text()
    genai = dict(gen_ai_operation_name="chat", gen_ai_request_model="gpt-test", gen_ai_provider_name="up")
    n0 = value(before, "gen_ai_client_token_usage_count", default=0.0, gen_ai_token_type="output", **genai)
    s0 = value(before, "gen_ai_server_time_to_first_token_seconds_count", default=0.0, **genai)
    o0 = value(before, "sluice_gateway_overhead_seconds_count", default=0.0, **genai)
    with httpx.stream("POST", f"{base}/chat/completions",
                      json={"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200
        r.read()
    r = httpx.post(f"{base}/chat/completions", json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    after = proxy_gateway.metrics_text()
    assert value(after, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **genai) == n0 + 2
    assert value(after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) > 0
    assert value(after, "gen_ai_server_time_to_first_token_seconds_count", **genai) == s0 + 1
    assert value(after, "gen_ai_server_time_per_output_token_seconds_count", **genai) >= 1
    assert value(after, "gen_ai_client_operation_duration_seconds_count", **genai) >= 2
    assert value(after, "gen_ai_server_request_duration_seconds_count", **genai) >= 2
    assert value(after, "sluice_gateway_overhead_seconds_count", **genai) == o0 + 2
    # Overhead excludes the upstream call: it is a small part of the total.
    assert value(after, "sluice_gateway_overhead_seconds_sum", **genai) < value(
        after, "gen_ai_server_request_duration_seconds_sum", **genai)
    assert value(after, "sluice_active_streams") == 0
    assert value(after, "process_resident_memory_bytes") > 1_000_000
    assert value(after, "process_open_fds") > 0
    assert value(after, "tokio_workers") >= 1
    assert value(after, "tokio_alive_tasks") >= 1


def test_grafana_dashboard_uses_only_metrics_that_exist(proxy_gateway):
    import json
    import re

    dash = json.loads((ROOT / "deploy/grafana/sluice.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 16
    # Make every series family appear: a request, a stream, an error.
    base = proxy_gateway.base_url
    with httpx.stream("POST", f"{base}/chat/completions",
                      json={"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        r.read()
    httpx.post(f"{base}/chat/completions", json={"model": "dead", "messages": [{"role": "user", "content": "x"}]})
    with httpx.stream("POST", f"{base}/chat/completions",
                      json={"model": "drip-50", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        next(r.iter_bytes())  # then hang up: a cancel
    time.sleep(0.2)
    text = proxy_gateway.metrics_text()
    # Only series that are really there: a family merely declared (# TYPE)
    # with nothing in it would draw an empty panel.
    exposed = {s.split("{")[0].split(" ")[0] for s in text.splitlines() if s and not s.startswith("#")}
    functions = {"sum", "rate", "by", "le", "histogram_quantile", "model", "kind", "provider", "outcome", "code",
                 "status", "gen_ai_request_model"}
    for e in exprs:
        for name in re.findall(r"[a-z_][a-z0-9_]*", e):
            if name in functions or not ("_" in name):
                continue
            assert name in exposed, f"dashboard expression uses {name}, which /metrics does not expose: {e}"
