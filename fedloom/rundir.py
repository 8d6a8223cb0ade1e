"""A run directory claimed before anything is built: checked (a directory, writable, empty unless resuming) and
locked with ``fcntl.flock`` on ``DIR/.lock`` for as long as the run writes to it, so two runs started on the same
``--out`` at once cannot interleave their metrics. The lock file itself stays (it is empty; removing a lock file
that another process may have opened is a race), and counts as nothing when a directory is checked for emptiness.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK = ".lock"


class RunDirError(ValueError):
    """``--out`` (or a run to resume) cannot be used; the message names the directory and why."""


class RunDir:
    """A claimed run directory; :meth:`release` unlocks it (``discard``: also remove what the claim created)."""

    def __init__(self, path: Path, fd: int, created: bool, created_lock: bool):
        self.path, self._fd, self.created, self.created_lock = path, fd, created, created_lock

    def release(self, discard: bool = False) -> None:
        if self._fd < 0:
            return
        if discard and self.created_lock:  # the run wrote nothing: leave the file system as it was
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink()
            if self.created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
        os.close(self._fd)  # closing releases the flock
        self._fd = -1


def is_empty(path: Path) -> bool:
    """No entries but the lock file."""
    return all(p.name == LOCK for p in path.iterdir())


def claim(path: str | Path, *, resume: bool = False) -> RunDir:
    """Check and lock ``path`` for a new run (created if missing; must be empty) or, with ``resume``, an existing
    run directory. Raises :class:`RunDirError` with a message naming the directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory; choose another --out")
    if resume and not path.is_dir():
        raise RunDirError(f"{path} is not a run directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {path}: {e.strerror or e}; choose another --out") from None
    created_lock = not (path / LOCK).exists()
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise RunDirError(f"cannot write to {path}: {e.strerror or e}; choose another "
                          + ("directory" if resume else "--out")) from None
    run = RunDir(path, fd, created, created_lock)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirError(f"{path} is in use by another fedloom run (it holds {path / LOCK}); wait for it to finish "
                          "or choose another --out") from None
    if not resume and not is_empty(path):
        run.release(discard=True)
        raise RunDirError(f"output directory {path} exists and is not empty; choose another --out")
    if not os.access(path, os.W_OK | os.X_OK):
        run.release(discard=True)
        raise RunDirError(f"cannot write to {path}: permission denied; choose another --out")
    return run
