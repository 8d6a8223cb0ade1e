"""Experiment trackers fed by the simulation runtime: after each round's record is written to metrics.jsonl it
goes to every tracker the run's ``tracking`` section turns on (TensorBoard now). :func:`open_trackers` also
records the run's environment (``environment.json``: versions, machine, git commit, date)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, rec: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Trackers:
    """The trackers of one run, fed together; closing is idempotent."""

    def __init__(self, trackers: list[Tracker] | None = None):
        self.trackers = list(trackers or [])

    def log(self, rec: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log(rec)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def open_trackers(cfg: Any, run_dir: str | Path, resumed: bool = False) -> Trackers:
    """The trackers ``cfg.tracking`` asks for, writing into ``run_dir`` (the rounds already in its metrics.jsonl,
    those of a resumed run, give them their cumulative totals). Records the environment in
    ``run_dir/environment.json`` (``resumed``: appended to the existing record)."""
    from fedloom.metrics.environment import record_environment
    from fedloom.metrics.history import read_metrics

    record_environment(run_dir, resumed=resumed)
    mpath = Path(run_dir) / "metrics.jsonl"
    try:
        records = read_metrics(mpath) if mpath.is_file() else []
    except ValueError:  # a torn last line: no totals to carry over
        records = []
    out: list[Tracker] = []
    tracking = getattr(cfg, "tracking", None)
    if tracking is not None and tracking.tensorboard:
        from fedloom.metrics.tensorboard import TensorBoardTracker

        out.append(TensorBoardTracker(run_dir, records))
    return Trackers(out)
