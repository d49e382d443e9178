"""The repository's YAML and OpenTelemetry Collector configs, checked with the real Collector.

- Every YAML file under ``collectors/`` and ``deploy/`` parses (several documents allowed).
- Every Collector config there passes ``validate`` with its own defaults: files whose top level
  has ``receivers`` and ``service``, and such configs embedded in Kubernetes ConfigMaps. Jaeger
  configs (Jaeger v2 is a Collector distribution with its own ``jaeger_*`` components, as in
  ``collectors/jaeger/config.yaml``) are validated by the Jaeger binary, every other by
  maeltrace's Collector.
- End to end: the Collector running ``collectors/otelcol.yaml`` on free ports takes an OTLP/JSON
  trace and delivers it to a real Jaeger and to its archive file, while the MLflow and
  summary-service exporters point at ports where nothing listens.

The first run builds the Collector (``scripts/build-collector``; minutes when Go's caches are
cold) and, for the end-to-end test, Jaeger. A failing build fails these tests; nothing is skipped.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import SmokeTrace
from tests.services.collector import (
    CONFIG,
    CollectorService,
    config_variables,
    validate_config,
)
from tests.services.jaeger import JaegerService, free_ports, jaeger_binary

ROOT = Path(__file__).resolve().parents[1]
YAML_DIRS = ("collectors", "deploy")
SERVICE = "maeltrace-collector-smoke"


# -- finding the files -----------------------------------------------------------------------


def _is_helm_template(path: Path) -> bool:
    """A file under a Helm chart's ``templates/``: Go templates, not YAML until rendered."""
    parts = path.relative_to(ROOT).parts
    for index, part in enumerate(parts[:-1]):
        if part == "templates" and (ROOT.joinpath(*parts[:index]) / "Chart.yaml").is_file():
            return True
    return False


def _yaml_files() -> list[Path]:
    files: set[Path] = set()
    for name in YAML_DIRS:
        folder = ROOT / name
        if folder.is_dir():
            files.update(folder.rglob("*.yaml"))
            files.update(folder.rglob("*.yml"))
    return sorted(path for path in files if path.is_file() and not _is_helm_template(path))


def _documents(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def _is_collector_config(document: object) -> bool:
    return isinstance(document, dict) and "receivers" in document and "service" in document


def _is_jaeger_config(document: dict[str, Any]) -> bool:
    """Whether a Collector config names Jaeger's own components (``jaeger_storage``, ...)."""
    return any(
        str(component).startswith("jaeger_")
        for section in ("extensions", "exporters", "receivers")
        for component in (document.get(section) or {})
    )


def _collector_configs() -> list[tuple[str, Path | str]]:
    """``(id, config)``: a file that is one Collector config as its path, any other (a document
    of several, or a ConfigMap's entry) as its text."""
    found: list[tuple[str, Path | str]] = []
    for path in _yaml_files():
        name = str(path.relative_to(ROOT))
        try:
            documents = _documents(path)
        except yaml.YAMLError:
            continue  # test_yaml_parses reports it
        if len(documents) == 1 and _is_collector_config(documents[0]):
            found.append((name, path))
            continue
        for index, document in enumerate(documents):
            if _is_collector_config(document):
                found.append((f"{name}[{index}]", yaml.safe_dump(document, sort_keys=False)))
            elif isinstance(document, dict) and document.get("kind") == "ConfigMap":
                for key, value in (document.get("data") or {}).items():
                    if not (isinstance(value, str) and key.endswith((".yaml", ".yml"))):
                        continue
                    try:
                        embedded = yaml.safe_load(value)
                    except yaml.YAMLError:
                        continue  # not this test's business; kubectl would reject it anyway
                    if _is_collector_config(embedded):
                        configmap = (document.get("metadata") or {}).get("name", index)
                        found.append((f"{name}[{configmap}]/{key}", value))
    return found


YAML_FILES = _yaml_files()
COLLECTOR_CONFIGS = _collector_configs()


# -- YAML -------------------------------------------------------------------------------------


def test_the_repository_has_yaml_and_collector_configs() -> None:
    assert CONFIG in YAML_FILES
    assert (str(CONFIG.relative_to(ROOT)), CONFIG) in COLLECTOR_CONFIGS


@pytest.mark.parametrize(
    "path", YAML_FILES, ids=[str(path.relative_to(ROOT)) for path in YAML_FILES]
)
def test_yaml_parses(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no YAML document"


# -- validate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config"), COLLECTOR_CONFIGS, ids=[name for name, _ in COLLECTOR_CONFIGS]
)
def test_collector_validates_config(name: str, config: Path | str, tmp_path: Path) -> None:
    if isinstance(config, str):
        path = tmp_path / "config.yaml"
        path.write_text(config)
    else:
        path = config
    binary = jaeger_binary() if _is_jaeger_config(yaml.safe_load(path.read_text())) else None
    # With the config's own variables unset, so that its defaults are what gets checked.
    result = validate_config(path, unset=config_variables(path), binary=binary)
    assert result.returncode == 0, f"{name}: validate failed:\n{result.stderr}"


def test_collector_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    """``validate`` checks component settings, so the test above is not vacuous."""
    config = yaml.safe_load(CONFIG.read_text())
    del config["processors"]["memory_limiter"]["limit_percentage"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = validate_config(
        broken, {"OTELCOL_MEMORY_LIMIT_MIB": "0"}, unset=config_variables(CONFIG)
    )
    assert result.returncode != 0
    assert "memory_limiter" in result.stderr


# -- end to end ---------------------------------------------------------------------------------


def _archived_spans(archive: Path, trace_id: str, count: int, timeout: float) -> list[Any]:
    """Poll the archive (OTLP/JSON ``TracesData``, one per line) for ``count`` spans of the
    trace; return them."""
    deadline = time.monotonic() + timeout
    while True:
        spans: list[Any] = []
        if archive.is_file():
            for line in archive.read_text().splitlines():
                if not line.strip():
                    continue
                for resource_spans in json.loads(line).get("resourceSpans", []):
                    for scope_spans in resource_spans.get("scopeSpans", []):
                        spans.extend(
                            span
                            for span in scope_spans.get("spans", [])
                            if span.get("traceId") == trace_id
                        )
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


@pytest.mark.slow
def test_collector_fans_out_to_jaeger_and_the_archive(tmp_path: Path) -> None:
    smoke = SmokeTrace.new()
    trace_id, parent_id, child_id = smoke.trace_id, smoke.parent_id, smoke.child_id
    parent_start = smoke.parent_start_us
    payload = smoke.payload(SERVICE)
    # Nothing listens on these: MLflow's and the summary service's exporters fail and retry,
    # which must not hold up Jaeger's copy or the archive.
    mlflow_port, collect_port = free_ports(2)
    archive = tmp_path / "archive" / "otelcol.jsonl"  # the exporter creates the folder

    with JaegerService(log_path=tmp_path / "jaeger.log") as jaeger:
        env = {
            "JAEGER_OTLP_GRPC_ENDPOINT": urllib.parse.urlsplit(jaeger.otlp_grpc_endpoint).netloc,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "MAELTRACE_COLLECT_ENDPOINT": f"http://127.0.0.1:{collect_port}",
            "OTELCOL_ARCHIVE": str(archive),
        }
        with CollectorService(env=env, cwd=tmp_path, log_path=tmp_path / "otelcol.log") as otelcol:
            reply = otelcol.send_otlp_json(payload)
            assert not reply.get("partialSuccess", {}).get("rejectedSpans"), reply

            traces = jaeger.wait_for_spans(SERVICE, 2, timeout=30, start_us=parent_start)
            archived = _archived_spans(archive, trace_id, 2, timeout=15)
            log = otelcol.log()
            assert otelcol.running, otelcol.log_tail()

    assert [trace["traceID"] for trace in traces] == [trace_id]
    spans = {span["operationName"]: span for span in traces[0]["spans"]}
    assert set(spans) == {"train_step", "forward"}
    assert spans["forward"]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}
    ]
    assert spans["forward"]["duration"] == 12_345

    assert sorted(span["name"] for span in archived) == ["forward", "train_step"]
    assert {span["spanId"] for span in archived} == {parent_id, child_id}

    # The unreachable destinations were tried; the config uses no deprecated component names.
    assert "otlp_http/mlflow" in log and "otlp_http/maeltrace_collect" in log, log
    assert "deprecated" not in log.lower(), log
