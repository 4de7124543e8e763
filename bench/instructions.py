#!/usr/bin/env python3
"""Instructions per proxied chat request (user space), under callgrind.

    python3 bench/instructions.py BIN [BIN ...] [--n 250] [--model bench] [--stream]
                                  [--prod] [--sdk] [--turns N] [--unique] [--keep DIR]

Each binary serves bench/proxy.py's static nginx upstream with its bare
configuration under `valgrind --tool=callgrind --instr-atstart=no`. After 30
warm-up requests per connection, instrumentation goes on
(`callgrind_control -i on`), 8 keep-alive connections send N requests each
(the ~1 KB request of bench/proxy.lua), the counters are dumped and their
total divided by the request count. `--prod` serves bench/proxy.py's
production-shaped configuration instead of the bare one (the client sends its
virtual key); `--keep DIR` keeps the callgrind files there for
`callgrind_annotate --inclusive=yes`; `--sdk` sends the headers the official
`openai` SDK sends (with `Accept-Encoding: gzip, deflate`); `--turns N` puts N
earlier exchanges (~270 bytes each, with the numbers, times, an address and a
phone number such conversations hold) before the user message, as an agent
resends its conversation, and `--unique` makes every request's user message a
new one (the rest repeats, as in a conversation). The count repeats to a fraction of a
percent whatever else the machine does, so it shows changes smaller than the
wall-clock noise of bench/proxy.py. Kernel time is not counted. Each line
also counts the clock reads per request: a read of the time-stamp counter
is a few instructions here but ~30-44 ns of wall time on this machine.

The word `nginx` in place of a binary measures bench/proxy.py's nginx
`proxy_pass` (one process: `master_process off`) the same way, bare
configuration only: the baseline the gateway's user-space work compares to.
"""
import argparse
import glob
import itertools
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy  # noqa: E402

CONNECTIONS = 8
SYSTEM = "You are a careful assistant for the benchmark team. Answer briefly and cite the runbook. " * 6
USER = ("Summarise yesterday's incident for bench-user@example.com: the gateway's p99 rose after the "
        "deploy of build 4812, retries doubled on the EU pool, and the on-call paged twice before the "
        "rollback finished. List the three follow-ups we agreed on and who owns each one.")


# An agent's earlier turns, resent with every request of its conversation:
# ticket numbers, times, an address and a phone number among the prose, as
# support and operations agents see them.
TURNS = [
    ("Ticket 88213: the EU pool answered 502 from 09:14 to 09:31 UTC. Who was paged?",
     "The on-call, Ana (ana.silva@example.com), was paged at 09:16 and acked at 09:18."),
    ("Pull the retry counts for build 4812 and compare them with build 4799.",
     "Build 4812 retried 2.1 times per failed call on average, build 4799 1.0 times; "
     "the difference is the new jitter of 250 ms."),
    ("Draft the customer note for account 3310-7781; their contact is +44 20 7946 0958.",
     "Draft: between 09:14 and 09:31 UTC on 2026-11-30 some requests failed with 502. "
     "Retries are now capped at 2 and we alert at a retry ratio of 1.5."),
]


def body(model, stream, turns=0, n=None):
    """The bench request; `turns` earlier exchanges before its user message,
    which holds the number `n` when given (a conversation's new turn)."""
    history = []
    for i in range(turns):
        q, a = TURNS[i % len(TURNS)]
        history += [{"role": "user", "content": f"{q} (turn {i})"},
                    {"role": "assistant", "content": a}]
    user = USER if n is None else f"{USER} Request {n}."
    b = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, *history,
                                      {"role": "user", "content": user}],
         "temperature": 0.2, "max_tokens": 256, "user": "bench-user@example.com",
         "metadata": {"team": "bench"}}
    if stream:
        b.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(b)


HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-client"}
# What the official `openai` Python SDK (3.57, over httpx) sends with a chat
# completion, captured from one: `Accept-Encoding` among them.
SDK_HEADERS = {**HEADERS, "accept-encoding": "gzip, deflate", "accept": "application/json",
               "user-agent": "OpenAI/Python 3.57.0", "x-stainless-lang": "python",
               "x-stainless-package-version": "3.57.0", "x-stainless-os": "Linux",
               "x-stainless-arch": "x64", "x-stainless-runtime": "CPython",
               "x-stainless-runtime-version": "3.11.7", "x-stainless-async": "false",
               "x-stainless-retry-count": "0", "x-stainless-read-timeout": "600"}


def load(port, n, payload, headers, path):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        c.request("POST", path, payload() if callable(payload) else payload, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"status {r.status}")


def burst(port, n, payload, headers=HEADERS, path="/v1/chat/completions"):
    threads = [threading.Thread(target=load, args=(port, n, payload, headers, path))
               for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(procs, work, up, i, binary, args, payload):
    port, admin = proxy.free_port(), proxy.free_port()
    if binary == "nginx":
        if args.prod:
            sys.exit("nginx has no production-shaped configuration")
        conf = work / f"ir{i}.conf"
        conf.write_text(proxy.nginx_proxy_conf(work, port, up, f"ir{i}")
                        .replace("master_process on;", "master_process off;"))
        served = ["nginx", "-c", str(conf)]
    else:
        conf = work / f"ir{i}.toml"
        conf.write_text(proxy.sluice_conf(work, port, admin, up, prod=args.prod))
        served = [binary, "serve", "--config", str(conf)]
    out = Path(args.keep or work) / f"cg.{i}"
    out.parent.mkdir(parents=True, exist_ok=True)
    p = procs.start(f"ir{i}", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               "--instr-atstart=no", *served],
                    "0", {**os.environ, "SLUICE_LOG": "warn", "SLUICE_AUDIT_KEY": proxy.AUDIT_KEY})
    for _ in range(600):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.1)
    headers = SDK_HEADERS if args.sdk else HEADERS
    # nginx forwards the path as it is; Sluice routes by the body's model.
    path = proxy.path_for(proxy.Target("nginx" if binary == "nginx" else "sluice", "", 0),
                          args.model)
    burst(port, 30, payload, headers, path)
    subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, stdout=subprocess.DEVNULL)
    burst(port, args.n, payload, headers, path)
    subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, stdout=subprocess.DEVNULL)
    time.sleep(1)
    procs.stop(p)
    files = glob.glob(f"{out}*")
    total = sum(int(line.split()[1]) for f in files for line in open(f)
                if line.startswith("summary:"))
    n = args.n * CONNECTIONS
    return total / n, [c / n for c in clock_reads(files)]


def clock_reads(files):
    """Calls to glibc's `clock_gettime` and `gettimeofday` in the callgrind
    files: those made through std's `Instant::now` and `SystemTime::now` (a
    read of the time-stamp counter: ~30-44 ns each on the bench machine,
    counted as a few instructions), and the others (Sluice's coarse clocks
    in `sluice-sys`, ~7 ns; nginx's own reads, once per event-loop turn)."""
    fine = other = 0
    for f in files:
        names, caller, callee = {}, "", None
        for line in open(f, errors="replace"):
            if line.startswith(("fn=", "cfn=")):
                key, _, rest = line.partition("=")
                ident, _, name = rest.strip().partition(" ")
                if name:
                    names[ident] = name
                if key == "fn":
                    caller = names.get(ident, "")
                else:
                    callee = names.get(ident, "")
            elif line.startswith("calls=") and callee is not None:
                if callee.startswith(("clock_gettime", "gettimeofday", "__gettimeofday")):
                    calls = int(line[len("calls="):].split()[0])
                    if "Timespec" in caller:
                        fine += calls
                    else:
                        other += calls
                callee = None
    return fine, other


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--n", type=int, default=250, help="requests per connection")
    ap.add_argument("--model", default="bench", help="bench (chat JSON), headers (the same with a hosted provider's headers) "
                         "or burst/frames (streams)")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--prod", action="store_true", help="the production-shaped configuration")
    ap.add_argument("--keep", help="a directory to keep the callgrind files in")
    ap.add_argument("--sdk", action="store_true",
                    help="send the headers the official openai SDK sends (Accept-Encoding among them)")
    ap.add_argument("--turns", type=int, default=0,
                    help="earlier exchanges (user and assistant) sent before the user message, "
                         "as an agent resends its conversation")
    ap.add_argument("--unique", action="store_true",
                    help="a different user message in every request (the rest as before)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).stdout:
            raise SystemExit(f"needs {tool} (Debian: valgrind, nginx, libnginx-mod-http-echo)")
    payload = body(args.model, args.stream, args.turns)
    if args.unique:
        count = itertools.count()
        payload = lambda: body(args.model, args.stream, args.turns, next(count))  # noqa: E731
    work = Path(proxy.tempfile.mkdtemp(prefix="sluice-instr-"))
    procs = proxy.Procs(work)
    try:
        up, _ = proxy.start_upstream(procs, work)
        for i, b in enumerate(args.binaries):
            per, (fine, other) = measure(procs, work, up, i, b, args, payload)
            print(f"{b}: {per:,.0f} instructions per request; clock reads: {fine:.2f} "
                  f"through std, {other:.2f} others", flush=True)
    finally:
        procs.stop_all()
        proxy.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
