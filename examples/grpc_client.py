#!/usr/bin/env python3
"""Sluice over gRPC with the official `grpcio` client: a whole chat, then the
same chat streamed token by token (sluice.v1.Gateway, proto/sluice/v1/gateway.proto).

Stubs are generated from the proto with grpcio-tools (pip install grpcio
grpcio-tools) into a temporary directory; generate them once into your
project instead:

    python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. proto/sluice/v1/gateway.proto

    python examples/grpc_client.py --target 127.0.0.1:8080 --model mock-1 "Hello!"
"""

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO = Path(__file__).resolve().parent.parent / "proto"


def stubs():
    out = tempfile.mkdtemp(prefix="sluice-stubs-")
    if protoc.main(["protoc", f"-I{PROTO}", f"--python_out={out}", f"--grpc_python_out={out}",
                    str(PROTO / "sluice/v1/gateway.proto")]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return importlib.import_module("sluice.v1.gateway_pb2"), importlib.import_module("sluice.v1.gateway_pb2_grpc")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:8080")
    ap.add_argument("--model", default="mock-1")
    ap.add_argument("--key", help="a virtual key, sent as `authorization: Bearer <key>`")
    ap.add_argument("prompt", nargs="?", default="Hello!")
    args = ap.parse_args()
    pb, rpc = stubs()
    metadata = [("authorization", f"Bearer {args.key}")] if args.key else []
    req = pb.ChatRequest(model=args.model, messages=[pb.Message(role="user", content=args.prompt)],
                         max_tokens=100)
    with grpc.insecure_channel(args.target) as channel:
        gw = rpc.GatewayStub(channel)
        try:
            reply = gw.Chat(req, metadata=metadata, timeout=30)
            print(f"chat: {reply.content!r} ({reply.finish_reason}, {reply.usage.total_tokens} tokens)")
            print("stream: ", end="", flush=True)
            for chunk in gw.ChatStream(req, metadata=metadata, timeout=30):
                print(chunk.text, end="", flush=True)
                if chunk.is_last:
                    print(f"\n  [{chunk.id + 1} chunks, {chunk.finish_reason}, "
                          f"{chunk.usage.completion_tokens} completion tokens]")
        except grpc.RpcError as e:  # statuses carry the HTTP API's messages
            sys.exit(f"{e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
