"""Crash-safe file writes for everything a run writes (model.pt, checkpoint.pt, config.yaml, metrics.jsonl, plots,
environment.json): a whole file is written to a temporary file in the same directory, flushed, fsync'd and
moved over the old one with ``os.replace`` (a crash, even SIGKILL, leaves the old file or the new one, never a
torn one; a failed write, e.g. a full disk, removes its temporary file and leaves the old file as it was); a
line of an append-only file is written in one call, flushed and fsync'd (:func:`append_line`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """Where :func:`write_atomic` stages ``path`` (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: str | Path) -> None:
    """Make a rename in directory ``path`` durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary binary file, which then replaces ``path``. On any
    error the temporary file is removed, ``path`` is untouched and the error propagates."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_line(f: IO[str], line: str) -> None:
    """Append one line (``line`` without its newline) to the text file ``f`` in one write, flushed and fsync'd: a
    crash can tear at most this last line, which readers drop (:func:`fedloom.metrics.history.read_metrics`)."""
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())
