"""fedloom command line: ``run``, ``list``, ``report``, ``train-local-sgd``.

    fedloom run CONFIG [key=value ...] [--out DIR]
    fedloom run --resume RUN_DIR
    fedloom list
    fedloom report RUN_DIR [RUN_DIR ...] [--out DIR]
    torchrun --nproc-per-node K $(which fedloom) train-local-sgd algorithm=local local_steps=8 [key=value ...]

Exit status 2 for a bad config or bad arguments (nothing is written), 1 for a missing data source.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _cmd_resume(a: argparse.Namespace) -> int:
    from fedloom.config import ConfigError
    from fedloom.simulation import Simulation

    if a.config or a.overrides:
        print("fedloom: --resume RUN_DIR takes no config or overrides (the run's own config.yaml is used)", file=sys.stderr)
        return 2
    try:
        sim = Simulation.resume(a.resume)
    except (FileNotFoundError, ConfigError) as e:
        print(f"fedloom: cannot resume: {e}", file=sys.stderr)
        return 2
    print(f"fedloom: resuming {a.resume} after round {sim.state.round} of {sim.cfg.rounds}", file=sys.stderr)
    sim.run()
    return _finish(sim, Path(a.resume), time.perf_counter())


def _finish(sim, out: Path, t0: float) -> int:
    from fedloom.metrics.report import make_report

    records = sim.metrics.records
    head = sim.headline
    plots = make_report([out], metric=head)
    val = next((r[head] for r in reversed(records) if r.get(head) is not None), None)
    up = sum(r["bytes_up"] for r in records)
    down = sum(r["bytes_down"] for r in records)
    shown = f"{val:.4f}" if val is not None else "not recorded"
    print(f"final {head.replace('_', ' ')} {shown} after {len(records)} rounds in {time.perf_counter() - t0:.1f} s; "
          f"{up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down")
    print(f"metrics: {out / 'metrics.jsonl'}; plots: {', '.join(str(p) for p in plots)}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from fedloom.config import ConfigError, load_config

    if a.resume:
        return _cmd_resume(a)
    if not a.config:
        print("fedloom: run needs a CONFIG (or --resume RUN_DIR)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    from fedloom.data.datasets import DataUnavailable
    from fedloom.simulation import Simulation

    out = Path(a.out) if a.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        print(f"fedloom: output directory {out} exists and is not empty; choose another --out", file=sys.stderr)
        return 2
    try:
        sim = Simulation(cfg, None)  # build everything before writing anything
    except DataUnavailable as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 1
    sim.attach_output(out)
    engine = sim.engine.name + (f" ({sim.engine_note})" if sim.engine_note else "")
    print(f"fedloom: {cfg.algorithm.name} on {cfg.data.dataset.name} ({sim.data.num_clients} clients, "
          f"{cfg.data.partition.name}), model {cfg.model.name}, engine {engine}; run dir {out}", file=sys.stderr)
    t0 = time.perf_counter()
    sim.run()
    return _finish(sim, out, t0)


def _default(field) -> str:
    """A parameter's default as shown by ``fedloom list`` (``required`` when it has none)."""
    if field.default_factory is not None:
        return repr(field.default_factory())
    return "required" if field.is_required() else repr(field.default)


def _cmd_list(a: argparse.Namespace) -> int:
    import fedloom.components  # noqa: F401
    from fedloom import registry as R

    for reg in (R.ALGORITHMS, R.DATASETS, R.ENVIRONMENTS, R.PARTITIONERS, R.MODELS, R.ENGINES,
                R.SERVER_OPTIMIZERS, R.LR_SCHEDULES):
        print(f"{reg.kind}s:")
        for e in reg.items():
            fields = ", ".join(f"{k}={_default(v)}" for k, v in e.params.model_fields.items())
            print(f"  {e.name:<16} {e.summary}" + (f"  [{fields}]" if fields else ""))
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from fedloom.metrics.report import make_report

    for d in a.run_dirs:
        if not (Path(d) / "metrics.jsonl").is_file():
            print(f"fedloom: {d} has no metrics.jsonl", file=sys.stderr)
            return 2
    for p in make_report(a.run_dirs, a.out):
        print(p)
    return 0


def _cmd_train_local_sgd(a: argparse.Namespace) -> int:
    from fedloom.distributed.launch import main as train_local_sgd

    return train_local_sgd(a.fields)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom", description="federated learning simulation")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a config", description="run CONFIG with dotted key=value overrides")
    r.add_argument("config", nargs="?")
    r.add_argument("overrides", nargs="*", help="e.g. rounds=3 engine=sequential data.partition.alpha=0.1")
    r.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.set_defaults(fn=_cmd_run)
    sub.add_parser("list", help="list algorithms, datasets, partitioners, models, engines").set_defaults(fn=_cmd_list)
    rp = sub.add_parser("report", help="plot a run's metrics (PNG)")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="where to write the plots (default: the first run dir)")
    rp.set_defaults(fn=_cmd_report)
    # -- data-parallel local SGD on torch.distributed (fedloom.distributed; launch under torchrun) --
    ls = sub.add_parser("train-local-sgd", help="data-parallel (local) SGD on torch.distributed; run under torchrun",
                        description="key=value fields of fedloom.distributed.local_sgd.LocalSGDConfig, plus out=DIR")
    ls.add_argument("fields", nargs="*")
    ls.set_defaults(fn=_cmd_train_local_sgd)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
