"""The deployment files: docker-compose.yml, the Dockerfile and the Kubernetes base.

No Docker engine or cluster runs here, so they are checked the way their tools would
read them: the compose file against the Compose Specification's JSON schema, the
Kubernetes manifests against the Kubernetes OpenAPI schemas (kubernetes-validate), and
what ties them to this repository (commands, ports, mounted files) by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agents.cli import build_parser
from agents.rules import JOB
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KUBE = ROOT / "deploy" / "kubernetes"
# The Compose Specification schema as shipped in the docker-compose 1.29.2 wheel on PyPI
# (compose/config/compose_spec.json, Apache-2.0): that package itself cannot be installed
# next to PyYAML 6, so the file is kept here.
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
KUBERNETES_VERSION = "1.30.0"
CPIMON_IMAGE = "cpi-monitor:local"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE)
    return document


def host_path(source: str) -> Path:
    return (ROOT / source).resolve()


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def in_container(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file behind ``container_path`` of a service, through its bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if source.startswith("./") and (
            container_path == target or container_path.startswith(target.rstrip("/") + "/")
        ):
            return host_path(source) / container_path[len(target) :].lstrip("/")
    return None


# --- docker-compose.yml -------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = [
        f"{error.json_path}: {error.message}"
        for error in jsonschema.Draft201909Validator(schema).iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)
    # The schema must be able to fail: a misspelt key is caught.
    broken = {**compose, "services": {**compose["services"], "x": {"image": "a", "port": [1]}}}
    assert not jsonschema.Draft201909Validator(schema).is_valid(broken)


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "kafka-init",
        "worker-1",
        "worker-2",
        "simulator",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = services["kafka"]["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env  # KRaft
    assert services["simulator"]["profiles"] == ["simulator"]
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_images_are_pinned_or_built_here(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            assert service["build"] == "."
            assert image == CPIMON_IMAGE, name
            continue
        repository, _, tag = image.rpartition(":")
        assert re.fullmatch(r"[a-z0-9]+(/[a-z0-9-]+)?", repository), (name, image)
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a version, not {image!r}"
    assert DOCKERFILE.exists()


def test_the_dockerfile_installs_the_package_and_runs_cpimon() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert "RUN pip install . && rm -rf build *.egg-info" in lines
    assert 'ENTRYPOINT ["cpimon"]' in lines
    assert 'CMD ["worker"]' in lines
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies a missing {source}"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    for needed in ("pyproject.toml", "README.md", "models/", "streams/", "agents/"):
        assert f"!{needed}" in ignored


def test_cpimon_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    commands = {}
    for name, service in compose["services"].items():
        if service["image"] == CPIMON_IMAGE:
            # argparse exits on an unknown command or option: that is the failure here.
            args = parser.parse_args(service["command"])
            commands[name] = args.command
    assert commands == {
        "worker-1": "worker",
        "worker-2": "worker",
        "simulator": "simulate",
    }


def test_workers_share_an_app_id_and_serve_metrics_outside_the_container(
    compose: dict[str, Any],
) -> None:
    workers = {n: s for n, s in compose["services"].items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    for name, service in workers.items():
        env = service["environment"]
        settings = Settings.from_env(env)  # the workers' own settings parser accepts them
        assert settings.metrics_host == "0.0.0.0", name
        assert settings.app_id == "cpi-monitor"
        assert settings.broker == "kafka://kafka:9092"
        catalog = in_container(service, env["CPIMON_CATALOG"])
        assert catalog is not None and catalog.is_file(), name
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert len({s["hostname"] for s in workers.values()}) == 2


def test_the_topic_init_creates_the_input_topics(compose: dict[str, Any]) -> None:
    script = compose["services"]["kafka-init"]["command"][0]
    defaults = Settings()
    topics = re.search(r"for topic in ([\w\- ]+);", script)
    assert topics is not None
    assert topics[1].split() == [defaults.events_topic, defaults.kpi_topic]
    assert f"--partitions {defaults.topic_partitions}" in script
    # $$ is compose's escape for a literal $ in the shell script.
    assert '"$$topic"' in script


def test_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    published: dict[int, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert host and container, f"{name}: publish with HOST:CONTAINER, not {port!r}"
            assert int(host) not in published, f"{name} and {published[int(host)]} use {host}"
            published[int(host)] = name
    assert published == {
        9094: "kafka",
        6066: "worker-1",
        6067: "worker-2",
        9090: "prometheus",
        9093: "alertmanager",
        3000: "grafana",
    }
    # The ports table at the top of the file says the same.
    header = COMPOSE.read_text(encoding="utf-8").split("\nx-cpimon")[0]
    for port in published:
        assert re.search(rf"\b{port}\b", header), f"port {port} is not documented"


def test_compose_prometheus_scrapes_the_workers_and_loads_the_rules(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["services"]["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"] if "=" in flag)
    config_path = in_container(prometheus, flags["--config.file"])
    assert config_path == ROOT / "deploy" / "prometheus" / "prometheus.compose.yml"
    config = load_yaml(config_path)
    [job] = config["scrape_configs"]
    assert job["job_name"] == JOB
    workers = {
        f"{s['hostname']}:{s['environment']['CPIMON_METRICS_PORT']}"
        for s in compose["services"].values()
        if s.get("command") == ["worker"]
    }
    [static] = job["static_configs"]
    assert set(static["targets"]) == workers
    [rules] = config["rule_files"]
    assert (config_path.parent / rules).is_file()
    assert (config_path.parent / rules) == ROOT / "deploy" / "prometheus" / "rules" / (
        "cpimon-rules.yml"
    )
    [alertmanager] = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanager == "alertmanager:9093"
    # The local config stays as it was, for Prometheus outside compose.
    local = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    assert local["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:6066"]


def test_alertmanager_and_grafana_mount_existing_configuration(compose: dict[str, Any]) -> None:
    alertmanager = compose["services"]["alertmanager"]
    flags = dict(flag.split("=", 1) for flag in alertmanager["command"])
    path = in_container(alertmanager, flags["--config.file"])
    assert path == ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    grafana = compose["services"]["grafana"]
    home = in_container(
        grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert home is not None and home.is_file()
    for container_path in ("/etc/grafana/provisioning/datasources/prometheus.yml",):
        found = in_container(grafana, container_path)
        assert found is not None and found.is_file()
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            if source.startswith("./"):
                assert host_path(source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


@pytest.mark.prometheus
def test_promtool_accepts_the_compose_prometheus_config() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: install Debian's prometheus package")
    checked = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy/prometheus/prometheus.compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(KUBE / "kustomization.yaml")
    return document


def _literals(entries: list[str]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in entries)


def render(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` would print, without the hash suffixes.

    Only the features the base uses: resources, namespace, labels (not on selectors),
    images and configMapGenerator.  Anything else in the file fails the test first.
    """
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((KUBE / resource).read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        data = {
            name: (KUBE / name).read_text(encoding="utf-8") for name in generator.get("files", [])
        }
        data.update(_literals(generator.get("literals", [])))
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for obj in objects:
        metadata = obj["metadata"]
        if obj["kind"] != "Namespace":
            metadata["namespace"] = kustomization["namespace"]
        for entry in kustomization.get("labels", []):
            metadata.setdefault("labels", {}).update(entry["pairs"])
        for container in (
            obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            image = images.get(container["image"])
            if image is not None:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def test_kustomization_uses_only_known_fields(kustomization: dict[str, Any]) -> None:
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
        "configMapGenerator",
    }
    for resource in kustomization["resources"]:
        assert (KUBE / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for name in generator.get("files", []):
            assert (KUBE / name).is_file(), name
    listed = set(kustomization["resources"]) | {
        name for g in kustomization["configMapGenerator"] for name in g.get("files", [])
    }
    on_disk = {path.name for path in KUBE.iterdir()} - {"kustomization.yaml"}
    assert on_disk == listed, "a file in deploy/kubernetes is not in kustomization.yaml"


def test_the_catalog_copy_is_the_example_catalog() -> None:
    assert (KUBE / "catalog.yaml").read_text(encoding="utf-8") == (
        ROOT / "catalog.example.yaml"
    ).read_text(encoding="utf-8"), (
        "refresh it: cp catalog.example.yaml deploy/kubernetes/catalog.yaml"
    )


def test_manifests_follow_the_kubernetes_schemas(kustomization: dict[str, Any]) -> None:
    objects = render(kustomization)
    checked = []
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked.append(obj["kind"])
    assert sorted(checked) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Namespace",
        "Secret",
        "Service",
    ]
    # The schemas are strict: a misspelt field fails.
    [deployment] = [obj for obj in objects if obj["kind"] == "Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_workers_run_cpimon_with_the_catalog_and_credentials(
    kustomization: dict[str, Any],
) -> None:
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in render(kustomization)}
    deployment = objects[("Deployment", "cpimon-worker")]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    annotations = pod["metadata"]["annotations"]
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    args = build_parser().parse_args(container["args"])
    assert args.command == "worker"
    env = {item["name"]: item["value"] for item in container["env"]}
    settings_map = objects[("ConfigMap", "cpimon-settings")]["data"]
    secret = objects[("Secret", "cpimon-kafka-credentials")]
    # Every variable the workers get parses as their settings.
    settings = Settings.from_env({**env, **settings_map, **secret["stringData"]})
    assert settings.metrics_host == "0.0.0.0"
    assert settings.metrics_port == port["containerPort"]
    assert settings.security_protocol.startswith("SASL")
    assert set(secret["stringData"]) == {"CPIMON_SASL_USERNAME", "CPIMON_SASL_PASSWORD"}
    assert set(secret["stringData"].values()) == {"change-me"}  # placeholders only
    env_from = {next(iter(source.values()))["name"] for source in container["envFrom"]}
    assert env_from == {"cpimon-settings", "cpimon-kafka-credentials"}
    [catalog_mount] = [m for m in container["volumeMounts"] if m["name"] == "catalog"]
    [catalog_volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "catalog"]
    assert catalog_volume["configMap"]["name"] == "cpimon-catalog"
    catalog_file = env["CPIMON_CATALOG"]
    assert catalog_file == f"{catalog_mount['mountPath']}/catalog.yaml"
    assert "catalog.yaml" in objects[("ConfigMap", "cpimon-catalog")]["data"]
    assert container["image"] == "registry.example.com/cpi-monitor:0.1.0"


def test_service_and_podmonitor_select_the_workers(kustomization: dict[str, Any]) -> None:
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in render(kustomization)}
    pod_labels = objects[("Deployment", "cpimon-worker")]["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "cpimon-metrics")]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert service["clusterIP"] == "None"  # every worker is scraped, not a random one
    [port] = service["ports"]
    assert port["targetPort"] == "metrics"
    monitor = objects[("PodMonitor", "cpimon-worker")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    [relabel] = endpoint["relabelings"]
    assert relabel == {"action": "replace", "targetLabel": "job", "replacement": JOB}


def test_compose_and_kubernetes_document_their_commands() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")
    for command in (
        "docker compose up -d --build",
        "docker compose --profile simulator up -d --build",
        "kubectl apply -k deploy/kubernetes",
    ):
        assert command in text, command
