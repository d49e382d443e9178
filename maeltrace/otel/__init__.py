"""OpenTelemetry: regions as spans, and their export."""

from __future__ import annotations
