"""fedloom command line: ``run``, ``deploy``, ``list``, ``report``, ``train-local-sgd``.

    fedloom run CONFIG [key=value ...] [--out DIR]
    fedloom run --resume RUN_DIR [--force FIELD,...]
    fedloom deploy CONFIG [key=value ...] --local N [--secure] [--out DIR]   (or --superlink HOST:PORT)
    fedloom list
    fedloom report RUN_DIR [RUN_DIR ...] [--out DIR] [--html OUT.html]
    fedloom sweep CONFIG key=v1,v2 ... seed=0,1,2 [key=value ...] [--jobs N] [--out DIR] [--target X] [--quiet]
    torchrun --nproc-per-node K $(which fedloom) train-local-sgd algorithm=local local_steps=8 [key=value ...]
    fedloom data import leaf|table|partition ... --out STORE;  fedloom data info STORE [--verify]

Exit status 2 for a bad config or bad arguments (nothing is written), 1 for a missing data source.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _cmd_resume(a: argparse.Namespace) -> int:
    from fedloom.checkpoint import CheckpointError
    from fedloom.config import ConfigError
    from fedloom.data.base import DataError
    from fedloom.metrics.history import MetricsError
    from fedloom.rundir import RunDirError, claim
    from fedloom.simulation import Simulation

    if a.config or a.overrides or a.tensorboard:
        print("fedloom: --resume RUN_DIR takes no config, overrides or --tensorboard (the run's own config.yaml is "
              "used)", file=sys.stderr)
        return 2
    force = [f.strip() for x in a.force or [] for f in x.split(",") if f.strip()]
    try:
        lock = claim(a.resume, resume=True)
    except RunDirError as e:
        print(f"fedloom: cannot resume: {e}", file=sys.stderr)
        return 2
    try:
        try:
            sim = Simulation.resume(a.resume, force=force)
        except (FileNotFoundError, ConfigError, CheckpointError, MetricsError, DataError) as e:
            print(f"fedloom: cannot resume: {e}", file=sys.stderr)
            return 2
        if a.quiet:
            sim.cfg.progress = False
        else:
            print(f"fedloom: resuming {a.resume} after round {sim.state.round} of {sim.cfg.rounds}", file=sys.stderr)
        t0 = time.perf_counter()
        if not _run_interruptible(sim, Path(a.resume)):
            return 130
        return _finish(sim, Path(a.resume), t0)
    finally:
        lock.release()


def _run_interruptible(sim, out: Path) -> bool:
    """``sim.run()``; on Ctrl-C a short message with the command that resumes the run (no traceback): False."""
    from fedloom.checkpoint import NAME

    try:
        sim.run()
        return True
    except KeyboardInterrupt:
        done, every = sim.state.round, sim.cfg.checkpoint_every
        if (out / NAME).is_file():
            hint = f"resume with: fedloom run --resume {out}"
        else:
            hint = (f"no checkpoint was written yet (checkpoint_every={every}), so there is nothing to resume; start "
                    f"again with another --out")
        print(f"\nfedloom: interrupted after round {done} of {sim.cfg.rounds}; {hint}", file=sys.stderr)
        return False


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
    if a.force:
        print("fedloom: --force FIELD goes with --resume RUN_DIR (it accepts an edited config.yaml)", file=sys.stderr)
        return 2
    if not a.config:
        print("fedloom: run needs a CONFIG (or --resume RUN_DIR)", file=sys.stderr)
        return 2
    extra = (["progress=false"] if a.quiet else []) + (["tracking.tensorboard=true"] if a.tensorboard else [])
    try:
        cfg = load_config(a.config, [*a.overrides, *extra])
    except ConfigError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    from fedloom.metrics import tensorboard as tb

    if cfg.tracking.tensorboard and not tb.available():
        print(f"fedloom: tracking.tensorboard needs the tensorboard package: {tb.INSTALL}", file=sys.stderr)
        return 1
    from fedloom.data.base import DataError
    from fedloom.data.datasets import DataUnavailable
    from fedloom.rundir import RunDirError, claim
    from fedloom.simulation import Simulation

    out = Path(a.out) if a.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        lock = claim(out)  # checked and locked before the build: a second run on the same --out is refused
    except RunDirError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    written = False
    try:
        try:
            sim = Simulation(cfg, None)  # build everything before writing anything
        except DataUnavailable as e:
            print(f"fedloom: {e}", file=sys.stderr)
            return 1
        except (DataError, ConfigError) as e:  # a damaged file, settings the dataset or machine cannot take (named)
            print(f"fedloom: {e}", file=sys.stderr)
            return 2
        written = True
        sim.attach_output(out)
        engine = sim.engine.name + (f" ({sim.engine_note})" if sim.engine_note else "")
        if not a.quiet:
            print(f"fedloom: {cfg.algorithm.name} on {cfg.data.dataset.name} ({sim.data.num_clients} clients, "
                  f"{cfg.data.partition.name}), model {cfg.model.name}, engine {engine}; run dir {out}",
                  file=sys.stderr)
        t0 = time.perf_counter()
        if not _run_interruptible(sim, out):
            return 130
        return _finish(sim, out, t0)
    finally:
        lock.release(discard=not written)


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


def _cmd_deploy(a: argparse.Namespace) -> int:
    from fedloom.config import ConfigError, load_config

    if (a.local is None) == (a.superlink is None):
        print("fedloom: deploy needs exactly one of --local N (start a federation here) or --superlink HOST:PORT",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    from fedloom.config import features
    from fedloom.core.compat import check

    errors = check(features(cfg, runtime="deploy"))
    if errors:
        print("fedloom: cannot deploy this config:\n" + "\n".join(f"  {e}" for e in errors), file=sys.stderr)
        return 2
    if (a.secure and a.local is None) or (a.root_certificates and a.superlink is None):
        print("fedloom: --secure goes with --local (a federation started here), --root-certificates with --superlink",
              file=sys.stderr)
        return 2
    sa = cfg.secure_aggregation
    if a.superlink is not None and sa is not None and sa.enabled and not sa.authority:
        print("fedloom: secure_aggregation.authority: a deployed run's key authority is a process of its own; start "
              "one (python -m fedloom.crypto.authority) and set secure_aggregation.authority=URL (--local starts "
              "one itself)", file=sys.stderr)
        return 2
    if a.local is not None and a.local < 1:
        print(f"fedloom: --local {a.local}: need at least one SuperNode", file=sys.stderr)
        return 2
    if a.local is not None and a.local > cfg.data.num_clients:
        print(f"fedloom: --local {a.local} SuperNodes but data.num_clients={cfg.data.num_clients}: each node holds "
              "one client's partition", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path("runs") / f"{cfg.name}-deploy-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        print(f"fedloom: output directory {out} exists and is not empty; choose another --out", file=sys.stderr)
        return 2
    try:
        from fedloom.deploy.local import DeployError, deploy_local, deploy_remote
    except ImportError as e:
        print(f"fedloom: deploy needs Flower: pip install 'fedloom[deploy]' ({e})", file=sys.stderr)
        return 1
    where = f"{a.local} local SuperNodes" if a.local is not None else f"the SuperLink at {a.superlink}"
    print(f"fedloom: deploying {cfg.algorithm.name} on {cfg.data.dataset.name} to {where}; run dir {out} "
          f"(logs in {out / 'logs'})", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        if a.local is not None:
            rc = deploy_local(cfg, out, a.local, timeout=a.timeout, secure=a.secure)
        else:
            rc = deploy_remote(cfg, out, a.superlink, timeout=a.timeout, root_certificates=a.root_certificates)
    except DeployError as e:
        print(f"fedloom: deploy failed: {e} (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedloom: interrupted; the federation was shut down", file=sys.stderr)
        return 130
    if rc != 0 or not (out / "metrics.jsonl").is_file():
        print(f"fedloom: the deployed run failed (flwr run exited {rc}); see {out / 'logs' / 'flwr-run.log'}",
              file=sys.stderr)
        return 1
    from fedloom.metrics.history import read_metrics

    records = read_metrics(out)
    from fedloom.metrics.report import headline_of

    head = headline_of(out, records)
    val = next((r[head] for r in reversed(records) if r.get(head) is not None), None)
    shown = f"{val:.4f}" if val is not None else "not recorded"
    up, down = sum(r["bytes_up"] for r in records), sum(r["bytes_down"] for r in records)
    print(f"final {head.replace('_', ' ')} {shown} after {len(records)} rounds in {time.perf_counter() - t0:.1f} s "
          f"(deployed); {up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down")
    print(f"metrics: {out / 'metrics.jsonl'}")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from fedloom.metrics.history import MetricsError, read_metrics
    from fedloom.metrics.report import make_report

    for d in a.run_dirs:
        if not (Path(d) / "metrics.jsonl").is_file():
            print(f"fedloom: {d} has no metrics.jsonl", file=sys.stderr)
            return 2
        try:
            records = read_metrics(d)
        except MetricsError as e:
            print(f"fedloom: {e}", file=sys.stderr)
            return 2
        if not records:
            print(f"fedloom: {Path(d) / 'metrics.jsonl'} has no rounds recorded yet; nothing to report",
                  file=sys.stderr)
            return 2
    for opt, target in (("--out", a.out), ("--html", a.html)):
        if target and Path(target).exists() and (Path(target).is_dir() if opt == "--html" else
                                                 not Path(target).is_dir()):
            what = "a directory; give a file name" if opt == "--html" else "a file; give a directory"
            print(f"fedloom: report {opt} {target} is {what}", file=sys.stderr)
            return 2
    try:
        if a.html:
            try:
                from fedloom.metrics.html import html_report, kinds_of
            except ImportError as e:
                print(f"fedloom: report --html needs plotly: pip install 'fedloom[tracking]' ({e})", file=sys.stderr)
                return 1
            kinds = kinds_of(a.run_dirs)
            if len(kinds) > 1:
                print("fedloom: these runs are of different kinds (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in
                      kinds.items()) + "); the report shows each kind in its own section", file=sys.stderr)
            print(html_report(a.run_dirs, a.html))
            if not a.out:
                return 0
        for p in make_report(a.run_dirs, a.out):
            print(p)
    except OSError as e:  # an unwritable --out / --html
        print(f"fedloom: cannot write the report: {e.strerror or e} ({e.filename or a.out or a.html})",
              file=sys.stderr)
        return 2
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    from fedloom.sweep import main as sweep

    if a.jobs < 1:
        print(f"fedloom: --jobs {a.jobs}: need at least 1", file=sys.stderr)
        return 2
    return sweep(a.config, a.overrides, a.out, a.jobs, a.target, a.quiet, tensorboard=a.tensorboard)


def _cmd_data(a: argparse.Namespace) -> int:
    from fedloom.config import load_config
    from fedloom.data.commands import run

    return run(a, load_config)


def _data_parsers(sub) -> None:
    """``fedloom data``: client stores (fedloom.data.store, fedloom.data.importers, fedloom.data.commands)."""
    dp = sub.add_parser("data", help="import federated data into a client store (Arrow), inspect a store",
                        description="`data import leaf|table|partition ... --out STORE`, then `dataset: {name: store, "
                                    "path: STORE}` with `partition: natural` in a config")
    ds = dp.add_subparsers(dest="data_cmd", required=True)
    kinds = ds.add_parser("import", help="write a client store from LEAF JSON, a table, or a fedloom partition"
                          ).add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="the store directory to create (must not exist, or be empty)")
    common.add_argument("--name", help="the dataset's name in the store (default: from the input)")
    split = argparse.ArgumentParser(add_help=False)
    split.add_argument("--test-fraction", type=float, default=0.2,
                       help="without --test: each client's held-out fraction (seeded), pooled as the test split")
    split.add_argument("--seed", type=int, default=0, help="seed of the per-client held-out split")
    lf = kinds.add_parser("leaf", parents=[common, split], help="LEAF JSON files (or directories of *.json)")
    lf.add_argument("train", nargs="+", help="training JSON files or directories (LEAF's data/train)")
    lf.add_argument("--test", nargs="+", help="test JSON files or directories (LEAF's data/test): the test split")
    tb = kinds.add_parser("table", parents=[common, split], help="a Parquet/CSV/Arrow table with a client-id column")
    tb.add_argument("train", help="the table (.parquet, .csv, .tsv, .arrow, .feather), one row per sample")
    tb.add_argument("--client-column", required=True, help="the column naming each row's client")
    tb.add_argument("--label-column", required=True, help="the label column (integers, strings -> ids, or floats)")
    tb.add_argument("--label-type", default="auto", choices=["auto", "class", "float"],
                    help="class ids, or float regression targets; auto: a float column with non-integer values is "
                         "float, anything else classes")
    tb.add_argument("--features", help="comma-separated feature columns (numbers, or one list column); default: all "
                                       "other columns")
    tb.add_argument("--input-shape", help="per-row input shape, e.g. 1,28,28 (default: flat)")
    tb.add_argument("--x-dtype", default="float32", choices=["float32", "int64"], help="stored input dtype")
    tb.add_argument("--num-classes", type=int, help="number of classes (default: the largest label + 1)")
    tb.add_argument("--test", help="a table with the same feature and label columns: the test split")
    tb.add_argument("--memory-mb", type=float, default=256,
                    help="memory for grouping rows by client (the table is streamed; default 256)")
    pt = kinds.add_parser("partition", parents=[common], help="a run config's data section (dataset, partitioner, "
                                                              "seed) frozen into a store")
    pt.add_argument("config")
    pt.add_argument("overrides", nargs="*", help="e.g. data.num_clients=100 data.partition.alpha=0.1 seed=1")
    info = ds.add_parser("info", help="summarize a store; --verify checks its files' SHA-256")
    info.add_argument("store")
    info.add_argument("--verify", action="store_true")
    dp.set_defaults(fn=_cmd_data)


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
    r.add_argument("--force", action="append", metavar="FIELD[,FIELD]",
                   help="with --resume: accept these edited config.yaml fields (e.g. --force client.lr)")
    r.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files (tracking.tensorboard)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr (for scripts)")
    r.set_defaults(fn=_cmd_run)
    sub.add_parser("list", help="list algorithms, datasets, partitioners, models, engines").set_defaults(fn=_cmd_list)
    rp = sub.add_parser("report", help="plot runs' metrics (PNG; --html: one self-contained HTML report)")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="where to write the PNG plots (default: the first run dir; with --html: only "
                                  "when given)")
    rp.add_argument("--html", metavar="OUT.html", help="write an HTML report of the runs (overlaid) to OUT.html")
    rp.set_defaults(fn=_cmd_report)
    sw = sub.add_parser("sweep", help="a grid of overrides x seeds as parallel runs, with a summary and report",
                        description="CONFIG key=v1,v2 (a grid axis) ... seed=0,1,2 (the seeds) key=v (every run); "
                                    "rerun the same command to resume")
    sw.add_argument("config")
    sw.add_argument("overrides", nargs="*", help="e.g. data.partition.alpha=0.1,1.0 seed=0,1,2 rounds=20")
    sw.add_argument("--jobs", type=int, default=1, help="runs at a time (threads per run: cores // jobs)")
    sw.add_argument("--out", help="sweep directory (default runs/sweep-NAME-TIMESTAMP)")
    sw.add_argument("--target", type=float, help="headline value for 'rounds to target' (default: within 10%% of "
                                                 "the best final value)")
    sw.add_argument("--tensorboard", action="store_true", help="TensorBoard event files in every run")
    sw.add_argument("--quiet", action="store_true", help="no progress output; only the summary")
    sw.set_defaults(fn=_cmd_sweep)
    d = sub.add_parser("deploy", help="run a config on real clients through Flower (SuperLink / SuperNodes)",
                       description="run CONFIG on a Flower federation: --local N starts one here (N SuperNodes on "
                                   "127.0.0.1, node i holds partition i), --superlink HOST:PORT uses a running one")
    d.add_argument("config")
    d.add_argument("overrides", nargs="*", help="e.g. rounds=3 cohort_size=5")
    d.add_argument("--local", type=int, metavar="N", help="start a local federation of N SuperNodes")
    d.add_argument("--superlink", metavar="HOST:PORT", help="submit to a running SuperLink (TLS with "
                                                              "--root-certificates, else an insecure connection)")
    d.add_argument("--secure", action="store_true", help="with --local: TLS on every link (a CA and certificates "
                                                         "made for the run) and Flower's SuperNode authentication")
    d.add_argument("--root-certificates", metavar="CA.PEM", help="with --superlink: verify its TLS certificate")
    d.add_argument("--out", help="run directory (default runs/NAME-deploy-TIMESTAMP)")
    d.add_argument("--timeout", type=float, default=120.0, help="seconds the server waits for a round's replies")
    d.set_defaults(fn=_cmd_deploy)
    _data_parsers(sub)
    # -- data-parallel local SGD on torch.distributed (fedloom.distributed; launch under torchrun) --
    ls = sub.add_parser("train-local-sgd", help="data-parallel (local) SGD on torch.distributed; run under torchrun",
                        description="key=value fields of fedloom.distributed.local_sgd.LocalSGDConfig, plus out=DIR")
    ls.add_argument("fields", nargs="*")
    ls.set_defaults(fn=_cmd_train_local_sgd)
    a, extra = ap.parse_known_args(argv)
    if extra:  # overrides may also follow options: `fedloom deploy CONFIG --local 3 rounds=5 --out DIR`
        if not hasattr(a, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        a.overrides = [*a.overrides, *extra]
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return a.fn(a)
    except KeyboardInterrupt:  # outside a run's rounds (those print how to resume): no traceback either
        print("\nfedloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
