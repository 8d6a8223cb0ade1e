"""Per-round CPU breakdown of W1 or W2 (one thread by default): the clients' side (local training + encoding)
against the rest of the round (the server pipeline: decode, validate, aggregate, server step), median of N rounds
after a warm-up, and page faults per round. For the clients' side it also gives the arithmetic the local steps
must do (forward + backward multiply-adds of every sample, counted from the model's layers) and the rate that
implies: when that rate is near what the CPU can do, no engine can make the round much faster.

Prints one JSON line. To compare two trees, run it with each on PYTHONPATH, alternated:

    PYTHONPATH=/path/to/old/tree python benchmarks/round_breakdown.py 20
    PYTHONPATH=. python benchmarks/round_breakdown.py 20
    python benchmarks/round_breakdown.py 5 --workload w2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

t0 = time.process_time()
import fedloom.build as B  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.simulation import Simulation  # noqa: E402

T_IMPORT = time.process_time() - t0
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import WORKLOADS  # noqa: E402


def train_macs_per_sample(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward and backward through the Linear and Conv2d layers: forward F per
    layer, backward 2F (input and weight gradients) except the first layer's input gradient (not needed)."""
    macs: list[int] = []

    def hook(m, inp, out):
        if isinstance(m, nn.Linear):
            macs.append(m.in_features * m.out_features)
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs.append(out[0].numel() * (m.in_channels // m.groups) * kh * kw)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, *sample_shape))
    for h in hs:
        h.remove()
    return 3 * sum(macs) - (macs[0] if macs else 0)


def main(rounds: int, workload: str, threads: int) -> dict:
    clients_t: list[float] = []
    orig = B.SimulatedClients.run

    def timed(self, *a, **k):
        t = time.process_time()
        out = orig(self, *a, **k)
        clients_t.append(time.process_time() - t)
        return out

    B.SimulatedClients.run = timed
    torch.set_num_threads(threads)
    w = WORKLOADS[workload]
    cfg = load_config(w.config, ["rounds=100000", "progress=false", f"threads={threads}", "eval_every=100000"])
    t = time.process_time()
    sim = Simulation(cfg)
    t_build = time.process_time() - t
    sim.round(1)
    total, faults = [], []
    for r in range(2, 2 + rounds):
        t, f = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sim.round(r)
        total.append(time.process_time() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    c, tot = statistics.median(clients_t[1:]), statistics.median(total)
    src = sim.ctx.data.source
    samples = w.cohort * w.per_client * w.epochs
    macs = train_macs_per_sample(sim.ctx.model, tuple(src.test_x.shape[1:])) * samples
    return {"workload": workload, "threads": threads, "import_cpu_s": round(T_IMPORT, 3),
            "build_cpu_s": round(t_build, 3), "round_ms": round(1000 * tot, 1), "clients_ms": round(1000 * c, 1),
            "server_ms": round(1000 * (tot - c), 1), "faults_per_round": statistics.median(faults),
            "train_gmac_per_round": round(macs / 1e9, 2),
            # CPU seconds, so with T threads this is the rate per thread
            "clients_gflops_per_thread": round(2 * macs / 1e9 / c, 1)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", type=int, nargs="?", default=20)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="w1")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(json.dumps(main(a.rounds, a.workload, a.threads)))
