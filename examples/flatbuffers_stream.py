#!/usr/bin/env python3
"""Reads Sluice's FlatBuffers token stream (POST /api/v2/chat/completions with
`Accept: application/x-flatbuffers`): size-prefixed `sluice.TokenChunk`
buffers, read with the code `flatc` generates from schema/token_chunk.fbs
(Debian: flatbuffers-compiler; pip install flatbuffers httpx). Generate once
into your project instead of at every start:

    flatc --python schema/token_chunk.fbs

    python examples/flatbuffers_stream.py --url http://127.0.0.1:8080 --model mock-1 "Hello!"
"""

import argparse
import importlib
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "token_chunk.fbs"


def reader():
    out = tempfile.mkdtemp(prefix="sluice-fbs-")
    subprocess.run(["flatc", "--python", "-o", out, str(SCHEMA)], check=True)
    sys.path.insert(0, out)
    importlib.import_module("sluice.Usage")
    return importlib.import_module("sluice.TokenChunk").TokenChunk


def chunks(stream):
    """Each TokenChunk's bytes as they arrive, whatever the network cut."""
    buf = b""
    for data in stream.iter_bytes():
        buf += data
        while len(buf) >= 4:
            (n,) = struct.unpack_from("<I", buf)
            if len(buf) < 4 + n:
                break
            yield buf[4:4 + n]
            buf = buf[4 + n:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="mock-1")
    ap.add_argument("--key")
    ap.add_argument("prompt", nargs="?", default="Hello!")
    args = ap.parse_args()
    TokenChunk = reader()
    headers = {"accept": "application/x-flatbuffers"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    body = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}
    with httpx.stream("POST", f"{args.url}/api/v2/chat/completions", json=body, headers=headers,
                      timeout=30) as r:
        if r.status_code != 200:  # errors before the first chunk are plain HTTP errors
            r.read()
            sys.exit(f"{r.status_code}: {r.text}")
        for buf in chunks(r):
            c = TokenChunk.GetRootAs(buf, 0)
            text = (c.Text() or b"").decode()
            if not c.IsLast():
                print(text, end="", flush=True)
                continue
            reason = (c.FinishReason() or b"").decode()
            if reason == "error":
                sys.exit(f"\nstream failed: {text}")
            u = c.Usage()
            print(f"\n  [{c.Id() + 1} chunks, {reason}, {u.CompletionTokens() if u else 0} completion tokens]")


if __name__ == "__main__":
    main()
