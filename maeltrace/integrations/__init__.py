"""Trainer integrations: leaf modules that import their framework and use the Timer's public API."""
