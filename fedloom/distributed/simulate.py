"""torchrun entry point for scale-out simulation with the ``distributed`` engine (see
:mod:`fedloom.engine.distributed` for the multi-node command).

    torchrun --standalone --nproc-per-node 2 -m fedloom.distributed.simulate CONFIG [key=value ...] [--out DIR]

Every rank runs the whole round loop; rank 0 alone writes the run directory (config, metrics, model).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    from fedloom.config import ConfigError, load_config
    from fedloom.distributed.launch import default_backend
    from fedloom.simulation import Simulation

    ap = argparse.ArgumentParser(prog="fedloom.distributed.simulate")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    if backend == "nccl" and default_backend() != "nccl":
        print("fedloom: device=cuda but NCCL/CUDA is unavailable", file=sys.stderr)
        return 2
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        out = a.out if dist.get_rank() == 0 else None
        recs = Simulation(cfg, out).run()
        if dist.get_rank() == 0 and recs:
            print(f"final test accuracy {recs[-1]['test_accuracy']} after {len(recs)} rounds on "
                  f"{dist.get_world_size()} ranks")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
