"""Secrets stay out of what maeltrace prints and stores, and URL credentials are sent."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import maeltrace
from maeltrace._redact import MASK, is_secret_name, redact_argv, redact_text, redact_url
from maeltrace.errors import ExportConfigError
from maeltrace.otel.config import ExportConfig


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@host:4318", "http://***@host:4318"),
        ("https://tok@host/v1/traces", "https://***@host/v1/traces"),
        ("http://host:4318/v1/traces?token=abc&x=1", "http://host:4318/v1/traces?token=***&x=1"),
        ("http://host:4318/v1/traces", "http://host:4318/v1/traces"),
        ("localhost:4317", "localhost:4317"),
    ],
)
def test_urls_lose_their_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_text_loses_the_credentials_of_every_url() -> None:
    text = "cannot reach http://a:b@h1:1/x, then grpc://c:d@h2:2"
    assert redact_text(text) == "cannot reach http://***@h1:1/x, then grpc://***@h2:2"


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "api-key",
        "WANDB_API_KEY",
        "hf_token",
        "password",
        "db.passwd",
        "client_secret",
        "auth",
        "apikey",
        "sort-key",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["lr", "batch-size", "keys", "monkey", "epochs", "output"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_argv_masks_secret_flag_values_and_url_passwords() -> None:
    argv = [
        "train.py",
        "--api-key=abc",
        "--token",
        "xyz",
        "--lr",
        "0.1",
        "hf_token=q",
        "--password",
        "--verbose",
        "--endpoint",
        "http://u:p@h:4318",
    ]
    assert redact_argv(argv) == [
        "train.py",
        f"--api-key={MASK}",
        "--token",
        MASK,
        "--lr",
        "0.1",
        f"hf_token={MASK}",
        "--password",
        "--verbose",
        "--endpoint",
        f"http://{MASK}@h:4318",
    ]


def test_recorded_command_line_is_redacted(tmp_path: Path) -> None:
    """A real run's stats.json holds the command line with its secrets masked."""
    script = tmp_path / "train.py"
    out = str(tmp_path / "out")
    script.write_text(
        "import maeltrace\n"
        f"tmr = maeltrace.Timer(output_dir={out!r}, export=True)\n"
        "with tmr.region('epoch'):\n    pass\n"
        "tmr.close()\n"
    )
    subprocess.run(
        [sys.executable, str(script), "--wandb-api-key", "s3cr3t", "--lr=0.1"],
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path.cwd()),
            "OTEL_SDK_DISABLED": "false",
            "MAELTRACE_SIGNALS": "0",
        },
        timeout=120,
    )
    (stats,) = (tmp_path / "out").rglob("stats*.json")
    assert "s3cr3t" not in stats.read_text()
    argv = json.loads(stats.read_text())["metadata"]["argv"]
    assert argv[1:] == ["--wandb-api-key", MASK, "--lr=0.1"]


class _RecordingReceiver(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that answers every POST 200 and records each request's path and
    Authorization header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base_url(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _RecordingReceiver

    def do_POST(self) -> None:  # the base class's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_RecordingReceiver]:
    server = _RecordingReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_userinfo_is_sent_as_basic_credentials_and_never_kept(
    receiver: _RecordingReceiver, tmp_path: Path
) -> None:
    """A Timer given ``http://user:p%40ss@host`` sends ``Authorization: Basic`` to a real
    receiver, and no file of the run, nor the config's repr, holds the password."""
    endpoint = f"http://trainer:p%40ss-w0rd@{receiver.base_url}"
    config = ExportConfig.from_env({}, endpoint=endpoint)
    assert config is not None
    assert "w0rd" not in repr(config) and "w0rd" not in config.endpoint
    timer = maeltrace.Timer(
        endpoint=endpoint, export=True, output_dir=tmp_path, handle_signals=False
    )
    for _ in range(2):
        with timer.region("epoch"), timer.region("batch"):
            pass
    timer.close()
    expected = "Basic " + base64.b64encode(b"trainer:p@ss-w0rd").decode()
    # Spans, and the region-duration histogram of maeltrace's own metrics export beside them.
    assert receiver.seen and {path for path, _ in receiver.seen} == {"/v1/traces", "/v1/metrics"}
    assert all(credentials == expected for _, credentials in receiver.seen)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert written
    for path in written:
        assert b"w0rd" not in path.read_bytes(), path


def test_credentials_and_an_authorization_header_are_refused() -> None:
    with pytest.raises(ExportConfigError, match=r"http://\*\*\*@h:1 carries credentials") as caught:
        ExportConfig.from_env(
            {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer x"}, endpoint="http://u:pw@h:1"
        )
    assert "pw" not in str(caught.value)


def test_grpc_endpoint_credentials_become_metadata() -> None:
    config = ExportConfig.from_env(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, endpoint="http://u:pw@127.0.0.1:4317"
    )
    assert config is not None and config.endpoint == "127.0.0.1:4317"
    assert dict(config.headers)["authorization"] == "Basic " + base64.b64encode(b"u:pw").decode()


def test_bad_endpoints_are_named_without_their_password() -> None:
    with pytest.raises(ExportConfigError) as caught:
        ExportConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, endpoint="http://u:pw@h:1/x")
    assert "pw" not in str(caught.value) and "http://h:1/x" in str(caught.value)


def test_the_command_line_can_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from maeltrace._clock import ClockAnchor
    from maeltrace._metadata import run_metadata

    monkeypatch.setattr(sys, "argv", ["train.py", "--hf-token", "abc"])
    assert run_metadata(ClockAnchor.take(), "r")["argv"] == ["train.py", "--hf-token", MASK]
    monkeypatch.setenv("MAELTRACE_RECORD_ARGV", "0")
    assert "argv" not in run_metadata(ClockAnchor.take(), "r")
    monkeypatch.setenv("MAELTRACE_RECORD_ARGV", "maybe")
    with pytest.raises(ValueError, match="MAELTRACE_RECORD_ARGV"):
        run_metadata(ClockAnchor.take(), "r")
