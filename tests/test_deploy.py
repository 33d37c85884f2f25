"""The deployment files agree with the code: no Docker engine or cluster needed.

- every YAML and JSON file parses;
- every ``POOLWORKER_*`` variable that docker-compose.yml, the Kubernetes manifests or the
  Dockerfile set is a field of ``WorkerSettings``, and each file's values validate there
  (config.py stays the one source of truth);
- every metric the Grafana dashboard queries is exported by ``poolworker.metrics.Metrics``, with
  the labels the queries use;
- the Dockerfile's entrypoint is a registered ``poolworker`` command;
- the pieces that must repeat one another do: KEDA's trigger and the ConfigMap, probes and the
  metrics port, grace periods and the drain timeout, Prometheus discovery and compose services.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import yaml
from pydantic import ValidationError

from poolworker.cli import app
from poolworker.config import WorkerSettings
from poolworker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
DASHBOARDS = sorted((DEPLOY / "grafana").rglob("*.json"))
PREFIX = "POOLWORKER_"
WORKER_SERVICES = ("poolworker", "poolworker-gpu")
# Variables a worker container may set that are not poolworker settings: the runtime's own.
RUNTIME_ENV = {"OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
               "PYTHONUNBUFFERED", "PATH", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "TORCH_INDEX_URL"}
# Drain (up to drain_timeout_s) + producer flush (up to drain_timeout_s) + commit and group leave.
DRAIN_MARGIN_S = 10


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    return [COMPOSE, *sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    """Every manifest applied by kustomization.yaml, by kind (one of each kind)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict] = {}
    for resource in kustomization["resources"]:
        for doc in load_all(K8S / resource):
            assert doc["kind"] not in out, f"two {doc['kind']} manifests; the test expects one"
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def configmap_env(k8s) -> dict[str, str]:
    return k8s["ConfigMap"]["data"]


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def k8s_env_sources() -> Iterator[tuple[str, dict[str, str]]]:
    """(where, {name: value}) for every env-setting place in deploy/k8s, examples included."""
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_all(path):
            where = f"{path.relative_to(ROOT)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("kind") == "ConfigMap":
                yield where, {k: str(v) for k, v in doc.get("data", {}).items()}
            elif doc.get("kind") == "Secret":
                data = {k: str(v) for k, v in doc.get("stringData", {}).items()}
                yield where, {k: v for k, v in data.items() if k.startswith(PREFIX)}
            elif doc.get("kind") == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    yield f"{where}/{c['name']}", {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}


# ----------------------------------------------------------------------------------------------
# 1. Everything parses
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_expected_files_exist() -> None:
    for rel in ("Dockerfile", "README.md", "k8s/deployment.yaml", "k8s/configmap.yaml", "k8s/service.yaml",
                "k8s/scaledobject.yaml", "k8s/pdb.yaml", "prometheus/prometheus.yml"):
        assert (DEPLOY / rel).is_file(), rel
    assert DASHBOARDS, "no Grafana dashboard JSON under deploy/grafana"


# ----------------------------------------------------------------------------------------------
# 2. One source of truth: every POOLWORKER_* variable is a WorkerSettings field and validates
# ----------------------------------------------------------------------------------------------
def unknown_settings(env: dict[str, str]) -> list[str]:
    fields = set(WorkerSettings.model_fields)
    return [k for k in env if k.startswith(PREFIX) and k[len(PREFIX):].lower() not in fields]


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> WorkerSettings:
    """WorkerSettings exactly as a container with ``env`` (and nothing else) would build it."""
    import os

    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, value)
    return WorkerSettings()


def all_env_sources(compose: dict) -> list[tuple[str, dict[str, str]]]:
    sources = [(f"docker-compose.yml:{name}", service_env(svc)) for name, svc in compose["services"].items()]
    sources += list(k8s_env_sources())
    sources.append(("deploy/Dockerfile", dockerfile_env()))
    return sources


def test_unknown_setting_is_caught() -> None:
    """The check below is not vacuous: a misspelt name is reported."""
    assert unknown_settings({"POOLWORKER_MAX_BATCH_TOKEN": "1", "POOLWORKER_GROUP_ID": "g", "OTHER": "x"}) == [
        "POOLWORKER_MAX_BATCH_TOKEN"
    ]


def test_every_env_var_is_a_setting(compose) -> None:
    problems = [f"{where}: {name}" for where, env in all_env_sources(compose) for name in unknown_settings(env)]
    assert not problems, "not fields of poolworker/config.py WorkerSettings:\n" + "\n".join(problems)


def test_worker_containers_set_only_settings_and_runtime_vars(compose) -> None:
    """Catches a misspelt prefix (POOLWORKR_...), which the check above would skip."""
    sources = [(f"compose:{n}", service_env(compose["services"][n])) for n in WORKER_SERVICES]
    sources += [(w, e) for w, e in k8s_env_sources() if "Deployment" in w or "ConfigMap" in w or "Secret" in w]
    sources.append(("Dockerfile", dockerfile_env()))
    stray = [f"{where}: {k}" for where, env in sources for k in env if not k.startswith(PREFIX) and k not in RUNTIME_ENV]
    assert not stray, "neither POOLWORKER_* nor a known runtime variable:\n" + "\n".join(stray)


def test_env_values_validate(compose, monkeypatch) -> None:
    sources = [(w, e) for w, e in all_env_sources(compose) if any(k.startswith(PREFIX) for k in e)]
    assert len(sources) >= 3, sources  # compose CPU + GPU workers, the ConfigMap at least
    for where, env in sources:
        try:
            settings_from_env(monkeypatch, env)
        except ValidationError as exc:  # names the field and the offending value
            pytest.fail(f"{where}: the values do not validate as WorkerSettings:\n{exc}")


def test_compose_worker_settings(compose, monkeypatch) -> None:
    services = compose["services"]
    for name in WORKER_SERVICES:
        s = settings_from_env(monkeypatch, service_env(services[name]))
        host = s.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]
        assert host in services, f"{name}: bootstrap host {host!r} is not a compose service"
        assert s.redis_url and s.redis_url.split("//")[1].split(":")[0] in services
        assert s.metrics_port is not None and s.metrics_port > 0
        assert s.fetch_max_wait_ms >= 500  # Kafka answers on data; 20 ms is for Tansu (poolworker.broker)
    gpu = settings_from_env(monkeypatch, service_env(services["poolworker-gpu"]))
    assert gpu.device == "cuda"


def test_k8s_secret_example_validates(monkeypatch) -> None:
    secret = next(d for d in load_all(K8S / "examples" / "sasl-secret.yaml") if d["kind"] == "Secret")
    s = settings_from_env(monkeypatch, secret["stringData"])
    assert s.kafka_options["security_protocol"] == "SASL_SSL"
    assert s.redacted()["kafka_options"]["sasl_plain_password"] == "***"
    assert "security_protocol" in s.consumer_options() and "sasl_plain_password" in s.producer_options()


# ----------------------------------------------------------------------------------------------
# 3. docker-compose.yml
# ----------------------------------------------------------------------------------------------
def test_compose_kafka_is_kraft_with_topics_created_at_start(compose, monkeypatch) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    init = services["kafka-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    s = settings_from_env(monkeypatch, service_env(services["poolworker"]))
    for topic in (s.requests_topic, s.results_topic, s.dlq_topic):
        assert topic in script, f"kafka-init does not create {topic}"
    assert re.search(rf"--partitions\s+{s.partitions}\b", script), "kafka-init partitions != POOLWORKER_PARTITIONS"
    for name in WORKER_SERVICES:
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_compose_workers_scale_and_drain(compose, monkeypatch) -> None:
    for name in WORKER_SERVICES:
        svc = compose["services"][name]
        # --scale N needs N identical containers: no fixed name, no host port to collide on.
        assert "container_name" not in svc and "ports" not in svc, name
        s = settings_from_env(monkeypatch, service_env(svc))
        test = " ".join(svc["healthcheck"]["test"])
        assert f":{s.metrics_port}/healthz" in test, name
        grace = duration_s(svc["stop_grace_period"])
        assert grace >= 2 * s.drain_timeout_s + DRAIN_MARGIN_S, f"{name}: stop_grace_period too short to drain"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def test_compose_gpu_profile_reserves_nvidia(compose) -> None:
    gpu = compose["services"]["poolworker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert "profiles" not in compose["services"]["poolworker"]  # the CPU pool runs by default


def test_compose_prometheus_discovers_every_worker(compose, monkeypatch) -> None:
    services = compose["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "poolworker")
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert set(WORKER_SERVICES) <= names, "Prometheus must resolve each worker service (every replica)"
    port = settings_from_env(monkeypatch, service_env(services["poolworker"])).metrics_port
    assert all(sd["port"] == port for sd in job["dns_sd_configs"])
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_compose_grafana_provisioning_mounts_exist(compose) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    targets = {v.split(":")[1]: ROOT / v.split(":")[0] for v in volumes}
    assert targets["/etc/grafana/provisioning"].is_dir()
    dashboards = targets["/var/lib/grafana/dashboards"]
    assert list(dashboards.glob("*.json")), "no dashboard in the mounted folder"
    provider = yaml.safe_load((targets["/etc/grafana/provisioning"] / "dashboards" / "poolworker.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def duration_s(text: str | int) -> float:
    """A compose duration ("90s", "1m30s", "2m") in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unparsed duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ----------------------------------------------------------------------------------------------
# 4. Dockerfile
# ----------------------------------------------------------------------------------------------
def test_dockerfile_entrypoint_is_a_cli_command() -> None:
    instructions = dockerfile_instructions()
    entry = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"][-1]
    cmd = [json.loads(rest) for word, rest in instructions if word == "CMD"][-1:] or [[]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts[entry[0]] == "poolworker.cli:app", f"{entry[0]!r} is not the CLI's console script"
    group = typer.main.get_command(app)
    subcommand = entry[1]
    assert subcommand in group.commands, f"`{entry[0]} {subcommand}` is not a command: {sorted(group.commands)}"
    options = {opt for p in group.commands[subcommand].params for opt in p.opts}
    for arg in entry[2:] + cmd[0]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in options, f"{arg} is not an option of `poolworker {subcommand}`"


def test_dockerfile_entrypoint_help_runs() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "POOLWORKER_" in result.output


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 3, "multi-stage: bases, builder, runtime"
    stages = {f.split(" AS ")[-1].strip() for f in froms if " AS " in f}
    assert {"base-cpu", "base-cuda", "builder", "runtime"} <= stages
    assert "ARG VARIANT=cpu" in {f"{w} {r}" for w, r in instructions}, "CPU must be the default variant"
    assert froms[-1].startswith("base-${VARIANT}"), "the runtime stage follows VARIANT"
    assert any("download.pytorch.org/whl/cpu" in r for w, r in instructions if w == "ENV")
    assert any("download.pytorch.org/whl/cu" in r for w, r in instructions if w == "ENV")

    user = [rest for word, rest in instructions if word == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    volumes = [json.loads(rest) if rest.startswith("[") else rest.split() for w, rest in instructions if w == "VOLUME"]
    assert ["/models"] in volumes
    exposed = {int(p.split("/")[0]) for w, rest in instructions if w == "EXPOSE" for p in rest.split()}
    assert WorkerSettings.model_fields["metrics_port"].default in exposed
    health = " ".join(rest for w, rest in instructions if w == "HEALTHCHECK")
    assert "/healthz" in health


def test_dockerfile_copies_exist_and_pass_the_dockerignore() -> None:
    copies = [rest.split() for w, rest in dockerfile_instructions() if w == "COPY" and "--from" not in rest]
    sources = [src for parts in copies for src in parts[:-1]]
    assert sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert src.rstrip("/") in allowed, f"COPY {src}: excluded by deploy/Dockerfile.dockerignore"


# ----------------------------------------------------------------------------------------------
# 5. Kubernetes
# ----------------------------------------------------------------------------------------------
def container(k8s) -> dict:
    (c,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_deployment_probes_and_drain(k8s, configmap_env, monkeypatch) -> None:
    s = settings_from_env(monkeypatch, configmap_env)
    c = container(k8s)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == s.metrics_port, f"{probe} is not on the metrics port"
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 2 * s.drain_timeout_s + DRAIN_MARGIN_S
    assert {"configMapRef": {"name": k8s["ConfigMap"]["metadata"]["name"]}} in c["envFrom"]
    assert "command" not in c and "args" not in c, "keep the image's ENTRYPOINT (checked against the CLI)"


def test_deployment_runs_as_the_images_user(k8s) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    user = [rest for word, rest in dockerfile_instructions() if word == "USER"][-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]


def test_selectors_match_the_pods(k8s) -> None:
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [k8s["Deployment"]["spec"]["selector"]["matchLabels"], k8s["Service"]["spec"]["selector"],
                 k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]]
    for selector in selectors:
        assert selector.items() <= labels.items()
    port = k8s["Service"]["spec"]["ports"][0]
    assert port["targetPort"] in {p["name"] for p in container(k8s)["ports"]}


def test_keda_trigger_agrees_with_the_configmap(k8s, configmap_env, monkeypatch) -> None:
    s = settings_from_env(monkeypatch, configmap_env)
    scaled = k8s["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    (trigger,) = [t for t in scaled["triggers"] if t["type"] == "kafka"]
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == s.bootstrap_servers
    assert meta["consumerGroup"] == s.group_id
    assert meta["topic"] == s.requests_topic
    assert int(meta["lagThreshold"]) > 0
    # Replicas past the partition count would sit idle (KEDA also caps it unless allowIdleConsumers).
    assert scaled["minReplicaCount"] >= 1 and scaled["maxReplicaCount"] <= s.partitions
    assert str(meta.get("allowIdleConsumers", "false")).lower() == "false"


def test_pdb_allows_one_eviction_at_a_time(k8s) -> None:
    assert k8s["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


# ----------------------------------------------------------------------------------------------
# 6. Dashboard ↔ metrics.py
# ----------------------------------------------------------------------------------------------
METRIC_RE = re.compile(r"poolworker_[a-z_]+")
# Labels Prometheus attaches at scrape time (job, instance) and our relabelling adds (service).
TARGET_LABELS = {"job", "instance", "service"}


def exported_samples() -> dict[str, set[str]]:
    """Sample name → label names, from a real registry after every recording method ran once."""
    m = Metrics()
    m.request("minilm", "embed", "ok")
    m.items("minilm", "embed", 2)
    m.tokens("minilm", "embed", 20)
    m.dlq("bad_json")
    m.ignored_field("typo")
    m.expired("minilm", "embed")
    m.hit(1)
    m.miss(1)
    m.error()
    m.batch("minilm", 2, 20)
    m.queue_wait(0.01)
    m.inference("minilm", 0.01)
    m.answered("minilm", "embed", "ok", 2, 20, 0.1)
    m.lag("poolworker.requests", 0, 5)
    m.inflight(1)
    m.paused(0)
    m.cache_up(True)
    m.info(version="test")
    samples: dict[str, set[str]] = {}
    for family in m.registry.collect():
        real = [s for s in family.samples if not s.name.endswith("_created")]
        assert real, f"{family.name} exposed no sample: exercise it in exported_samples()"
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL string: panel targets (rows nest panels) and query variables."""
    out = []

    def walk(panels):
        for panel in panels:
            out.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def used_labels(expr: str) -> set[str]:
    grouped = {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in group.split(",")}
    matched = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", expr))
    label_values = set(re.findall(r"label_values\([^,]+,\s*([a-zA-Z_]+)\)", expr))
    return (grouped | matched | label_values) - {""}


def test_every_dashboard_metric_is_exported() -> None:
    samples = exported_samples()
    for path in DASHBOARDS:
        queries = dashboard_queries(json.loads(path.read_text(encoding="utf-8")))
        assert queries, f"{path}: no PromQL"
        for expr in queries:
            names = set(METRIC_RE.findall(expr))
            assert names, f"{path.name}: a query names no poolworker metric: {expr}"
            missing = names - samples.keys()
            assert not missing, f"{path.name}: not exported by poolworker.metrics: {sorted(missing)} in {expr}"
            labels = set().union(*(samples[n] for n in names)) | TARGET_LABELS
            unknown = used_labels(expr) - labels
            assert not unknown, f"{path.name}: labels {sorted(unknown)} are not on {sorted(names)}: {expr}"


def test_dashboard_covers_the_operating_questions() -> None:
    wanted = {
        "throughput": "poolworker_requests_total",
        "latency": "poolworker_end_to_end_seconds_bucket",
        "batch size": "poolworker_batch_size_bucket",
        "batch tokens": "poolworker_batch_tokens_bucket",
        "cache hit ratio": "poolworker_cache_hits_total",
        "cache misses": "poolworker_cache_misses_total",
        "lag per partition": "poolworker_consumer_lag",
        "dlq rate": "poolworker_dlq_total",
    }
    for path in DASHBOARDS:
        text = " ".join(dashboard_queries(json.loads(path.read_text(encoding="utf-8"))))
        missing = [topic for topic, metric in wanted.items() if metric not in text]
        assert not missing, f"{path.name} lacks: {missing}"
        assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
        assert re.search(r"by \(topic, partition\)\s*\(poolworker_consumer_lag", text)


def test_dashboard_layout_is_sane() -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = dashboard["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        for p in panels:
            pos = p["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert dashboard["uid"]


def test_metric_regex_catches_a_rename() -> None:
    """The dashboard check fails for a name the code does not export."""
    samples = exported_samples()
    assert "poolworker_requests_total" in samples
    assert not set(METRIC_RE.findall("rate(poolworker_request_total[5m])")) <= samples.keys()
