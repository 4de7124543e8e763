#!/usr/bin/env python3
"""Regenerate crates/sluice/link-order.txt: the functions a serving gateway runs.

    python3 scripts/link-order.py [--bin target/release/sluice] [--n 40]

The release binary's text is ~44 MiB (wasmtime, cranelift, tract, onnx,
image codecs …), and the code a gateway runs — start-up, the proxy, the
stream paths, audit, redaction, shutdown — is scattered across it, so the
kernel's fault-around mapped ~16 MiB of it into every process. The linker
(rust-lld, the default on x86_64 Linux since Rust 1.90) places the functions
this file names first and together, in this order (hottest first), so they
fill a few MiB; everything else follows as before. `crates/sluice/build.rs`
passes it to lld for the `sluice` binary.

This script runs BIN (`valgrind --tool=callgrind --demangle=no`, whole run)
with bench/proxy.py's bare and production-shaped configurations against its
static nginx upstream: chat, the openai SDK's headers, streams (burst and
frames), Anthropic-format requests (translated), a refused request, /metrics
and health, then shuts it down and writes every executed function of BIN, by
instructions spent in it. Names the next build no longer has are skipped by
the linker (and new code simply goes after the listed functions), so a stale
list costs locality, never correctness. The names carry a hash of the crate's
build metadata, which cargo derives from the rustc version and every
dependency's version and features: a toolchain or Cargo.lock change renames
nearly all of them, and the list then does nothing until it is regenerated.
`--check` tells: the share of listed names BIN defines, and BIN's code
resident after start (exit 1 under half).

BIN itself was linked with the previous list, so the new one takes effect
only in the next build: measure wall-clock figures on a build made after
the list was written. (2026-12-06: the build a list came from had every
listed name and 6,348 KiB of code resident after start; the same commit
rebuilt with that list, 3,352 KiB.)
"""
import argparse
import collections
import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import instructions as ins  # noqa: E402
import proxy  # noqa: E402

OUT = ROOT / "crates" / "sluice" / "link-order.txt"


def get(port, path, method="GET", body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body, headers or {})
    r = c.getresponse()
    r.read()
    return r.status


def exercise(port, admin, n):
    for model, stream in (("bench", False), ("burst", True), ("frames", True)):
        ins.burst(port, n, ins.body(model, stream))
    ins.burst(port, n, ins.body("bench", False), ins.SDK_HEADERS)
    # Anthropic-format clients, translated to the OpenAI-format upstream.
    for model, stream in (("bench", False), ("burst", True)):
        msg = json.dumps({"model": model, "max_tokens": 256, "stream": stream,
                          "system": ins.SYSTEM, "messages": [{"role": "user", "content": ins.USER}]})
        for _ in range(n):
            status = get(port, "/v1/messages", "POST", msg,
                         {**ins.HEADERS, "anthropic-version": "2023-06-01"})
            assert status == 200, status
    bad = get(port, "/v1/chat/completions", "POST", b"{not json", ins.HEADERS)
    assert bad == 400, bad
    for path in ("/metrics", "/healthz", "/readyz"):
        get(admin, path)
    get(port, "/v1/models", headers=ins.HEADERS)


def run(procs, work, up, binary, prod, n):
    port, admin = proxy.free_port(), proxy.free_port()
    name = "prod" if prod else "bare"
    conf = work / f"{name}.toml"
    conf.write_text(proxy.sluice_conf(work, port, admin, up, prod=prod))
    out = work / f"cg.{name}"
    p = procs.start(name, ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
                           f"--callgrind-out-file={out}", binary, "serve", "--config", str(conf)],
                    "0", {**os.environ, "SLUICE_LOG": "warn", "SLUICE_AUDIT_KEY": proxy.AUDIT_KEY})
    proxy.wait_port(port, p)
    exercise(port, admin, n)
    procs.stop(p)
    return out


def self_costs(path, costs):
    """Self instructions per function name from one callgrind file."""
    names, fn, after_calls = {}, None, False
    for line in open(path):
        if line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn = names[m.group(1)]
                after_calls = False
        elif line.startswith("calls="):
            after_calls = True
        elif fn and (line[:1].isdigit() or line[:1] in "+-*"):
            if after_calls:
                after_calls = False  # the inclusive cost of a call, not self
                continue
            parts = line.split()
            if len(parts) >= 2 and fn:
                costs[fn] += int(parts[-1])


def defined(binary):
    """Names of the functions BIN defines (its .symtab)."""
    out = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True,
                         text=True).stdout
    return {line.split()[2] for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] in "tTwW"}


def check(binary):
    """How much of the list BIN defines, and BIN's code resident after start."""
    listed = OUT.read_text().split()
    mine = defined(binary)
    found = sum(1 for f in listed if f in mine)
    work = Path(proxy.tempfile.mkdtemp(prefix="sluice-order-"))
    procs = proxy.Procs(work)
    code, mapping, path = 0, None, str(Path(binary).resolve())
    try:
        up, _ = proxy.start_upstream(procs, work)
        t, _ = proxy.start_sluice(procs, work, up, "bare", binary=binary)
        proxy.time.sleep(0.5)  # tasks started after the listener is bound
        for line in open(f"/proc/{t.pid}/smaps"):
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                mapping = line.split()
            elif line.startswith("Rss:") and mapping and "x" in mapping[1] and mapping[-1] == path:
                code += int(line.split()[1])
    finally:
        procs.stop_all()
        proxy.shutil.rmtree(work, ignore_errors=True)
    share = found / max(len(listed), 1)
    print(json.dumps({"listed": len(listed), "defined_by_bin": found, "share": round(share, 3),
                      "code_resident_after_start_kib": code}))
    if share < 0.5:
        sys.exit("most listed names are not in BIN: regenerate the list with this toolchain")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "sluice"))
    ap.add_argument("--n", type=int, default=40, help="requests per connection and kind")
    ap.add_argument("--check", action="store_true",
                    help="only report how much of the list BIN has, and its code resident after start")
    args = ap.parse_args()
    if args.check:
        return check(args.bin)
    work = Path(proxy.tempfile.mkdtemp(prefix="sluice-order-"))
    procs = proxy.Procs(work)
    costs = collections.Counter()
    try:
        up, _ = proxy.start_upstream(procs, work)
        for prod in (False, True):
            out = run(procs, work, up, args.bin, prod, args.n)
            for f in work.glob(out.name + "*"):
                self_costs(f, costs)
    finally:
        procs.stop_all()
    mine = defined(args.bin)
    order = [f for f, c in costs.most_common() if f in mine and c > 0]
    OUT.write_text("".join(f + "\n" for f in order))
    print(json.dumps({"functions": len(order), "bytes": OUT.stat().st_size, "file": str(OUT)}))
    proxy.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
