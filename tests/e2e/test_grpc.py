"""gRPC on the API port, with the official grpcio client and stubs that
grpcio-tools generates from proto/sluice/v1/gateway.proto: unary and
streamed chat, embeddings and predict; errors and their codes, keys,
deadlines, cancellation reaching the upstream; the standard health and
reflection services; the same calls as application/grpc+json."""

import concurrent.futures
import importlib
import json
import queue
import struct
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import Gateway, key_hash, wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))
import make_models  # noqa: E402

KEY = "sk-grpc-team"


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    from grpc_tools import protoc
    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(ROOT / "proto/sluice/v1/gateway.proto")])
    assert rc == 0
    # The generated package is named `sluice`, as flatc's is in
    # test_token_stream: imported aside, and the other one put back.
    ours = lambda k: k == "sluice" or k.startswith("sluice.")  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("sluice.v1.gateway_pb2"),
                importlib.import_module("sluice.v1.gateway_pb2_grpc"))
    finally:
        sys.path.remove(str(out))
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    models = make_models.write(tmp_path_factory.mktemp("models"))
    g = Gateway(f"""
[agents]
heartbeat_ms = 200
missed_heartbeats = 2

[[keys]]
name = "team"
sha256 = "{key_hash(KEY)}"

[[keys]]
name = "rpm1"
sha256 = "{key_hash('sk-rpm1')}"
rpm = 1

[[keys]]
name = "narrow"
sha256 = "{key_hash('sk-narrow')}"
models = ["mock-1"]

[[providers]]
name = "oa"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-oa"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 7

[[models]]
name = "gpt"
targets = [{{ provider = "oa", model = "tokens-30" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "tokens-30" }}]

[[models]]
name = "embed"
targets = [{{ provider = "oa" }}]

[[models]]
name = "gpt-429"
targets = [{{ provider = "oa", model = "status-429" }}]

[[models]]
name = "slow"
targets = [{{ provider = "oa", model = "slow-3000" }}]

[[models]]
name = "drip"
targets = [{{ provider = "oa", model = "drip-50" }}]

[[models]]
name = "reset"
targets = [{{ provider = "oa", model = "reset" }}]

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[predictors]]
name = "mlp"
path = "{models}/mlp.onnx"
""", tmp_path=tmp_path_factory.mktemp("grpc"))
    yield g
    g.assert_alive()
    g.stop()


@pytest.fixture(scope="module")
def channel(gw):
    ch = grpc.insecure_channel(gw.url.removeprefix("http://"))
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(pb, channel):
    return pb[1].GatewayStub(channel)


AUTH = (("authorization", f"Bearer {KEY}"),)


def chat_request(pb, model, text="Say it", **kw):
    return pb[0].ChatRequest(model=model, messages=[pb[0].Message(role="user", content=text)], **kw)


def sse_text(gw, model):
    text = ""
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": model, "stream": True, "messages": [{"role": "user", "content": "Say it"}]}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                c = json.loads(line[6:])
                if c["choices"] and c["choices"][0]["delta"].get("content"):
                    text += c["choices"][0]["delta"]["content"]
    return text


@pytest.mark.parametrize("model", ["gpt", "claude", "mock-1"])
def test_unary_chat(pb, stub, gw, model):
    r, call = stub.Chat.with_call(chat_request(pb, model, max_tokens=50), metadata=AUTH, timeout=10)
    assert r.content and r.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert json.loads(r.response_json)["choices"][0]["message"]["content"] == r.content
    assert dict(call.initial_metadata())["x-request-id"]


@pytest.mark.parametrize("model", ["gpt", "claude", "mock-1"])
def test_streamed_chat_equals_the_sse_text(pb, stub, gw, model):
    chunks = list(stub.ChatStream(chat_request(pb, model), metadata=AUTH, timeout=10))
    assert [c.id for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage.completion_tokens > 0
    assert "".join(c.text for c in chunks) == sse_text(gw, model)


def test_extra_json_carries_other_openai_fields(pb, stub, upstream):
    req = chat_request(pb, "gpt", max_tokens=9, temperature=0.25,
                       extra_json=json.dumps({"top_p": 0.5, "user": "u-7"}))
    stub.Chat(req, metadata=AUTH, timeout=10)
    sent = json.loads(upstream.last()["body"])
    assert (sent["top_p"], sent["user"], sent["max_tokens"], sent["temperature"]) == (0.5, "u-7", 9, 0.25)
    with pytest.raises(grpc.RpcError) as e:
        stub.Chat(chat_request(pb, "gpt", extra_json="[1]"), metadata=AUTH, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_embed_and_predict(pb, stub, upstream):
    r = stub.Embed(pb[0].EmbedRequest(model="embed", input=["a", "b"], dimensions=8), metadata=AUTH, timeout=10)
    sent = json.loads(upstream.last()["body"])
    assert (sent["input"], sent["dimensions"], sent["encoding_format"]) == (["a", "b"], 8, "float")
    assert r.data[0].index == 0 and len(r.data[0].values) > 0 and r.usage.prompt_tokens > 0
    x = [0.1, 0.2, 0.3, 0.4]
    p = stub.Predict(pb[0].PredictRequest(model="mlp", data=x), metadata=AUTH, timeout=10)
    assert list(p.shape) == [3] and p.input_len == 4
    np.testing.assert_allclose(list(p.prediction), make_models.mlp_reference(x)[0], atol=1e-5)


@pytest.mark.parametrize("metadata,model,code,words", [
    ((), "gpt", grpc.StatusCode.UNAUTHENTICATED, "key"),
    ((("authorization", "Bearer sk-wrong"),), "gpt", grpc.StatusCode.UNAUTHENTICATED, "key"),
    ((("authorization", "Bearer sk-narrow"),), "gpt", grpc.StatusCode.PERMISSION_DENIED, "gpt"),
    (AUTH, "nope", grpc.StatusCode.NOT_FOUND, "nope"),
])
def test_errors_map_to_status_codes(pb, stub, metadata, model, code, words):
    for call in (stub.Chat, lambda *a, **k: list(stub.ChatStream(*a, **k))):
        with pytest.raises(grpc.RpcError) as e:
            call(chat_request(pb, model), metadata=metadata, timeout=10)
        assert e.value.code() == code, e.value
        assert words.lower() in e.value.details().lower()


def test_rate_limits_are_resource_exhausted(pb, stub):
    limited = (("authorization", "Bearer sk-rpm1"),)
    stub.Chat(chat_request(pb, "mock-1"), metadata=limited, timeout=10)
    for call in (stub.Chat, lambda *a, **k: list(stub.ChatStream(*a, **k))):
        with pytest.raises(grpc.RpcError) as e:
            call(chat_request(pb, "mock-1"), metadata=limited, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    # An upstream's own 429, relayed.
    with pytest.raises(grpc.RpcError) as e:
        stub.Chat(chat_request(pb, "gpt-429"), metadata=AUTH, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value


def test_bad_request_is_invalid_argument(pb, stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Chat(pb[0].ChatRequest(model="gpt"), metadata=AUTH, timeout=10)  # no messages
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_deadline_is_the_calls(pb, stub):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Chat(chat_request(pb, "slow"), metadata=AUTH, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


def test_a_cancelled_stream_cancels_the_upstream(pb, stub, upstream):
    before = upstream.stats()["cancelled"]
    it = stub.ChatStream(chat_request(pb, "drip"), metadata=AUTH, timeout=30)
    first = next(it)
    assert first.text
    it.cancel()
    wait_for(lambda: upstream.stats()["cancelled"] > before, what="the upstream to see the cancel")


def test_a_stream_that_breaks_ends_with_a_status(pb, stub):
    """After the first chunk, a failure is the call's status (trailers), not
    a chunk: the upstream cut its connection mid-stream."""
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for c in stub.ChatStream(chat_request(pb, "reset"), metadata=AUTH, timeout=10):
            got.append(c)
    assert got and not any(c.is_last for c in got)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    assert e.value.details()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "sluice.v1.Gateway"]:
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"sluice.v1.Gateway", "grpc.health.v1.Health"} <= names


def grpc_json(gw, method, message, timeout=None):
    """A call with content-type application/grpc+json over h2c (prior knowledge)."""
    body = json.dumps(message).encode()
    headers = {"content-type": "application/grpc+json", "te": "trailers",
               "authorization": f"Bearer {KEY}"}
    if timeout:
        headers["grpc-timeout"] = timeout
    with httpx.Client(http1=False, http2=True) as c:
        r = c.post(f"{gw.url}/sluice.v1.Gateway/{method}", headers=headers,
                   content=b"\0" + struct.pack(">I", len(body)) + body)
        r.read()
        trailers = dict(r.headers)
        frames, data = [], r.content
        while data:
            (n,) = struct.unpack(">I", data[1:5])
            frames.append(json.loads(data[5:5 + n]))
            data = data[5 + n:]
        return r, frames, trailers


def test_the_hybrid_json_path(gw):
    r, frames, _ = grpc_json(gw, "Chat", {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}],
                                          "maxTokens": 40})
    assert r.status_code == 200 and r.headers["content-type"] == "application/grpc+json"
    assert frames[0]["content"] and frames[0]["finishReason"] == "stop"
    assert frames[0]["usage"]["totalTokens"] > 0
    r, frames, _ = grpc_json(gw, "ChatStream", {"model": "gpt", "messages": [{"role": "user", "content": "Say it"}]})
    assert frames[-1]["isLast"] is True and frames[-1]["finishReason"] == "stop"
    assert "".join(f.get("text", "") for f in frames) == sse_text(gw, "gpt")
    r, frames, _ = grpc_json(gw, "Chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert frames == [] and r.headers["grpc-status"] == "5" and "nope" in r.headers["grpc-message"]


def test_a_grpc_path_without_a_grpc_content_type_is_refused(gw):
    r = httpx.post(f"{gw.url}/sluice.v1.Gateway/Chat", json={"model": "gpt"})
    assert r.status_code == 415


def test_grpc_over_tls(pb, tmp_path):
    from test_tls import make_cert
    cert, key = make_cert(tmp_path, "grpc")
    g = Gateway(f"""
[server]
tls_cert_file = "{cert}"
tls_key_file = "{key}"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]
""", tmp_path=tmp_path)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{g.url.rsplit(':', 1)[1]}", creds) as ch:
            stub = pb[1].GatewayStub(ch)
            r = stub.Chat(chat_request(pb, "mock-1"), timeout=10)
            assert r.content
            chunks = list(stub.ChatStream(chat_request(pb, "mock-1"), timeout=10))
            assert "".join(c.text for c in chunks) and chunks[-1].is_last
    finally:
        g.stop()


class GrpcAgent:
    """An agent on the gRPC Connect stream: frames it sends go through a
    queue; frames it receives are read from the call."""

    def __init__(self, pb, stub, hello, metadata=AUTH):
        self.out = queue.Queue()
        self.out.put(hello)

        def frames():
            while (f := self.out.get()) is not None:
                yield pb[0].AgentFrame(json=json.dumps(f))

        self.call = stub.Connect(frames(), metadata=metadata, timeout=30)

    def send(self, frame):
        self.out.put(frame)

    def recv(self):
        return json.loads(next(self.call).json)

    def end(self):
        self.out.put(None)


def test_an_agent_over_grpc_takes_an_instruction_posted_over_http(pb, stub, gw):
    agent = GrpcAgent(pb, stub, {"type": "hello", "agent_id": "grpc-1", "groups": ["g"]})
    welcome = agent.recv()
    assert welcome["type"] == "welcome" and welcome["agent_id"] == "grpc-1"
    api = httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert api.get("/agents/grpc-1").json()["groups"] == ["g"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(api.post, "/agents/grpc-1/instructions",
                             json={"payload": {"print": "a.pdf"}, "wait_result_ms": 5000})
        ins = agent.recv()
        assert ins["type"] == "instruction" and ins["payload"] == {"print": "a.pdf"}
        agent.send({"type": "result", "id": ins["id"], "payload": {"pages": 3}})
        r = posted.result()
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and r.json()["result"] == {"pages": 3}
    # Silent past several heartbeats (the transport answers them): still there.
    time.sleep(1.2)
    assert api.get("/agents/grpc-1").status_code == 200
    agent.send({"type": "ping"})
    assert agent.recv() == {"type": "pong"}
    agent.end()
    with pytest.raises(StopIteration):
        agent.recv()
    wait_for(lambda: api.get("/agents/grpc-1").status_code == 404, what="the agent to be gone")


def test_a_second_grpc_agent_with_the_same_id_replaces_the_first(pb, stub):
    first = GrpcAgent(pb, stub, {"type": "hello", "agent_id": "grpc-dup"})
    assert first.recv()["type"] == "welcome"
    second = GrpcAgent(pb, stub, {"type": "hello", "agent_id": "grpc-dup"})
    assert second.recv()["type"] == "welcome"
    close = first.recv()
    assert close["type"] == "close" and close["code"] == 4000
    with pytest.raises(grpc.RpcError) as e:
        first.recv()
    assert e.value.code() == grpc.StatusCode.ABORTED
    second.end()


def test_connect_needs_a_key_and_a_hello(pb, stub):
    bad = GrpcAgent(pb, stub, {"type": "hello", "agent_id": "x"}, metadata=())
    with pytest.raises(grpc.RpcError) as e:
        bad.recv()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    rude = GrpcAgent(pb, stub, {"type": "event", "payload": 1})
    close = rude.recv()
    assert close["type"] == "close" and close["code"] == 1008
    with pytest.raises(grpc.RpcError) as e:
        rude.recv()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
