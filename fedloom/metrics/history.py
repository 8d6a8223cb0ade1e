"""metrics.jsonl: one complete JSON object per round, flushed as it is written, so the file is valid
(line by line) even if a run dies mid-way. Non-finite floats are written as null (strict JSON)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class MetricsWriter:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.records: list[dict[str, Any]] = []
        self._f = open(self.path, "a", encoding="utf-8") if self.path else None

    def write(self, record: dict[str, Any]) -> None:
        rec = _clean(record)
        self.records.append(rec)
        if self._f:
            self._f.write(json.dumps(rec, allow_nan=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
