"""SCAFFOLD vs FedAvg under client drift (Karimireddy et al. 2020), issue 9 item 5.

Label-skewed clients (Dirichlet alpha), full participation or a sampled cohort, H local full-batch steps,
l2-regularized logistic regression on the embedded digits (strongly convex, so the optimum is unique): report
the global objective (uniform mean of client losses + l2), its gradient norm and test accuracy after R rounds.
FedAvg's fixed point is biased when H > 1 on heterogeneous clients; SCAFFOLD's control variates remove the bias.

    python benchmarks/scaffold.py                 # the recorded table (about a minute on one core)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedloom.config import validate_config  # noqa: E402
from fedloom.simulation import Simulation  # noqa: E402


def objective(sim: Simulation, wd: float) -> tuple[float, float]:
    p = {k: v.clone().requires_grad_(True) for k, v in sim.state.params.items()}
    n = sim.data.num_clients
    tot = sum(F.cross_entropy(functional_call(sim.model, p, (sim.data.client_data(k)[0],)), sim.data.client_data(k)[1])
              for k in range(n)) / n + 0.5 * wd * sum((v ** 2).sum() for v in p.values())
    g = torch.autograd.grad(tot, list(p.values()))
    return float(tot.detach()), float(torch.sqrt(sum((x ** 2).sum() for x in g)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--wd", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=0.05)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for H in (1, 5, 20):
        for cohort in (a.clients, a.clients // 2):
            for alg in ("fedavg", "scaffold"):
                cfg = validate_config({
                    "name": "scaffold", "seed": 0, "rounds": a.rounds, "cohort_size": cohort, "eval_every": a.rounds,
                    "progress": False, "checkpoint_every": 0, "threads": 1,
                    "data": {"dataset": "digits", "partition": {"name": "dirichlet", "alpha": a.alpha},
                             "num_clients": a.clients},
                    "model": "logreg", "algorithm": {"name": alg, "weighting": "uniform"},
                    "client": {"lr": a.lr, "local_steps": H, "batch_size": None, "weight_decay": a.wd}})
                t = time.perf_counter()
                sim = Simulation(cfg)
                recs = sim.run()
                obj, gn = objective(sim, a.wd)
                rows.append({"H": H, "cohort": cohort, "algorithm": alg, "objective": obj, "grad_norm": gn,
                             "test_accuracy": recs[-1]["test_accuracy"],
                             "MB": sum(r["bytes_up"] + r["bytes_down"] for r in recs) / 1e6,
                             "seconds": time.perf_counter() - t})
                print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results"
    meta = {"args": vars(a), "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
            "date": time.strftime("%Y-%m-%d")}
    (out / "scaffold.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("| H | cohort | algorithm | objective | grad norm | test acc | MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['H']} | {r['cohort']}/{a.clients} | {r['algorithm']} | {r['objective']:.4f} | "
              f"{r['grad_norm']:.4f} | {r['test_accuracy']:.4f} | {r['MB']:.2f} |")


if __name__ == "__main__":
    main()
