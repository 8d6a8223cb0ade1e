"""Federated Transformer on Shakespeare by speaking role (issue 8; Vaswani et al. 2017, papers.md section 8).

Next-character prediction, clients = (play, role) (LEAF's Shakespeare split, :mod:`fedloom.data.text`). Every
method sees the same clients, the same training windows and the same number of sample-gradients:

* fedavg-transformer  -- decoder-only Transformer (default: 2 layers, d_model 128, 4 heads, d_ff 512, post-LN,
  tied embeddings), client SGD, server W <- W + H (McMahan et al.)
* fedadam-transformer -- the same, server Adam on the averaged update (Reddi et al.'s FedAdam)
* fedavg-transformer-noam -- fedavg with the paper's warmup schedule on the client SGD learning rate
  (``client.lr_schedule: noam``; epoch mode, so t = the round: linear warmup for ``--fed-warmup`` rounds, then
  t^-0.5 decay), scaled so that its peak equals ``--lr``
* fedavg-lstm         -- LEAF's Shakespeare model (8-dim embedding, 2-layer LSTM of 256 units), client SGD
* fedavg-transformer-adam -- client Adam(0.9, 0.98, 1e-9) (``client.optimizer``, issue 20) with the paper's warmup
  over rounds (``client.lr_schedule: noam`` in epoch mode: linear for ``--fed-warmup`` rounds, then t^-0.5),
  peak ``--client-adam-lr``; server W <- W + H. ``fedadam-transformer-adam``: the same clients, server Adam.
  ``fedavg-lstm-adam``: the LSTM with the same client recipe (peak ``--lstm-adam-lr``). ``--persist`` keeps each
  client's Adam state between its rounds (``client.optimizer.persist``) instead of restarting it.
* central-transformer -- the same Transformer trained on the pooled training windows of the same clients
  with the paper's optimizer: Adam(0.9, 0.98, 1e-9) and lrate = d^-0.5 min(step^-0.5, step warmup^-1.5)
  (:func:`fedloom.models.transformer.noam_lr`), for as many steps of the same batch size as the federated
  runs take in total, evaluated at the matching points.
* central-transformer-sgd -- the same, with the clients' optimizer (plain SGD, same lr): what federation
  alone costs.

Output embeddings are untied by default (``--tie`` restores the paper's tying): with plain SGD the tied,
sqrt(d_model)-scaled embedding stalls at the unigram plateau at this scale (see the results page).

Windows of ``seq_len`` characters with the next character predicted at every position (``targets='all'``;
training windows are non-overlapping, stride = seq_len); accuracy = top-1 next-character accuracy over every
held-out character (the last 10% of each client's text).

Default (small) scale, recorded in ``benchmarks/results/shakespeare.md``: 20 clients, <=150 training windows
(12k characters) each, 5 clients per round, 20 rounds, 1 local epoch of batch 16. About 6-8 minutes on one
core. Full scale (all 124 roles with >= 10k characters, every window):

    python benchmarks/shakespeare.py                                   # small scale (the recorded one)
    python benchmarks/shakespeare.py --clients 124 --samples-per-client 0 --cohort 10 --rounds 200
    python benchmarks/shakespeare.py --rounds 3 --only fedavg-transformer --name smoke    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedloom.config import validate_config
from fedloom.data.federated import build_federated
from fedloom.metrics.evaluation import evaluate_model
from fedloom.models import build_model
from fedloom.models.tasks import Classification
from fedloom.models.transformer import noam_lr
from fedloom.rng import torch_generator
from fedloom.simulation import Simulation

METHODS = ("fedavg-transformer", "fedadam-transformer", "fedavg-transformer-noam", "fedavg-lstm",
           "fedavg-transformer-adam", "fedadam-transformer-adam", "fedavg-lstm-adam",
           "central-transformer", "central-transformer-sgd")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20, help="first N (play, role) clients (sorted)")
    ap.add_argument("--samples-per-client", type=int, default=150, help="training windows per client (0 = all)")
    ap.add_argument("--seq-len", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cohort", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.2, help="client SGD lr (Transformer; also central-sgd)")
    ap.add_argument("--lstm-lr", type=float, default=1.0, help="client SGD lr (LSTM)")
    ap.add_argument("--server-adam-lr", type=float, default=0.01)
    ap.add_argument("--client-adam-lr", type=float, default=0.005, help="*-adam methods: peak client Adam lr")
    ap.add_argument("--lstm-adam-lr", type=float, default=0.005, help="fedavg-lstm-adam: peak client Adam lr")
    ap.add_argument("--persist", action="store_true", help="*-adam methods: keep client Adam state between rounds")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--tie", action="store_true", help="tie output and input embeddings (the paper; stalls "
                    "under SGD at this scale, see results)")
    ap.add_argument("--warmup", type=int, default=200, help="central Adam warmup steps (paper: 4000)")
    ap.add_argument("--fed-warmup", type=int, default=5, help="fedavg-transformer-noam: warmup rounds")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=METHODS, default=list(METHODS))
    ap.add_argument("--name", default="shakespeare")
    return ap.parse_args()


def config(a, model: dict, server_opt, lr: float, schedule: dict | None = None, optimizer: dict | None = None) -> dict:
    client = {"lr": lr, "batch_size": a.batch, "epochs": a.epochs}
    if schedule:
        client["lr_schedule"] = schedule
    if optimizer:
        client["optimizer"] = optimizer
    return {"name": "shakespeare", "rounds": a.rounds, "cohort_size": a.cohort, "seed": a.seed, "threads": 1,
            "progress": False, "checkpoint_every": 0, "eval_every": a.eval_every, "eval_batch_size": 1024,
            "data": {"dataset": dataset_params(a), "partition": "natural", "num_clients": a.clients},
            "model": model, "server_optimizer": server_opt,
            "client": client}


def dataset_params(a) -> dict:
    return {"name": "shakespeare", "targets": "all", "seq_len": a.seq_len, "stride": a.seq_len,
            "max_clients": a.clients, "max_samples_per_client": a.samples_per_client or None}


def transformer(a) -> dict:
    return {"name": "transformer", "d_model": a.d_model, "heads": a.heads, "layers": a.layers, "d_ff": a.d_ff,
            "per_position": True, "tie_embeddings": a.tie}


def run_federated(a, data, model: dict, server_opt, lr: float, schedule: dict | None = None,
                  optimizer: dict | None = None) -> tuple[list[dict], int]:
    sim = Simulation(validate_config(config(a, model, server_opt, lr, schedule, optimizer)), data=data)
    recs = sim.run()
    steps = sum(sim.round_schedule(1).num_steps(len(data.client_indices[k])) for r in recs for k in r["reported_ids"])
    return [{k: r[k] for k in ("round", "test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down",
                               "seconds")} for r in recs], steps


def run_central(a, data, total_steps: int, steps_per_round: float, paper_adam: bool = True) -> list[dict]:
    """The same Transformer on the pooled windows: Adam + the paper's warmup schedule (section 5.3), or the
    clients' plain SGD (same lr and batch)."""
    src = data.source
    torch.manual_seed(a.seed)
    m = build_model("transformer", {k: v for k, v in transformer(a).items() if k != "name"},
                    src.input_shape, src.num_classes)
    if paper_adam:
        opt = torch.optim.Adam(m.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: noam_lr(s + 1, a.d_model, a.warmup))
    else:
        opt = torch.optim.SGD(m.parameters(), lr=a.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    pooled = torch.cat(data.client_indices)
    gen = torch_generator(a.seed, "central")
    recs, step, t0, stream = [], 0, time.perf_counter(), torch.empty(0, dtype=torch.int64)
    for rnd in range(1, a.rounds + 1):
        until = round(rnd * steps_per_round)
        while step < until:
            if len(stream) < a.batch:  # a stream of fresh permutations of the pooled windows
                stream = torch.cat([stream, pooled[torch.randperm(len(pooled), generator=gen)]])
            b, stream = stream[: a.batch], stream[a.batch :]
            loss = F.cross_entropy(m(src.train_x[b]), src.train_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if rnd % a.eval_every == 0 or rnd == a.rounds:
            params = dict(m.named_parameters())
            res = evaluate_model(Classification(), m, params, dict(m.named_buffers()), src.test_x, src.test_y, 1024,
                                 torch.device("cpu"))
            tl, acc = res["test_loss"], res["test_accuracy"]
            recs.append({"round": rnd, "test_accuracy": acc, "test_loss": tl, "steps": step,
                         "seconds": time.perf_counter() - t0})
    return recs


def last(recs: list[dict]) -> float:
    accs = [r["test_accuracy"] for r in recs if r.get("test_accuracy") is not None]
    return accs[-1]


def main() -> None:
    a = parse()
    torch.set_num_threads(1)
    logging.getLogger("fedloom").setLevel(logging.ERROR)  # the LSTM's engine fallback note is in the docs
    data = build_federated("shakespeare", {k: v for k, v in dataset_params(a).items() if k != "name"},
                           a.clients, "natural", None, a.seed)
    src = data.source
    print(f"{data.num_clients} clients, {len(torch.cat(data.client_indices))} training windows, "
          f"{src.test_y.numel()} test characters", flush=True)
    runs: dict[str, dict] = {}
    steps_total = None
    plan = {"fedavg-transformer": (transformer(a), "sgd", a.lr),
            "fedadam-transformer": (transformer(a), {"name": "adam", "lr": a.server_adam_lr}, a.lr),
            "fedavg-transformer-noam": (transformer(a), "sgd", a.lr / noam_lr(a.fed_warmup, a.d_model, a.fed_warmup),
                                        {"name": "noam", "d_model": a.d_model, "warmup": a.fed_warmup}),
            "fedavg-lstm": ({"name": "lstm", "per_position": True}, "sgd", a.lstm_lr)}
    warm = {"name": "noam", "d_model": a.d_model, "warmup": a.fed_warmup}
    peak = noam_lr(a.fed_warmup, a.d_model, a.fed_warmup)  # client.lr / peak: the schedule's peak is the given lr
    adam = {"name": "adam", "betas": [0.9, 0.98], "eps": 1e-9, "persist": a.persist}
    plan["fedavg-transformer-adam"] = (transformer(a), "sgd", a.client_adam_lr / peak, warm, adam)
    plan["fedadam-transformer-adam"] = (transformer(a), {"name": "adam", "lr": a.server_adam_lr},
                                        a.client_adam_lr / peak, warm, adam)
    plan["fedavg-lstm-adam"] = ({"name": "lstm", "per_position": True}, "sgd", a.lstm_adam_lr / peak, warm, adam)
    for name in [m for m in METHODS if m in a.only and m in plan]:
        t = time.perf_counter()
        recs, steps = run_federated(a, data, *plan[name])
        steps_total = steps_total or steps
        runs[name] = {"records": recs, "seconds": time.perf_counter() - t, "client_steps": steps}
        print(f"{name}: acc {last(recs):.4f} ({runs[name]['seconds']:.0f}s, {steps} client steps)", flush=True)
    if steps_total is None:  # no federated run to match: the expected count for full cohorts
        per = sum(-(-len(i) // a.batch) * a.epochs for i in data.client_indices) / data.num_clients
        steps_total = round(per * a.cohort * a.rounds)
    for name, paper_adam in (("central-transformer", True), ("central-transformer-sgd", False)):
        if name not in a.only:
            continue
        t = time.perf_counter()
        recs = run_central(a, data, steps_total, steps_total / a.rounds, paper_adam)
        runs[name] = {"records": recs, "seconds": time.perf_counter() - t, "client_steps": steps_total}
        print(f"{name}: acc {last(recs):.4f} ({runs[name]['seconds']:.0f}s)", flush=True)
    out = ROOT / "benchmarks" / "results"
    meta = {"args": vars(a), "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
            "date": time.strftime("%Y-%m-%d"), "clients": src.info["clients"],
            "train_windows": len(torch.cat(data.client_indices)), "test_characters": int(src.test_y.numel()),
            "unigram_accuracy": float(torch.bincount(src.test_y.flatten()).max()) / src.test_y.numel()}
    (out / f"{a.name}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    plot(runs, out / f"{a.name}.png")
    print(table(runs, meta))


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        ev = [x for x in r["records"] if x.get("test_accuracy") is not None]
        ax1.plot([x["round"] for x in ev], [x["test_accuracy"] for x in ev], marker=".", label=name,
                 ls="--" if name.startswith("central") else "-")
        if not name.startswith("central"):
            cum, total = {}, 0
            for x in r["records"]:
                total += x["bytes_up"] + x["bytes_down"]
                cum[x["round"]] = total / 1e6
            ax2.plot([cum[x["round"]] for x in ev], [x["test_accuracy"] for x in ev], marker=".", label=name)
    ax1.set(xlabel="round (central: equal number of batch-16 steps)", ylabel="next-char top-1 accuracy",
            title="accuracy vs round")
    ax2.set(xlabel="cumulative MB on the wire (up + down)", ylabel="next-char top-1 accuracy", title="accuracy vs bytes")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(runs: dict, meta: dict) -> str:
    rows = ["| method | final next-char acc | vs central (Adam / SGD) | total MB (up+down) | client steps | seconds |",
            "|---|---|---|---|---|---|"]
    central = {n: last(runs[n]["records"]) for n in ("central-transformer", "central-transformer-sgd") if n in runs}
    for name, r in runs.items():
        acc = last(r["records"])
        mb = sum(x.get("bytes_up", 0) + x.get("bytes_down", 0) for x in r["records"]) / 1e6
        rel = " / ".join(f"{acc / c:.1%}" for c in central.values()) or "-"
        rows.append(f"| {name} | {acc:.4f} | {rel} | {mb:.1f} | {r['client_steps']} | {r['seconds']:.0f} |")
    rows.append(f"\nUnigram baseline (always the commonest character): {meta['unigram_accuracy']:.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
