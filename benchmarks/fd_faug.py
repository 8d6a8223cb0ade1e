"""Table 1 of Jeong et al. 2018 (FD and FAug, arXiv 1811.11479) at this machine's scale.

Setup (the paper's, ``shared/papers.md`` section 2): MNIST; M = 2/4/6/8/10 devices; each device draws 2,000
training images uniformly, then 3 random target labels are cut to 5 samples each (partitioner
``target_labels``); 250 local iterations of batch 64 per global iteration; 16 global iterations; all devices
take part in every iteration. Methods:

* FL       -- FedAvg (fedloom ``fedavg``, sample-weighted mean, server lr 1) of one shared model;
* FL+FAug  -- the same on the FAug-augmented device data;
* FD       -- federated distillation (``fd``): each device its own model, L x L logits each way;
* FD+FAug  -- FD on the augmented data.

FAug (``fedloom.algorithms.faug``): every device uploads its 5 seeds per target label (0 redundant labels, as in
Table 1); the server adds ``--oversample`` images per uploaded label from MNIST's validation split (its
stand-in for the paper's "oversampling via Google image search"), trains the small cGAN
(``fedloom.gan.cgan``) and every device downloads it and fills its target labels up to the mean count of
its other labels. The same augmented data serves FL+FAug and FD+FAug.

Scale differences from the paper, stated: the model is McMahan's 2NN (784-200-200-10, 199,210 parameters)
instead of the paper's 1,199,648-parameter CNN, and the generator is a 578,192-parameter MLP instead of the
paper's 1,493,520-parameter one (both so that everything runs on 2 shared CPU cores); MNIST has 50,000
training images here (the paper: 55,000); the learning rate (``--lr``) and gamma are not given in the paper.

Bits are reported three ways, per device, totals over the run: (a) the real serialized messages (metrics
``bytes_up``/``bytes_down`` plus the FAug seed and generator messages), (b) the paper's formulas with this
run's sizes, (c) the same formulas at the paper's sizes (reproducing Table 1's bit column exactly).

    python benchmarks/fd_faug.py                              # full table: ~40 min on 2 shared cores
    python benchmarks/fd_faug.py --devices 4 --rounds 3 --gan-steps 200 --name fd_faug_smoke   # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fedloom.components  # noqa: F401  (registers every partitioner: target_labels is not in fedloom.data.partition)
from fedloom.algorithms.faug import FAugParams, public_pool, run_faug
from fedloom.config import validate_config
from fedloom.data.datasets import load_dataset
from fedloom.data.federated import FederatedData
from fedloom.data.partition import partition
from fedloom.gan.cgan import CGANParams
from fedloom.models import build_model
from fedloom.rng import torch_generator
from fedloom.simulation import Simulation

METHODS = ["FL", "FL+FAug", "FD", "FD+FAug"]
PAPER = {  # Table 1 of the paper (3 target labels, 0 redundant labels): accuracy at M = 2, 4, 6, 8, 10; total bits
    "FD+FAug": ([.8464, .8526, .8498, .8480, .8642], 47_989_120),
    "FD": ([.7230, .7304, .6951, .6839, .7524], 102_400),
    "FL+FAug": ([.9111, .8654, .8956, .9101, .9259], 1_276_326_272),
    "FL": ([.8077, .8684, .8738, .8878, .9060], 1_228_439_552),
}
PAPER_MODEL_PARAMS, PAPER_GENERATOR_PARAMS = 1_199_648, 1_493_520


def paper_bits(method: str, rounds: int, model_params: int, generator_params: int, seed_pixels: int, L: int = 10) -> int:
    """The paper's accounting per device: 32 bits per parameter / logit each way per global iteration; FAug adds
    8 bits per uploaded seed pixel and 32 bits per generator parameter (one download)."""
    per_iter = 2 * 32 * (L * L if method.startswith("FD") else model_params)
    faug = 8 * seed_pixels + 32 * generator_params if method.endswith("FAug") else 0
    return rounds * per_iter + faug


def judge_classifier(seed: int) -> torch.nn.Module:
    """A 2NN trained on MNIST's validation split: scores how often generated images show their label."""
    x, y = public_pool("mnist")
    torch.manual_seed(seed)
    m = build_model("mlp", {"hidden": [200]}, (1, 28, 28), 10)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    g = torch_generator(seed, "judge")
    for _ in range(5):
        for b in torch.randperm(len(x), generator=g).split(100):
            loss = F.cross_entropy(m(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def config(method: str, M: int, a: argparse.Namespace, seed: int, models=None) -> dict:
    fd = method.startswith("FD")
    alg = {"name": "fd", "gamma": a.gamma} if fd else {"name": "fedavg"}
    if fd and models:
        alg["models"] = models
    return validate_config({
        "name": method.replace("+", "_"), "seed": seed, "rounds": a.rounds, "cohort_size": M, "progress": False,
        "threads": a.threads, "engine": "sequential" if fd else "vectorized", "checkpoint_every": 0,
        "data": {"dataset": "mnist", "num_clients": M},
        "model": {"name": "mlp", "hidden": a.hidden}, "algorithm": alg,
        "client": {"lr": a.lr, "batch_size": a.batch_size, "local_steps": a.local_steps},
        "server_optimizer": {"name": "sgd", "lr": 1.0}})


def run_method(method: str, data: FederatedData, M: int, a: argparse.Namespace, seed: int, models=None) -> dict:
    sim = Simulation(config(method, M, a, seed, models), data=data)
    t0 = time.perf_counter()
    recs = sim.run()
    accs = [r["test_accuracy"] for r in recs]
    out = {"accuracy": accs[-1], "best_accuracy": max(accs), "accuracy_by_round": accs,
           "wire_bytes_up_per_device": sum(r["bytes_up"] for r in recs) / M,
           "wire_bytes_down_per_device": sum(r["bytes_down"] for r in recs) / M, "seconds": time.perf_counter() - t0}
    if method.startswith("FD"):
        out["accuracy_min"] = recs[-1]["test_accuracy_min"]
        out["accuracy_max"] = recs[-1]["test_accuracy_max"]
        out["model_params"] = [sum(t.numel() for t in sim.client_states[k]["params"].values()) for k in range(M)]
    else:
        out["model_params"] = sum(t.numel() for t in sim.state.params.values())
    return out


def one_setting(src, M: int, seed: int, a: argparse.Namespace, judge) -> dict:
    parts = partition(src.train_y.numpy(), M, "target_labels",
                      {"samples_per_client": 2000, "target_labels": 3, "keep_per_target": 5}, seed)
    data = FederatedData(src, [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in parts])
    res: dict = {"M": M, "seed": seed, "device_samples": [len(p) for p in parts]}
    need_faug = any(m.endswith("FAug") for m in a.methods)
    if need_faug:
        fp = FAugParams(oversample=a.oversample, redundant_labels=a.redundant,
                        gan=CGANParams(steps=a.gan_steps))
        aug, rep = run_faug(data, fp, seed)
        # generated samples are appended after each device's own ones: score them with the judge classifier
        fx = torch.cat([aug.client_data(k)[0][len(parts[k]):] for k in range(M)])
        fy = torch.cat([aug.client_data(k)[1][len(parts[k]):] for k in range(M)])
        with torch.no_grad():
            label_acc = float((judge(fx).argmax(1) == fy).float().mean()) if len(fy) else float("nan")
        res["faug"] = {**rep.summary(), "targets": rep.targets, "generated_label_accuracy": label_acc,
                       "server_train_samples": rep.server_train_samples,
                       "seed_pixels": [b // 8 for b in rep.seed_bits_formula], "gan_info": rep.gan_info}
        print(f"  M={M} seed={seed}: FAug GAN {rep.gan_info['seconds']:.0f}s, judge label acc of generated "
              f"{label_acc:.3f}, device-server PL {sum(rep.device_server_pl) / M:.2f}, inter-device PL "
              f"{sum(rep.inter_device_pl) / M:.2f}", flush=True)
    for method in a.methods:
        d = aug if method.endswith("FAug") else data
        r = run_method(method, d, M, a, seed)
        if method.endswith("FAug"):
            r["wire_bytes_up_per_device"] += sum(rep.seed_bytes) / M
            r["wire_bytes_down_per_device"] += rep.generator_bytes
        res[method] = r
        print(f"  M={M} seed={seed} {method:8s} acc {r['accuracy']:.4f} (best {r['best_accuracy']:.4f}) "
              f"{r['seconds']:.0f}s", flush=True)
    if a.hetero and M in a.hetero_devices:
        for method in [m for m in a.methods if m.startswith("FD")]:
            d = aug if method.endswith("FAug") else data
            r = run_method(method, d, M, a, seed, models=a.hetero_models)
            if method.endswith("FAug"):
                r["wire_bytes_up_per_device"] += sum(rep.seed_bytes) / M
                r["wire_bytes_down_per_device"] += rep.generator_bytes
            res[method + " (hetero)"] = r
            print(f"  M={M} seed={seed} {method} (hetero) acc {r['accuracy']:.4f}", flush=True)
    if a.standalone and M in a.hetero_devices and "FD" in a.methods:
        g, a.gamma = a.gamma, 0.0  # FD with gamma = 0 is standalone training: what distillation adds
        r = run_method("FD", data, M, a, seed)
        a.gamma = g
        res["standalone (FD, gamma=0)"] = r
        print(f"  M={M} seed={seed} standalone acc {r['accuracy']:.4f}", flush=True)
    return res


def summarize(results: list[dict], a: argparse.Namespace, wall: float) -> str:
    Ms = sorted({r["M"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    rows = [m for m in ["FD+FAug", "FD", "FL+FAug", "FL", "FD (hetero)", "FD+FAug (hetero)", "standalone (FD, gamma=0)"]
            if any(m in r for r in results)]

    def mean(method, M, key="accuracy"):
        v = [r[method][key] for r in results if r["M"] == M and method in r]
        return sum(v) / len(v) if v else None

    P = next((r["FL"]["model_params"] for r in results if "FL" in r), None) or sum(
        t.numel() for t in build_model("mlp", {"hidden": a.hidden}, (1, 28, 28), 10).parameters())
    G = next((r["faug"]["faug_generator_params"] for r in results if "faug" in r), 0)
    seed_px = next((r["faug"]["seed_pixels"][0] for r in results if "faug" in r), 15 * 784)
    title = (f"Accuracy after {a.rounds} global iterations (mean over seeds {seeds}; FD: mean of the devices' "
             "own models), and total bits per device.")
    lines = [title, "",
             "| Method | " + " | ".join(f"M={M}" for M in Ms) + (" | wire bits/device (M=10 or largest) | "
                                                                 "paper formula, our sizes | paper formula, paper "
                                                                 "sizes | paper's bits |"),
             "|---|" + "---|" * (len(Ms) + 4)]
    Mmax = Ms[-1]
    for m in rows:
        accs = [mean(m, M) for M in Ms]
        wire_bits = None
        v = [8 * (r[m]["wire_bytes_up_per_device"] + r[m]["wire_bytes_down_per_device"]) for r in results
             if r["M"] == Mmax and m in r]
        if v:
            wire_bits = sum(v) / len(v)
        base = "FD" if m.startswith("standalone") else m.split(" ")[0]
        ours = paper_bits(base, a.rounds, P, G, seed_px)
        paper_sizes = paper_bits(base, 16, PAPER_MODEL_PARAMS, PAPER_GENERATOR_PARAMS, 15 * 784)
        lines.append(f"| {m} | " + " | ".join("-" if x is None else f"{x:.4f}" for x in accs)
                     + f" | {wire_bits:,.0f} | {ours:,} | {paper_sizes:,} | "
                     + (f"{PAPER[base][1]:,}" if base in PAPER and m == base else "") + " |")
    lines += ["", "Paper (Table 1): " + "; ".join(f"{m} " + "/".join(f"{x:.4f}" for x in PAPER[m][0])
                                                  for m in PAPER), ""]
    # the targets
    chk = []
    for M in Ms:
        fl, fla, fd, fda = (mean(m, M) for m in METHODS)
        if None in (fl, fla, fd, fda):
            continue
        chk.append(f"| {M} | {fla - fl:+.4f} | {fda - fd:+.4f} | {'yes' if fd < min(fl, fla, fda) else 'no'} | "
                   f"{fda / fl:.3f} |")
    if chk:
        lines += ["| M | FL+FAug - FL | FD+FAug - FD | FD least accurate | FD+FAug / FL |", "|---|---|---|---|---|",
                  *chk, ""]
    ratio_ours = paper_bits("FL", a.rounds, P, G, seed_px) / paper_bits("FD+FAug", a.rounds, P, G, seed_px)
    ratio_paper = paper_bits("FL", 16, PAPER_MODEL_PARAMS, 0, 0) / paper_bits("FD+FAug", 16, PAPER_MODEL_PARAMS,
                                                                              PAPER_GENERATOR_PARAMS, 15 * 784)
    lines.append(f"FL / FD+FAug bits: {ratio_paper:.1f}x at the paper's sizes (model {PAPER_MODEL_PARAMS:,}, "
                 f"generator {PAPER_GENERATOR_PARAMS:,}); {ratio_ours:.1f}x at ours (model {P:,}, generator {G:,}).")
    fa = [r["faug"] for r in results if "faug" in r]
    if fa:
        lines.append("FAug: judge-classifier accuracy of generated images on their labels "
                     + ", ".join(f"M={r['M']}: {r['faug']['generated_label_accuracy']:.3f}" for r in results if "faug" in r)
                     + f"; GAN training {sum(f['faug_gan_seconds'] for f in fa) / len(fa):.0f} s on average; "
                     f"device-server PL {fa[0]['faug_device_server_pl']:.2f}; inter-device PL "
                     + ", ".join(f"M={r['M']}: {r['faug']['faug_inter_device_pl']:.3f}" for r in results if "faug" in r))
    lines.append(f"\nMachine: {platform.machine()} CPU, torch {torch.__version__}, {a.threads} thread(s), shared with "
                 f"other jobs; {datetime.date.today()}; wall {wall / 60:.1f} min. Command: "
                 f"`python benchmarks/fd_faug.py {' '.join(sys.argv[1:])}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--local-steps", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    ap.add_argument("--oversample", type=int, default=500, help="public-pool images per uploaded label (0: seeds only)")
    ap.add_argument("--redundant", type=int, default=0)
    ap.add_argument("--gan-steps", type=int, default=2000)
    ap.add_argument("--hetero", action="store_true", help="also run FD / FD+FAug with mixed device architectures")
    ap.add_argument("--hetero-devices", type=int, nargs="+", default=[10])
    ap.add_argument("--standalone", action="store_true", help="also run FD with gamma=0 (no distillation) at "
                    "--hetero-devices")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="fd_faug")
    a = ap.parse_args(argv)
    a.hetero_models = [{"name": "mlp", "hidden": [200, 200]}, {"name": "mlp", "hidden": [100]},
                       {"name": "mlp", "hidden": [400, 100]}]
    torch.set_num_threads(a.threads)
    src = load_dataset("mnist", None)
    judge = judge_classifier(0)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for seed in a.seeds:
        for M in a.devices:
            results.append(one_setting(src, M, seed, a, judge))
            (out_dir / f"{a.name}.json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items()},
                                                                "results": results}, indent=1))
    md = summarize(results, a, time.perf_counter() - t0)
    (out_dir / f"{a.name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
