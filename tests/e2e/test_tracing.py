"""OpenTelemetry traces exported over OTLP to a real receiver started here."""

import time

import httpx
import pytest

from conftest import Gateway, MockUpstream, SilentServer
from otlp_receiver import GrpcReceiver, HttpReceiver

SERVER, CLIENT = 2, 3  # span kinds in the OTLP protobuf

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def config(ups, telemetry=""):
    return f"""
{telemetry}
[routing]
backoff_base_ms = 1
backoff_max_ms = 2

[[providers]]
name = "first"
kind = "openai"
base_url = "{ups[0].url}/v1"

[[providers]]
name = "second"
kind = "openai"
base_url = "{ups[1].url}/v1"

[[models]]
name = "pair"
strategy = "least_outstanding"
targets = [{{ provider = "first", model = "m-first" }}, {{ provider = "second", model = "m-second" }}]
"""


@pytest.fixture
def ups():
    us = [MockUpstream(), MockUpstream()]
    yield us
    for u in us:
        u.stop()


def chat(g, client=httpx, **headers):
    """One chat completion to the "pair" model; the response."""
    return client.post(f"{g.base_url}/chat/completions", headers=headers,
                       json={"model": "pair", "messages": [{"role": "user", "content": "x"}]})


def wait_for(receiver, prefix, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = receiver.by_name(prefix)
        if len(spans) >= n:
            return spans
        time.sleep(0.05)
    return receiver.by_name(prefix)


def test_http_protobuf_spans_with_retry_and_traceparent(ups, tmp_path):
    rx = HttpReceiver()
    telemetry = f'[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\nservice_name = "sluice-test"'
    g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
    try:
        # least_outstanding on an idle pair tries the first target first: it
        # fails once, and the second answers.
        ups[0].control(fail_next=1, fail_status=503)
        r = httpx.post(
            f"{g.base_url}/chat/completions",
            json={"model": "pair", "messages": [{"role": "user", "content": "x"}]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61rcWkgMzE"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-sluice-attempts"] == "2"
        with httpx.stream("POST", f"{g.base_url}/chat/completions",
                          json={"model": "pair", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as s:
            s.read()
    finally:
        g.stop()  # flushes the batch
    try:
        servers = [s for s in rx.spans if s["kind"] == SERVER]
        clients = [s for s in rx.spans if s["kind"] == CLIENT]
        assert len(servers) == 2, rx.spans
        first = next(s for s in servers if s["trace_id"] == TRACE_ID)
        assert first["parent_span_id"] == PARENT_ID, "the client's traceparent is honoured"
        assert first["name"] == "chat pair"
        a = first["attributes"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "pair"
        assert a["http.response.status_code"] == 200
        assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 5
        assert a["sluice.attempts"] == 2
        assert a["gen_ai.response.model"] == r.json()["model"]
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert first["resource"]["service.name"] == "sluice-test"

        attempts = [c for c in clients if c["trace_id"] == TRACE_ID]
        assert len(attempts) == 2, "each attempt has its own client span"
        assert all(c["parent_span_id"] == first["span_id"] for c in attempts)
        failed = [c for c in attempts if c["attributes"].get("http.response.status_code") == 503]
        ok = [c for c in attempts if c["attributes"].get("http.response.status_code") == 200]
        assert len(failed) == 1 and len(ok) == 1
        assert failed[0]["status_code"] == 2  # STATUS_CODE_ERROR
        assert failed[0]["attributes"]["error.type"] == "upstream_status"
        c = ok[0]["attributes"]
        assert c["gen_ai.provider.name"] == "openai" and c["gen_ai.system"] == "openai"
        assert c["gen_ai.request.model"] in ("m-first", "m-second")
        assert c["gen_ai.usage.output_tokens"] == 5
        assert c["gen_ai.response.model"] == r.json()["model"] and c["gen_ai.response.finish_reasons"] == ["stop"]
        assert ok[0]["name"] == f"chat {c['gen_ai.request.model']}"

        # The upstream got a traceparent naming the attempt's own span.
        answered = ups[0] if c["gen_ai.request.model"] == "m-first" else ups[1]
        tp = answered.last()["headers"]["traceparent"]
        assert tp.split("-")[1] == TRACE_ID
        assert tp.split("-")[2] == ok[0]["span_id"]
        # The client's tracestate goes on upstream and into the spans.
        assert answered.last()["headers"]["tracestate"] == "congo=t61rcWkgMzE"
        assert first["trace_state"] == ok[0]["trace_state"] == "congo=t61rcWkgMzE"

        streamed = next(s for s in servers if s["trace_id"] != TRACE_ID)
        assert "gen_ai.first_token" in streamed["events"]
        assert streamed["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
        assert streamed["attributes"]["gen_ai.response.model"]
        assert streamed["attributes"]["gen_ai.server.time_to_first_token"] > 0
    finally:
        rx.stop()


def test_grpc_export_from_standard_env_vars(ups, tmp_path):
    rx = GrpcReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "sluice-grpc",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    }
    g = Gateway(config(ups), tmp_path=tmp_path, env=env)
    try:
        for _ in range(3):
            assert chat(g).status_code == 200
    finally:
        g.stop()
    try:
        servers = wait_for(rx, "chat pair", 3)
        assert len(servers) == 3
        assert servers[0]["resource"]["service.name"] == "sluice-grpc"
    finally:
        rx.stop()


def test_sampling_ratio_zero_exports_nothing_unless_the_parent_was_sampled(ups, tmp_path):
    rx = HttpReceiver()
    telemetry = f'[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\nsampling_ratio = 0.0'
    g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
    try:
        for _ in range(5):
            chat(g)
        chat(g, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    finally:
        g.stop()
    try:
        servers = [s for s in rx.spans if s["kind"] == SERVER]
        assert [s["trace_id"] for s in servers] == [TRACE_ID]
    finally:
        rx.stop()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_export_over_tls_to_a_private_ca(ups, tmp_path, protocol):
    from test_tls import make_ca_and_leaf

    ca, cert, key = make_ca_and_leaf(tmp_path)
    rx = HttpReceiver(tls=(cert, key)) if protocol == "http/protobuf" else GrpcReceiver(tls=(cert, key))
    assert rx.url.startswith("https://")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        # The system roots plus nothing else: the collector's CA comes in here.
        "SSL_CERT_FILE": str(ca),
    }
    g = Gateway(config(ups), tmp_path=tmp_path, env=env)
    try:
        assert chat(g).status_code == 200
    finally:
        g.stop()
    try:
        assert len(wait_for(rx, "chat pair", 1)) == 1
    finally:
        rx.stop()


def test_access_log_lines_carry_the_trace_id(ups, tmp_path):
    import json

    rx = HttpReceiver()
    telemetry = (f'[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\n'
                 '[logging]\nformat = "json"\n')
    g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
    try:
        assert chat(g, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01").status_code == 200
        r = chat(g)
        assert r.status_code == 200
        fresh = r.headers["x-request-id"]
    finally:
        g.stop()
    try:
        lines = [json.loads(l) for l in g.logs().splitlines() if l.startswith("{")]
        access = [l for l in lines if l.get("target") == "sluice::access"]
        assert len(access) == 2, access
        ids = [l["fields"]["trace_id"] if "fields" in l else l["trace_id"] for l in access]
        assert ids[0] == TRACE_ID
        # A new trace: the same id as its exported server span.
        server = next(s for s in rx.spans if s["kind"] == SERVER and s["trace_id"] != TRACE_ID)
        assert server["attributes"]["sluice.request_id"] == fresh
        assert ids[1] == server["trace_id"] and len(ids[1]) == 32
    finally:
        rx.stop()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_silent_collector_never_slows_requests_and_the_queue_is_bounded(ups, tmp_path, protocol):
    # A "collector" that accepts connections and never answers.
    with SilentServer() as silent:
        telemetry = (f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{silent.port}"\n'
                     f'otlp_protocol = "{protocol}"\nmax_queue_spans = 10\nmax_batch_spans = 2\n'
                     'export_timeout_ms = 1000\n')
        g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
        try:
            with httpx.Client() as c:
                t0 = time.monotonic()
                codes = [chat(g, c).status_code for _ in range(30)]
                took = time.monotonic() - t0
            assert codes == [200] * 30
            # Requests never wait on the export (1 s timeouts would add 15 s).
            assert took < 10, took
            # Two spans per request, at most 10 waiting (in flight included);
            # room comes back only when an export gives up (1 s), so nearly all
            # the rest were dropped and counted.
            failed = g.metric('sluice_trace_spans_total{outcome="failed"}')
            dropped = g.metric('sluice_trace_spans_total{outcome="dropped"}')
            assert dropped + failed >= 60 - 10, (dropped, failed)
            assert dropped > 0
            # The export in flight times out and is counted as failed.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and g.metric('sluice_trace_spans_total{outcome="failed"}') == 0:
                time.sleep(0.1)
            assert g.metric('sluice_trace_spans_total{outcome="failed"}') >= 2
            assert g.metric('sluice_trace_spans_total{outcome="exported"}') == 0
        finally:
            g.stop()


def test_signal_specific_otel_variables(ups, tmp_path):
    rx = HttpReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # overridden below
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{rx.url}/custom/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=ml%20platform,authorization=Bearer%20t",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=ignored",
        "OTEL_SERVICE_NAME": "sluice-env",
        "OTEL_TRACES_SAMPLER": "parentbased_always_off",
    }
    g = Gateway(config(ups), tmp_path=tmp_path, env=env)
    try:
        for _ in range(3):
            assert chat(g).status_code == 200
        # Sampled only because the client's parent was.
        assert chat(g, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01").status_code == 200
    finally:
        g.stop()
    try:
        servers = [s for s in rx.spans if s["kind"] == SERVER]
        assert [s["trace_id"] for s in servers] == [TRACE_ID]
        res = servers[0]["resource"]
        assert res["service.name"] == "sluice-env"
        assert res["deployment.environment"] == "test"
        assert rx.requests and all(p == "/custom/traces" for p, _ in rx.requests)
        path, headers = rx.requests[0]
        assert headers["x-team"] == "ml platform" and headers["authorization"] == "Bearer t"
        assert headers["content-type"] == "application/x-protobuf"
    finally:
        rx.stop()


@pytest.mark.parametrize("status,retried", [(503, True), (400, False)])
def test_transient_export_failures_are_retried_and_others_are_not(ups, tmp_path, status, retried):
    rx = HttpReceiver()
    rx.fail = [status, status]
    telemetry = (f'[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\n'
                 'export_interval_ms = 200\n')
    g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
    try:
        assert chat(g).status_code == 200
        outcome = 'exported' if retried else 'failed'
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and g.metric(f'sluice_trace_spans_total{{outcome="{outcome}"}}') < 2:
            time.sleep(0.05)
        exported = g.metric('sluice_trace_spans_total{outcome="exported"}')
        failed = g.metric('sluice_trace_spans_total{outcome="failed"}')
        if retried:
            # 503, 503 (100 ms, then 200 ms back-off), then accepted.
            assert (exported, failed) == (2, 0)
            assert len(rx.requests) == 3
            assert len(rx.by_name("chat pair")) == 1
        else:
            # A 400 will not get better: the batch is lost at once, counted.
            assert (exported, failed) == (0, 2)
            assert len(rx.requests) == 1
    finally:
        g.stop()
        rx.stop()


def test_a_collectors_retry_after_is_waited_out(ups, tmp_path):
    rx = HttpReceiver()
    rx.fail = [(503, 1)]
    telemetry = (f'[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\n'
                 'export_interval_ms = 200\n')
    g = Gateway(config(ups, telemetry), tmp_path=tmp_path)
    try:
        assert chat(g).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and g.metric('sluice_trace_spans_total{outcome="exported"}') < 2:
            time.sleep(0.05)
        assert g.metric('sluice_trace_spans_total{outcome="exported"}') == 2
        assert len(rx.times) == 2
        # Retry-After: 1, not the 100 ms back-off.
        assert rx.times[1] - rx.times[0] >= 0.95, rx.times
    finally:
        g.stop()
        rx.stop()
