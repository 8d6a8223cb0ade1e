"""metrics.jsonl: one complete JSON object per round, written in one call, flushed and fsync'd as it is written
(:func:`fedloom.atomic.append_line`), so the file is valid (line by line) even if a run dies mid-way; at worst its
last line is torn, and readers drop that line with a warning. Non-finite floats are written as null (strict
JSON)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from fedloom.atomic import append_line

log = logging.getLogger("fedloom")


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read (a damaged line that is not the last); the message names the file."""


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
            append_line(self._f, json.dumps(rec, allow_nan=False))

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


def parse_metrics(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a metrics.jsonl and its torn last line (None if the file ends cleanly). A line that is not a
    JSON object with a ``round``, other than the last, raises :class:`MetricsError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MetricsError(f"{path} is not a text file (metrics.jsonl holds one JSON object per line)") from None
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    records: list[dict[str, Any]] = []
    for j, (i, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or "round" not in rec:
                raise ValueError("not a round's record")
        except ValueError as e:
            if j == len(lines) - 1 and not text.endswith("\n"):  # cut off while being written: the last round lost
                return records, ln
            raise MetricsError(f"{path}, line {i}: not a round's JSON record ({e}); the file is damaged") from None
        records.append(rec)
    return records, None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` (a metrics.jsonl or a run directory); a torn last line is dropped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records, torn = parse_metrics(path)
    if torn is not None:
        log.warning("%s: dropped its torn last line (%d characters; a run stopped while writing it)", path, len(torn))
    return records
