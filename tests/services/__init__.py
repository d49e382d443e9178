"""Real external services (built from pinned sources) that end-to-end tests run against."""
