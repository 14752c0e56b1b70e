"""Static checks of everything switchyard ships besides its Rust code.

Nothing here starts a container or a cluster: there is no Docker engine or Kubernetes where
these run. What is checked, each against an independent source:

* docker/compose.yml: `docker compose config -q` (or `docker-compose config -q`) accepts it;
  it refuses to start without SWITCHYARD_ADMIN_TOKEN; its Milvus layout is the documented one
  (standalone + Woodpecker + a CDC component per cluster, Milvus >= 2.6.16) and agrees with
  config/docker.toml and the setup-replication job; every file it mounts exists.
* docker/prometheus.yml, docker/prometheus-rules.yml: `promtool check` and the alert unit tests
  in docker/prometheus-rules.test.yml (when promtool is installed).
* deploy/kubernetes/*.yaml: the Kubernetes JSON schemas bundled in kubernetes-validate
  (offline, strict: unknown fields fail) for 1.30 and the newest version it knows; the
  single-writer and shutdown rules the file state backend and switchyard's grace period need.
* docker/grafana/dashboards/switchyard.json and the alert rules: every metric queried is one of
  `shared/spec/interface.md`'s metrics table, and the dashboard shows all of them.
* config/switchyard.toml: every key of interface.md's example config is there (set or
  commented out), plus the keys the implementation also accepts; each has a comment that
  gives its default (or says it is required).
* docker/Dockerfile: multi-stage, a non-root USER in the final stage, the documented ports,
  entrypoint and command.
* docker/setup_replication.py: the replicate configuration it sends (a star from the primary)
  and the order (primary first).

Requirements: pytest, PyYAML, kubernetes-validate (bundles the schemas; no network). Optional:
a `docker compose` plugin or `docker-compose` (Debian package docker-compose), `promtool`
(Debian package prometheus), and a built `switchyard` binary (for `check-config`; looked up as
$SWITCHYARD_BIN, else target/{debug,release}/switchyard). Tests that need a missing optional
tool are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install pyyaml")

REPO = Path(__file__).resolve().parents[2]
INTERFACE = REPO.parent / "shared" / "spec" / "interface.md"
DOCKER = REPO / "docker"
K8S = REPO / "deploy" / "kubernetes"
COMPOSE = DOCKER / "compose.yml"
EXAMPLE_CONFIG = REPO / "config" / "switchyard.toml"
DOCKER_CONFIG = REPO / "config" / "docker.toml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "switchyard.json"
RULES = DOCKER / "prometheus-rules.yml"

# Keys the implementation accepts beyond interface.md's example (src/config/raw.rs).
EXTRA_KEYS = {
    ("listener", "max_message_size"),
    ("listener", "max_header_list_size"),
    ("listener", "max_concurrent_streams"),
    ("listener", "body_timeout"),
    ("listener", "peek_budget"),
    ("routing", "level_cache_ttl"),
    ("routing", "min_serving_standbys"),
    ("routing", "read_your_writes"),
    ("clusters", "tls_server_name"),
}
MIN_MILVUS = (2, 6, 16)  # Milvus docs, "Set Up CDC Replication": v2.6.16 or later
TOKEN_ENV = "SWITCHYARD_ADMIN_TOKEN"


def interface_text() -> str:
    if not INTERFACE.is_file():
        pytest.skip(f"{INTERFACE} is absent (the steering repo's shared/ is not beside this repo)")
    return INTERFACE.read_text()


# ---------------------------------------------------------------------------------------------
# interface.md parsing


def interface_metrics() -> dict[str, str]:
    """{name: type} from interface.md's metrics table."""
    text = interface_text()
    section = text[text.index("## Metrics") :]
    rows = re.findall(r"^\|\s*`(switchyard_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", section, re.M)
    assert rows, "no metrics table rows found in interface.md"
    return dict(rows)


def interface_config_block() -> str:
    text = interface_text()
    section = text[text.index("## Config file") :]
    m = re.search(r"```toml\n(.*?)```", section, re.S)
    assert m, "no ```toml block in interface.md's config section"
    return m.group(1)


KEY_LINE = re.compile(r"^\s*(#\s*)?([a-z_]+)\s*=")
HEADER = re.compile(r"^\s*\[\[?\s*([a-z_.]+)\s*\]\]?")


def key_lines(text: str) -> list[tuple[str, str, int, bool]]:
    """(section, key, line index, commented_out) for every `key =` line, set or commented."""
    out, section = [], ""
    for i, line in enumerate(text.splitlines()):
        if h := HEADER.match(line):
            section = h.group(1)
        elif m := KEY_LINE.match(line):
            out.append((section, m.group(2), i, m.group(1) is not None))
    return out


def test_key_scanner_sees_set_and_commented_keys():
    keys = {(s, k) for s, k, _, _ in key_lines('[a]\nx = 1\n# y = "2"\n[[b]]\nz = 3  # note\n')}
    assert keys == {("a", "x"), ("a", "y"), ("b", "z")}


# ---------------------------------------------------------------------------------------------
# PromQL: which metric names an expression reads

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (or a Grafana `label_values(metric, label)`)."""
    if m := re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr):
        return {m.group(1)}
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)", e):
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or m.group(1) in PROMQL_WORDS:
            continue  # a function, an aggregation or a keyword
        names.add(m.group(1))
    return names


def test_promql_extractor():
    assert promql_metrics('sum by (le, kind) (rate(switchyard_x_bucket{a=~"$c"}[5m]))') == {"switchyard_x_bucket"}
    assert promql_metrics("max(foo) == 0 and on (cluster) bar > 1") == {"foo", "bar"}
    assert promql_metrics('(sum(rate(a{code=~"OK|0"}[2m])) or vector(0)) == 0 unless on () b') == {"a", "b"}
    assert promql_metrics("label_values(switchyard_cluster_up, cluster)") == {"switchyard_cluster_up"}
    assert promql_metrics("histogram_quantile(0.99, sum(rate(x_bucket[$__rate_interval])))") == {"x_bucket"}


def check_metric_names(exprs: list[str], allowed_extra: set[str] = frozenset()) -> set[str]:
    """Asserts each metric read is an interface metric (histograms via _bucket/_sum/_count);
    returns the interface metrics used."""
    metrics = interface_metrics()
    used, bad = set(), []
    for expr in exprs:
        for name in promql_metrics(expr):
            if name in allowed_extra:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in metrics and metrics[name] != "histogram":
                used.add(name)
            elif base != name and metrics.get(base) == "histogram":
                used.add(base)
            else:
                bad.append(f"{name} (in {expr!r})")
    assert not bad, "metrics not in interface.md's table: " + "; ".join(bad)
    return used


# ---------------------------------------------------------------------------------------------
# (a) docker compose


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose_config(with_token: bool) -> subprocess.CompletedProcess:
    cmd = compose_command()
    if cmd is None:
        if not shutil.which("docker"):
            pytest.skip("no docker client on this machine (and no docker-compose)")
        pytest.skip("the docker client has no `compose` plugin and docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if with_token:
        env[TOKEN_ENV] = "static-check-token"
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_compose_config_is_valid():
    r = run_compose_config(with_token=True)
    assert r.returncode == 0, f"compose config failed:\n{r.stdout}\n{r.stderr}"


def test_compose_refuses_to_start_without_admin_token():
    r = run_compose_config(with_token=False)
    assert r.returncode != 0, "compose.yml must require SWITCHYARD_ADMIN_TOKEN (use ${VAR:?message})"
    assert TOKEN_ENV in (r.stdout + r.stderr)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def docker_config() -> dict:
    return tomllib.loads(DOCKER_CONFIG.read_text().replace("${" + TOKEN_ENV + "}", "x"))


def test_compose_has_every_service(compose):
    want = {
        *(f"{s}-{c}" for s in ("etcd", "minio", "milvus", "cdc") for c in "ab"),
        "switchyard", "setup-replication", "prometheus", "grafana",
    }  # fmt: skip
    assert want <= set(compose["services"]), f"missing: {sorted(want - set(compose['services']))}"


def milvus_version(image: str) -> tuple[int, ...]:
    m = re.fullmatch(r"milvusdb/milvus:v(\d+)\.(\d+)\.(\d+)", image)
    assert m, f"{image!r} is not a pinned milvusdb/milvus:vX.Y.Z image"
    return tuple(int(x) for x in m.groups())


@pytest.mark.parametrize("side", ["a", "b"])
def test_compose_milvus_cluster_layout(compose, docker_config, side):
    """Each cluster: standalone on Woodpecker, its own etcd and minio, and a CDC component with
    the same settings; its cluster id and pchannel count are the ones switchyard is told."""
    svc = compose["services"]
    milvus, cdc = svc[f"milvus-{side}"], svc[f"cdc-{side}"]
    cluster = next(c for c in docker_config["clusters"] if c["uri"] == f"http://milvus-{side}:19530")
    assert milvus_version(milvus["image"]) >= MIN_MILVUS
    assert cdc["image"] == milvus["image"], "the CDC component must run the cluster's Milvus version"
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert cdc["command"] == ["milvus", "run", "cdc"]
    env = milvus["environment"]
    assert cdc["environment"] == env, "cdc must see the same etcd, storage and cluster prefix"
    assert env["MQ_TYPE"] == "woodpecker"
    assert env["ETCD_ENDPOINTS"] == f"etcd-{side}:2379" and env["MINIO_ADDRESS"] == f"minio-{side}:9000"
    assert env["MSGCHANNEL_CHANNAMEPREFIX_CLUSTER"] == cluster["id"]
    assert int(env["ROOTCOORD_DMLCHANNELNUM"]) == cluster["pchannels"]


def test_compose_dependencies_and_mounts(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; {dep} has no healthcheck"
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                assert (DOCKER / src).resolve().exists(), f"{name} mounts {src}, which does not exist"
            elif src:
                assert src in (compose.get("volumes") or {}), f"{name} uses undeclared volume {src}"
    sy = services["switchyard"]
    assert sy["build"]["context"] == ".." and (REPO / sy["build"]["dockerfile"]).is_file()
    assert "../config/docker.toml:/etc/switchyard/switchyard.toml:ro" in sy["volumes"]
    assert any(v.endswith(":/var/lib/switchyard") for v in sy["volumes"])


def test_compose_setup_job_matches_switchyard_config(compose, docker_config):
    job = compose["services"]["setup-replication"]
    env = job["environment"]
    pairs = dict(p.split("=", 1) for p in env["SETUP_CLUSTERS"].split(","))
    assert pairs == {c["id"]: c["uri"] for c in docker_config["clusters"]}
    primary = next(c["id"] for c in docker_config["clusters"] if c.get("role") == "primary")
    assert env["SETUP_PRIMARY"] == primary
    assert {int(env["SETUP_PCHANNELS"])} == {c["pchannels"] for c in docker_config["clusters"]}
    assert {env["SETUP_TOKEN"]} == {c["token"] for c in docker_config["clusters"]}, (
        "Milvus refuses a later change of a cluster's token: setup and switchyard must agree"
    )
    assert "pymilvus==2.6.17" in " ".join(job["command"])
    assert job["image"].startswith("python:3.11")
    assert env["SWITCHYARD_ADMIN_URL"] == "http://switchyard:" + docker_config["admin"]["address"].rsplit(":", 1)[1]


def test_docker_config_listens_where_compose_publishes(compose, docker_config):
    ports = compose["services"]["switchyard"]["ports"]
    for key, section in (("listener", 19530), ("admin", 9100)):
        assert docker_config[key]["address"] == f"0.0.0.0:{section}"
        assert f"127.0.0.1:{section}:{section}" in ports
    assert docker_config["state"]["path"].startswith("/var/lib/switchyard/")


def test_prometheus_scrapes_switchyard_and_both_clusters():
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"switchyard:9100", "milvus-a:9091", "milvus-b:9091"} <= targets
    sy = next(j for j in prom["scrape_configs"] if "switchyard:9100" in j["static_configs"][0]["targets"])
    assert sy.get("metrics_path", "/metrics") == "/metrics"
    assert sy["authorization"]["credentials_file"], "switchyard's /metrics needs the admin token off loopback"
    assert "/etc/prometheus/prometheus-rules.yml" in prom["rule_files"]


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def test_promtool_checks_rules_and_config(tmp_path):
    tool = promtool()
    r = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = (DOCKER / "prometheus.yml").read_text().replace("/etc/prometheus/prometheus-rules.yml", str(RULES))
    cfg = cfg.replace("/tmp/switchyard-token", str(tmp_path / "token"))
    (tmp_path / "token").write_text("x")
    (tmp_path / "prometheus.yml").write_text(cfg)
    r = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_unit_tests():
    r = subprocess.run(
        [promtool(), "test", "rules", "prometheus-rules.test.yml"], cwd=DOCKER, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_use_interface_metrics():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    check_metric_names([r["expr"] for r in rules], allowed_extra={"up"})
    names = {r["alert"] for r in rules}
    assert {"SwitchyardPrimaryDown", "SwitchyardStandbyLagHigh"} <= names
    assert any("Abnormal" in n for n in names)
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]


# ---------------------------------------------------------------------------------------------
# (b) Kubernetes manifests

MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


@pytest.fixture(scope="module")
def k8s_validate():
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is needed: pip install kubernetes-validate"
    )


def test_manifests_exist():
    want = {"configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "secret.example.yaml"}
    assert want <= set(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_manifest_matches_kubernetes_schema(k8s_validate, name, version):
    v = k8s_validate.latest_version() if version == "latest" else version
    docs = k8s_docs(name)
    assert docs, f"{name} is empty"
    for doc in docs:
        try:
            k8s_validate.validate(doc, v, strict=True)
        except k8s_validate.ValidationError as e:
            pytest.fail(f"{name} {doc.get('kind')}/{doc['metadata'].get('name')} against {v}: {e.message} at {e.path}")


def test_schema_check_rejects_unknown_fields(k8s_validate):
    """The check above is strict: an unknown container field must fail it."""
    dep = k8s_docs("deployment.yaml")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(k8s_validate.ValidationError):
        k8s_validate.validate(dep, k8s_validate.latest_version(), strict=True)


def test_kustomization_lists_the_manifests():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    resources = kust["resources"]
    assert len(resources) == len(set(resources))
    for r in resources:
        assert (K8S / r).is_file(), f"kustomization lists missing {r}"
    assert set(resources) == set(MANIFESTS) - {"secret.example.yaml"}, "every manifest but the example Secret"


def switchyard_grace_seconds() -> int:
    """The grace switchyard gives calls in flight at shutdown (src/app.rs, DEFAULT_SHUTDOWN_GRACE)."""
    m = re.search(r"DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)", (REPO / "src/app.rs").read_text())
    assert m, "could not find switchyard's shutdown grace in src/app.rs"
    return int(m.group(1))


def test_deployment_rules():
    dep = k8s_docs("deployment.yaml")[0]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == 1, "the file state backend allows one proxy"
    assert spec["strategy"]["type"] == "Recreate", "never two writers of the state file"
    assert pod["terminationGracePeriodSeconds"] > switchyard_grace_seconds()
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    (c,) = pod["containers"]
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert "ALL" in csc["capabilities"]["drop"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 19530, "admin": 9100}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == 9100, probe
    env = {e["name"]: e for e in c["env"]}
    ref = env[TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    secret = k8s_docs("secret.example.yaml")[0]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = volumes[mounts["/var/lib/switchyard"]]
    assert "persistentVolumeClaim" in state or "emptyDir" in state
    if "persistentVolumeClaim" in state:
        pvc = k8s_docs("pvc.yaml")[0]
        assert state["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    cm = k8s_docs("configmap.yaml")[0]
    assert volumes[mounts["/etc/switchyard"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert c["args"] == ["run", "--config", "/etc/switchyard/switchyard.toml"]
    assert "switchyard.toml" in cm["data"]


def test_service_and_pdb_select_the_pod():
    pod_labels = k8s_docs("deployment.yaml")[0]["spec"]["template"]["metadata"]["labels"]
    svc = k8s_docs("service.yaml")[0]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert ports[19530]["appProtocol"] == "grpc" and 9100 in ports
    pdb = k8s_docs("pdb.yaml")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_configmap_config_is_complete():
    toml_text = k8s_docs("configmap.yaml")[0]["data"]["switchyard.toml"]
    cfg = tomllib.loads(toml_text.replace("${" + TOKEN_ENV + "}", "x"))
    assert cfg["admin"]["token"] == "x", "the admin token must come from the environment (the Secret)"
    assert cfg["state"]["backend"] == "file" and cfg["state"]["path"].startswith("/var/lib/switchyard/")
    assert cfg["listener"]["address"].endswith(":19530") and cfg["admin"]["address"] == "0.0.0.0:9100"
    assert sum(c.get("role") == "primary" for c in cfg["clusters"]) == 1
    assert_known_keys(toml_text)


# ---------------------------------------------------------------------------------------------
# (c) Grafana dashboard


def dashboard_exprs(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                out.append(v)
            elif k == "query" and isinstance(v, str) and node.get("type") == "query":
                out.append(v)
            elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                out.append(v["query"])
            else:
                out.extend(dashboard_exprs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(dashboard_exprs(v))
    return out


def test_dashboard_uses_exactly_the_interface_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash)
    assert exprs, "the dashboard has no queries"
    used = check_metric_names(exprs)
    missing = set(interface_metrics()) - used
    assert not missing, f"the dashboard shows none of {sorted(missing)}"


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"]
    var_names = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} must use the datasource variable"
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in var_names, f"panel {p['title']!r} uses undefined ${var}"


def test_grafana_provisioning_points_at_the_mounts(compose):
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/switchyard.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]


# ---------------------------------------------------------------------------------------------
# (d) config/switchyard.toml


def known_keys() -> set[tuple[str, str]]:
    return {(s, k) for s, k, _, _ in key_lines(interface_config_block())} | EXTRA_KEYS


def assert_known_keys(toml_text: str) -> None:
    unknown = {(s, k) for s, k, _, _ in key_lines(toml_text)} - known_keys()
    assert not unknown, f"keys neither in interface.md nor accepted by the implementation: {sorted(unknown)}"


def test_example_config_mentions_every_interface_key():
    mine = {(s, k) for s, k, _, _ in key_lines(EXAMPLE_CONFIG.read_text())}
    want = {(s, k) for s, k, _, _ in key_lines(interface_config_block())}
    assert len(want) > 30, "interface.md's example was not parsed"
    assert not want - mine, f"missing from config/switchyard.toml: {sorted(want - mine)}"
    assert not EXTRA_KEYS - mine, f"extra keys not documented: {sorted(EXTRA_KEYS - mine)}"
    assert_known_keys(EXAMPLE_CONFIG.read_text())


def test_example_config_comments_every_key():
    """Each key has a comment (inline, or the comment lines right above it) that gives its
    default or says it is required, the first time it appears."""
    lines = EXAMPLE_CONFIG.read_text().splitlines()
    seen, bad = set(), []
    for section, key, i, _ in key_lines(EXAMPLE_CONFIG.read_text()):
        value_part = re.sub(r"^\s*#\s*", "", lines[i])
        inline = value_part.split("#", 1)[1] if "#" in value_part.split("=", 1)[1] else ""
        above, j = [], i - 1
        while j >= 0 and lines[j].lstrip().startswith("#") and not HEADER.match(lines[j]):
            above.append(lines[j])
            j -= 1
        prose = [a for a in above if not KEY_LINE.match(a)]
        doc = inline + " ".join(above)
        if not inline.strip() and not prose:
            bad.append(f"{section}.{key}: no comment")
        elif (section, key) not in seen and not re.search(r"default|required", doc, re.I):
            bad.append(f"{section}.{key}: the comment gives no default")
        seen.add((section, key))
    assert not bad, "\n".join(bad)


def test_example_config_values():
    text = EXAMPLE_CONFIG.read_text()
    refs = set(re.findall(r"\$\{(\w+)\}", text))
    assert refs == {TOKEN_ENV}, f"only the admin token comes from the environment (even comments are expanded): {refs}"
    cfg = tomllib.loads(text.replace("${" + TOKEN_ENV + "}", "x"))
    clusters = {c["id"]: c for c in cfg["clusters"]}
    assert clusters["cluster-a"]["role"] == "primary" and clusters["cluster-b"]["role"] == "standby"
    assert clusters["cluster-a"]["uri"] == "http://127.0.0.1:19531"
    assert clusters["cluster-b"]["uri"] == "http://127.0.0.1:19532"
    assert cfg["admin"] == {"address": "127.0.0.1:9100", "token": "x"}
    assert cfg["listener"]["max_message_size"] == "256MiB" and cfg["listener"]["max_header_list_size"] == "16KiB"
    assert cfg["listener"]["max_concurrent_streams"] == 1024
    assert cfg["routing"]["min_serving_standbys"] == 0 and cfg["routing"]["read_your_writes"] == "0s"


def switchyard_bin() -> Path:
    for p in (os.environ.get("SWITCHYARD_BIN"), REPO / "target/debug/switchyard", REPO / "target/release/switchyard"):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    pytest.skip("no switchyard binary (set SWITCHYARD_BIN or run cargo build)")


@pytest.mark.parametrize("which", ["config/switchyard.toml", "config/docker.toml", "configmap"])
def test_switchyard_check_config_accepts(which, tmp_path):
    binary = switchyard_bin()
    if which == "configmap":
        path = tmp_path / "switchyard.toml"
        path.write_text(k8s_docs("configmap.yaml")[0]["data"]["switchyard.toml"])
    else:
        path = REPO / which
    env = dict(os.environ, **{TOKEN_ENV: "static-check-token"})
    r = subprocess.run([binary, "check-config", "--config", path], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# (e) Dockerfile


def dockerfile_stages() -> list[list[str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_and_non_root():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "builder and runtime stages"
    assert re.match(r"FROM rust:1-bookworm AS \w+", stages[0][0])
    build = " ".join(stages[0])
    assert "cargo build --release --locked --bin switchyard --bin milvus-standin" in build
    assert "--mount=type=cache,target=/usr/local/cargo/registry" in build
    final = stages[-1]
    assert re.match(r"FROM (gcr\.io/distroless/cc-debian12:nonroot|debian:\S+-slim)", final[0])
    users = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the final stage must run as a non-root USER"
    assert "EXPOSE 19530 9100" in final
    assert 'ENTRYPOINT ["/usr/local/bin/switchyard"]' in final
    assert 'CMD ["run", "--config", "/etc/switchyard/switchyard.toml"]' in final
    assert not any(ln.upper().startswith("HEALTHCHECK") for ln in final), "distroless has no shell or curl"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert {"target", ".venv*", "data"} <= set(ignore)
    copied = set()
    for line in dockerfile_stages()[0]:
        if line.upper().startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/").split("/")[0] not in ignore, f"COPY {src} is excluded by .dockerignore"
                copied.add(src.rstrip("/"))
    # Every file the manifest declares must be in the build stage: cargo refuses a manifest
    # whose declared targets (bins, benches) or build script are missing.
    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    needed = {"Cargo.toml", "Cargo.lock", manifest["package"].get("build", "build.rs")}
    needed |= {b["path"] for b in manifest.get("bin", [])}
    needed |= {b.get("path", f"benches/{b['name']}.rs") for b in manifest.get("bench", [])}
    for path in sorted(needed):
        assert any(path == c or path.startswith(c + "/") for c in copied), f"{path} is not copied into the build stage"


# ---------------------------------------------------------------------------------------------
# docker/setup_replication.py


@pytest.fixture(scope="module")
def setup_mod():
    spec = importlib.util.spec_from_file_location("setup_replication", DOCKER / "setup_replication.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_setup_calls_the_primary_first(setup_mod):
    cl = setup_mod.parse_clusters("cluster-b=http://b:19530,cluster-a=http://a:19530,cluster-c=http://c:19530")
    assert [c.id for c in setup_mod.call_order(cl, "cluster-a")] == ["cluster-a", "cluster-b", "cluster-c"]
    with pytest.raises(ValueError):
        setup_mod.call_order(cl, "cluster-x")


def test_setup_builds_a_star_from_the_primary(setup_mod):
    cl = setup_mod.parse_clusters("cluster-a=http://a:19530,cluster-b=http://b:19530")
    cfg = setup_mod.replicate_configuration(cl, "cluster-a", "root:Milvus", 2)
    assert cfg["cross_cluster_topology"] == [{"source_cluster_id": "cluster-a", "target_cluster_id": "cluster-b"}]
    b = cfg["clusters"][1]
    assert b == {
        "cluster_id": "cluster-b",
        "connection_param": {"uri": "http://b:19530", "token": "root:Milvus"},
        "pchannels": ["cluster-b-rootcoord-dml_0", "cluster-b-rootcoord-dml_1"],
    }


@pytest.mark.parametrize("spec", ["", "a=http://a", "a=http://a,a=http://b", "a=http://a,b=http://a", "a,b=http://b"])
def test_setup_rejects_bad_cluster_lists(setup_mod, spec):
    with pytest.raises(ValueError):
        setup_mod.parse_clusters(spec)


def test_setup_payload_is_accepted_by_pymilvus(setup_mod):
    """pymilvus builds the UpdateReplicateConfiguration request from exactly this shape."""
    prepare = pytest.importorskip("pymilvus.client.prepare", reason="pymilvus is not installed")
    cl = setup_mod.parse_clusters("cluster-a=http://a:19530,cluster-b=http://b:19530")
    req = prepare.Prepare.update_replicate_configuration_request(
        **setup_mod.replicate_configuration(cl, "cluster-a", "root:Milvus", 16)
    )
    cfg = req.replicate_configuration
    assert [c.cluster_id for c in cfg.clusters] == ["cluster-a", "cluster-b"]
    assert len(cfg.clusters[0].pchannels) == 16 and cfg.clusters[1].connection_param.uri == "http://b:19530"
    assert [(t.source_cluster_id, t.target_cluster_id) for t in cfg.cross_cluster_topology] == [
        ("cluster-a", "cluster-b")
    ]
