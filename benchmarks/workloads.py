"""The cross-device benchmark workloads W1 and W2, shared by ``cross_device.py`` and ``flower_sim_app.py``.

Each names its fedloom config (``benchmarks/w1.yaml``, ``benchmarks/w2.yaml``); the hand-written loops (plain
vmap, Flower) read the same numbers from here and build the same network, so every method trains the same math.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Workload:
    name: str
    config: Path
    dataset: str
    model: str
    clients: int
    per_client: int
    cohort: int
    epochs: int
    batch: int
    lr: float
    rounds: int
    eval_every: int


def _workload(name: str) -> Workload:
    path = HERE / f"{name}.yaml"
    c = yaml.safe_load(path.read_text())
    part = c["data"]["partition"]
    spc = part.get("samples_per_client") if isinstance(part, dict) else None
    return Workload(name, path, c["data"]["dataset"], c["model"]["name"], c["data"]["num_clients"], spc or 50,
                    c["cohort_size"], c["client"]["epochs"], c["client"]["batch_size"], c["client"]["lr"],
                    c["rounds"], c["eval_every"])


WORKLOADS = {n: _workload(n) for n in ("w1", "w2")}


def build_net(w: Workload):
    """The same nn.Sequential as fedloom's ``mlp`` (2NN) and ``cnn`` (McMahan et al.) models."""
    from torch import nn

    if w.model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                             nn.Linear(200, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10))


def load_partition(w: Workload):
    """(DataSource, [clients, per_client] index array): the same iid partition fedloom's config builds."""
    import numpy as np

    from fedloom.data.datasets import load_dataset
    from fedloom.data.partition import partition

    src = load_dataset(w.dataset)
    params = {"samples_per_client": w.per_client} if w.name != "w1" else None
    parts = partition(src.train_y.numpy(), w.clients, "iid", params, 0)
    return src, np.stack(parts)
