"""What a run ran on: fedloom and torch versions, Python, the machine, the git commit of the fedloom checkout,
the date. Written to ``environment.json`` in the run directory when the run starts (a resume appends itself to
``resumed``) and shown by the HTML report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from fedloom.atomic import write_text_atomic

NAME = "environment.json"


def _git(*args: str) -> str | None:
    """A git command in fedloom's source checkout; None when fedloom is installed (not a checkout) or git fails."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        return None
    try:  # --no-optional-locks: never refresh the index (a read-only look at the checkout)
        p = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """This process's environment, as recorded for a run."""
    import torch

    try:
        from importlib.metadata import version

        fl = version("fedloom")
    except Exception:  # noqa: BLE001  (not installed: a source checkout on sys.path)
        fl = "unknown"
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return {"fedloom": fl, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu(), "cores": cores,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "git_commit": commit,
            "git_dirty": dirty, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record_environment(run_dir: str | Path, resumed: bool = False) -> dict[str, Any]:
    """Write (or, on resume, extend) ``run_dir/environment.json``; returns what was recorded."""
    path = Path(run_dir) / NAME
    env = environment()
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            old.setdefault("resumed", []).append(env)
            env = old
    write_text_atomic(path, json.dumps(env, indent=1) + "\n")
    return env
