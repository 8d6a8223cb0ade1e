"""Deployment benchmark: s/round of fedloom deployed on local Flower SuperNodes vs Flower's own FedAvg on the same
nodes and data vs fedloom's simulator, side by side in one invocation.

Workload: MNIST 2NN (784-200-200-10), N SuperNodes each holding 500 samples (iid, ``--samples``), full participation, 1 local
epoch, batch 10, lr 0.1. Methods (alternated over repeats):
  sim            fedloom run (the simulator), s/round from metrics.jsonl
  deploy-warm    fedloom deploy --local N (a long-lived fedloom worker per SuperNode; the default)
  deploy-plain   fedloom deploy without workers (Flower's default isolation: a ClientApp process per message)
  flower         Flower's FedAvg strategy + a Flower-user ClientApp (benchmarks/flower_native) on the same nodes
s/round for the deployed methods = the ServerApp's training wall time / rounds (federation start-up excluded).

    python benchmarks/deploy.py --nodes 10 --rounds 10 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedloom.config import validate_config  # noqa: E402
from fedloom.deploy.local import LocalFederation, submit, write_app  # noqa: E402
from fedloom.simulation import Simulation  # noqa: E402


def config(nodes: int, rounds: int, samples: int | None = 500):
    return validate_config({
        "name": "deploy-bench", "seed": 0, "rounds": rounds, "cohort_size": nodes, "eval_every": rounds,
        "progress": False, "threads": 1, "checkpoint_every": 0,
        "data": {"dataset": "mnist", "partition": {"name": "iid", "samples_per_client": samples},
                 "num_clients": nodes},
        "model": {"name": "mlp", "hidden": [200, 200]},
        "client": {"lr": 0.1, "epochs": 1, "batch_size": 10},
    })


def _cpu_seconds() -> float:
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime


def run_sim(cfg, out: Path) -> dict:
    t0 = time.perf_counter()
    recs = Simulation(cfg, out).run()
    return {"s_per_round": sum(r["seconds"] for r in recs) / len(recs), "accuracy": recs[-1]["test_accuracy"],
            "wall_s": time.perf_counter() - t0}


def run_deployed(cfg, out: Path, warm: bool, native: bool = False) -> dict:
    app = write_app(out / "app", cfg, out, timeout=600.0, wait=120.0)
    if native:  # Flower's own app on the same nodes
        shutil.copy(ROOT / "benchmarks" / "flower_native" / "flower_fedavg_app.py", app / "flower_fedavg_app.py")
        text = (app / "pyproject.toml").read_text()
        text = text.replace("fedloom.deploy.apps:server_app", "flower_fedavg_app:server_app")
        text = text.replace("fedloom.deploy.clientapp:app", "flower_fedavg_app:client_app")
        (app / "pyproject.toml").write_text(text)
    t0 = time.perf_counter()
    with LocalFederation(cfg.data.num_clients, cfg.data.num_clients, out / "logs", warm=warm and not native) as fed:
        rc = submit(app, fed.address, fed.home, out / "logs" / "flwr-run.log", 3600, fed.env)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"deployed run failed ({rc}); see {out / 'logs'}")
    if native:
        res = json.loads((out / "flower.json").read_text())
        return {"s_per_round": res["train_wall_s"] / res["rounds"], "accuracy": res["accuracy"], "wall_s": wall}
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"s_per_round": sum(r["seconds"] for r in recs) / len(recs), "accuracy": recs[-1]["test_accuracy"],
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--samples", type=int, default=500, help="training samples per node (0: all of MNIST, split)")
    ap.add_argument("--methods", default="sim,deploy-warm,flower,deploy-plain")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "deploy.json"))
    a = ap.parse_args()
    cfg = config(a.nodes, a.rounds, a.samples or None)
    results: dict[str, list[dict]] = {}
    methods = a.methods.split(",")
    for rep in range(a.repeats):
        for m in (methods if rep % 2 == 0 else methods[::-1]):
            tmp = Path(tempfile.mkdtemp(prefix=f"fedloom-deploy-bench-{m}-"))
            load0, cpu0 = os.getloadavg()[0], _cpu_seconds()
            try:
                r = run_sim(cfg, tmp / "run") if m == "sim" else \
                    run_deployed(cfg, tmp / "run", warm=(m == "deploy-warm"), native=(m == "flower"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            # the machine's load over the method's run (1-minute load average before / after; the CPU seconds that
            # this process and its reaped children -- the federation -- used)
            r.update(load_before=load0, load_after=os.getloadavg()[0], cpu_s=_cpu_seconds() - cpu0)
            results.setdefault(m, []).append(r)
            print(f"[{rep + 1}/{a.repeats}] {m:<13} {r['s_per_round']:7.2f} s/round  wall {r['wall_s']:7.1f} s  "
                  f"acc {r['accuracy']:.4f}  load {load0:.1f}->{r['load_after']:.1f}  cpu {r['cpu_s']:.0f} s",
                  flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in ("s_per_round", "wall_s", "accuracy")}
           for m, rs in results.items()}
    base = med.get("flower", {}).get("s_per_round")
    for m, v in med.items():
        ratio = f"  {v['s_per_round'] / base:.2f}x Flower's s/round" if base else ""
        print(f"{m:<13} median {v['s_per_round']:.2f} s/round, acc {v['accuracy']:.4f}{ratio}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"nodes": a.nodes, "rounds": a.rounds, "samples_per_node": a.samples,
                                       "results": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
