"""Per-round metrics (JSON lines) and reports."""

from fedloom.metrics.history import MetricsWriter, read_metrics

__all__ = ["MetricsWriter", "read_metrics"]
