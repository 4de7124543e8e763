"""Multimodal requests with the official SDKs: parts a text-only model cannot
take become text before routing — audio by a routed transcription model
(after the real Silero VAD trims its silence), images by the real PP-OCRv4
models or a routed vision model — all of a request's conversions at once,
each within its own deadline, sharing one cancellation.

The upstream is a Python server owned by this test: it records every chat
request it receives, answers transcriptions and vision questions after a
delay the test sets, and notes when a caller hangs up before its answer."""

import base64
import io
import json
import os
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import ROOT, Gateway

MODELS = Path(os.environ.get("SLUICE_TEST_MODELS", ROOT / "tests/models/.media"))
FIXTURES = ROOT / "tests/fixtures/media"
SPEECH = (FIXTURES / "speech.wav").read_bytes()


def render(lines, size=(640, 200)):
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    for i, line in enumerate(lines):
        draw.text((30, 30 + i * 70), line, fill="black", font=font)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Upstream:
    """An OpenAI-format upstream: chat (recorded), transcriptions, vision."""

    def __init__(self):
        self.chats = []
        self.transcriptions = []
        self.delays = {"transcription": 0.0, "vision": 0.0}
        self.hangups = []
        self.started = []
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # One segment per answer: no delayed-ACK stalls on keep-alive.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *a):
                pass

            def _wait(self, what):
                """Sleeps the delay set for `what`; False when the caller hung up."""
                up.started.append((what, time.monotonic()))
                end = time.monotonic() + up.delays[what]
                while time.monotonic() < end:
                    r, _, _ = select.select([self.connection], [], [], 0.05)
                    if r and self.connection.recv(1, socket.MSG_PEEK) == b"":
                        up.hangups.append((what, time.monotonic()))
                        return False
                return True

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path.endswith("/audio/transcriptions"):
                    # The file part: everything between its head and the closing boundary.
                    head_end = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
                    boundary = body[: body.index(b"\r\n")]
                    audio = body[head_end: body.index(b"\r\n" + boundary, head_end)]
                    up.transcriptions.append(audio)
                    if self._wait("transcription"):
                        self._json({"text": f"heard {len(audio)} bytes"})
                    return
                req = json.loads(body)
                if req["model"] == "vision-1":
                    if self._wait("vision"):
                        self._json(chat_answer("a red square on white"))
                    return
                up.chats.append(req)
                if req.get("stream"):
                    return self._sse()
                self._json(chat_answer("ok"))

            def _sse(self):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                                      "finish_reason": "stop"}]}
                usage = {**chunk, "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
                body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def user_content(self):
        """What the text model received as the last user message's content."""
        return self.chats[-1]["messages"][-1]["content"]


def chat_answer(text):
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


class Images:
    """Serves images over HTTP for the fetcher: a small one, a large one, a slow one."""

    def __init__(self):
        png = render(["FETCHED 2024"])

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/slow.png":
                    time.sleep(3)
                body = os.urandom(300_000) if self.path == "/big.png" else png
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def config(up, audit, fetch):
    return f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{up.url}/v1"
api_key = "sk-up"

[[processors]]
name = "ocr"
kind = "ocr"
det_model = "{MODELS / 'ch_PP-OCRv4_det_infer.onnx'}"
rec_model = "{MODELS / 'ch_PP-OCRv4_rec_infer.onnx'}"

[[processors]]
name = "vad"
kind = "vad"
model = "{MODELS / 'silero_vad_v6.onnx'}"

[image_fetch]
{fetch}

[[models]]
name = "whisper"
targets = [{{ provider = "up", model = "whisper-1" }}]

[[models]]
name = "vision"
targets = [{{ provider = "up", model = "vision-1" }}]

[[models]]
name = "bot"
targets = [{{ provider = "up", model = "text-1" }}]
modalities = ["text"]
[models.convert]
audio = {{ model = "whisper", processor = "vad", timeout_ms = 1500 }}
image = {{ processor = "ocr", timeout_ms = 8000 }}

[[models]]
name = "bot-vision"
targets = [{{ provider = "up", model = "text-1" }}]
modalities = ["text"]
[models.convert]
audio = {{ model = "whisper", timeout_ms = 4000 }}
image = {{ model = "vision", prompt = "Describe it.", timeout_ms = 4000 }}

[[models]]
name = "bot-omit"
targets = [{{ provider = "up", model = "text-1" }}]
modalities = ["text"]
[models.convert]
audio = {{ model = "whisper", timeout_ms = 500 }}
image = {{ processor = "ocr", timeout_ms = 8000 }}
on_failure = "omit"

[[models]]
name = "native"
targets = [{{ provider = "up", model = "text-1" }}]

[[models]]
name = "text-only"
targets = [{{ provider = "up", model = "text-1" }}]
modalities = ["text"]

[audit]
path = "{audit}"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multimodal")
    up, images = Upstream(), Images()
    fetch = f'allow_hosts = ["127.0.0.1"]\nallow_private = true\nmax_bytes = 200000\ntimeout_ms = 800'
    g = Gateway(config(up, tmp / "audit.jsonl", fetch), tmp_path=tmp)
    yield g, up, images, tmp / "audit.jsonl"
    g.assert_alive()
    g.stop()


@pytest.fixture(autouse=True)
def calm(env):
    _, up, _, _ = env
    up.delays.update(transcription=0.0, vision=0.0)
    yield


def oai(g, **kw):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, **kw)


def audio_part(wav=SPEECH):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_an_image_reaches_a_text_model_as_its_ocr_text(env):
    g, up, _, _ = env
    png = render(["INVOICE 4711", "Total due 93 EUR"])
    r = oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is due?"}, image_part(data_uri(png))]}])
    assert r.choices[0].message.content == "ok"
    content = up.user_content()
    assert content[0] == {"type": "text", "text": "What is due?"}
    assert content[1]["type"] == "text"
    text = content[1]["text"]
    assert text.startswith("[image 1: ") and text.endswith("]"), text
    flat = text.replace(" ", "").lower()
    assert "invoice4711" in flat and "totaldue93eur" in flat, text
    assert g.metric('sluice_modality_duration_seconds_count{modality="image",converter="ocr",outcome="ok"}') >= 1


def test_audio_is_trimmed_by_the_vad_then_transcribed(env):
    g, up, _, _ = env
    r = oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Answer the question."}, audio_part()]}])
    assert r.choices[0].message.content == "ok"
    sent = up.transcriptions[-1]
    # 3 s of silence around the speech were cut: the upload is much smaller.
    assert sent[:4] == b"RIFF" and len(sent) < len(SPEECH) * 0.6, (len(sent), len(SPEECH))
    assert up.user_content()[1] == {"type": "text", "text": f"[audio 1 transcript: heard {len(sent)} bytes]"}


def test_silence_alone_is_not_sent_for_transcription(env):
    g, up, _, _ = env
    import wave
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 32000)
    before = len(up.transcriptions)
    oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [audio_part(buf.getvalue())]}])
    assert len(up.transcriptions) == before
    assert up.user_content() == [{"type": "text", "text": "[audio 1 transcript: (no speech)]"}]


def test_both_conversions_run_at_once_and_keep_their_order(env):
    g, up, _, _ = env
    up.delays.update(transcription=1.0, vision=1.0)
    t = time.monotonic()
    oai(g).chat.completions.create(model="bot-vision", messages=[{"role": "user", "content": [
        image_part("https://example.com/a.png"), {"type": "text", "text": "and"}, audio_part()]}])
    took = time.monotonic() - t
    # Each takes 1 s upstream: together about 1 s, not 2.
    assert 0.95 < took < 1.8, took
    starts = [s for w, s in up.started[-2:]]
    assert abs(starts[0] - starts[1]) < 0.5
    content = up.user_content()
    assert content[0] == {"type": "text", "text": "[image 1: a red square on white]"}
    assert content[1] == {"type": "text", "text": "and"}
    assert content[2]["text"].startswith("[audio 1 transcript: heard ")


def test_a_converter_past_its_deadline_fails_the_request_with_504_naming_it(env):
    g, up, _, _ = env
    up.delays["transcription"] = 3.0
    chats = len(up.chats)
    t = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [audio_part()]}])
    assert e.value.status_code == 504
    assert time.monotonic() - t < 2.5
    err = e.value.body
    assert err["code"] == "conversion_timeout"
    assert "audio 1" in err["message"] and "1500 ms" in err["message"], err
    assert len(up.chats) == chats  # the text model was never asked
    wait_hangup(up, "transcription")
    assert g.metric('sluice_modality_duration_seconds_count{modality="audio",converter="whisper",outcome="timeout"}') >= 1


def test_under_omit_a_late_part_is_dropped_with_a_note(env):
    g, up, _, _ = env
    up.delays["transcription"] = 3.0
    png = render(["HELLO OMIT"])
    r = oai(g).chat.completions.create(model="bot-omit", messages=[{"role": "user", "content": [
        audio_part(), image_part(data_uri(png))]}])
    assert r.choices[0].message.content == "ok"
    content = up.user_content()
    assert content[0]["text"].startswith("[audio 1 omitted: audio 1 (whisper) was not converted within its deadline of 500 ms"), content
    assert content[1]["text"].replace(" ", "").startswith("[image1:HELLOOMIT"), content


def wait_hangup(up, what, within=3.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if any(w == what for w, _ in up.hangups):
            return
        time.sleep(0.05)
    raise AssertionError(f"the {what} call was not hung up: {up.hangups}")


def test_a_client_going_away_cancels_the_pending_transcription(env):
    g, up, _, _ = env
    up.delays.update(transcription=3.5, vision=0.2)
    up.hangups.clear()
    t = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(g, timeout=0.8).chat.completions.create(model="bot-vision", messages=[{"role": "user", "content": [
            image_part("https://example.com/a.png"), audio_part()]}])
    wait_hangup(up, "transcription")
    hung = [s for w, s in up.hangups if w == "transcription"][0]
    assert hung - t < 2.0, hung - t
    assert g.metric('sluice_modality_duration_seconds_count{modality="audio",converter="whisper",outcome="cancelled"}') >= 1


def test_a_streamed_request_streams_after_its_conversions(env):
    g, up, _, _ = env
    stream = oai(g).chat.completions.create(model="bot-vision", stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "hear this"}, audio_part()]}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "ok"
    assert up.chats[-1]["stream"] is True
    assert up.user_content()[1]["text"].startswith("[audio 1 transcript: heard ")


def test_a_model_that_takes_images_gets_them_unchanged(env):
    g, up, _, _ = env
    url = "data:image/png;base64,iVBORw0KGgo="
    oai(g).chat.completions.create(model="native", messages=[{"role": "user", "content": [
        {"type": "text", "text": "hi"}, image_part(url)]}])
    assert up.user_content()[1] == {"type": "image_url", "image_url": {"url": url}}


def test_a_part_nothing_converts_is_refused(env):
    g, _, _, _ = env
    with pytest.raises(openai.BadRequestError) as e:
        oai(g).chat.completions.create(model="text-only", messages=[{"role": "user", "content": [
            image_part("https://example.com/a.png")]}])
    assert e.value.body["code"] == "unsupported_modality"
    assert "image" in e.value.body["message"]
    # Audio to a model with the default modalities (text, image) and no converter.
    with pytest.raises(openai.BadRequestError) as e:
        oai(g).chat.completions.create(model="native", messages=[{"role": "user", "content": [audio_part()]}])
    assert "audio" in e.value.body["message"]


def test_bad_parts_are_400(env):
    g, _, _, _ = env
    for part, why in [
        (image_part("data:image/png;base64,!!!"), "base64"),
        (image_part(data_uri(b"not an image at all")), "image"),
        ({"type": "input_audio", "input_audio": {"data": "@@@", "format": "wav"}}, "base64"),
        (audio_part(b"RIFF0000WAVEjunk"), "WAV"),
    ]:
        r = httpx.post(f"{g.base_url}/chat/completions", json={"model": "bot", "messages": [
            {"role": "user", "content": [part]}]}, timeout=30)
        assert r.status_code == 400, (part, r.text)
        assert why in r.json()["error"]["message"], r.text


def test_anthropic_image_blocks_are_converted(env):
    g, up, _, _ = env
    png = render(["CLAUDE 77"])
    c = anthropic.Anthropic(base_url=g.url, api_key="unused", max_retries=0)
    m = c.messages.create(model="bot", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png).decode()}},
        {"type": "text", "text": "Read it."}]}])
    assert m.content[0].text == "ok"
    content = up.user_content()
    assert content[0]["text"].replace(" ", "").startswith("[image1:CLAUDE77"), content
    assert content[1] == {"type": "text", "text": "Read it."}


def test_responses_input_images_are_converted(env):
    g, up, _, _ = env
    png = render(["RESPONSES 5"])
    r = oai(g).responses.create(model="bot", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Read it."},
        {"type": "input_image", "image_url": data_uri(png)}]}])
    assert r.output_text == "ok"
    content = up.user_content()
    assert content[1]["text"].replace(" ", "").startswith("[image1:RESPONSES5"), content


def test_image_urls_are_fetched_within_the_limits(env):
    g, up, images, _ = env
    base = f"http://127.0.0.1:{images.port}"
    oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [
        image_part(f"{base}/ok.png")]}])
    assert up.user_content()[0]["text"].replace(" ", "").startswith("[image1:FETCHED2024"), up.user_content()
    # Over max_bytes: refused as the request's fault.
    r = httpx.post(f"{g.base_url}/chat/completions", json={"model": "bot", "messages": [
        {"role": "user", "content": [image_part(f"{base}/big.png")]}]}, timeout=30)
    assert r.status_code == 400 and "200000 bytes" in r.json()["error"]["message"], r.text
    # Slower than the fetch limit (800 ms): cut there.
    t = time.monotonic()
    r = httpx.post(f"{g.base_url}/chat/completions", json={"model": "bot", "messages": [
        {"role": "user", "content": [image_part(f"{base}/slow.png")]}]}, timeout=30)
    assert r.status_code == 504, r.text
    assert time.monotonic() - t < 2.0
    # A host not on the allow-list.
    r = httpx.post(f"{g.base_url}/chat/completions", json={"model": "bot", "messages": [
        {"role": "user", "content": [image_part(f"http://localhost:{images.port}/ok.png")]}]}, timeout=30)
    assert r.status_code == 400 and "allow_hosts" in r.json()["error"]["message"], r.text


def test_private_addresses_are_not_fetched_unless_allowed(tmp_path):
    up, images = Upstream(), Images()
    fetch = 'allow_hosts = ["127.0.0.1", "localhost"]'
    g = Gateway(config(up, tmp_path / "audit.jsonl", fetch), tmp_path=tmp_path)
    try:
        for host in ["127.0.0.1", "localhost"]:
            r = httpx.post(f"{g.base_url}/chat/completions", json={"model": "bot", "messages": [
                {"role": "user", "content": [image_part(f"http://{host}:{images.port}/ok.png")]}]}, timeout=30)
            assert r.status_code == 400, r.text
            assert "public" in r.json()["error"]["message"], r.text
        assert up.chats == []
    finally:
        g.stop()


def test_the_audit_event_says_what_was_converted(env):
    g, up, _, audit = env
    png = render(["AUDIT 1"])
    oai(g).chat.completions.create(model="bot", messages=[{"role": "user", "content": [
        image_part(data_uri(png)), audio_part()]}], extra_headers={"x-request-id": "mm-audit-1"})

    def event():
        for line in audit.read_text().splitlines():
            e = json.loads(line)
            if e.get("request_id") == "mm-audit-1":
                return e
    end = time.monotonic() + 5
    while time.monotonic() < end and event() is None:
        time.sleep(0.1)
    e = event()
    assert e is not None
    conv = {c["part"]: c for c in e["conversions"]}
    assert conv["image 1"]["converter"] == "ocr" and conv["image 1"]["outcome"] == "ok"
    assert conv["audio 1"]["model"] == "whisper" and conv["audio 1"]["processor"] == "vad"
    assert conv["audio 1"]["outcome"] == "ok" and conv["audio 1"]["ms"] > 0


def test_each_branch_is_a_child_span_of_the_request(tmp_path):
    from otlp_receiver import HttpReceiver

    rx, up = HttpReceiver(), Upstream()
    telemetry = f'\n[telemetry]\notlp_endpoint = "{rx.url}"\notlp_protocol = "http/protobuf"\n'
    g = Gateway(config(up, tmp_path / "audit.jsonl", 'allow_hosts = []') + telemetry, tmp_path=tmp_path)
    try:
        oai(g).chat.completions.create(model="bot-vision", messages=[{"role": "user", "content": [
            image_part("https://example.com/a.png"), audio_part()]}])
    finally:
        g.stop()
    INTERNAL = 1
    branches = [s for s in rx.spans if s["kind"] == INTERNAL]
    assert len(branches) == 2, rx.spans
    request = [s for s in rx.spans if s["name"] == "chat bot-vision"]
    assert len(request) == 1, [s["name"] for s in rx.spans]
    by_op = {b["attributes"]["gen_ai.operation.name"]: b for b in branches}
    assert set(by_op) == {"chat", "transcription"}
    assert by_op["chat"]["attributes"]["sluice.modality"] == "image"
    assert by_op["chat"]["attributes"]["gen_ai.request.model"] == "vision"
    assert by_op["transcription"]["attributes"]["sluice.modality"] == "audio"
    assert by_op["transcription"]["name"] == "transcription whisper"
    for b in branches:
        assert b["parent_span_id"] == request[0]["span_id"]
        assert b["trace_id"] == request[0]["trace_id"]
    # The converter models' own requests are children of their branches.
    inner = [s for s in rx.spans if s["parent_span_id"] in {b["span_id"] for b in branches}]
    assert len(inner) == 2, inner
