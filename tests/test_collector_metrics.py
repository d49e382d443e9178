"""The Collector's metrics pipeline end to end: every metric the dashboard queries is scraped.

The real Collector runs ``collectors/otelcol.yaml`` on free loopback ports, its Prometheus exporter
(``OTELCOL_PROMETHEUS``) too, and the span_metrics connector flushing every second
(``OTELCOL_SPAN_METRICS_FLUSH_INTERVAL``). Two ranks of a real maeltrace training loop export
their spans to it (``Timer(export=True, endpoint=...)``) and, through maeltrace's own OTLP
metrics export, the histogram ``maeltrace.region.duration`` of their regions. Then ``/metrics``
is scraped: every metric name in the dashboard's queries (``deploy/grafana/dashboards/*.json``:
the panels' ``expr`` and the variables' ``label_values``) is there, with every label those
queries group, filter or name in a legend, and the histogram's count per key and rank is the
loop's region count.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from tests.services.collector import CollectorService
from tests.services.jaeger import free_ports

pytest.importorskip("opentelemetry.sdk.metrics", reason="the otel extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

EPOCHS, BATCHES, BATCH_SIZE = 2, 3, 16
RANKS = (0, 1)
SCRAPE_TIMEOUT = 60.0

_METRIC_BEFORE_MATCHERS = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")
_LABEL_VALUES_METRIC = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")
_LABEL_VALUES_LABEL = re.compile(r"label_values\([^)]*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


# -- the dashboards' queries --------------------------------------------------------------------


def _queries(node: object) -> Iterator[tuple[str, str]]:
    """``(query, legend)`` of every Prometheus query in a dashboard: the targets' ``expr`` (with
    their ``legendFormat``) and the template variables' ``label_values(...)``."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"], str(node.get("legendFormat", ""))
        query = node.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and "label_values(" in query:
            yield query, ""
        for value in node.values():
            yield from _queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _queries(value)


def _metric_names(query: str) -> set[str]:
    return set(_METRIC_BEFORE_MATCHERS.findall(query)) | set(_LABEL_VALUES_METRIC.findall(query))


def _label_names(query: str, legend: str) -> set[str]:
    """Labels a query groups by, filters on, asks values of, or its legend names."""
    grouped = {label.strip() for group in _GROUPING.findall(query) for label in group.split(",")}
    return (
        {label for label in grouped if label}
        | set(_MATCHER.findall(query))
        | set(_LABEL_VALUES_LABEL.findall(query))
        | set(_LEGEND_LABEL.findall(legend))
    )


def _dashboard_queries() -> list[tuple[str, str]]:
    return [query for path in DASHBOARDS for query in _queries(json.loads(path.read_text()))]


# -- the Prometheus endpoint --------------------------------------------------------------------


Series = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(url: str) -> Series:
    """Prometheus's text format: ``{metric: [(labels, value)]}``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    series: Series = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        series.setdefault(name, []).append((dict(_LABEL_PAIR.findall(labels or "")), float(value)))
    return series


def _ranks_in(series: Series, run_id: str) -> set[str]:
    return {
        labels.get("maeltrace_rank", "")
        for labels, _ in series.get("maeltrace_region_duration_seconds_count", [])
        if labels.get("maeltrace_run_id") == run_id
    }


def _scrape_until(url: str, names: set[str], run_id: str, timeout: float) -> Series:
    """Scrape until every metric is there with every rank's histogram (the Collector batches
    what it receives for up to 200 ms, and the span metrics come at the connector's flush)."""
    deadline = time.monotonic() + timeout
    while True:
        series = _scrape(url)
        done = names <= set(series) and _ranks_in(series, run_id) == {str(r) for r in RANKS}
        if done or time.monotonic() > deadline:
            return series
        time.sleep(0.5)


# -- the run ------------------------------------------------------------------------------------


def _train(tmr: Timer) -> None:
    for _ in range(EPOCHS):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(BATCHES)):
                with tmr.region(TimeType.BATCH, items=BATCH_SIZE), tmr.region(TimeType.FORWARD):
                    sum(range(2000))


@pytest.mark.slow
def test_every_metric_the_dashboard_queries_is_scraped_from_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = _dashboard_queries()
    assert DASHBOARDS and queries
    for query, _ in queries:
        assert _metric_names(query), f"no metric name found in {query!r}"
    wanted = {name for query, _ in queries for name in _metric_names(query)}

    run_id = f"metrics-{uuid.uuid4().hex[:8]}"
    service = f"maeltrace-{run_id}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    # Nothing listens on the trace destinations: those exporters retry and drop, on their own.
    prometheus, jaeger, mlflow, collect = free_ports(4)
    env = {
        "OTELCOL_PROMETHEUS": f"127.0.0.1:{prometheus}",
        "OTELCOL_SPAN_METRICS_FLUSH_INTERVAL": "1s",
        "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{jaeger}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow}",
        "MAELTRACE_COLLECT_ENDPOINT": f"http://127.0.0.1:{collect}",
        "OTELCOL_ARCHIVE": str(tmp_path / "archive.jsonl"),
    }
    with CollectorService(env=env, cwd=tmp_path, log_path=tmp_path / "otelcol.log") as collector:
        # Two ranks of one run, each sending its spans and, through maeltrace's own OTLP
        # metrics export, its region-duration histogram (with its rank in the resource).
        for rank in RANKS:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(len(RANKS)))
            with Timer(
                export=True,
                endpoint=collector.otlp_http_endpoint,
                output_dir=tmp_path / f"rank{rank}",
                run_id=run_id,
            ) as tmr:
                _train(tmr)
        series = _scrape_until(
            f"http://127.0.0.1:{prometheus}/metrics", wanted, run_id, SCRAPE_TIMEOUT
        )
        assert collector.running, collector.log_tail()
        log = collector.log()
    assert "deprecated" not in log.lower(), log

    ours = {
        name: [labels for labels, _ in samples if labels.get("service_name") == service]
        for name, samples in series.items()
    }
    missing = sorted(name for name in wanted if not ours.get(name))
    assert not missing, f"not scraped for {service}: {missing}; scraped: {sorted(series)}"

    # Every label a query groups by, filters on or shows is on the series it names.
    for query, legend in queries:
        for name in _metric_names(query):
            present = {label for labels in ours[name] for label in labels}
            absent = _label_names(query, legend) - present
            assert not absent, f"{name} lacks labels {absent} that {query!r} uses"

    # One data point per region: the histogram's count per key and rank is the loop's count.
    counts = {
        (labels["maeltrace_key"], labels["maeltrace_rank"]): value
        for labels, value in series["maeltrace_region_duration_seconds_count"]
        if labels.get("maeltrace_run_id") == run_id
    }
    keys = tmr.keys()
    expected = {str(key): len(tmr.get_time(key)) for key in keys}
    assert counts == {
        (key, str(rank)): float(count) for key, count in expected.items() for rank in RANKS
    }
    assert expected["batch"] == EPOCHS * BATCHES
    # The span metrics carry the region key (a dimension of the connector) and the run id.
    calls = [
        labels
        for labels in ours["traces_span_metrics_calls_total"]
        if labels.get("maeltrace_run_id") == run_id
    ]
    assert {"batch", "forward", "epoch"} <= {labels.get("maeltrace_key") for labels in calls}
    # The items counter holds every batch's count, per rank.
    items = {
        (labels["maeltrace_key"], labels["maeltrace_rank"]): value
        for labels, value in series["maeltrace_region_items_total"]
        if labels.get("maeltrace_run_id") == run_id
    }
    per_rank = float(EPOCHS * BATCHES * BATCH_SIZE)
    assert items == {(key, str(rank)): per_rank for key in ("batch", "epoch") for rank in RANKS}


def test_the_dashboard_uses_prometheus_and_jaeger_data_sources() -> None:
    datasources: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict):
                datasources.add(str(source.get("uid")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()))
    assert datasources == {"maeltrace-prometheus", "maeltrace-jaeger"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.name for path in DASHBOARDS])
def test_the_dashboard_is_a_provisionable_grafana_model(path: Path) -> None:
    """What Grafana needs to load it from a file (no schema is published outside Grafana's own,
    AGPL, code): a uid and title, unique panel ids, panels inside the 24-column grid, and targets
    with a refId and a data source."""
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and "id" not in dashboard
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(target.get("datasource") for target in panel.get("targets", []))
        assert panel["type"] == "row" or panel.get("targets"), panel["title"]
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    used = set(re.findall(r"\$([a-z]+)", json.dumps(panels)))
    assert used - {"__rate_interval"} <= set(names)
