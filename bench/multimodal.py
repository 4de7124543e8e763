"""Multimodal conversions, measured as ratios within one run.

- fan-out: a request with an image and an audio part, each converted by a routed
  model the upstream answers after DELAY ms, against a request with the image
  alone (concurrent branches: ~1.0; one after the other: ~2.0);
- OCR: a request with a rendered 640x200 image read by the local PP-OCRv4
  processor, against the same request with its text typed in (the conversion's
  added latency, and the gateway's CPU per image);
- VAD: a 5.8 s WAV trimmed by the local Silero VAD before its transcription,
  against the same audio transcribed untrimmed (added latency and CPU per
  second of audio).

The gateway does the OCR and VAD work, so it is the saturated process; each
phase prints the gateway's CPU share and this script's (client and upstream).

usage: .venv/bin/python bench/multimodal.py [--bin target/release/sluice] [--n 20] [--delay 200]
"""

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SLUICE_TEST_MODELS", ROOT / "tests/models/.media"))
SPEECH = (ROOT / "tests/fixtures/media/speech.wav").read_bytes()
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def upstream(delay):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # One segment per answer: no delayed-ACK stalls on keep-alive.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path.endswith("/audio/transcriptions"):
                time.sleep(delay)
                out = {"text": "the quick brown fox"}
            else:
                req = json.loads(body)
                if req["model"] == "vision-1":
                    time.sleep(delay)
                out = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "ok"}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    s = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{s.server_address[1]}"


CONFIG = """
[logging]
level = "warn"

[[providers]]
name = "up"
kind = "openai"
base_url = "{up}/v1"

[[processors]]
name = "ocr"
kind = "ocr"
det_model = "{models}/ch_PP-OCRv4_det_infer.onnx"
rec_model = "{models}/ch_PP-OCRv4_rec_infer.onnx"

[[processors]]
name = "vad"
kind = "vad"
model = "{models}/silero_vad_v6.onnx"

[[models]]
name = "whisper"
targets = [{{ provider = "up", model = "whisper-1" }}]

[[models]]
name = "vision"
targets = [{{ provider = "up", model = "vision-1" }}]

[[models]]
name = "by-models"
targets = [{{ provider = "up", model = "text-1" }}]
[models.convert]
audio = {{ model = "whisper", timeout_ms = 20000 }}
image = {{ model = "vision", timeout_ms = 20000 }}

[[models]]
name = "local"
targets = [{{ provider = "up", model = "text-1" }}]
[models.convert]
audio = {{ model = "whisper", processor = "vad", timeout_ms = 20000 }}
image = {{ processor = "ocr", timeout_ms = 20000 }}
"""


def png():
    img = Image.new("RGB", (640, 200), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    d.text((30, 30), "INVOICE 4711", fill="black", font=font)
    d.text((30, 100), "Total due 93 EUR", fill="black", font=font)
    out = io.BytesIO()
    img.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def main():
    ap = argparse.ArgumentParser()
    default_bin = ROOT / "target/release/sluice"
    if not default_bin.exists():
        default_bin = ROOT / "target/debug/sluice"
    ap.add_argument("--bin", default=str(default_bin))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--delay", type=int, default=200, help="ms the upstream takes per conversion")
    args = ap.parse_args()
    up = upstream(args.delay / 1000)
    tmp = tempfile.mkdtemp()
    cfg = Path(tmp) / "sluice.toml"
    cfg.write_text(CONFIG.format(up=up, models=MODELS))
    gw = subprocess.Popen([args.bin, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                           "--admin-listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    words = gw.stdout.readline().split()
    base = words[words.index("api") + 1] + "/v1"
    client = httpx.Client(timeout=60)
    image = {"type": "image_url", "image_url": {"url": png()}}
    remote_image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(SPEECH).decode(), "format": "wav"}}
    typed = {"type": "text", "text": "[image 1: INVOICE 4711\nTotal due 93 EUR]"}
    print(f"binary: {args.bin}; {args.n} requests per case, median; upstream delay {args.delay} ms")

    def run(model, parts):
        body = {"model": model, "messages": [{"role": "user", "content": parts}]}
        client.post(f"{base}/chat/completions", json=body).raise_for_status()  # warm
        times = []
        g0, me0, w0 = cpu_seconds(gw.pid), time.process_time(), time.monotonic()
        for _ in range(args.n):
            t = time.monotonic()
            r = client.post(f"{base}/chat/completions", json=body)
            r.raise_for_status()
            times.append(time.monotonic() - t)
        wall = time.monotonic() - w0
        g, me = cpu_seconds(gw.pid) - g0, time.process_time() - me0
        return statistics.median(times) * 1000, g / args.n * 1000, g / wall, me / wall

    def row(name, r):
        print(f"  {name:<34} median {r[0]:8.1f} ms   gateway CPU {r[1]:7.1f} ms/req"
              f"   CPU share: gateway {r[2]:4.0%}, client+upstream {r[3]:4.0%}")
        return r

    try:
        print("fan-out (routed converter models):")
        one = row("image alone", run("by-models", [remote_image]))
        both = row("image + audio", run("by-models", [remote_image, audio]))
        print(f"  -> both / one = {both[0] / one[0]:.2f} (concurrent ~1.0, sequential ~2.0)")
        print("OCR (local PP-OCRv4):")
        text = row("text typed in (baseline)", run("local", [typed]))
        ocr = row("rendered 640x200 image", run("local", [image]))
        print(f"  -> OCR adds {ocr[0] - text[0]:.1f} ms and {ocr[1] - text[1]:.1f} ms of gateway CPU per image")
        print("VAD (local Silero) before transcription, 5.8 s of WAV:")
        plain = row("transcribed as is", run("by-models", [audio]))
        vad = row("trimmed first", run("local", [audio]))
        secs = 5.8
        print(f"  -> VAD adds {vad[0] - plain[0]:.1f} ms ({(vad[1] - plain[1]) / secs:.1f} ms CPU per second of audio)")
    finally:
        gw.terminate()
        gw.wait()


if __name__ == "__main__":
    sys.exit(main())
