"""Local SGD reproductions (Stich 2019; Lin et al. 2020), small scale, on CPU.

A. Stich's convex case: l2-regularised multinomial logistic regression on ``digits``. For K workers and H
   local steps, the iterations (steps per worker) until the averaged iterate x_bar_t reaches the target
   suboptimality f(x_hat_t) - f* <= eps (x_hat: Stich's (a+t)^2-weighted average of x_bar_t), and the speedup T(1)/T(K) against the predicted linear speedup K
   (Stich's Theorem 2.2: error O(sigma^2/(mu b K T)) + O(kappa G^2 H^2/(mu T^2)), so speedup ~ K while
   H = O(sqrt(T/(K b)))). A run stops at the target (``syncs`` = communication rounds used to get there). Step size eta_t = lr * a/(a+t) (Stich's 4/(mu(a+t)) shape). Runs with the
   single-process reference (fedloom.distributed.reference), which the tests prove equal to the gloo trainer.
B. Lin et al.'s claim on a small CNN: post-local SGD (H=16 after the first lr decay) vs large-batch mini-batch
   SGD at the same global batch K*b: test accuracy and bytes communicated (ring all-reduce model, per worker).
C. Wall time on a simulated slow link (2 gloo processes): mini-batch SGD vs local SGD (H=16).

    python benchmarks/local_sgd.py                     # the scale recorded in benchmarks/results/local_sgd.md
    python benchmarks/local_sgd.py --cnn-epochs 1      # quicker
    python benchmarks/local_sgd.py --parts AB --seeds 0 1 2 3 4 --cnn-K 8 --out benchmarks/results/local_sgd_seeds.json
                                                       # issue 20: 5 seeds, K = 8 in part B
                                                       # (verdicts: python benchmarks/paper/verdicts.py local-sgd)

With several ``--seeds``, every row carries its ``seed`` (the workers' data order and, for B, the initialisation);
f* does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from fedloom.distributed.local_sgd import LocalSGDConfig, build
from fedloom.distributed.reference import simulate

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def objective(model, params, x, y, lam):
    """f(x) = mean CE + lam/2 ||x||^2 (the objective SGD with weight_decay=lam minimises)."""
    out = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], params)), (x,))
    return F.cross_entropy(out, y) + 0.5 * lam * sum((p ** 2).sum() for p in params)


def f_star(cfg: LocalSGDConfig) -> float:
    src, model = build(cfg, torch.device("cpu"))
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=2000, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(model, params, src.train_x, src.train_y, cfg.weight_decay)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(objective(model, params, src.train_x, src.train_y, cfg.weight_decay))


def stich(args) -> dict:
    base = LocalSGDConfig(algorithm="local", dataset="digits", model="logreg", batch_size=args.b, lr=args.lr,
                    lr_inverse_a=args.a, weight_decay=args.lam, steps=args.T, seed=0)
    fs = f_star(base)
    src, model = build(base, torch.device("cpu"))
    rows = []
    for seed, H, K in ((s, h, k) for s in args.seeds for h in args.H for k in args.K):
        cfg = base.model_copy(update={"local_steps": H, "seed": seed})
        hit: dict[str, int | None] = {"t": None}
        curve: list = []
        xhat: dict = {"x": None, "S": 0.0}

        def on_step(t, avg, hit=hit, curve=curve, xhat=xhat):
            # Stich's output: x_hat_T = S_T^-1 sum_t w_t x_bar_t with w_t = (a + t)^2
            w = (args.a + t) ** 2
            xhat["S"] += w
            if xhat["x"] is None:
                xhat["x"] = [v.clone() for v in avg]
            else:
                for h, v in zip(xhat["x"], avg):
                    h.add_(v - h, alpha=w / xhat["S"])
            if t % args.every:
                return
            with torch.no_grad():
                sub = float(objective(model, xhat["x"], src.train_x, src.train_y, args.lam)) - fs
            curve.append((t, sub))
            if hit["t"] is None and sub <= args.eps:
                hit["t"] = t
            return hit["t"] is not None  # stop at the target

        t0 = time.perf_counter()
        res = simulate(cfg, K, on_step=on_step)
        rows.append({"seed": seed, "K": K, "H": H, "iters_to_eps": hit["t"], "final_subopt": curve[-1][1],
                     "syncs": res["counts"]["global"], "seconds": time.perf_counter() - t0})
        del res
        print(f"  stich seed={seed} K={K} H={H}: iters to eps={hit['t']} final subopt={curve[-1][1]:.2e}", flush=True)
    for r in rows:
        ref = next(x for x in rows if x["K"] == 1 and x["H"] == r["H"] and x["seed"] == r["seed"])
        r["speedup"] = (ref["iters_to_eps"] / r["iters_to_eps"]) if r["iters_to_eps"] and ref["iters_to_eps"] else None
    return {"f_star": fs, "eps": args.eps, "config": base.model_dump(), "rows": rows}


def lin(args) -> dict:
    out = {}
    src_n = 60000 if args.cnn_dataset == "fashion_mnist" else 1437
    steps_per_epoch = src_n // (args.cnn_K * args.cnn_b)
    T = args.cnn_epochs * steps_per_epoch
    tprime = (T // 2) // 16 * 16  # first lr decay at half of training; a multiple of H
    common = dict(dataset=args.cnn_dataset, model="cnn",
                  model_params={"channels": args.channels, "hidden": args.hidden}, batch_size=args.cnn_b,
                  lr=args.cnn_lr, momentum=0.9, nesterov=True, weight_decay=1e-4, steps=T,
                  lr_milestones=[tprime, (3 * T) // 4], seed=0)
    runs = [(seed, name, extra) for seed in args.seeds
            for name, extra in [("minibatch (large batch)", dict(algorithm="minibatch")),
                                ("post-local SGD H=16", dict(algorithm="postlocal", local_steps=16,
                                                             post_local_from=tprime))]]
    for seed, name, extra in runs:  # the two methods alternate, seed by seed
        cfg = LocalSGDConfig(**{**common, "seed": seed}, **extra)
        if len(args.seeds) > 1:
            name = f"{name} seed={seed}"
        t0 = time.perf_counter()
        res = simulate(cfg, args.cnn_K)
        nbytes = sum(v.numel() * 4 for v in res["params"].values())
        n_ar = sum(res["counts"].values())
        wire = 2 * (args.cnn_K - 1) / args.cnn_K * nbytes * n_ar
        out[name] = {"test_accuracy": res["final"]["test_accuracy"], "test_loss": res["final"]["test_loss"],
                     "allreduces": n_ar, "wire_MB_per_worker": wire / 1e6, "seconds": time.perf_counter() - t0}
        print(f"  lin {name}: {out[name]}", flush=True)
    return {"K": args.cnn_K, "b": args.cnn_b, "global_batch": args.cnn_K * args.cnn_b, "steps": T,
            "t_prime": tprime, "epochs": args.cnn_epochs, "config": common, "runs": out}


def slow_link(args) -> dict:
    from fedloom.distributed.launch import run_jobs, spawn

    common = dict(dataset="digits", model="mlp", model_params={"hidden": [64]}, batch_size=16, steps=96,
                  lr=0.1, latency_s=args.latency, bandwidth_Bps=args.bandwidth)
    jobs = [("train", dict(common, algorithm="minibatch")), ("train", dict(common, algorithm="local", local_steps=16))]
    res = spawn(run_jobs, 2, jobs)[0]
    return {"latency_s": args.latency, "bandwidth_Bps": args.bandwidth, "steps": 96,
            "runs": {n: {"wall_s": r["wall_s"], "allreduces": r["comm"]["allreduces"],
                         "link_sleep_s": r["comm"]["link_sleep_s"], "test_accuracy": r["final"]["test_accuracy"]}
                     for n, r in zip(["minibatch", "local H=16"], res)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--H", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--T", type=int, default=2000)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--a", type=float, default=200.0)
    ap.add_argument("--lam", type=float, default=1e-2)
    ap.add_argument("--eps", type=float, default=2e-2)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--cnn-dataset", default="fashion_mnist")
    ap.add_argument("--cnn-K", type=int, default=4)
    ap.add_argument("--cnn-b", type=int, default=32)
    ap.add_argument("--cnn-lr", type=float, default=0.05)
    ap.add_argument("--cnn-epochs", type=int, default=2)
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--bandwidth", type=float, default=1e7)
    ap.add_argument("--parts", default="ABC")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds for parts A and B")
    ap.add_argument("--out", default=os.path.join(RESULTS, "local_sgd.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                 f"{torch.__version__}", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "A" in args.parts:
        res["stich"] = stich(args)
    if "B" in args.parts:
        res["lin"] = lin(args)
    if "C" in args.parts:
        res["slow_link"] = slow_link(args)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
