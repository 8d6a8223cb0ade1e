"""The simulation runtime: a whole federation in one process.

:class:`Simulation` runs :func:`fedloom.core.loop.run_round` round after round between the server side and the
in-process clients (:class:`fedloom.build.SimulatedClients`) that :func:`fedloom.build.build_run` composed, and
adds what a runtime owns: the run directory (``config.yaml``, ``metrics.jsonl``, ``model.pt``), atomic
checkpoints and bit-identical resume, and the progress bar. The server and the clients meet only in bytes:
``client_runtime`` is the seam (a test can put a man-in-the-middle there), and the deployment runtime puts
Flower there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedloom.atomic import write_text_atomic
from fedloom.build import Run, build_run
from fedloom.checkpoint import NAME as CHECKPOINT
from fedloom.checkpoint import load as load_checkpoint
from fedloom.checkpoint import save_atomic
from fedloom.config import VOLATILE, RunConfig, dump_config
from fedloom.core.loop import ClientRuntime, run_round
from fedloom.core.types import LocalSchedule, ServerState
from fedloom.engine import Engine
from fedloom.metrics.history import MetricsError, MetricsWriter, parse_metrics
from fedloom.metrics.tracking import Trackers, open_trackers

log = logging.getLogger("fedloom")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_changes(stored: str | None, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted field, checkpoint's value, config.yaml's value) for every field that differs between the config a
    checkpoint stored (its YAML) and ``cfg``; fields in :data:`fedloom.config.VOLATILE` do not count. Both sides are validated
    by today's code first, so defaults added since the checkpoint was written are no change."""
    import yaml

    from fedloom.config import ConfigError, validate_config

    if not stored:  # a checkpoint from before configs were stored: nothing to compare with
        return []
    try:
        raw = yaml.safe_load(stored)
        old = yaml.safe_load(dump_config(validate_config(raw)))
    except (yaml.YAMLError, ConfigError):
        old = raw if isinstance(raw, dict) else {}
    new = yaml.safe_load(dump_config(cfg))
    a, b = _flat({k: v for k, v in old.items() if k not in VOLATILE}), _flat(
        {k: v for k, v in new.items() if k not in VOLATILE})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=lambda k: (k.count("."), k))
            if a.get(k) != b.get(k)]


def _forced(field: str, force: Sequence[str]) -> bool:
    return any(field == f or field.startswith(f + ".") for f in force)


def _kept_records(mpath: Path, ck_round: int) -> list[dict[str, Any]]:
    """The metrics records of rounds 1..ck_round, which a resume keeps; a torn last line is dropped (warning).
    Refuses (MetricsError) when any of those rounds is missing or repeated."""
    records, torn = parse_metrics(mpath) if mpath.is_file() else ([], None)
    if torn is not None:
        log.warning("%s: dropping its torn last line (the run stopped while writing it; that round is redone)",
                    mpath)
    kept = [r for r in records if r["round"] <= ck_round]
    rounds = [r["round"] for r in kept]
    if rounds != list(range(1, ck_round + 1)):
        have = f"rounds {rounds[0]}-{rounds[-1]} ({len(rounds)} records)" if rounds else "no rounds"
        state = "holds " + have if mpath.is_file() else "is missing"
        raise MetricsError(f"{mpath} {state}, but the checkpoint is after round {ck_round}: resuming would report "
                           "totals without the missing rounds. Restore metrics.jsonl, or start the run again: "
                           f"fedloom run {mpath.parent / 'config.yaml'} --out NEW_DIR")
    return kept


class Simulation:
    """A federated training run built from a :class:`RunConfig`, simulated in this process."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, *, data: Any = None,
                 engine: Engine | None = None, secure_aggregation: Any = None):
        self.cfg = cfg
        self.built: Run = build_run(cfg, data=data, engine=engine, secure_aggregation=secure_aggregation)
        b = self.built
        self.ctx, self.algorithm, self.server = b.ctx, b.algorithm, b.server
        self.state: ServerState = b.state
        self.client_runtime: ClientRuntime = b.clients  # the seam where the two sides exchange bytes
        self.out_dir: Path | None = None
        self.metrics = MetricsWriter(None)
        self.trackers = Trackers()  # TensorBoard etc. (cfg.tracking), fed each round's record
        if out_dir:
            self.attach_output(out_dir)

    # -- what a run is made of (read-only views for reports and tests) ----------------------------------
    @property
    def data(self) -> Any:
        return self.ctx.data

    @property
    def model(self) -> torch.nn.Module:
        return self.ctx.model

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return self.ctx.buffers

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def engine(self) -> Engine:
        return self.built.clients.engine

    @property
    def engine_note(self) -> str:
        return self.built.engine_note

    @property
    def client_states(self) -> dict[int, Any]:
        return self.built.clients.client_states

    @property
    def headline(self) -> str:
        return self.built.headline

    def round_schedule(self, rnd: int) -> LocalSchedule:
        """The local schedule clients run in round ``rnd``."""
        return self.built.clients.schedule(rnd)

    def attach_output(self, out_dir: str | Path, write_config: bool = True) -> None:
        """Record this run in ``out_dir``: config.yaml (unless resuming), metrics.jsonl appended to, checkpoints."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if write_config:
            write_text_atomic(self.out_dir / "config.yaml", dump_config(self.cfg))
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")
        self.trackers.close()
        self.trackers = open_trackers(self.cfg, self.out_dir, resumed=not write_config)

    # -- the round --------------------------------------------------------------------------------------
    def round(self, rnd: int) -> dict[str, Any]:
        """Run round ``rnd``, record it, and checkpoint when due."""
        self.state, rec = run_round(self.server, self.client_runtime, self.state, rnd)
        self.metrics.write(rec)
        self.trackers.log(self.metrics.records[-1])
        every = self.cfg.checkpoint_every
        if self.out_dir is not None and every and (rnd % every == 0 or rnd == self.cfg.rounds):
            self.save_checkpoint()
        return rec

    # -- checkpoint / resume ------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Everything needed to continue bit-identically (all other randomness is derived from seed+round): the
        server state, DP's accountant state, every stateful client's state and its pipeline stages' state."""
        assert self.out_dir is not None
        st, b = self.state, self.built
        ck = {"round": st.round, "params": st.params, "opt_state": st.opt_state, "algo_state": dict(st.algo_state),
              "dp_state": b.dp.state if b.dp is not None else None, "torch_rng": torch.get_rng_state(),
              "client_states": b.clients.client_states, "pipeline_states": b.clients.pipeline_states,
              "optimizer_states": b.clients.optimizer_states,
              "config": dump_config(self.cfg)}
        save_atomic(ck, self.out_dir / CHECKPOINT)

    @classmethod
    def resume(cls, run_dir: str | Path, force: Sequence[str] = ()) -> Simulation:
        """Continue the run in ``run_dir`` from its last checkpoint; metrics after it are dropped and redone.

        Refused (:class:`~fedloom.config.ConfigError`) when config.yaml differs from the config stored in the
        checkpoint, unless every changed field is named in ``force`` (a section name covers its fields); refused
        (:class:`~fedloom.metrics.history.MetricsError`) when metrics.jsonl lacks rounds the checkpoint covers (the
        totals would be wrong). A torn last metrics line is dropped with a warning. An unreadable checkpoint
        raises :class:`~fedloom.checkpoint.CheckpointError`."""
        from dataclasses import replace

        from fedloom.config import ConfigError, load_config

        run_dir = Path(run_dir)
        if not (run_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT} to resume from")
        cfg = load_config(run_dir / "config.yaml")
        ck = load_checkpoint(run_dir / CHECKPOINT)
        changed = [c for c in config_changes(ck.get("config"), cfg) if not _forced(c[0], force)]
        if changed:
            fields = ",".join(c[0] for c in changed)
            raise ConfigError([f"{run_dir / 'config.yaml'} differs from the config its checkpoint was written with: "
                               + "; ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
                               + f". Resuming would continue a different run: undo the edit, or resume with it "
                               f"anyway: fedloom run --resume {run_dir} --force {fields}"])
        mpath = run_dir / "metrics.jsonl"
        kept = _kept_records(mpath, int(ck["round"]))
        sim = cls(cfg)
        for k, v in ck["params"].items():
            have = sim.state.params.get(k)
            if have is None or have.shape != v.shape:
                raise ConfigError([f"{run_dir / CHECKPOINT}: parameter {k!r} of shape {list(v.shape)} does not fit "
                                   "the configured model ("
                                   + (f"shape {list(have.shape)}" if have is not None else "no such parameter")
                                   + "); a changed architecture cannot be resumed: start a new run"])
            sim.state.params[k].copy_(v)
        sim.state = replace(sim.state, opt_state=ck["opt_state"], algo_state=ck["algo_state"], round=ck["round"])
        clients = sim.built.clients
        clients.client_states.clear()
        clients.client_states.update(ck.get("client_states") or {})
        clients.pipeline_states.clear()
        clients.pipeline_states.update(ck.get("pipeline_states") or {})
        if clients.optimizer_states is not None:  # client.optimizer.persist
            clients.optimizer_states.clear()
            clients.optimizer_states.update(ck.get("optimizer_states") or {})
        if sim.built.dp is not None and ck["dp_state"] is not None:
            sim.built.dp.state = ck["dp_state"]
        torch.set_rng_state(ck["torch_rng"])
        write_text_atomic(mpath, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        sim.attach_output(run_dir, write_config=False)
        sim.metrics.records = kept
        return sim

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        bar = tqdm(range(self.state.round + 1, self.cfg.rounds + 1), desc=self.cfg.name, unit="round",
                   disable=not self.cfg.progress, dynamic_ncols=True)
        last, head = None, self.headline
        short = {"test_accuracy": "acc"}.get(head, head)
        mb = sum((r.get("bytes_up") or 0) + (r.get("bytes_down") or 0) for r in self.metrics.records) / 1e6
        try:
            for rnd in bar:
                rec = self.round(rnd)
                if rec.get(head) is not None:
                    last = rec[head]
                mb += (rec["bytes_up"] + rec["bytes_down"]) / 1e6
                bar.set_postfix({short: f"{last:.4f}" if last is not None else "-",
                                 "loss": f"{rec['train_loss']:.3f}" if rec["train_loss"] is not None else "-",
                                 "MB": f"{mb:.1f}"})
        finally:
            bar.close()
            self.metrics.close()
            self.trackers.close()
        if self.out_dir:
            save_atomic(self.algorithm.final_state(self.ctx, self.state), self.out_dir / "model.pt")
        return self.metrics.records
