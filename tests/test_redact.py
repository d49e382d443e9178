"""Secrets stay out of what maeltrace prints and stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maeltrace.redact import MASK, is_secret_name, redact_argv, redact_text, redact_url


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
