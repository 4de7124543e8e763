"""The C ABI and the Node binding against the mock upstream: the C example
(examples/c/chat.c, built here with `cc` against include/sluice.h, under
AddressSanitizer and LeakSanitizer when the compiler has them; and linked
statically), and the Node package's tests (node --test)."""

import os
import shutil
import subprocess

import pytest

from conftest import PROFILE, ROOT, TARGET, UPSTREAM_KEY, proxy_config

LIB_DIR = TARGET / PROFILE


def config(tmp_path, upstream):
    p = tmp_path / "sluice.toml"
    p.write_text(proxy_config(upstream.url))
    return p


def cc(*args):
    return subprocess.run(["cc", *args], capture_output=True, text=True, timeout=300)


def asan_works(tmp_path):
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    return cc("-fsanitize=address", str(probe), "-o", str(tmp_path / "probe")).returncode == 0


def run_example(exe, cfg, env=None):
    out = subprocess.run([str(exe), str(cfg), "gpt-test", "hello from C"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "LD_LIBRARY_PATH": str(LIB_DIR), "SLUICE_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
                                                      **(env or {})})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "chat: status 200" in out.stdout
    assert "cancelled: status -5, 1 chunks" in out.stdout
    assert "unknown model: status 404" in out.stdout and "model_not_found" in out.stdout
    assert out.stdout.rstrip().endswith("ok")
    return out


def test_c_example_against_the_mock(tmp_path, upstream):
    assert (LIB_DIR / "libsluice.so").exists(), "scripts/test.sh builds sluice-ffi"
    exe = tmp_path / "chat"
    flags = ["-Wall", "-Wextra", "-Werror", "-g"]
    sanitized = asan_works(tmp_path)
    if sanitized:
        flags.append("-fsanitize=address")
    b = cc(*flags, str(ROOT / "examples/c/chat.c"), f"-I{ROOT / 'include'}", f"-L{LIB_DIR}", "-lsluice",
           "-o", str(exe))
    assert b.returncode == 0, b.stderr
    before = upstream.stats()["requests"]
    out = run_example(exe, config(tmp_path, upstream), {"ASAN_OPTIONS": "detect_leaks=1"})
    # Every string the library handed out was freed, the gateway too.
    assert "ERROR: AddressSanitizer" not in out.stderr and "LeakSanitizer" not in out.stderr
    # The chat, the stream and the cancelled stream reached the upstream
    # (the unknown model and the null gateway stop at the gateway).
    assert upstream.stats()["requests"] >= before + 3
    if not sanitized:
        pytest.skip("the compiler has no AddressSanitizer: ran unsanitized")


def test_c_example_linked_statically(tmp_path, upstream):
    exe = tmp_path / "chat-static"
    b = cc(str(ROOT / "examples/c/chat.c"), f"-I{ROOT / 'include'}", str(LIB_DIR / "libsluice.a"),
           "-lpthread", "-ldl", "-lm", "-o", str(exe))
    assert b.returncode == 0, b.stderr[-3000:]
    run_example(exe, config(tmp_path, upstream))


def test_bad_configuration_through_the_c_abi(tmp_path):
    exe = tmp_path / "chat"
    assert cc(str(ROOT / "examples/c/chat.c"), f"-I{ROOT / 'include'}", f"-L{LIB_DIR}", "-lsluice",
              "-o", str(exe)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nname = "x"\ntargets = [{ provider = "nope" }]\n')
    out = subprocess.run([str(exe), str(bad)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LD_LIBRARY_PATH": str(LIB_DIR)})
    assert out.returncode == 1
    assert "<config>:3:" in out.stderr and "nope" in out.stderr


def test_node_binding(tmp_path, upstream):
    assert shutil.which("node"), "node is installed by scripts/test.sh"
    addon = LIB_DIR / "libsluice_node.so"
    assert addon.exists(), "scripts/test.sh builds bindings/node"
    # Node loads an addon by its .node name.
    shutil.copy(addon, tmp_path / "sluice.node")
    out = subprocess.run(["node", "--test", str(ROOT / "bindings/node/test/")], capture_output=True, text=True,
                         timeout=180, cwd=ROOT / "bindings/node",
                         env={**os.environ, "SLUICE_TEST_UPSTREAM": upstream.url,
                              "SLUICE_NODE_ADDON": str(tmp_path / "sluice.node")})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout and "# pass 7" in out.stdout, out.stdout[-2000:]
