"""Cross-device scale (issue 16): startup, seconds per round and peak RSS vs population size and cohort size.

A lazily generated LEAF Synthetic(1, 1) population (``synthetic_population``: client k generated from (seed, k)
when sampled) of 10^3, 10^4, 10^5 and 10^6 clients, cohorts of 100 and 1,000, FedAvg with multinomial logistic
regression -- the ``examples/population_1m.yaml`` settings (one local epoch, batch 10, vectorized engine with
chunks of 250 clients), one thread (torch, OpenMP and BLAS). Each configuration runs in its own process, so its peak RSS
(``ru_maxrss``) is its own: startup is building the run (population, planner, model), s/round the median over
rounds 2..R (round 1 warms up), the lower of ``--repeats`` interleaved runs, evaluation on the held-out test set every round included, both as wall time and
as the process's CPU time (one thread, so the two agree on an idle machine; CPU time is robust to other load).

Targets: peak RSS at 10^6 within 150 MB of 10^3 at the same cohort; s/round within 15% across populations
((max - min) / min at a cohort); a cohort of 1,000 at most 11x the cost of 100 per round.

    python benchmarks/scale.py                    # the table in benchmarks/RESULTS.md (results/scale.json)
    python benchmarks/scale.py --rounds 4 --populations 1000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
# wall time, and this process's CPU time (one thread: the same on an idle machine; robust to other load)
CLOCKS = (("s_per_round", "wall"), ("cpu_s_per_round", "CPU"))


def config(population: int, cohort: int, rounds: int) -> dict:
    return dict(name="scale", seed=0, rounds=rounds, cohort_size=cohort, eval_every=1, threads=1, progress=False,
                checkpoint_every=0, engine={"name": "vectorized", "chunk_size": 250},
                data={"dataset": {"name": "synthetic_population", "alpha": 1.0, "beta": 1.0},
                      "partition": "natural", "num_clients": population},
                model="logreg", algorithm="fedavg", client={"lr": 0.01, "epochs": 1, "batch_size": 10})


def one(population: int, cohort: int, rounds: int) -> dict:
    """One configuration in this process (the child side)."""
    t0 = time.perf_counter()
    from fedloom.config import validate_config
    from fedloom.simulation import Simulation

    imported = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = Simulation(validate_config(config(population, cohort, rounds)))
    startup = time.perf_counter() - t0
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs, cpu = [], []
    for r in range(1, rounds + 1):
        t, c = time.perf_counter(), time.process_time()
        rec = sim.round(r)
        secs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    pop = sim.data
    return {"population": population, "cohort": cohort, "rounds": rounds, "import_s": round(imported, 2),
            "startup_s": round(startup, 3), "s_per_round": round(statistics.median(secs[1:] or secs), 3),
            "cpu_s_per_round": round(statistics.median(cpu[1:] or cpu), 3), "round_s": [round(s, 3) for s in secs],
            "round_cpu_s": [round(s, 3) for s in cpu], "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rss_after_build_mb": round(rss_built, 1),
            "clients_generated": len(pop.generated), "test_accuracy": rec["test_accuracy"],
            "train_rows_per_round": int(sum(pop.client_size(k) for k in rec["sampled_ids"]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    ap.add_argument("--cohorts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration (fresh processes)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "scale.json"))
    ap.add_argument("--one", type=int, nargs=2, metavar=("POPULATION", "COHORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.rounds)))
        return 0
    runs: dict[tuple[int, int], list[dict]] = {}
    env = {**os.environ, **{v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    for _ in range(a.repeats):  # repeats interleaved: a burst of load elsewhere hits one repeat, not all
        for c in a.cohorts:
            for n in a.populations:
                if c > n:
                    continue
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(n), str(c), "--rounds",
                                    str(a.rounds)], capture_output=True, text=True, cwd=ROOT, env=env)
                if p.returncode != 0:
                    print(p.stderr, file=sys.stderr)
                    return 1
                runs.setdefault((n, c), []).append(json.loads(p.stdout.strip().splitlines()[-1]))
    rows = []
    for (n, c), rs in runs.items():  # the repeat with the lowest median s/round; peak RSS: the largest seen
        row = dict(min(rs, key=lambda r: r["cpu_s_per_round"]))
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        row["repeats_s_per_round"] = [r["s_per_round"] for r in rs]
        row["repeats_cpu_s_per_round"] = [r["cpu_s_per_round"] for r in rs]
        rows.append(row)
        print(f"population {n:>9,} cohort {c:>5,}: startup {row['startup_s']:6.3f} s, {row['s_per_round']:6.3f} "
              f"s/round ({row['cpu_s_per_round']:.3f} CPU), peak RSS {row['peak_rss_mb']:7.1f} MB "
              f"({row['clients_generated']:,} clients generated)", flush=True)
    checks = []
    for c in a.cohorts:
        at = {r["population"]: r for r in rows if r["cohort"] == c}
        if min(at) in at and max(at) in at and len(at) > 1:
            lo, hi = at[min(at)], at[max(at)]
            d = hi["peak_rss_mb"] - lo["peak_rss_mb"]
            checks.append((f"cohort {c}: peak RSS at {max(at):,} - at {min(at):,} = {d:.1f} MB (<= 150)", d <= 150))
            for key, clock in CLOCKS:
                s = [r[key] for r in at.values()]
                v = (max(s) - min(s)) / min(s)
                checks.append((f"cohort {c}: {clock} s/round spread across populations {100 * v:.1f}% (<= 15%)",
                               v <= 0.15))
    if len(a.cohorts) == 2:
        small, big = sorted(a.cohorts)
        for n in a.populations:
            rs = {r["cohort"]: r for r in rows if r["population"] == n}
            if small in rs and big in rs:
                for key, clock in CLOCKS:
                    ratio = rs[big][key] / rs[small][key]
                    checks.append((f"population {n:,}: {clock} s/round, cohort {big} / cohort {small} = {ratio:.2f}x "
                                   f"(<= {1.1 * big / small:.0f}x)", ratio <= 1.1 * big / small))
    for text, ok in checks:
        print(("PASS " if ok else "MISS ") + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "checks": [{"check": t, "ok": ok} for t, ok in checks],
                   "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "loadavg_at_end": os.getloadavg()}, "args": vars(a)}, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
