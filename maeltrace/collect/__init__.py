"""The summary service, ``maeltrace collect``: OTLP/HTTP in, run summaries to MLflow out.

Processes of a run export their spans to the service; each process's run span carries its exact
per-key statistics, which the service gathers per process and across ranks (`summaries`) and
logs to MLflow and W&B (`mlflow_out`), served over HTTP by `service` (Starlette and uvicorn, the
``collect`` extra). Importing this package loads none of them: import the submodule you need.
"""

from __future__ import annotations

__all__: list[str] = []
