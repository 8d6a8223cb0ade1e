"""TensorBoard event files for a run (``tracking: {tensorboard: true}`` or ``fedloom run --tensorboard``): every
numeric per-round value of ``metrics.jsonl`` as a scalar under its own key (``test_accuracy``, ``test_loss``,
``train_loss``, ``bytes_up``, ``bytes_down``, ``seconds``, ``reported``, ``epsilon``, ``return_mean``, ...), plus
``cum_bytes_up``, ``cum_bytes_down``, ``cum_bytes`` (up + down), ``wall_seconds`` (cumulative round time),
``num_rejected`` and ``num_dropped``; the step is the round. Written with torch.utils.tensorboard, which needs the
``tensorboard`` package (the ``tracking`` extra). View with ``tensorboard --logdir RUN_DIR/tensorboard``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SUBDIR = "tensorboard"
INSTALL = "pip install 'fedloom[tracking]' (or: pip install tensorboard)"


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of one round's record (booleans, lists, None and non-finite values left out)."""
    out = {}
    for k, v in rec.items():
        if k == "round" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    for k in ("rejected", "dropped"):
        if isinstance(rec.get(k), list):
            out[f"num_{k}"] = float(len(rec[k]))
    return out


class TensorBoardTracker:
    """Writes each round's scalars to ``run_dir/tensorboard``. ``records``: the rounds already recorded (a
    resumed run), which give the cumulative totals; steps after the last of them are purged from older event
    files (a resumed run redoes the rounds after its checkpoint)."""

    def __init__(self, run_dir: str | Path, records: list[dict[str, Any]] | None = None):
        if not available():
            raise RuntimeError(f"tracking.tensorboard needs the tensorboard package: {INSTALL}")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / SUBDIR
        records = records or []
        last = max((int(r["round"]) for r in records), default=0)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=last + 1 if last else None)
        self.totals = {"cum_bytes_up": 0.0, "cum_bytes_down": 0.0, "cum_bytes": 0.0, "wall_seconds": 0.0}
        for r in records:
            self._accumulate(r)

    def _accumulate(self, rec: dict[str, Any]) -> None:
        up, down = float(rec.get("bytes_up") or 0), float(rec.get("bytes_down") or 0)
        self.totals["cum_bytes_up"] += up
        self.totals["cum_bytes_down"] += down
        self.totals["cum_bytes"] += up + down
        self.totals["wall_seconds"] += float(rec.get("seconds") or 0.0)

    def log(self, rec: dict[str, Any]) -> None:
        step = int(rec["round"])
        self._accumulate(rec)
        for k, v in {**scalars(rec), **self.totals}.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
