"""Per-round CPU breakdown of W1 (one thread): the clients' side (local training + encoding) against the rest of
the round (the server pipeline: decode, validate, aggregate, server step), median of N rounds after a warm-up.

Prints one JSON line. To compare two trees, run it with each on PYTHONPATH, alternated:

    PYTHONPATH=/path/to/old/tree python benchmarks/round_breakdown.py 20
    PYTHONPATH=. python benchmarks/round_breakdown.py 20
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
t0 = time.process_time()
import fedloom.build as B  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.simulation import Simulation  # noqa: E402

T_IMPORT = time.process_time() - t0
CONFIG = Path(__file__).resolve().parent / "w1.yaml"


def main(rounds: int) -> dict:
    clients_t: list[float] = []
    orig = B.SimulatedClients.run

    def timed(self, *a, **k):
        t = time.process_time()
        out = orig(self, *a, **k)
        clients_t.append(time.process_time() - t)
        return out

    B.SimulatedClients.run = timed
    cfg = load_config(CONFIG, ["rounds=100000", "progress=false", "threads=1", "eval_every=100000"])
    t = time.process_time()
    sim = Simulation(cfg)
    t_build = time.process_time() - t
    sim.round(1)
    total = []
    for r in range(2, 2 + rounds):
        t = time.process_time()
        sim.round(r)
        total.append(time.process_time() - t)
    c, tot = statistics.median(clients_t[1:]), statistics.median(total)
    return {"import_cpu_s": round(T_IMPORT, 3), "build_cpu_s": round(t_build, 3), "round_ms": round(1000 * tot, 1),
            "clients_ms": round(1000 * c, 1), "server_ms": round(1000 * (tot - c), 1)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
