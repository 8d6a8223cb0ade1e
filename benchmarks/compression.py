"""Konecny et al. (2016) on MNIST: structured and sketched updates for FedAvg with McMahan et al.'s CNN.

100 clients (iid, 500 images each), FedAvg, only the inner layers compressed (conv2 and fc1 weights; conv1, fc2
and all biases travel as raw float32), as the paper does for its CIFAR model. Variants:

    none | low rank 25% | random mask 25% | subsample 25% without (I) and with (HD) rotation |
    HD + 6.25% subsample + 2-bit | 1-bit (I) | HD + 1-bit | 6.25% subsample + 2-bit (I)

For each: test accuracy at fixed rounds, rounds to a target accuracy, total uplink bits (real message lengths),
uplink bits of the compressed layers' payloads against float32, and the time spent encoding + decoding the
cohort's updates against the time of its local training. Writes ``<out>/compression.json``,
``<out>/compression_table.md`` and ``<out>/compression.png``.

    python benchmarks/compression.py --errors             # defaults: 8 rounds, cohort 5 (13-27 min on a shared 2-core
                                                          # box; low rank is 30% of it: A B is rebuilt every step)
    python benchmarks/compression.py --model 2nn --errors # the 2NN: ~1 min
    python benchmarks/compression.py --rounds 3 --cohort 3 --variants none "HD+6.25%+2bit"   # ~1 min smoke run
    python benchmarks/compression.py --rounds 50 --cohort 10 --test-size 10000   # closer to the paper (hours on CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from fedloom.config import validate_config
from fedloom.data.federated import build_federated
from fedloom.simulation import Simulation


def _inner(*codecs: dict) -> list[dict]:
    return [{**c, "layers": "inner"} for c in codecs]


HD = {"name": "hadamard"}
VARIANTS: dict[str, list[dict]] = {
    "none": [],
    "lowrank-25%": _inner({"name": "lowrank", "fraction": 0.25}),
    "mask-25%": _inner({"name": "mask", "fraction": 0.25}),
    "subsample-25% (I)": _inner({"name": "subsample", "fraction": 0.25}),
    "subsample-25% (HD)": _inner(HD, {"name": "subsample", "fraction": 0.25}),
    "HD+6.25%+2bit": _inner(HD, {"name": "subsample", "fraction": 0.0625}, {"name": "quantize", "bits": 2}),
    "I+6.25%+2bit": _inner({"name": "subsample", "fraction": 0.0625}, {"name": "quantize", "bits": 2}),
    "1bit (I)": _inner({"name": "quantize", "bits": 1}),
    "1bit (HD)": _inner(HD, {"name": "quantize", "bits": 1}),
}


def run_variant(name: str, codecs: list[dict], data, a: argparse.Namespace) -> dict:
    cfg = validate_config({
        "name": "compression", "seed": a.seed, "rounds": a.rounds, "cohort_size": a.cohort, "eval_every": a.eval_every,
        "engine": a.engine, "threads": a.threads, "progress": False,
        "data": {"dataset": "mnist", "partition": "iid", "num_clients": a.clients},
        "model": {"name": "cnn"} if a.model == "cnn" else {"name": "mlp", "hidden": [200, 200]}, "algorithm": "fedavg",
        "client": {"lr": a.lr, "epochs": a.epochs, "batch_size": a.batch_size},
        "server_optimizer": {"name": "sgd", "lr": 1.0}, "codecs": codecs,
    })
    sim = Simulation(cfg, data=data)
    timers = {"train": 0.0, "codec": 0.0}

    def timed(fn, key):
        def wrapper(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            timers[key] += time.perf_counter() - t0
            return out
        return wrapper

    client_pipe, server_pipe = sim.built.clients.pipeline, sim.server.pipeline
    sim.engine.run = timed(sim.engine.run, "train")  # type: ignore[method-assign]
    client_pipe.run = timed(client_pipe.run, "codec")  # type: ignore[method-assign]  (codecs + wire encode)
    server_pipe.receive = timed(server_pipe.receive, "codec")  # type: ignore[method-assign]  (decode + validate)
    t0 = time.perf_counter()
    recs = sim.run()
    wall = time.perf_counter() - t0

    # payload of the compressed layers in one message vs the same weights as float32
    uc = sim.built.codec
    comp = uc.compressed_layers() if uc else []
    d = sum(math.prod(sim.ctx.param_spec[n][0]) for n in comp)
    payload = sum(math.prod(uc.wire_layout[n][0]) * torch.empty((), dtype=uc.wire_layout[n][1]).element_size()
                  for n in comp) if uc and comp else 0
    evals = [(r["round"], r["test_accuracy"]) for r in recs if r["test_accuracy"] is not None]
    hit = next((rnd for rnd, acc in evals if acc >= a.target), None)
    up = sum(r["bytes_up"] for r in recs)
    return {
        "variant": name, "codecs": codecs, "accuracy": evals, "final_accuracy": evals[-1][1],
        "rounds_to_target": hit, "uplink_bits": 8 * up, "uplink_bits_per_message": 8 * up / sum(r["clients"] for r in recs),
        "compressed_params": d, "compressed_payload_bits": 8 * payload,
        "compressed_ratio": (32 * d / (8 * payload)) if payload else None,
        "train_s": timers["train"], "codec_s": timers["codec"], "codec_over_train": timers["codec"] / timers["train"],
        "wall_s": wall,
        "cum_uplink_bits": [8 * sum(r["bytes_up"] for r in recs if r["round"] <= rnd) for rnd, _ in evals],
    }


def update_errors(data, a: argparse.Namespace, trials: int = 3) -> list[dict]:
    """Relative error E||H_hat - H||^2 / ||H||^2 of each sketch on the compressed layers, on the *same* real client
    updates (one cohort, round 2 of an uncompressed run): a low-noise view of what rotation does to quantization."""
    cfg = validate_config({
        "seed": a.seed, "rounds": 2, "cohort_size": a.cohort, "engine": a.engine, "threads": a.threads, "progress": False,
        "eval_every": 2, "data": {"dataset": "mnist", "partition": "iid", "num_clients": a.clients},
        "model": {"name": "cnn"} if a.model == "cnn" else {"name": "mlp", "hidden": [200, 200]},
        "client": {"lr": a.lr, "epochs": a.epochs, "batch_size": a.batch_size},
    })
    sim = Simulation(cfg, data=data)
    captured: list = []
    pipe = sim.built.clients.pipeline
    run = pipe.run

    def capture(report, states, info):  # the clients' round-2 reports, before the client pipeline
        if info.round == 2:
            captured.append((report.client, report))
        return run(report, states, info)

    pipe.run = capture  # type: ignore[method-assign]
    sim.run()
    from fedloom.codecs import UpdateCodec

    rows = []
    for name, codecs in VARIANTS.items():
        if not codecs or any(c["name"] in ("lowrank", "mask") for c in codecs):
            continue
        uc = UpdateCodec([(c["name"], {k: v for k, v in c.items() if k != "name"}) for c in codecs], sim.ctx.param_spec,
                         a.seed)
        errs = []
        for k, out in captured:
            for t in range(trials):
                dec = uc.decode(uc.encode(out.update, {}, 100 + t, k)).tensors
                num = sum(float((dec[n] - out.update[n]).pow(2).sum()) for n in uc.compressed_layers())
                den = sum(float(out.update[n].pow(2).sum()) for n in uc.compressed_layers())
                errs.append(num / den)
        rows.append({"variant": name, "relative_error": sum(errs) / len(errs), "samples": len(errs)})
    return rows


def write_outputs(results: list[dict], a: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "compression" if a.model == "cnn" else "compression_2nn"
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    base = next((r for r in results if r["variant"] == "none"), None)
    inner = ("CNN (1,663,370 params); compressed: inner layers = conv2 + fc1 weights, 1,656,832 params" if a.model == "cnn"
             else "2NN (199,210 params); compressed: inner layer = the 200x200 weight, 40,000 params")
    lines = [
        f"MNIST, McMahan {inner}. FedAvg, {a.clients} clients iid, cohort {a.cohort}, "
        f"{a.rounds} rounds, E={a.epochs}, B={a.batch_size}, lr={a.lr}, seed {a.seed}, engine {a.engine}, "
        f"test subset {a.test_size}, {a.threads} thread(s).",
        "",
        f"| variant | acc @ {a.rounds} rounds | rounds to {a.target:.0%} | uplink bits (total) | vs none | "
        "compressed-layer bits / msg | x fewer (compressed layers) | encode+decode / local training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rel = f"{base['uplink_bits'] / r['uplink_bits']:.1f}x" if base else "-"
        ratio = f"{r['compressed_ratio']:.1f}x" if r["compressed_ratio"] else "1x"
        cbits = r["compressed_payload_bits"] or 32 * (1656832 if a.model == "cnn" else 40000)
        lines.append(f"| {r['variant']} | {r['final_accuracy']:.4f} | {r['rounds_to_target'] or 'not reached'} | "
                     f"{r['uplink_bits']:.3e} | {rel} | {cbits:.3e} | {ratio} | {100 * r['codec_over_train']:.1f}% |")
    (out / f"{stem}_table.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot(r["cum_uplink_bits"], [acc for _, acc in r["accuracy"]], marker="o", ms=3, label=r["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients, real message lengths)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MNIST {a.model.upper()}, FedAvg, {a.clients} clients, cohort {a.cohort}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--cohort", type=int, default=5, help="clients per round")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", type=float, default=0.9, help="target test accuracy for 'rounds to target'")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--test-size", type=int, default=2000, help="evaluate on the first N test images (10000 = all)")
    ap.add_argument("--model", default="cnn", choices=["cnn", "2nn"], help="McMahan et al.'s CNN or 2NN (784-200-200-10)")
    ap.add_argument("--engine", default="vectorized", choices=["vectorized", "sequential"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of: " + ", ".join(VARIANTS).replace("%", "%%"))
    ap.add_argument("--errors", action="store_true", help="also measure each sketch's error on the same real updates")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)
    data = build_federated("mnist", None, a.clients, "iid", None, a.seed)
    src = data.source
    src.test_x, src.test_y = src.test_x[: a.test_size], src.test_y[: a.test_size]
    stem = "compression" if a.model == "cnn" else "compression_2nn"
    if a.errors:
        rows = update_errors(data, a)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / f"{stem}_errors.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
        lines = ["| sketch | E‖Ĥ−H‖² / ‖H‖² on compressed layers |", "|---|---|"]
        lines += [f"| {r['variant']} | {r['relative_error']:.3f} |" for r in rows]
        (Path(a.out) / f"{stem}_errors.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    results = []
    for v in a.variants:
        r = run_variant(v, VARIANTS[v], data, a)
        print(f"{v:>20}: acc {r['final_accuracy']:.4f}  rounds->{a.target}: {r['rounds_to_target']}  "
              f"uplink {r['uplink_bits']:.3e} bits  compressed x{r['compressed_ratio'] or 1:.1f}  "
              f"codec/train {100 * r['codec_over_train']:.1f}%  ({r['wall_s']:.0f} s)", flush=True)
        results.append(r)
        write_outputs(results, a, Path(a.out))


if __name__ == "__main__":
    main()
