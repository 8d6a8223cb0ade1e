"""Byzantine robustness benchmark (issue 9): MNIST, 20% attackers of each kind, FedAvg vs robust rules.

Every cell is one fedloom run with the same seed, data split and cohort schedule; only the attack and the
aggregator change. Attack strengths: sign_flip sends -4 x update, scale sends 20 x update, gaussian sends
N(0, 1) noise, label_flip trains on y -> 9 - y.

    python benchmarks/robustness.py --rounds 30 --out benchmarks/results/robustness.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedloom.config import validate_config
from fedloom.simulation import Simulation

ATTACKS = {
    "none": None,
    "sign_flip": {"name": "sign_flip", "fraction": 0.2, "factor": 4.0},
    "scale": {"name": "scale", "fraction": 0.2, "factor": 20.0},
    "gaussian": {"name": "gaussian", "fraction": 0.2, "sigma": 1.0},
    "label_flip": {"name": "label_flip", "fraction": 0.2},
}
AGGREGATORS = {
    "mean (FedAvg)": {"name": "mean", "norm_guard": None},  # the plain mean, as recorded in RESULTS.md
    "mean + norm_guard 10 (the default)": "mean",
    "median": "median",
    "trimmed_mean 0.2": {"name": "trimmed_mean", "beta": 0.2},
    "krum f=4": {"name": "krum", "f": 4},
    "multi_krum f=4 m=10": {"name": "multi_krum", "f": 4, "m": 10},
    "norm_bound 1.0 + mean": {"name": "mean", "max_norm": 1.0},
}


def run(attack, aggregator, rounds: int, clients: int, cohort: int, seed: int) -> float:
    raw = {
        "name": "robust", "seed": seed, "rounds": rounds, "cohort_size": cohort, "eval_every": rounds,
        "progress": False, "data": {"dataset": "mnist", "partition": "iid", "num_clients": clients},
        "model": {"name": "mlp", "hidden": [200, 200]}, "client": {"lr": 0.1, "epochs": 1, "batch_size": 10},
        "attack": attack, "aggregator": aggregator,
    }
    return Simulation(validate_config(raw)).run()[-1]["test_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--cohort", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/robustness.md")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of the attacks")
    ap.add_argument("--merge", help="a previous JSON of this benchmark whose cells are reused (not rerun)")
    a = ap.parse_args()
    t0 = time.time()
    table = {}
    if a.merge:
        table = {tuple(k.split("|")): v for k, v in json.loads(Path(a.merge).read_text()).items()}
    chosen = a.attacks.split(",")
    for an, att in ATTACKS.items():
        for gn, agg in AGGREGATORS.items():
            if an not in chosen or (an, gn) in table:
                continue
            table[(an, gn)] = run(att, agg, a.rounds, a.clients, a.cohort, a.seed)
            print(f"{an:<11} {gn:<22} {table[(an, gn)]:.4f}", flush=True)
    lines = [f"MNIST 2NN, {a.clients} clients iid, cohort {a.cohort}, {a.rounds} rounds, 1 epoch, B=10, lr 0.1, "
             f"seed {a.seed}; 20% attackers; test accuracy after the last round ({time.time() - t0:.0f} s total).", "",
             "| aggregator | " + " | ".join(ATTACKS) + " |", "|---" * (len(ATTACKS) + 1) + "|"]
    for gn in AGGREGATORS:
        lines.append(f"| {gn} | " + " | ".join(f"{table[(an, gn)]:.4f}" if (an, gn) in table else "-"
                                              for an in ATTACKS) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in table.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
