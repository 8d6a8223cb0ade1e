"""Starting ranks: under ``torchrun`` (real launches) or in-process (tests, benchmarks).

torchrun, one machine (gloo on CPU; nccl is picked automatically when CUDA is available)::

    torchrun --standalone --nproc-per-node 4 -m fedloom.distributed.launch algorithm=postlocal \\
        local_steps=16 post_local_from=160 lr_milestones=[160] steps=400 model=cnn dataset=fashion_mnist

or the same through the CLI: ``torchrun ... $(which fedloom) train-local-sgd algorithm=local ...``.

torchrun, two nodes of 8 ranks (run on each node; MASTER is node 0's address)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-id RUN \\
        --rdzv-endpoint $MASTER:29400 -m fedloom.distributed.launch algorithm=hierarchical group_size=8 ...

In-process (tests): :func:`spawn` starts ``world_size`` processes with ``torch.multiprocessing`` that
rendezvous on a ``file://`` store in a fresh temporary directory (no network port), run ``fn(rank, world,
*args)`` and always destroy their process group.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _worker(rank: int, world: int, init_file: str, fn: Callable, args: tuple, out_dir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = fn(rank, world, *args)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int, *args: Any, threads: int = 1, start_method: str = "spawn") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; returns each rank's result.

    ``fn`` must be importable (a module-level function). Processes are joined (or killed on failure) before
    this returns; a failing rank raises here with its traceback. ``start_method="fork"`` skips re-importing
    torch in every child (fast; tests use it), ``"spawn"`` is the safe default.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="h5_dist_") as tmp:
        init_file = os.path.join(tmp, "store")
        mp.start_processes(_worker, args=(world_size, init_file, fn, args, tmp, threads), nprocs=world_size,
                           join=True, start_method=start_method)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def train_rank(rank: int, world: int, cfg_dict: dict) -> dict:
    """Spawn target: one rank of :func:`fedloom.distributed.local_sgd.train`."""
    from fedloom.distributed.local_sgd import LocalSGDConfig, train

    return train(LocalSGDConfig(**cfg_dict))


def run_jobs(rank: int, world: int, jobs: list[tuple[str, dict]]) -> list[Any]:
    """Spawn target running several jobs on one set of ranks (process start-up is paid once):
    ``("train", LocalSGDConfig mapping)`` or ``("simulation", raw RunConfig mapping)`` (returns the final params)."""
    from fedloom.config import validate_config
    from fedloom.simulation import Simulation

    out = []
    for kind, spec in jobs:
        if kind == "train":
            out.append(train_rank(rank, world, spec))
        elif kind == "simulation":
            sim = Simulation(validate_config(spec))
            sim.run()
            out.append({k: v.detach().cpu().clone() for k, v in sim.state.params.items()})
        else:
            raise ValueError(f"unknown job kind {kind!r}")
        dist.barrier()
    return out


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values read as YAML) into a LocalSGDConfig mapping; a bad field exits with status 2."""
    from fedloom.config import parse_value

    out: dict[str, Any] = {}
    for a in argv:
        k, sep, v = a.partition("=")
        if not sep:
            raise SystemExit(f"fedloom train-local-sgd: expected key=value, got {a!r}")
        out[k] = parse_value(v)
    return out


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: every rank trains; rank 0 prints a JSON summary (and writes it to ``out=``)."""
    from pydantic import ValidationError

    from fedloom.distributed.local_sgd import LocalSGDConfig, train

    raw = parse_overrides(sys.argv[1:] if argv is None else argv)
    out = raw.pop("out", None)
    try:
        cfg = LocalSGDConfig(**raw)
    except ValidationError as e:
        print(f"fedloom train-local-sgd: invalid config:\n{e}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        print("fedloom train-local-sgd: not launched by torchrun (RANK/WORLD_SIZE unset); running 1 rank", file=sys.stderr)
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    backend = default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        try:
            cfg.check_world(dist.get_world_size())
        except ValueError as e:
            print(f"fedloom train-local-sgd: {e}", file=sys.stderr)
            return 2
        res = train(cfg)
        if dist.get_rank() == 0:
            summary = {k: v for k, v in res.items() if k != "params"}
            summary["config"] = cfg.model_dump()
            text = json.dumps(summary, indent=1, default=float)
            print(text)
            if out:
                os.makedirs(out, exist_ok=True)
                with open(os.path.join(out, "summary.json"), "w") as f:
                    f.write(text)
                torch.save(res["params"], os.path.join(out, "model.pt"))
    finally:
        dist.destroy_process_group()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
