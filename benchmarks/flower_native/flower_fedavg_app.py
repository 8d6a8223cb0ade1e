"""Flower's own FedAvg on the same SuperNodes and data as benchmarks/deploy.py: the app a Flower user would write
(Message API, ``flwr.serverapp.strategy.FedAvg``), used as the native baseline. Node i trains on partition i of
the MNIST split that fedloom's config produces (the same rows), 1 epoch of SGD, batch 10, lr 0.1. Its data is
loaded once per ClientApp process (a module-level cache; Flower's default isolation starts a process per message,
so that is once per message there)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

_CACHE: dict = {}


def _data(cfg_text: str):
    if "data" not in _CACHE:
        from fedloom.config import validate_config
        from fedloom.data.federated import build_federated

        cfg = validate_config(yaml.safe_load(cfg_text))
        d = cfg.data
        _CACHE["data"] = build_federated(d.dataset.name, d.dataset.params, d.num_clients, d.partition.name,
                                         d.partition.params, cfg.seed)
    return _CACHE["data"]


def net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    fed = _data(str(context.run_config["fedloom-config"]))
    x, y = fed.client_data(int(context.node_config["partition-id"]))
    model = net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for b in torch.randperm(len(x)).split(10):
        opt.zero_grad()
        F.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": len(x)})}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = yaml.safe_load(str(context.run_config["fedloom-config"]))
    n, rounds = int(cfg["data"]["num_clients"]), int(cfg["rounds"])
    while len(list(grid.get_node_ids())) < n:
        time.sleep(0.5)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=rounds)
    wall = time.perf_counter() - t0
    fed = _data(str(context.run_config["fedloom-config"]))
    m = net()
    m.load_state_dict(result.arrays.to_torch_state_dict())
    with torch.no_grad():
        acc = float((m(fed.source.test_x).argmax(1) == fed.source.test_y).float().mean())
    out = Path(str(context.run_config["fedloom-out"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "flower.json").write_text(json.dumps({"rounds": rounds, "train_wall_s": wall, "accuracy": acc}))
