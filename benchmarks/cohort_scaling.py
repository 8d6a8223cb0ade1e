"""Scaling with the cohort: s/round of W1's model (MNIST 2NN, 50 samples per client, E=1, B=10) for cohorts of
10, 50, 200 and 1000 clients, vectorized vs sequential engine, in one invocation.

Each (cohort, engine) point builds the W1 config with that cohort once (the dataset is loaded once per process),
runs one warm-up round, then times ``--rounds`` rounds (wall and process CPU seconds, medians); the engines
alternate within every cohort. Writes a JSON file, prints a table and plots s/round and the ratio against the
cohort (``benchmarks/results/cohort_scaling.png``).

    python benchmarks/cohort_scaling.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def time_rounds(cohort: int, engine: str, rounds: int, threads: int) -> dict:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    cfg = load_config(ROOT / "benchmarks" / "w1.yaml", [f"cohort_size={cohort}", f"engine={engine}",
                                                         f"rounds={rounds + 1}", "eval_every=100000",
                                                         "progress=false", f"threads={threads}"])
    sim = Simulation(cfg)
    sim.round(1)  # warm-up: first-call costs (imports inside torch.func, allocator) are not per-round costs
    wall, cpu = [], []
    for r in range(2, rounds + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        sim.round(r)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "wall_min": min(wall),
            "wall_max": max(wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohorts", default="10,50,200,1000")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per point (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "cohort_scaling.json"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "cohort_scaling.png"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started, load0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    res: dict[int, dict[str, dict]] = {}
    for c in (int(x) for x in a.cohorts.split(",")):
        res[c] = {}
        for eng in ("vectorized", "sequential"):
            res[c][eng] = time_rounds(c, eng, a.rounds, a.threads)
            print(f"cohort {c:>5} {eng:<10} {res[c][eng]['wall_s']:.3f} s/round (cpu {res[c][eng]['cpu_s']:.3f})",
                  file=sys.stderr, flush=True)
    print(f"\nW1 model, s/round (median of {a.rounds} after a warm-up), threads={a.threads}; started {started}, "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("| cohort | vectorized s/round (min-max) | sequential s/round (min-max) | CPU s v / s | sequential / vectorized |")
    print("|---|---|---|---|---|")
    for c, r in res.items():
        v, s = r["vectorized"], r["sequential"]
        print(f"| {c} | {v['wall_s']:.3f} ({v['wall_min']:.3f}-{v['wall_max']:.3f}) | {s['wall_s']:.3f} "
              f"({s['wall_min']:.3f}-{s['wall_max']:.3f}) | {v['cpu_s']:.3f} / {s['cpu_s']:.3f} | "
              f"{s['wall_s'] / v['wall_s']:.2f}x |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"started": started, "threads": a.threads, "rounds": a.rounds,
                                       "results": res}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = list(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for eng in ("vectorized", "sequential"):
        ax1.plot(cs, [res[c][eng]["wall_s"] for c in cs], marker="o", label=f"{eng} (wall)")
        ax1.plot(cs, [res[c][eng]["cpu_s"] for c in cs], marker=".", ls="--", label=f"{eng} (CPU)")
    ax1.set(xscale="log", yscale="log", xlabel="cohort (clients per round)", ylabel="s / round",
            title="W1 model, s/round")
    ax1.legend()
    for key, lab in (("wall_s", "wall time"), ("cpu_s", "CPU time")):
        ax2.plot(cs, [res[c]["sequential"][key] / res[c]["vectorized"][key] for c in cs], marker="o", label=lab)
    ax2.legend()
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="cohort (clients per round)", ylabel="sequential / vectorized",
            title="vectorized speed-up")
    fig.tight_layout()
    Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
