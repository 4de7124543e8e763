#!/usr/bin/env python3
"""The proxy measured, not the load generator: Sluice against nginx `proxy_pass`.

    python3 bench/proxy.py [--duration 5] [--rounds 3] [--only chat,sdk,stream,c2000,cores]

The upstream is a second nginx (one worker, core 1) answering a static chat
completion, a static 64-token SSE body (burst: one write), the same events one
per write 1 ms apart (frames: echo module), and the chat completion after
150 ms (echo_sleep) — cheaper per request than either proxy. The proxy under
test gets core 0; `wrk` shares core 1 with the upstream. Every row prints each
process's CPU share; a row whose proxy is not saturated while core 1 is says so
(its ratios then measure the generator). Three rounds, medians, one table;
writes bench/results/proxy.json.

Cases: nginx (1 worker, upstream keep-alive), Sluice bare (defaults), Sluice
production-shaped (a virtual key with rpm/tpm, audit to a file with one
SM4-GCM-encrypted field, metrics, OTLP tracing sampled at 0.1, prompts
redacted before they go upstream), at 16 and 64 connections; the same chat
request with the headers the official openai SDK sends (`sdk`, c=16: its
`Accept-Encoding` among them); streams (CPU per token); 2,000 connections against the 150 ms upstream (fresh processes, peak
RSS); Sluice with 1 and 2 worker threads. With `perf` on the PATH, each case
also counts the proxy's system calls per request (and the failed ones, such
as reads that would block) in a separate 1 s run: a figure the machine's
noise does not move.
"""
import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
LUA = ROOT / "bench" / "proxy.lua"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
TOKENS = 64
# ANSWER_BYTES=N: the chat answer's content grown so the answer is ~N bytes
# (a long completion), served from a file (nginx's `return` takes < 4 KiB).
ANSWER_BYTES = int(os.environ.get("ANSWER_BYTES") or 0)


def short_json():
    """The bench's chat answer (~500 bytes)."""
    return json.dumps(chat_answer(), separators=(",", ":"))


def chat_json():
    """The `chat` rows' answer: the bench's, or grown to ANSWER_BYTES."""
    text = short_json()
    if len(text) >= ANSWER_BYTES:
        return text
    answer = chat_answer()
    line = answer["choices"][0]["message"]["content"]
    answer["choices"][0]["message"]["content"] = (line + " ") * ((ANSWER_BYTES - len(text)) // len(line) + 1)
    return json.dumps(answer, separators=(",", ":"))


def chat_location(work):
    """The upstream's plain chat answer: `return` it, or (ANSWER_BYTES) a
    file, its POST turned into the file's GET."""
    if not ANSWER_BYTES:
        return f"location = /v1/chat/completions {{ default_type application/json; return 200 {ngx_quote(chat_json())}; }}"
    (work / "www" / "v1" / "chat").mkdir(parents=True, exist_ok=True)
    (work / "www" / "v1" / "chat" / "completions").write_text(chat_json())
    os.chmod(work, 0o755)  # nginx's workers read it as another user
    return (f"location = /v1/chat/completions {{ default_type application/json; root {work}/www; "
            "open_file_cache max=16 inactive=3600s; open_file_cache_valid 3600s; "
            "error_page 405 =200 $uri; }")


def chat_answer():
    return ({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1767225600,
        "model": "bench-model", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
            "role": "assistant", "refusal": None,
            "content": "The p99 rose because the EU pool retried twice per failed call; "
                       "follow-ups: cap retries (Ana), alert on retry ratio (Bo), "
                       "canary the next build (Chen)."}}],
        "usage": {"prompt_tokens": 212, "completion_tokens": 38, "total_tokens": 250},
    })


def sse_events():
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1767225600,
            "model": "bench-model", "system_fingerprint": "fp_bench"}
    out = []
    for i in range(TOKENS):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" tok{i}"}
        ev = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": "stop" if i == TOKENS - 1 else None}])
        out.append("data: " + json.dumps(ev, separators=(",", ":")) + "\n\n")
    usage = dict(base, choices=[], usage={"prompt_tokens": 212, "completion_tokens": TOKENS,
                                          "total_tokens": 212 + TOKENS})
    out.append("data: " + json.dumps(usage, separators=(",", ":")) + "\n\n")
    out.append("data: [DONE]\n\n")
    return out


def ngx_quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"process {proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def user_sys_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        return stat_ticks(f.read())


def stat_ticks(stat):
    """User and system clock ticks from the text of a /proc/PID/stat."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def ticks(pid):
    return sum(user_sys_ticks(pid))


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


class AnonPeak:
    """Peak anonymous memory (RssAnon, KiB) of `pid` while in use, sampled
    every 50 ms. VmHWM also counts the executable's file-backed pages, which
    differ between copies of one binary with what the page cache holds, so
    this is the figure that compares what builds allocate."""

    def __init__(self, pid):
        self.pid, self.peak, self.on = pid, 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.on = False
        self.thread.join()

    def sample(self):
        while self.on:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    kib = int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1))
            except (OSError, AttributeError):
                return
            self.peak = max(self.peak, kib)
            time.sleep(0.05)


def core_busy():
    """(busy, total) jiffies of cpu0 and cpu1."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu([01]) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[int(m.group(1))] = (sum(v) - v[3] - v[4], sum(v))
    return out


def nofile():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Procs:
    def __init__(self, work):
        self.work, self.all = work, []

    def start(self, name, argv, cpus, env=None):
        log = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(["taskset", "-c", cpus, *argv], stdout=log, stderr=log,
                             env=env, preexec_fn=nofile)
        self.all.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.all:
            self.stop(p)


def nginx_worker(master):
    for _ in range(100):
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == master.pid:
                            return int(d)
                except OSError:
                    pass
        time.sleep(0.05)
    sys.exit("nginx started no worker")


NGINX_COMMON = """daemon off;
master_process on;
events {{ worker_connections 16384; multi_accept on; }}
pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
"""


# The headers a hosted provider answers a chat completion with (OpenAI's,
# behind Cloudflare; values made up), for `bench/instructions.py --model
# headers`: the bench's static answer carries nginx's five, a real one ~24,
# and every proxy relays each.
PROVIDER_HEADERS = [
    ("access-control-expose-headers", "X-Request-ID"),
    ("openai-organization", "user-bench"),
    ("openai-processing-ms", "412"),
    ("openai-project", "proj_bench"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "29999950"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "0s"),
    ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("cf-cache-status", "DYNAMIC"),
    ("set-cookie", "__cf_bm=bench; path=/; HttpOnly; Secure; SameSite=None"),
    ("set-cookie", "_cfuvid=bench; path=/; HttpOnly; Secure; SameSite=None"),
    ("x-content-type-options", "nosniff"),
    ("cf-ray", "8f1a2b3c4d5e6f70-AMS"),
    ("alt-svc", 'h3=":443"; ma=86400'),
]


def upstream_conf(work, port):
    events = sse_events()
    frames = "\n".join(f"      echo -n {ngx_quote(e)}; echo_flush; echo_sleep 0.001;" for e in events)
    burst = "\n".join(f"      echo -n {ngx_quote(e)};" for e in events)
    provider_headers = "\n".join(f"      add_header {k} {ngx_quote(v)};" for k, v in PROVIDER_HEADERS)
    return (f"load_module {ECHO_MODULE};\nworker_processes 1;\n"
            + NGINX_COMMON.format(work=work, name="upstream") + f"""
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {work}/up-body;
  server {{
    listen 127.0.0.1:{port} backlog=8192;
    {chat_location(work)}
    location = /burst/v1/chat/completions {{
      default_type text/event-stream;
{burst}
    }}
    location = /frames/v1/chat/completions {{
      default_type text/event-stream;
{frames}
    }}
    location = /headers/v1/chat/completions {{
      default_type application/json;
{provider_headers}
      return 200 {ngx_quote(short_json())};
    }}
    location = /slow/v1/chat/completions {{ default_type application/json; echo_sleep 0.15; echo -n {ngx_quote(short_json())}; }}
    location = /v1/traces {{ default_type application/x-protobuf; return 200 ''; }}
  }}
}}
""")


def nginx_proxy_conf(work, port, up, name):
    return ("worker_processes 1;\n" + NGINX_COMMON.format(work=work, name=name) + f"""
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  upstream up {{ server 127.0.0.1:{up}; keepalive 4096; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=8192;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")


def sluice_conf(work, port, admin, up, prod=False, workers=None):
    server = f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
    if workers:
        server += f"workers = {workers}\n"
    providers = ""
    models = ""
    for name, prefix in (("bench", ""), ("burst", "/burst"), ("frames", "/frames"), ("slow", "/slow"),
                         ("headers", "/headers")):
        providers += (f'[[providers]]\nname = "{name}"\nkind = "openai"\n'
                      f'base_url = "http://127.0.0.1:{up}{prefix}/v1"\napi_key = "sk-bench"\n')
        models += f'[[models]]\nname = "{name}"\ntargets = [{{ provider = "{name}", model = "bench-model" }}]\n'
    text = server + providers + models
    if prod:
        sha = subprocess.run([str(SLUICE), "hash-key", "sk-bench-client"], check=True,
                             capture_output=True, text=True).stdout.strip()
        text += (f'[[keys]]\nname = "bench"\nsha256 = "{sha}"\nrpm = 100000000\ntpm = 100000000000\n'
                 f'[audit]\npath = "{work}/audit.jsonl"\nfields = ["metadata.team"]\nencrypt_fields = ["user"]\n'
                 f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{up}"\notlp_protocol = "http/protobuf"\n'
                 f'sampling_ratio = 0.1\n[redaction]\nprompts = true\n')
    return text


def wrk(url, conns, dur, env, timeout=5):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{dur}s", f"--timeout={timeout}s",
           "-s", str(LUA), url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **env}, preexec_fn=nofile)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"wrk failed: {err}")
    return json.loads(out.strip().splitlines()[-1])


class Target:
    def __init__(self, name, url, pid, path="/v1/chat/completions"):
        self.name, self.url, self.pid, self.path = name, url, pid, path


def measure(t, up_pid, conns, dur, env, per=1, timeout=5):
    """One wrk run at `conns` against target `t`: rates, latency, CPU."""
    wrk(t.url + env.get("_PATH", t.path), conns, 1, env, timeout)  # warm-up
    c0, u0, b0 = user_sys_ticks(t.pid), ticks(up_pid), core_busy()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = wrk(t.url + env.get("_PATH", t.path), conns, dur, env, timeout)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c1, u1, b1 = user_sys_ticks(t.pid), ticks(up_pid), core_busy()
    secs = s["duration_us"] / 1e6
    user, system = ((c1[i] - c0[i]) / HZ for i in (0, 1))
    gw = user + system
    each = 1e6 / max(s["requests"] * per, 1)
    calls, failed = syscalls(t, conns, env, per, timeout)
    return {
        "syscalls": calls, "failed_syscalls": failed,
        "rps": s["requests"] / secs,
        "p50_ms": s["p50_us"] / 1e3, "p95_ms": s["p95_us"] / 1e3, "p99_ms": s["p99_us"] / 1e3,
        "errors": s["socket_errors"] + s["non2xx"],
        "cpu_us": gw * each,
        # Where the CPU goes: the proxy's own code, or the kernel (system
        # calls, TCP), which costs nginx and Sluice alike.
        "user_us": user * each, "sys_us": system * each,
        "proxy_share": gw / secs,
        "upstream_share": (u1 - u0) / HZ / secs,
        "wrk_share": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / secs,
        "core0_busy": (b1[0][0] - b0[0][0]) / max(b1[0][1] - b0[0][1], 1),
        "core1_busy": (b1[1][0] - b0[1][0]) / max(b1[1][1] - b0[1][1], 1),
    }


def syscalls(t, conns, env, per, timeout):
    """System calls the proxy makes per request (per token for streams),
    and how many of them failed (a read that would block, most often),
    counted by `perf stat` on the raw_syscalls tracepoints over a 1 s run
    of its own: counting costs the proxy a little on every call, so not
    during the run whose CPU is measured. wrk opens its connections anew
    for that run, so their accepts and first reads are in the count (at
    2,000 connections, 2,000 of each for ~12,800 requests). (None, None)
    without perf."""
    if not shutil.which("perf"):
        return None, None
    fd, name = tempfile.mkstemp(prefix="sluice-syscalls-")
    os.close(fd)
    out = Path(name)
    p = subprocess.Popen(["perf", "stat", "-x,", "-o", str(out), "-e", "raw_syscalls:sys_enter",
                          "-e", "raw_syscalls:sys_exit", "--filter", "ret < 0", "-p", str(t.pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    s = wrk(t.url + env.get("_PATH", t.path), conns, 1, env, timeout)
    p.send_signal(signal.SIGINT)
    p.wait()
    counts = {}
    for line in out.read_text().splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2]] = int(f[0])
    out.unlink()
    n = max(s["requests"] * per, 1)
    if "raw_syscalls:sys_enter" not in counts:
        return None, None
    return counts["raw_syscalls:sys_enter"] / n, counts.get("raw_syscalls:sys_exit", 0) / n


def median_row(runs):
    return {k: statistics.median(r[k] for r in runs) if None not in (r[k] for r in runs) else None
            for k in runs[0]}


def check(name, row, saturate=True):
    note = ""
    if row["errors"]:
        note += f" {row['errors']:.0f} errors!"
    if saturate and row["proxy_share"] < 0.9:
        note += (" generator saturated: proxy not the bottleneck" if row["core1_busy"] > 0.95
                 else " proxy below 90% of its core")
    return note


def ensure_tools():
    missing = [t for t in ("wrk", "nginx", "taskset") if not shutil.which(t)]
    if missing or not os.path.exists(ECHO_MODULE):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx",
                        "libnginx-mod-http-echo", "util-linux"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if os.cpu_count() < 2:
        sys.exit("needs 2 cores")


SLUICE = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
AUDIT_KEY = "000102030405060708090a0b0c0d0e0f"


def start_upstream(procs, work):
    port = free_port()
    (work / "upstream.conf").write_text(upstream_conf(work, port))
    m = procs.start("upstream", ["nginx", "-c", str(work / "upstream.conf")], "1")
    wait_port(port, m)
    return port, nginx_worker(m)


def start_nginx(procs, work, up, name="nginx"):
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(nginx_proxy_conf(work, port, up, name))
    m = procs.start(name, ["nginx", "-c", str(conf)], "0")
    wait_port(port, m)
    return Target("nginx", f"http://127.0.0.1:{port}", nginx_worker(m)), m


def start_sluice(procs, work, up, name, prod=False, workers=None, cpus="0", binary=None):
    port, admin = free_port(), free_port()
    conf = work / f"{name}.toml"
    conf.write_text(sluice_conf(work, port, admin, up, prod, workers))
    env = {**os.environ, "SLUICE_LOG": "warn", "SLUICE_AUDIT_KEY": AUDIT_KEY}
    p = procs.start(name, [str(binary or SLUICE), "serve", "--config", str(conf)], cpus, env)
    wait_port(port, p)
    return Target(name, f"http://127.0.0.1:{port}", p.pid), p


def path_for(t, model):
    """nginx forwards the path as it is; Sluice routes by the model."""
    if t.name == "nginx" or t.name == "direct":
        return {"bench": "", "slow": "/slow"}.get(model, "/" + model) + "/v1/chat/completions"
    return "/v1/chat/completions"


def run_case(results, key, t, up_pid, conns, dur, model, stream=False, timeout=5, sdk=False):
    env = {"MODEL": model, "STREAM": "1" if stream else "0", "SDK": "1" if sdk else "0"}
    t.path = path_for(t, model)
    row = measure(t, up_pid, conns, dur, env, TOKENS if stream else 1, timeout)
    results.setdefault(key, []).append(row)
    print(f"  {key}: {row['rps']:.0f}/s p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms, "
          f"{row['cpu_us']:.2f} µs CPU each ({row['user_us']:.1f} user), "
          f"proxy {row['proxy_share']:.0%} upstream {row['upstream_share']:.0%} "
          f"wrk {row['wrk_share']:.0%}, system calls {calls(row) or '-'}", flush=True)


def section_chat(args, procs, work, up, up_pid, results, rss):
    ng, _ = start_nginx(procs, work, up)
    bare, _ = start_sluice(procs, work, up, "sluice-bare")
    prod, _ = start_sluice(procs, work, up, "sluice-prod", prod=True)
    targets = [ng, bare, prod]
    if args.base:
        base, _ = start_sluice(procs, work, up, "sluice-base", binary=args.base)
        base_prod, _ = start_sluice(procs, work, up, "sluice-base-prod", prod=True,
                                    binary=args.base)
        targets[2:2] = [base]
        targets.append(base_prod)
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}", flush=True)
        if "chat" in args.only:
            for c in (16, 64):
                for t in targets:
                    run_case(results, f"chat {t.name} c={c}", t, up_pid, c, args.duration, "bench")
        if "sdk" in args.only:
            for t in targets:
                run_case(results, f"sdk {t.name} c=16", t, up_pid, 16, args.duration, "bench",
                         sdk=True)
        if "stream" in args.only:
            for mode in ("burst", "frames"):
                for t in (t for t in targets if not t.name.endswith("prod")):
                    run_case(results, f"stream-{mode} {t.name} c=64", t, up_pid, 64, args.duration,
                             mode, stream=True)
    for t in targets:
        rss[t.name] = hwm_kib(t.pid) / 1024


def section_c2000(args, procs, work, up, up_pid, results, rss):
    direct = Target("direct", f"http://127.0.0.1:{up}", up_pid)
    ng, ngm = start_nginx(procs, work, up, "nginx2k")
    bare, bp = start_sluice(procs, work, up, "sluice-2k")
    anon = {}
    for rnd in range(args.rounds):
        print(f"c=2000 round {rnd + 1}", flush=True)
        for t in (direct, ng, bare):
            with AnonPeak(t.pid) as a:
                run_case(results, f"slow {t.name} c=2000", t, up_pid, 2000, max(args.duration, 8),
                         "slow", timeout=10)
            anon[t.name] = max(anon.get(t.name, 0), a.peak)
    rss["nginx c=2000"] = hwm_kib(ng.pid) / 1024
    rss["sluice-bare c=2000"] = hwm_kib(bare.pid) / 1024
    rss["nginx c=2000 anon"] = anon["nginx"] / 1024
    rss["sluice-bare c=2000 anon"] = anon[bare.name] / 1024
    procs.stop(ngm)
    procs.stop(bp)


def section_cores(args, procs, work, up, up_pid, results):
    one, p1 = start_sluice(procs, work, up, "sluice-w1", workers=1, cpus="0")
    two, p2 = start_sluice(procs, work, up, "sluice-w2", workers=2, cpus="0,1")
    for rnd in range(args.rounds):
        print(f"cores round {rnd + 1}", flush=True)
        for t, label in ((one, "1 worker, core 0"), (two, "2 workers, cores 0-1")):
            run_case(results, f"cores {label} c=64", t, up_pid, 64, args.duration, "bench")
    procs.stop(p1)
    procs.stop(p2)


def split(row):
    """User / system µs of a row (rows measured before the split have none)."""
    return f"{row['user_us']:.1f} / {row['sys_us']:.1f}" if "user_us" in row else ""


def calls(row):
    """System calls per request, and failed ones (rows without perf: none)."""
    if row.get("syscalls") is None:
        return ""
    return f"{row['syscalls']:.2f} ({row['failed_syscalls']:.2f})"


def paired(results, k, against):
    """CPU per request of row `k` over row `against`, taken round by round
    (the two ran minutes apart in the same round, so the machine's slow
    drifts cancel): the median, and the lowest and highest round."""
    a, b = results.get(k, []), results.get(against, [])
    if not a or len(a) != len(b):
        return ""
    r = sorted(x["cpu_us"] / y["cpu_us"] for x, y in zip(a, b))
    if len(r) == 1:
        return f"{r[0]:.2f}"
    return f"{statistics.median(r):.2f} ({r[0]:.2f}–{r[-1]:.2f})"


def table(results, rss):
    med = {k: median_row(v) for k, v in results.items()}
    lines = ["| case | req/s | p50 ms | p95 ms | p99 ms | CPU µs/req (per token for streams) "
             "| of it user / system | × nginx CPU | × nginx CPU per round (lowest–highest) "
             "| × bare CPU per round | × nginx req/s | proxy / upstream / wrk CPU share "
             "| system calls (failed) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in med.items():
        kind, name, conns = k.split(" ", 2) if k.count(" ") == 2 else (k, "", "")
        base = med.get(f"{kind} nginx {conns}") if not k.startswith("cores") else None
        vs_cpu = f"{r['cpu_us'] / base['cpu_us']:.2f}" if base and name != "nginx" else ""
        per_round = paired(results, k, f"{kind} nginx {conns}") if base and name != "nginx" else ""
        # The production-shaped rows against the bare one of the same build.
        bare = {"sluice-prod": "sluice-bare", "sluice-base-prod": "sluice-base"}.get(name)
        vs_bare = paired(results, k, f"{kind} {bare} {conns}") if bare else ""
        vs_rps = f"{r['rps'] / base['rps']:.2f}" if base and name != "nginx" else ""
        saturate = not (k.startswith("slow") or k.startswith("stream-frames") or k.startswith("cores"))
        lines.append(
            f"| {k} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['cpu_us']:.2f} | {split(r)} | {vs_cpu} | {per_round} | {vs_bare} | {vs_rps} "
            f"| {r['proxy_share']:.0%} / "
            f"{r['upstream_share']:.0%} / {r['wrk_share']:.0%} | {calls(r)} "
            f"|{check(k, r, saturate and name != 'direct')} |")
    lines.append("")
    lines.append("peak RSS (VmHWM, MiB; 'anon': peak RssAnon, sampled): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in rss.items()))
    return "\n".join(lines), med


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="chat,sdk,stream,c2000,cores")
    ap.add_argument("--base", help="another Sluice binary measured beside this one, bare and "
                    "production-shaped (before/after)")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    ensure_tools()
    if "SLUICE_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "sluice"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="sluice-proxy-"))
    procs = Procs(work)
    results, rss = {}, {}
    try:
        up, up_pid = start_upstream(procs, work)
        if args.only & {"chat", "sdk", "stream"}:
            section_chat(args, procs, work, up, up_pid, results, rss)
        if "c2000" in args.only:
            section_c2000(args, procs, work, up, up_pid, results, rss)
        if "cores" in args.only:
            section_cores(args, procs, work, up, up_pid, results)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    text, med = table(results, rss)
    print(f"\n{args.rounds} rounds of {args.duration} s, medians; {os.cpu_count()} cores\n")
    print(text)
    # Rows this run measured replace their earlier figures; the others
    # (an `--only` run) are kept, each with the date it was measured.
    out = ROOT / "bench" / "results" / "proxy.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dates = old.get("measured", {}) or {k: old.get("date") for k in old.get("median", {})}
    dates.update({k: now for k in med})
    out.write_text(json.dumps({"date": now, "rounds": args.rounds, "duration_s": args.duration,
                               "measured": dates,
                               "median": {**old.get("median", {}), **med},
                               "peak_rss_mib": {**old.get("peak_rss_mib", {}), **rss},
                               "runs": {**old.get("runs", {}), **results}}, indent=1))


if __name__ == "__main__":
    main()
