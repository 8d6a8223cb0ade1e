"""Evaluation of a model on held-out data, metric by metric as its task defines them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

if TYPE_CHECKING:  # the protocol only; no runtime dependency on the core
    from fedloom.core.types import Task


def evaluate_model(task: Task, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str) -> dict[str, float]:
    """The task's metrics (e.g. ``test_loss``, ``test_accuracy``) of ``params`` on (x, y), in large chunks without
    autograd, with dropout off. Counts are over targets, not rows: per-position targets [N, T] count every
    position."""
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            out = functional_call(model, (params, buffers), (xb,))
            for k, v in task.score(out, yb).items():
                sums[k] = sums.get(k, 0) + v
    model.train(was_training)
    return task.summarize(sums, max(y.numel(), 1))
