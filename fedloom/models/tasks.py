"""Learning tasks: the loss a client trains on and the metrics a model is scored by. The task travels with the
model (``task:`` in a config), so a new kind of problem is a new entry here, not an edit of the round loop.

* ``classification``: cross-entropy; test loss and top-1 accuracy. Per-position targets (logits [B, C, T],
  targets [B, T], e.g. next-character prediction) average the loss over positions and count every position.
* ``regression``: squared error; test MSE and RMSE (outputs [B, D] or [B], float targets of the same shape).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from fedloom.registry import TASKS


def _weighted(losses: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    if losses.dim() > 1:  # per-position / per-output losses: mean over them, one value per sample
        losses = losses.flatten(1).mean(1)
    lw = (losses * w).sum()
    sw = w.sum()
    return lw / sw.clamp_min(1.0), (lw.detach(), sw.detach())


@TASKS.register("classification", None, "cross-entropy loss; test loss and top-1 accuracy")
class Classification:
    name = "classification"
    headline = "test_accuracy"

    def weighted_loss(self, outputs, targets, weights):
        return _weighted(F.cross_entropy(outputs, targets, reduction="none"), weights)

    def score(self, outputs, targets) -> dict[str, float]:
        return {"loss": float(F.cross_entropy(outputs, targets, reduction="sum")),
                "correct": int((outputs.argmax(1) == targets).sum())}

    def summarize(self, sums: Mapping[str, float], count: int) -> dict[str, float]:
        return {"test_loss": sums.get("loss", 0.0) / count, "test_accuracy": sums.get("correct", 0) / count}


@TASKS.register("regression", None, "squared-error loss; test MSE and RMSE")
class Regression:
    name = "regression"
    headline = "test_rmse"

    @staticmethod
    def _align(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = targets.to(outputs.dtype)
        if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
            outputs = outputs.squeeze(-1)
        return outputs, targets

    def weighted_loss(self, outputs, targets, weights):
        o, t = self._align(outputs, targets)
        return _weighted((o - t) ** 2, weights)

    def score(self, outputs, targets) -> dict[str, float]:
        o, t = self._align(outputs, targets)
        return {"sse": float(((o - t) ** 2).sum())}

    def summarize(self, sums: Mapping[str, float], count: int) -> dict[str, float]:
        mse = sums.get("sse", 0.0) / count
        return {"test_loss": mse, "test_rmse": math.sqrt(mse)}


def build_task(name: str):
    return TASKS.get(name)()
