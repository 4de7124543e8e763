#!/usr/bin/env python3
"""Profile-guided optimisation of the release `sluice` binary.

    python3 scripts/pgo.py train [--seconds 2] [--n 40]
    python3 scripts/pgo.py build [--target-dir target/pgo]
    python3 scripts/pgo.py check [--bin target/pgo/release/sluice]

`train` builds an instrumented gateway (`-Cprofile-generate`, its own target
directory: target/pgo-gen), serves bench/proxy.py's bare and
production-shaped configurations with it against the bench's static nginx
upstream, drives what a serving gateway runs (chat completions with the
bench's and the openai SDK's headers, streams in bursts and one event per
frame, Anthropic-format requests translated, a refused request, /metrics and
health) with `wrk` and a few Python clients, stops it (SIGTERM: the profile
is written at exit) and merges the counts into `crates/sluice/pgo.profdata`.

`build` builds the release binary with that profile (`-Cprofile-use`, in
target/pgo: the flags differ from a plain `cargo build --release`, so a
shared target directory would rebuild everything each time one or the other
ran). Functions whose code changed since the profile was taken have no
counts and are optimised as without one (LLVM matches a function by its name
and a hash of its control flow), so a stale profile costs speed, never
correctness; `check` tells how stale it is, and `train` refreshes it.

`llvm-profdata` must read the raw profiles of rustc's LLVM: the toolchain's
own (`rustup component add llvm-tools`), else Debian's `llvm-<N>` of the same
major version (installed when missing).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import instructions as ins  # noqa: E402
import proxy  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
link_order = __import__("link-order")  # noqa: E402

PROFILE = ROOT / "crates" / "sluice" / "pgo.profdata"


def profdata():
    """An llvm-profdata of rustc's LLVM major version: the toolchain's own
    (`llvm-tools`), else Debian's."""
    def rustc(*args):
        return subprocess.run(["rustc", *args], check=True, capture_output=True,
                              text=True).stdout
    version, sysroot = rustc("-vV"), rustc("--print", "sysroot").strip()
    host = re.search(r"host: (\S+)", version).group(1)
    own = Path(sysroot) / "lib" / "rustlib" / host / "bin" / "llvm-profdata"
    if own.exists():
        return str(own)
    major = re.search(r"LLVM version: (\d+)", version).group(1)
    name = f"llvm-profdata-{major}"
    if not shutil.which(name):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", f"llvm-{major}"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return name


def cargo_build(target_dir, rustflags):
    flags = " ".join(filter(None, [os.environ.get("RUSTFLAGS", ""), rustflags]))
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "RUSTFLAGS": flags}
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "sluice"], check=True,
                   cwd=ROOT, env=env)
    return Path(target_dir) / "release" / "sluice"


def wrk_load(url, model, stream, sdk, conns, seconds):
    env = {"MODEL": model, "STREAM": "1" if stream else "0", "SDK": "1" if sdk else "0"}
    proxy.wrk(url + "/v1/chat/completions", conns, seconds, env)


def serve(procs, work, up, binary, prod, args):
    t, p = proxy.start_sluice(procs, work, up, "prod" if prod else "bare", prod=prod, binary=binary)
    port = int(t.url.rsplit(":", 1)[1])
    admin = int(re.search(r'admin_listen = "127.0.0.1:(\d+)"',
                          (work / f"{'prod' if prod else 'bare'}.toml").read_text()).group(1))
    for model, stream, sdk, conns in (("bench", False, False, 16), ("bench", False, True, 16),
                                      ("bench", False, False, 64), ("burst", True, False, 16),
                                      ("frames", True, False, 64)):
        wrk_load(t.url, model, stream, sdk, conns, args.seconds)
    link_order.exercise(port, admin, args.n)
    # A conversation's turns, as an agent resends them.
    ins.burst(port, args.n, ins.body("bench", False, turns=6))
    procs.stop(p)
    if p.returncode != 0:
        sys.exit(f"the instrumented gateway exited with {p.returncode}: see {work}")


def train(args):
    proxy.ensure_tools()
    tool = profdata()
    raw = Path(tempfile.mkdtemp(prefix="sluice-pgo-raw-"))
    binary = args.instrumented or cargo_build(ROOT / "target" / "pgo-gen",
                                              f"-Cprofile-generate={raw}")
    # Where the gateway writes its counts, whatever directory it was built with.
    os.environ["LLVM_PROFILE_FILE"] = str(raw / "sluice-%m-%p.profraw")
    work = Path(tempfile.mkdtemp(prefix="sluice-pgo-"))
    procs = proxy.Procs(work)
    try:
        up, _ = proxy.start_upstream(procs, work)
        for prod in (False, True):
            serve(procs, work, up, binary, prod, args)
    finally:
        procs.stop_all()
    files = sorted(raw.glob("*.profraw"))
    if not files:
        sys.exit(f"no profile was written into {raw}")
    subprocess.run([tool, "merge", "--sparse", "-o", str(PROFILE), *map(str, files)], check=True)
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"profile": str(PROFILE), "bytes": PROFILE.stat().st_size,
                      "raw_files": len(files)}))


def use_flags():
    # A stale profile's mismatches are expected, not news on every build.
    return f"-Cprofile-use={PROFILE} -Cllvm-args=-no-pgo-warn-mismatch"


def build(args):
    if not PROFILE.exists():
        sys.exit(f"{PROFILE} is missing: run `python3 scripts/pgo.py train`")
    print(cargo_build(args.target_dir, use_flags()))


def check(args):
    """How much of the profile names functions BIN still defines.

    A profile's functions are named by their symbols (behind the codegen
    unit's name for local ones), which carry a hash of their crate's build
    metadata: a toolchain or Cargo.lock change renames nearly all of them,
    and the profile then does nothing until it is taken again. (A function
    whose code changed keeps its name but loses its counts; that is not
    seen here.) Functions inlined everywhere have no symbol of their own, so
    a fresh profile reads well under 1.0 too: compare with the figure noted
    when it was taken."""
    out = subprocess.run([profdata(), "show", "--all-functions", str(PROFILE)], check=True,
                         capture_output=True, text=True).stdout
    names = {m.split(";")[-1] for m in re.findall(r"^  (\S+):$", out, re.M)}
    mine = link_order.defined(args.bin)
    found = sum(1 for n in names if n in mine)
    share = found / max(len(names), 1)
    print(json.dumps({"profiled": len(names), "defined_by_bin": found, "share": round(share, 3)}))
    if share < 0.2:
        sys.exit("most profiled functions are not in BIN: take the profile again "
                 "(`python3 scripts/pgo.py train`)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--seconds", type=int, default=2, help="seconds of each wrk load")
    t.add_argument("--n", type=int, default=40, help="requests per connection and kind")
    t.add_argument("--instrumented", help="an instrumented sluice already built (skips the build)")
    b = sub.add_parser("build")
    b.add_argument("--target-dir", default=str(ROOT / "target" / "pgo"))
    c = sub.add_parser("check")
    c.add_argument("--bin", default=str(ROOT / "target" / "pgo" / "release" / "sluice"))
    args = ap.parse_args()
    {"train": train, "build": build, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()
