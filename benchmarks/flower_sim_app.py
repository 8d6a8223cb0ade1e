"""Flower 1.42 simulation of the cross-device workloads (W1, W2), written as a Flower user writes it.

Used by ``benchmarks/cross_device.py --method flower``. The ClientApp and its data live at module level of this
importable module, so each Ray actor process imports the module once, loads the dataset once and keeps it across
all the training messages it serves (``_data`` below). The earlier harness defined the ClientApp inside a
function: cloudpickle then shipped the closure *by value* with every message, its cache was empty every time, and
each message reloaded and re-partitioned MNIST (about 50 s per round, the broken baseline behind the withdrawn
">= 46x" claim in RESULTS.md).

The workload is chosen by the environment variable ``FEDLOOM_BENCH_WORKLOAD`` (``w1`` or ``w2``), read by every
actor, because Ray actors import this module on their own.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from workloads import WORKLOADS, build_net, load_partition  # benchmarks/ is on sys.path (PYTHONPATH)

W = WORKLOADS[os.environ.get("FEDLOOM_BENCH_WORKLOAD", "w1")]
ROUNDS = int(os.environ.get("FEDLOOM_BENCH_ROUNDS", W.rounds))
_DATA: dict = {}


def _data():
    """The dataset and its partition, loaded once per process (a Flower user's module-level cache)."""
    if not _DATA:
        _DATA["src"], _DATA["parts"] = load_partition(W)
    return _DATA["src"], _DATA["parts"]


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    src, parts = _data()
    idx = torch.from_numpy(parts[int(context.node_config["partition-id"])].copy())
    x, y = src.train_x[idx], src.train_y[idx]
    model = build_net(W)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=W.lr)
    total = 0.0
    for _ in range(W.epochs):
        for b in torch.randperm(len(x)).split(W.batch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": total / (len(x) * W.epochs), "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


server = ServerApp()
RESULT: dict = {}


@server.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    src, _ = _data()

    def evaluate(rnd: int, arrays: ArrayRecord):
        if rnd == 0 or (rnd % W.eval_every and rnd != ROUNDS):
            return None
        m = build_net(W)
        m.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            acc = float((m(src.test_x).argmax(1) == src.test_y).float().mean())
        RESULT["accuracy"] = acc
        return MetricRecord({"accuracy": acc})

    strategy = FedAvg(fraction_train=W.cohort / W.clients, fraction_evaluate=0.0, min_train_nodes=W.cohort,
                      min_available_nodes=W.clients)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(build_net(W).state_dict()), num_rounds=ROUNDS,
                   evaluate_fn=evaluate)


def run() -> dict:
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=client, num_supernodes=W.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return {"accuracy": RESULT.get("accuracy")}
