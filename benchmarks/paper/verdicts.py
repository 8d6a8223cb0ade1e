"""Paired comparisons and verdicts over `fedloom sweep` directories (issue 20).

    python benchmarks/paper/verdicts.py best-lr SWEEP_DIR codecs=[...]   # the tuned lr of one variant (stdout)
    python benchmarks/paper/verdicts.py fed2 [--root runs/paper]          # the Fed2 table and verdict (markdown)
    python benchmarks/paper/verdicts.py konecny [--root runs/paper]       # the Konecny table and verdicts
    python benchmarks/paper/verdicts.py fd-faug benchmarks/results/fd_faug_m10_seeds.json
    python benchmarks/paper/verdicts.py local-sgd benchmarks/results/local_sgd_seeds.json
    python benchmarks/paper/verdicts.py transformer benchmarks/results/shakespeare_client_adam*.json

A run's "final accuracy" is the mean of its last `--tail` evaluations (less noisy than the last alone). A
difference between two methods is paired by seed (same data split and initialisation), and its 95% interval
is Student's t over the seeds (fedloom.metrics.runs.interval). Verdicts: **confirmed** when the interval of
the claimed difference lies entirely on the claimed side of the threshold, **refuted** when it lies entirely
on the other side, else **undecided** with the interval.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from fedloom.metrics.runs import RunData, interval


def runs_of(sweep: Path) -> list[tuple[dict[str, Any], RunData]]:
    """(config, data) of every finished run under a sweep directory."""
    out = []
    for cfg_path in sorted(sweep.glob("*/seed=*/config.yaml")):
        d = cfg_path.parent
        if (d / "metrics.jsonl").is_file() and (d / "model.pt").is_file():
            out.append((yaml.safe_load(cfg_path.read_text()), RunData.load(d)))
    return out


def tail_acc(r: RunData, tail: int) -> float:
    acc = [v for v in r.series("test_accuracy") if v == v]
    return sum(acc[-tail:]) / len(acc[-tail:])


def _match(cfg: dict[str, Any], key: str, value: Any) -> bool:
    cur: Any = cfg
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    want = yaml.safe_load(value) if isinstance(value, str) else value
    if key == "codecs":  # compare the given fields only (the config adds defaults)
        return len(cur or []) == len(want) and all(all(c.get(k) == v for k, v in w.items()) for c, w in zip(cur, want))
    return cur == want


def best_lr(a: argparse.Namespace) -> None:
    key, _, value = a.select.partition("=")
    cands = [(c, r) for c, r in runs_of(Path(a.sweep)) if _match(c, key, value)]
    if not cands:
        sys.exit(f"no finished run in {a.sweep} with {a.select}")
    cfg, run = max(cands, key=lambda cr: tail_acc(cr[1], a.tail))
    if a.reuse:  # copy the tuning run so the seeds sweep does not run it again
        dst = Path(a.reuse)
        if not dst.exists():
            shutil.copytree(run.path, dst)
    print(cfg["client"]["lr"])


def paired(xs: dict[int, float], ys: dict[int, float]) -> dict[str, Any]:
    seeds = sorted(set(xs) & set(ys))
    return {"seeds": seeds, **interval([xs[s] - ys[s] for s in seeds])}


def verdict(iv: dict[str, Any], threshold: float, side: str = ">=", signed: bool = True) -> str:
    lo, hi, m = iv["lo"], iv["hi"], iv["mean"]
    if lo is None:
        return f"undecided (n={iv['n']})"
    ok = (lambda x: x >= threshold) if side == ">=" else (lambda x: x <= threshold)
    f = "{:+.3f}" if signed else "{:.3f}"
    span = f"mean {f.format(m)}, 95% CI [{f.format(lo)}, {f.format(hi)}]"
    if ok(lo) and ok(hi):
        return f"**confirmed** ({span})"
    if not ok(lo) and not ok(hi):
        return f"**refuted** ({span})"
    return f"**undecided** ({span})"


def fmt(iv: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if iv["mean"] is None:
        return "-"
    s = f"{scale * iv['mean']:.{digits}f}"
    if iv["lo"] is not None:
        s += f" ± {scale * (iv['hi'] - iv['mean']):.{digits}f}"
    return s


def seed_cells(by_seed: dict[int, float]) -> str:
    """The ``n | mean ± 95% CI | per seed`` cells of a table row, for values already in the table's unit."""
    return (f"{len(by_seed)} | {fmt(interval(list(by_seed.values())), 1.0)} | "
            + ", ".join(f"{v:.2f}" for _, v in sorted(by_seed.items())))


def _by_seed(runs: list[tuple[dict[str, Any], RunData]], tail: int) -> dict[int, float]:
    return {int(c["seed"]): tail_acc(r, tail) for c, r in runs}


def _n_params(run: RunData) -> int | None:
    import torch

    try:
        state = torch.load(run.path / "model.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError):
        return None
    params = state.get("params", state) if isinstance(state, dict) else {}
    return sum(v.numel() for v in params.values() if hasattr(v, "numel")) or None


def _machine(runs: list[tuple[dict[str, Any], RunData]]) -> str:
    env = next((r.environment for _, r in runs if r.environment), None) or {}
    when = min((r.path / "config.yaml").stat().st_mtime for _, r in runs)
    import time

    return (f"{env.get('machine', env.get('platform', '?'))}, torch {env.get('torch', '?')}; started "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(when))}; "
            f"{sum(r.wall()[-1] for _, r in runs) / 60:.0f} min of rounds over {len(runs)} runs")


def fed2(a: argparse.Namespace) -> None:
    root = Path(a.root)
    groups: dict[str, list[tuple[dict[str, Any], RunData]]] = {"FedAvg (cnn)": [], "Fed2 (class-count weights)": [],
                                                               "structure only (FedAvg weights)": []}
    for c, r in runs_of(root / "fed2-fedavg") + runs_of(root / "fed2-grouped"):
        alg = c["algorithm"]
        if alg["name"] == "fedavg":
            groups["FedAvg (cnn)"].append((c, r))
        elif alg.get("group_weighting") == "fedavg":
            groups["structure only (FedAvg weights)"].append((c, r))
        else:
            groups["Fed2 (class-count weights)"].append((c, r))
    base = _by_seed(groups["FedAvg (cnn)"], a.tail)
    print("| method | params | n | accuracy (mean ± 95% CI, %) | minus FedAvg, paired (points) | verdict: >= +2 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in groups.items():
        if not runs:
            continue
        accs = _by_seed(runs, a.tail)
        d = paired({s: 100 * v for s, v in accs.items()}, {s: 100 * v for s, v in base.items()})
        diff = "-" if name.startswith("FedAvg") else fmt(d, 1.0)
        ver = "-" if name.startswith("FedAvg") else verdict(d, 2.0)
        print(f"| {name} | {_n_params(runs[0][1]):,} | {len(runs)} | {fmt(interval(list(accs.values())))} | "
              f"{diff} | {ver} |")
    fed2_acc = _by_seed(groups["Fed2 (class-count weights)"], a.tail)
    struct = _by_seed(groups["structure only (FedAvg weights)"], a.tail)
    if fed2_acc and struct:
        d = paired({s: 100 * v for s, v in fed2_acc.items()}, {s: 100 * v for s, v in struct.items()})
        print(f"\nThe class-count weighting's share (Fed2 minus structure only, paired): {fmt(d, 1.0)} points, "
              f"{verdict(d, 0.0)} for > 0")
    allruns = [x for v in groups.values() for x in v]
    print("\nPer seed (accuracy %): " + "; ".join(
        f"{n}: " + ", ".join(f"{100 * v:.2f}" for _, v in sorted(_by_seed(r, a.tail).items()))
        for n, r in groups.items() if r))
    print(f"\nMachine: {_machine(allruns)}. Accuracy = mean of the last {a.tail} evaluations.")


def konecny(a: argparse.Namespace) -> None:
    root = Path(a.root)
    tune = runs_of(root / "konecny-tune")
    names = sorted(p.name[len("konecny-"):] for p in root.glob("konecny-*") if p.name != "konecny-tune")
    order = ["none", "lowrank25", "mask25", "lowrank6", "mask6", "I_6_2bit", "HD_6_2bit"]
    names = [n for n in order if n in names] + [n for n in names if n not in order]
    per: dict[str, dict[int, float]] = {}
    print("| variant | lr (tuned on seed 0) | n | accuracy @ 50 (%, mean ± 95% CI) | rounds to 97% (reached) | "
          "uplink bits per run |")
    print("| --- | --- | --- | --- | --- | --- |")
    allruns = list(tune)
    for n in names:
        runs = runs_of(root / f"konecny-{n}")
        if not runs:
            continue
        allruns += runs
        per[n] = _by_seed(runs, a.tail)
        rtt = [r.rounds_to(0.97, "test_accuracy") for _, r in runs]
        reached = [float(x) for x in rtt if x is not None]
        bits = interval([8 * r.cumulative("bytes_up")[-1] for _, r in runs])
        print(f"| {n} | {runs[0][0]['client']['lr']} | {len(runs)} | {fmt(interval(list(per[n].values())))} | "
              f"{fmt(interval(reached), 1.0, 1) if reached else 'never'} ({len(reached)}/{len(runs)}) | "
              f"{bits['mean']:.4g} |")
    print("\nLearning-rate grid (seed 0, accuracy % at 50 rounds):\n")
    lrs = sorted({c["client"]["lr"] for c, _ in tune})
    print("| codecs | " + " | ".join(f"lr {x}" for x in lrs) + " |")
    print("| --- |" + " --- |" * len(lrs))
    rows: dict[str, dict[float, float]] = {}
    for c, r in tune:
        key = " + ".join(f"{x['name']} {x.get('fraction', x.get('bits', ''))}".strip() for x in c["codecs"]) or "none"
        rows.setdefault(key, {})[c["client"]["lr"]] = tail_acc(r, a.tail)
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{100 * v[x]:.2f}" if x in v else "-" for x in lrs) + " |")
    print("\nClaims (paired by seed, points of accuracy):\n")
    pct = {n: {s: 100 * v for s, v in d.items()} for n, d in per.items()}
    for hi, lo, what in [("mask25", "lowrank25", "random mask beats low rank at 25%"),
                         ("mask6", "lowrank6", "random mask beats low rank at 6.25%"),
                         ("HD_6_2bit", "I_6_2bit", "rotation helps 6.25% + 2-bit updates")]:
        if hi in pct and lo in pct:
            d = paired(pct[hi], pct[lo])
            print(f"- {what}: {hi} - {lo} = {fmt(d, 1.0)} -> {verdict(d, 0.0)} (> 0 claimed)")
    print(f"\nMachine: {_machine(allruns)}. Accuracy = mean of the last {a.tail} evaluations (every 4 rounds).")


def fd_faug(a: argparse.Namespace) -> None:
    import json

    res = [r for r in json.loads(Path(a.json).read_text())["results"] if r["M"] == a.M]
    methods = ["FL", "FL+FAug", "FD", "FD+FAug"]
    acc = {m: {r["seed"]: 100 * r[m]["accuracy"] for r in res if m in r} for m in methods}
    print(f"| method (M = {a.M}) | n | accuracy after 16 iterations (%, mean ± 95% CI) | per seed | "
          "wire bits per device (mean) |")
    print("| --- | --- | --- | --- | --- |")
    for m in methods:
        bits = interval([8 * (r[m]["wire_bytes_up_per_device"] + r[m]["wire_bytes_down_per_device"]) for r in res])
        print(f"| {m} | {seed_cells(acc[m])} | {bits['mean']:,.0f} |")
    ratio = {s: acc["FD+FAug"][s] / acc["FL"][s] for s in set(acc["FD+FAug"]) & set(acc["FL"])}
    iv = interval(list(ratio.values()))
    print(f"\n- FD+FAug / FL = {fmt(iv, 1.0, 3)} (per seed " + ", ".join(f"{v:.3f}" for _, v in sorted(ratio.items()))
          + f") -> {verdict(iv, 0.95, signed=False)} (>= 0.95 claimed)")
    for hi, lo, what in [("FD+FAug", "FD", "FAug raises FD"), ("FL+FAug", "FL", "FAug raises FL")]:
        d = paired(acc[hi], acc[lo])
        print(f"- {what}: {hi} - {lo} = {fmt(d, 1.0)} points -> {verdict(d, 0.0)} (> 0 claimed)")
    least = [s for s in acc["FD"] if all(acc["FD"][s] < acc[m].get(s, 1e9) for m in methods if m != "FD")]
    print(f"- FD alone is the least accurate on {len(least)} of {len(acc['FD'])} seeds")
    fa = [r["faug"] for r in res if "faug" in r]
    if fa:
        print(f"- generated images classified as their label by the judge: "
              f"{fmt(interval([f['generated_label_accuracy'] for f in fa]), 100.0, 1)} %; GAN "
              f"{sum(f['gan_info']['seconds'] for f in fa) / len(fa):.0f} s per seed; device-server PL "
              f"{fmt(interval([f['faug_device_server_pl'] for f in fa]), 1.0, 2)}, inter-device PL "
              f"{fmt(interval([f['faug_inter_device_pl'] for f in fa]), 1.0, 3)}")


def local_sgd(a: argparse.Namespace) -> None:
    import json

    res = json.loads(Path(a.json).read_text())
    st = res.get("stich")
    if st:
        rows = st["rows"]
        Ks, Hs = sorted({r["K"] for r in rows}), sorted({r["H"] for r in rows})
        seeds = sorted({r.get("seed", 0) for r in rows})
        print(f"A. iterations to suboptimality {st['eps']} (mean ± 95% CI over seeds {seeds}); speedup T(1)/T(K) "
              "paired by seed\n")
        print("| H \\ K | " + " | ".join(str(k) for k in Ks) + " |")
        print("| --- |" + " --- |" * len(Ks))
        for H in Hs:
            cells = []
            for K in Ks:
                rs = [r for r in rows if r["K"] == K and r["H"] == H]
                it = interval([r["iters_to_eps"] for r in rs])
                sp = interval([r["speedup"] for r in rs])
                cells.append(f"{fmt(it, 1.0, 0)} it" + ("" if K == 1 else f" ({fmt(sp, 1.0, 2)}x)"))
            print(f"| {H} | " + " | ".join(cells) + " |")
        print("\nLinear speedup (speedup >= K) per (K, H):\n")
        for H in Hs:
            for K in Ks[1:]:
                sp = interval([r["speedup"] for r in rows if r["K"] == K and r["H"] == H])
                print(f"- K={K}, H={H}: {verdict(sp, float(K), signed=False)}")
    lin = res.get("lin")
    if lin:
        acc: dict[str, dict[int, float]] = {}
        mb: dict[str, float] = {}
        for name, r in lin["runs"].items():
            base, _, sd = name.partition(" seed=")
            acc.setdefault(base, {})[int(sd or 0)] = 100 * r["test_accuracy"]
            mb[base] = r["wire_MB_per_worker"]
        print(f"\nB. K = {lin['K']} workers, global batch {lin['global_batch']}, {lin['epochs']} epochs "
              f"({lin['steps']} steps), t' = {lin['t_prime']}\n")
        print("| run | n | test accuracy (%, mean ± 95% CI) | per seed | MB per worker |")
        print("| --- | --- | --- | --- | --- |")
        for base, v in acc.items():
            print(f"| {base} | {seed_cells(v)} | {mb[base]:.1f} |")
        names = list(acc)
        if len(names) == 2:
            d = paired(acc[names[1]], acc[names[0]])
            print(f"\n- {names[1]} - {names[0]} = {fmt(d, 1.0)} points -> {verdict(d, 0.0)} (>= 0 claimed by Lin et al.)")


def transformer(a: argparse.Namespace) -> None:
    import json

    acc: dict[str, dict[int, float]] = {}
    for path in a.json:
        d = json.loads(Path(path).read_text())
        seed = int(d["meta"]["args"]["seed"])
        for name, run in d["runs"].items():
            last = [r["test_accuracy"] for r in run["records"] if r.get("test_accuracy") is not None][-1]
            acc.setdefault(name, {})[seed] = 100 * last
    print("| method | n | final next-char accuracy (%, mean ± 95% CI) | per seed | vs central (mean ± 95% CI) |")
    print("| --- | --- | --- | --- | --- |")
    central = acc.get("central-transformer", {})
    ratios = {}
    for name, v in acc.items():
        r = {s: v[s] / central[s] for s in v if s in central}
        ratios[name] = interval(list(r.values()))
        print(f"| {name} | {seed_cells(v)} | {fmt(ratios[name], 100.0, 1)}% |")
    if "fedavg-transformer-adam" in ratios:
        print(f"\n- client Adam Transformer / central Adam Transformer, paired by seed: "
              f"{verdict(ratios['fedavg-transformer-adam'], 0.9, signed=False)} (>= 0.90 targeted)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("best-lr")
    b.add_argument("sweep")
    b.add_argument("select", help="key=value the runs must have, e.g. codecs=[...]")
    b.add_argument("--reuse", help="copy the best run to this run directory")
    for name in ("fed2", "konecny"):
        p = sub.add_parser(name)
        p.add_argument("--root", default="runs/paper")
    f = sub.add_parser("fd-faug")
    f.add_argument("json")
    f.add_argument("--M", type=int, default=10)
    sub.add_parser("local-sgd").add_argument("json")
    sub.add_parser("transformer").add_argument("json", nargs="+")
    for p in sub.choices.values():
        p.add_argument("--tail", type=int, default=3, help="final accuracy = mean of the last N evaluations")
    a = ap.parse_args(argv)
    {"best-lr": best_lr, "fed2": fed2, "konecny": konecny, "fd-faug": fd_faug, "local-sgd": local_sgd,
     "transformer": transformer}[a.cmd](a)


if __name__ == "__main__":
    main()
