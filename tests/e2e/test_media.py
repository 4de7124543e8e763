"""Media and auxiliary endpoints with the official `openai` SDK: audio
(transcriptions, translations, speech), images (generate, edit), moderations,
and rerank (Cohere / Jina shape) — answered by the built-in mock, passed
through to an OpenAI-format upstream (model rewritten, forms kept whole,
binary answers streamed), refused by name for Anthropic-format targets, and
held to keys, limits and metrics like chat."""

import io
import json
import struct
import wave

import httpx
import openai
import pytest

from conftest import Gateway, key_hash


def media_config(upstream):
    return f"""
[server]
max_body_bytes = 4096
max_upload_bytes = 200000

[[providers]]
name = "mock"
kind = "mock"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "sk-up"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream.url}/v1"
api_key = "sk-ant"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "omni-moderation-latest"
targets = [{{ provider = "mock" }}]

[[models]]
name = "whisper"
targets = [{{ provider = "up", model = "whisper-1" }}]

[[models]]
name = "tts"
targets = [{{ provider = "up", model = "tts-1" }}]

[[models]]
name = "img"
targets = [{{ provider = "up", model = "gpt-image-1" }}]

[[models]]
name = "guard"
targets = [{{ provider = "up", model = "omni-moderation-2024" }}]

[[models]]
name = "ranker"
targets = [{{ provider = "up", model = "jina-reranker-v2" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-x" }}]
"""


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    g = Gateway(media_config(upstream), tmp_path=tmp_path_factory.mktemp("media"))
    yield g
    g.assert_alive()
    g.stop()


def client(g):
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)


def wav_bytes(seconds=0.5, rate=8000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", (i * 37) % 2000) for i in range(int(seconds * rate))))
    return buf.getvalue()


# --- the built-in mock --------------------------------------------------------

def test_mock_transcribes_and_translates_in_every_format(gw):
    audio = wav_bytes()
    c = client(gw)
    r = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio, "audio/wav"))
    assert r.text == f"This is a mock transcription of hello.wav ({len(audio)} bytes) by mock-1."
    # The same upload, the same answer.
    again = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio, "audio/wav"))
    assert again.text == r.text
    text = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio),
                                         response_format="text")
    assert isinstance(text, str) and text.strip() == r.text
    srt = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio),
                                        response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and r.text in srt
    vtt = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio),
                                        response_format="vtt")
    assert vtt.startswith("WEBVTT") and r.text in vtt
    verbose = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio),
                                            response_format="verbose_json",
                                            timestamp_granularities=["word"])
    assert verbose.text == r.text and verbose.segments[0].text == r.text
    assert [w.word for w in verbose.words] == r.text.split()
    t = c.audio.translations.create(model="mock-1", file=("bonjour.wav", audio))
    assert t.text.startswith("This is a mock translation of bonjour.wav")


def test_mock_streams_a_transcript(gw):
    events = list(client(gw).audio.transcriptions.create(
        model="mock-1", file=("s.wav", wav_bytes()), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) > 3 and len(done) == 1
    assert "".join(deltas) == done[0].text


def test_mock_speaks_a_real_wav_streamed(gw):
    with client(gw).audio.speech.with_streaming_response.create(
            model="mock-1", voice="alloy", input="Hello there from the gateway", response_format="wav") as r:
        assert r.headers["content-type"] == "audio/wav"
        chunks = list(r.iter_bytes())
    audio = b"".join(chunks)
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnchannels() == 1 and w.getframerate() == 24000
        assert 1.0 < w.getnframes() / w.getframerate() < 2.5  # five words, ~0.3 s each
    assert len(chunks) > 1, "the audio came in one piece; expected it streamed"
    pcm = client(gw).audio.speech.create(model="mock-1", voice="alloy", input="hi",
                                         response_format="pcm")
    assert pcm.response.headers["content-type"] == "audio/pcm"
    assert not pcm.content.startswith(b"RIFF")


def test_mock_generates_and_edits_pngs(gw):
    c = client(gw)
    r = c.images.generate(model="mock-1", prompt="a red fox", n=2)
    assert len(r.data) == 2
    import base64
    png = base64.b64decode(r.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert r.data[0].b64_json != r.data[1].b64_json
    same = c.images.generate(model="mock-1", prompt="a red fox", n=2)
    assert same.data[0].b64_json == r.data[0].b64_json
    url = c.images.generate(model="mock-1", prompt="a fox", response_format="url")
    assert url.data[0].url.startswith("data:image/png;base64,")
    edit = c.images.edit(model="mock-1", image=("fox.png", png, "image/png"), prompt="make it blue")
    assert edit.data[0].revised_prompt == "make it blue"
    assert base64.b64decode(edit.data[0].b64_json).startswith(b"\x89PNG")


def test_mock_moderates_with_and_without_a_model(gw):
    c = client(gw)
    r = c.moderations.create(model="mock-1", input=["I will kill the process", "a calm sentence"])
    assert r.results[0].flagged and r.results[0].categories.violence
    assert not r.results[1].flagged
    # OpenAI's default model when none is named: routed like any other.
    d = c.moderations.create(input="hello")
    assert d.model == "omni-moderation-latest" and not d.results[0].flagged


def test_mock_reranks_in_the_cohere_jina_shape(gw):
    r = httpx.post(f"{gw.base_url}/rerank", json={
        "model": "mock-1", "query": "rust gateway",
        "documents": ["a cake recipe", {"text": "an AI gateway written in Rust"}, "rust"],
        "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [1, 2]
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
    assert body["results"][0]["document"]["text"] == "an AI gateway written in Rust"
    assert body["usage"]["total_tokens"] > 0


# --- passthrough to an OpenAI-format upstream ---------------------------------

def test_upload_goes_through_whole_with_the_model_rewritten(gw, upstream):
    audio = wav_bytes(seconds=1.0)  # 16 KB: over max_body_bytes, under max_upload_bytes
    r = client(gw).audio.transcriptions.create(model="whisper", file=("a.wav", audio, "audio/wav"),
                                               language="en")
    assert r.text.startswith("upstream transcriptions by whisper-1 of ")
    last = upstream.last()
    assert last["path"] == "/v1/audio/transcriptions"
    assert last["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert last["headers"]["authorization"] == "Bearer sk-up"
    # The file arrived byte for byte (the recorded body is lossy text; its
    # length in the upstream's answer counts raw bytes).
    sent_len = int(r.text.rsplit(" of ", 1)[1].split()[0])
    assert sent_len > len(audio)
    text = client(gw).audio.translations.create(model="whisper", file=("a.wav", audio),
                                                response_format="text")
    assert text.startswith("upstream translations by whisper-1")


def test_speech_binary_is_relayed(gw, upstream):
    r = client(gw).audio.speech.create(model="tts", voice="alloy", input="abc")
    assert r.response.headers["content-type"] == "audio/mpeg"
    assert r.content.startswith(b"ID3") and len(r.content) > 300
    assert json.loads(upstream.last()["body"])["model"] == "tts-1"


def test_json_media_passthrough(gw, upstream):
    c = client(gw)
    img = c.images.generate(model="img", prompt="a cat")
    assert img.data[0].url == "https://upstream.invalid/gpt-image-1.png"
    assert upstream.last()["path"] == "/v1/images/generations"
    m = c.moderations.create(model="guard", input="x")
    assert m.model == "omni-moderation-2024"
    r = httpx.post(f"{gw.base_url}/rerank", json={"model": "ranker", "query": "q", "documents": ["d"]})
    assert r.status_code == 200 and r.json()["model"] == "jina-reranker-v2"
    assert upstream.last()["path"] == "/v1/rerank"


# --- refusals -----------------------------------------------------------------

def test_anthropic_targets_refuse_media_by_name(gw):
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.audio.transcriptions.create(model="claude", file=("a.wav", wav_bytes()))
    assert "/v1/audio/transcriptions" in str(e.value) and "claude" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.images.generate(model="claude", prompt="x")
    assert "/v1/images/generations" in str(e.value)


def test_bad_uploads_get_clear_errors(gw):
    url = f"{gw.base_url}/audio/transcriptions"
    # Not a form.
    r = httpx.post(url, json={"model": "mock-1"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]
    # A form without the file, or without the model.
    r = httpx.post(url, data={"model": "mock-1"}, files={"other": ("x", b"1")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(url, files={"file": ("a.wav", b"123")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    # Unknown model: 404 like chat.
    r = httpx.post(url, data={"model": "nope"}, files={"file": ("a.wav", b"123")})
    assert r.status_code == 404
    # Over max_upload_bytes: 413.
    r = httpx.post(url, data={"model": "mock-1"}, files={"file": ("big.wav", b"\0" * 250_000)})
    assert r.status_code == 413
    # A JSON media body is held to max_body_bytes.
    r = httpx.post(f"{gw.base_url}/moderations", json={"model": "mock-1", "input": "x" * 5000})
    assert r.status_code == 413
    r = httpx.post(f"{gw.base_url}/images/generations", json={"model": "mock-1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{gw.base_url}/rerank", json={"model": "mock-1", "query": "q"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents"


def test_media_requests_are_counted(gw):
    client(gw).audio.transcriptions.create(model="mock-1", file=("m.wav", b"RIFF"))
    text = gw.metrics_text()
    lines = [l for l in text.splitlines() if l.startswith("sluice_requests_total{")
             and 'route="/v1/audio/transcriptions"' in l and 'status="200"' in l]
    assert lines and float(lines[0].split()[-1]) >= 1, text[:2000]


def test_keys_apply_to_media(upstream, tmp_path):
    g = Gateway(f"""
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[models]]
name = "mock-2"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "team"
sha256 = "{key_hash('sk-team-123456')}"
models = ["mock-1"]
""", tmp_path=tmp_path)
    try:
        anon = openai.OpenAI(base_url=g.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anon.audio.transcriptions.create(model="mock-1", file=("a.wav", b"RIFF"))
        team = openai.OpenAI(base_url=g.base_url, api_key="sk-team-123456", max_retries=0)
        assert team.audio.transcriptions.create(model="mock-1", file=("a.wav", b"RIFF")).text
        with pytest.raises(openai.PermissionDeniedError):
            team.images.generate(model="mock-2", prompt="x")
    finally:
        g.stop()


# --- uploads beyond max_body_bytes are streamed through -----------------------

def form_parts(model, file_bytes, boundary="sluiceTestBoundary"):
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, file_bytes, tail, f"multipart/form-data; boundary={boundary}"


def test_a_large_upload_reaches_the_upstream_before_it_is_whole(gw, upstream):
    """The gateway sends what it has while the client is still sending: the
    upstream sees the request start before the client sends the last bytes."""
    head, data, tail, ct = form_parts("whisper", b"\x01" * 60_000)
    before = upstream.stats()["requests"]

    def body():
        yield head
        yield data[:20_000]
        # Hold the rest back until the upstream has the request.
        import time
        deadline = time.time() + 10
        while upstream.stats()["requests"] == before:
            assert time.time() < deadline, "the upstream saw nothing: the upload was buffered"
            time.sleep(0.02)
        yield data[20_000:]
        yield tail

    r = httpx.post(f"{gw.base_url}/audio/transcriptions", content=body(),
                   headers={"content-type": ct}, timeout=30)
    assert r.status_code == 200, r.text
    # Model rewritten in flight; every byte arrived.
    sent = len(head) + len(data) + len(tail) + len("whisper-1") - len("whisper")
    assert r.json()["text"] == f"upstream transcriptions by whisper-1 of {sent} bytes"


def test_a_streamed_upload_over_the_limit_is_refused(gw, upstream):
    head, data, tail, ct = form_parts("whisper", b"\x02" * 300_000)

    def body():  # chunked: no length to refuse it by up front
        yield head
        for i in range(0, len(data), 10_000):
            yield data[i:i + 10_000]
        yield tail

    r = httpx.post(f"{gw.base_url}/audio/transcriptions", content=body(),
                   headers={"content-type": ct}, timeout=30)
    assert r.status_code == 413, r.text
    assert "200000" in r.json()["error"]["message"]


def test_a_large_upload_to_the_mock_is_read_whole(gw):
    data = wav_bytes(seconds=3.0)  # 48 KB
    r = client(gw).audio.transcriptions.create(model="mock-1", file=("long.wav", data, "audio/wav"))
    assert r.text == f"This is a mock transcription of long.wav ({len(data)} bytes) by mock-1."


def test_a_large_file_before_its_model_is_still_served(gw):
    # The model after the file: held until the model is in (within max_upload_bytes).
    boundary = "b9"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.wav\"\r\n\r\n").encode() \
        + b"\x03" * 20_000 \
        + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmock-1\r\n--{boundary}--\r\n".encode()
    r = httpx.post(f"{gw.base_url}/audio/transcriptions", content=body,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200 and "(20000 bytes)" in r.json()["text"]


def test_uploads_and_media_json_with_prompt_redaction_on(upstream, tmp_path):
    """Prompt redaction reads JSON bodies; a form upload is not one and must
    still be served (its `prompt` field redacted where it is text), while a
    JSON media body (images) has its prompt redacted before the upstream."""
    g = Gateway(media_config(upstream) + "\n[redaction]\nprompts = true\n", tmp_path=tmp_path)
    try:
        c = client(g)
        audio = wav_bytes()
        r = c.audio.transcriptions.create(model="mock-1", file=("hello.wav", audio, "audio/wav"))
        assert r.text.startswith("This is a mock transcription of hello.wav")
        # Read whole (under max_body_bytes), and streamed on as it arrives
        # (over it: the first bytes, with the prompt, redacted).
        for audio in [wav_bytes(seconds=0.1), wav_bytes(seconds=1.0)]:
            before = upstream.last()
            t = c.audio.transcriptions.create(model="whisper", file=("a.wav", audio, "audio/wav"),
                                              prompt="spell jane@example.com right")
            sent = upstream.last()
            assert sent != before and sent["path"] == "/v1/audio/transcriptions"
            assert t.text.startswith("upstream transcriptions by whisper-1 of ")
            # The upload arrived whole (the upstream counts raw bytes).
            assert int(t.text.rsplit(" of ", 1)[1].split()[0]) > len(audio)
            assert "jane@example.com" not in sent["body"] and "[EMAIL]" in sent["body"]
            assert 'name="model"\r\n\r\nwhisper-1\r\n' in sent["body"]
        c.images.generate(model="img", prompt="a card for jane@example.com")
        body = json.loads(upstream.last()["body"])
        assert body["prompt"] == "a card for [EMAIL]" and body["model"] == "gpt-image-1"
    finally:
        g.stop()
