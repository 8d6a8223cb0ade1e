"""Atomic checkpoints of the server state (:mod:`fedloom.atomic`: a temporary file in the same directory, fsync,
then ``os.replace``) -- a crash (even SIGKILL) leaves either the old or the new checkpoint, never a torn one, and a
failed write leaves no temporary file. :func:`load` turns an unreadable checkpoint (truncated, empty, not a
checkpoint) into one :class:`CheckpointError` naming the file and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedloom.atomic import write_atomic

NAME = "checkpoint.pt"
#: what every checkpoint holds (fedloom.simulation.Simulation.save_checkpoint)
REQUIRED = ("round", "params", "opt_state", "algo_state", "torch_rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


def save_atomic(obj: Any, path: str | Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (torch.load raises many kinds for a damaged file)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {why[:200]}); it is truncated, empty or "
                              "not a fedloom checkpoint. It cannot be resumed: start the run again from its "
                              f"config (fedloom run {path.parent / 'config.yaml'} --out NEW_DIR)") from None
    missing = [k for k in REQUIRED if k not in ck] if isinstance(ck, dict) else list(REQUIRED)
    if missing:
        raise CheckpointError(f"{path} is not a fedloom checkpoint (missing {', '.join(missing)}); it cannot be "
                              f"resumed: start the run again from its config (fedloom run "
                              f"{path.parent / 'config.yaml'} --out NEW_DIR)")
    return ck
