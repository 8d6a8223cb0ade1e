"""Sweeps: a grid of config overrides times seeds, each run as its own ``fedloom run`` process.

    fedloom sweep CONFIG key=v1,v2 ... seed=0,1,2 [key=v ...] --jobs N --out DIR [--target X] [--quiet]

``key=v1,v2`` is a grid axis (values split at top-level commas: ``client.lr=0.1,0.05``,
``model.hidden=[64],[64,64]``); ``key=v`` with one value applies to every run; ``seed=...`` gives the seeds.
Every grid point x seed is validated first (a bad one: exit 2, nothing written), then run in its own process
(``python -m fedloom.cli run ... --quiet``: the same code path as ``fedloom run``; a crash stays in its process)
in DIR/<point>/seed=<s>, ``--jobs`` at a time, each with ``threads = cores // jobs`` (unless ``threads=`` is
given or the config file sets ``threads``). Rerunning the same command resumes: finished runs (complete
metrics.jsonl and model.pt) are skipped, interrupted ones continue from their checkpoint (``fedloom run
--resume``), others start again.

At the end, one summary row per grid point: the final and the best headline metric, the rounds to reach a
target and the total megabytes, each as mean, std and a Student-t 95% interval over the seeds (n = 1: no
interval), written to DIR/summary.csv and DIR/summary.md, and DIR/report.html with mean +- interval bands. A
failed run is reported with its error (and its log, DIR/<point>/seed=<s>.log) and does not stop the others.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedloom.atomic import write_text_atomic
from fedloom.config import VOLATILE, ConfigError, RunConfig, dump_config, load_config, read_config_file


class SweepError(ValueError):
    """Bad sweep input (exit status 2): a bad axis, an invalid grid point, a run directory of another config."""


def split_values(text: str) -> list[str]:
    """``text`` split at commas outside brackets, braces and quotes: ``0.1,1.0`` -> two values,
    ``[64,64],[200]`` -> two lists, ``[64,64]`` -> one."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


@dataclass
class Job:
    point: dict[str, str]   # axis key -> value (as typed)
    seed: int | None        # None: the config's own seed (no seed axis)
    label: str              # e.g. "alpha=0.1"
    run_dir: Path
    overrides: list[str]
    cfg: RunConfig
    status: str = "new"     # new | restart | resume | done
    rc: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.label}/{self.run_dir.name}"

    @property
    def log(self) -> Path:
        return self.run_dir.with_name(self.run_dir.name + ".log")

    @property
    def ok(self) -> bool:
        return self.status == "done" or self.rc == 0


def _dirsafe(v: str) -> str:
    return "".join(c if c.isalnum() or c in "._-=+," else "_" for c in v.replace(" ", "")) or "_"


def _complete(run_dir: Path, rounds: int) -> bool:
    mpath = run_dir / "metrics.jsonl"
    if not (mpath.is_file() and (run_dir / "model.pt").is_file()):
        return False
    try:
        done = {json.loads(ln)["round"] for ln in mpath.read_text().splitlines() if ln.strip()}
    except (ValueError, KeyError):
        return False
    return done == set(range(1, rounds + 1))


def _experiment(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in VOLATILE}


def _sets_threads(config: Path) -> bool:
    """Whether the config file itself sets ``threads`` (then the sweep keeps it instead of ``cores // jobs``:
    a user who runs two sweeps side by side with ``threads: 1`` must not get two threads per run)."""
    try:
        return read_config_file(config).get("threads") is not None
    except ConfigError:
        return False  # load_config reports the error


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Sweep:
    """A planned sweep (see the module docstring). ``command``: how to start ``fedloom`` (default: this Python,
    ``-m fedloom.cli``)."""

    config: Path
    args: list[str]
    out: Path
    jobs: int = 1
    target: float | None = None
    tensorboard: bool = False
    cores: int = field(default_factory=_cores)
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "fedloom.cli"])
    axes: dict[str, list[str]] = field(default_factory=dict, init=False)
    fixed: list[str] = field(default_factory=list, init=False)
    seeds: list[int] | None = field(default=None, init=False)
    runs: list[Job] = field(default_factory=list, init=False)
    threads: int = field(default=1, init=False)

    # -- planning (validates everything; writes nothing) ----------------------------------------------------
    def plan(self) -> list[Job]:
        self.config, self.out = Path(self.config), Path(self.out)
        for a in self.args:
            key, sep, val = a.partition("=")
            if not sep or not key:
                raise SweepError(f"sweep argument {a!r}: expected key=value or key=v1,v2,...")
            vals = split_values(val)
            if key == "seed":
                try:
                    self.seeds = [int(v) for v in vals]
                except ValueError:
                    raise SweepError(f"sweep argument {a!r}: seeds must be integers") from None
                if len(set(self.seeds)) != len(self.seeds):
                    raise SweepError(f"sweep argument {a!r}: a seed is repeated")
            elif key in self.axes or any(f.partition("=")[0] == key for f in self.fixed):
                raise SweepError(f"sweep argument {a!r}: {key} is given twice")
            elif len(vals) > 1:
                if len(set(vals)) != len(vals):
                    raise SweepError(f"sweep argument {a!r}: a value is repeated")
                self.axes[key] = vals
            else:
                self.fixed.append(a)
        user_threads = any(f.partition("=")[0] == "threads" for f in self.fixed) or _sets_threads(self.config)
        shorts = [k.rpartition(".")[2] for k in self.axes]
        names = {k: (s if shorts.count(s) == 1 else k) for k, s in zip(self.axes, shorts)}
        points = [dict(zip(self.axes, combo)) for combo in itertools.product(*self.axes.values())] or [{}]
        seeds: list[int | None] = list(self.seeds) if self.seeds is not None else [None]
        n_runs = len(points) * len(seeds)
        self.jobs = max(1, min(self.jobs, n_runs))
        self.threads = max(1, self.cores // self.jobs)
        errors: list[str] = []
        dirs: dict[str, str] = {}
        self.runs = []
        for point in points:
            label = ",".join(f"{names[k]}={v}" for k, v in point.items()) or "base"
            for seed in seeds:
                ov = list(self.fixed) + [f"{k}={v}" for k, v in point.items()]
                ov += [f"seed={seed}"] if seed is not None else []
                ov += [] if user_threads else [f"threads={self.threads}"]
                ov += ["progress=false"] + (["tracking.tensorboard=true"] if self.tensorboard else [])
                where = ", ".join([*(f"{k}={v}" for k, v in point.items()), f"seed={seed}" if seed is not None
                                   else ""]).strip(", ") or "the base config"
                try:
                    cfg = load_config(self.config, ov)
                except ConfigError as e:
                    errors.append(f"grid point {where}: " + "; ".join(e.errors))
                    continue
                s = seed if seed is not None else cfg.seed
                base = _dirsafe(label)
                while dirs.setdefault(base, label) != label:  # two labels made alike by _dirsafe
                    base += "_"
                run_dir = self.out / base / f"seed={s}"
                self.runs.append(Job(point, seed, label, run_dir, ov, cfg))
        if errors:
            raise SweepError("invalid sweep:\n" + "\n".join(f"  {e}" for e in errors))
        for job in self.runs:
            job.status = self._status(job)
        return self.runs

    def _status(self, job: Job) -> str:
        d = job.run_dir
        if not d.exists() or not any(d.iterdir()):
            return "new"
        if (d / "config.yaml").is_file():
            try:
                have = yaml.safe_load((d / "config.yaml").read_text()) or {}
            except yaml.YAMLError:
                have = None
            want = yaml.safe_load(dump_config(job.cfg))
            if isinstance(have, dict) and _experiment(have) != _experiment(want):
                diff = sorted(k for k in set(have) | set(want) if k not in VOLATILE and have.get(k) != want.get(k))
                raise SweepError(f"{d} holds a run of another config (differs in: {', '.join(diff)}); remove it "
                                 "or choose another --out")
        if _complete(d, job.cfg.rounds):
            return "done"
        if (d / "checkpoint.pt").is_file() and (d / "config.yaml").is_file():
            return "resume"
        return "restart"

    # -- running ---------------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"config": str(self.config), "args": self.args, "axes": self.axes, "fixed": self.fixed,
                "seeds": self.seeds, "jobs": self.jobs, "threads_per_job": self.threads, "target": self.target,
                "runs": [{"point": j.point, "label": j.label, "seed": j.seed, "dir": str(j.run_dir)} for j in self.runs]}

    def _argv(self, job: Job) -> list[str]:
        if job.status == "resume":
            return [*self.command, "run", "--resume", str(job.run_dir), "--quiet"]
        return [*self.command, "run", str(self.config), *job.overrides, "--out", str(job.run_dir), "--quiet"]

    def _start(self, job: Job) -> tuple[subprocess.Popen, Any]:
        if job.status == "restart":
            shutil.rmtree(job.run_dir)
        job.run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(job.log, "a", encoding="utf-8")
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {job.status}: {' '.join(self._argv(job))}\n")
        log.flush()
        env = {**os.environ, "OMP_NUM_THREADS": str(job.cfg.threads or self.threads),
               "MKL_NUM_THREADS": str(job.cfg.threads or self.threads), "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(self._argv(job), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return p, log

    def run(self, progress: Any = None) -> list[Job]:
        """Run every job not yet done, ``self.jobs`` at a time; returns the jobs (each with rc / error)."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / "sweep.json", json.dumps(self.spec(), indent=1) + "\n")
        todo = deque(j for j in self.runs if j.status != "done")
        running: dict[int, tuple[Job, subprocess.Popen, Any, float]] = {}
        slots = list(range(self.jobs))
        progress = progress or NullProgress()
        progress.begin(self)
        try:
            while todo or running:
                while todo and slots:
                    job = todo.popleft()
                    slot = slots.pop(0)
                    p, log = self._start(job)
                    running[slot] = (job, p, log, time.perf_counter())
                    progress.started(slot, job)
                for slot, (job, p, log, t0) in list(running.items()):
                    if p.poll() is None:
                        continue
                    log.close()
                    job.rc, job.seconds = p.returncode, time.perf_counter() - t0
                    if job.rc != 0:
                        job.error = _error_of(job.log)
                    del running[slot]
                    slots.append(slot)
                    slots.sort()
                    progress.finished(slot, job)
                progress.tick({s: j for s, (j, *_rest) in running.items()})
                time.sleep(0.25)
        except BaseException:
            for _job, p, _log, _ in running.values():  # our own children only, by their process objects
                p.terminate()
            for _job, p, log, _ in running.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                log.close()
            raise
        finally:
            progress.end()
        return self.runs


def _error_of(log: Path) -> str:
    """The last meaningful line of a failed run's log (a traceback's last line, or fedloom's message)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    lines = [ln for ln in lines if not ln.startswith("#")]
    if not lines:
        return "exited without output"
    fed = [ln for ln in lines if ln.startswith("fedloom: ") and "run dir" not in ln]
    return (lines[-1] if not fed or lines[-1].startswith(("Traceback", "File")) else fed[-1])[:400]


# -- progress ---------------------------------------------------------------------------------------------------
class _Tail:
    """Reads a running job's metrics.jsonl incrementally: rounds done, last headline value, loss, MB."""

    def __init__(self, job: Job):
        self.path, self.pos, self.buf = job.run_dir / "metrics.jsonl", 0, ""
        self.rounds, self.value, self.loss, self.mb = 0, None, None, 0.0

    def read(self, head: str) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self.pos)
                chunk = f.read()
                self.pos = f.tell()
        except OSError:
            return
        self.buf += chunk
        *lines, self.buf = self.buf.split("\n")
        for ln in lines:
            try:
                r = json.loads(ln)
            except ValueError:
                continue
            self.rounds = max(self.rounds, int(r.get("round", 0)))
            self.value = r.get(head, self.value) if r.get(head) is not None else self.value
            self.loss = r.get("train_loss") if r.get("train_loss") is not None else self.loss
            self.mb += ((r.get("bytes_up") or 0) + (r.get("bytes_down") or 0)) / 1e6


def headline_for(cfg: RunConfig) -> str:
    """The run's headline metric, read off its config as ``Run.headline`` does (algorithm's, else the task's)."""
    from fedloom import registry as R

    head = getattr(R.ALGORITHMS.get(cfg.algorithm.name), "headline", None)
    return head or getattr(R.TASKS.get(cfg.task.name), "headline", None) or "test_accuracy"


class NullProgress:
    def begin(self, sweep: Sweep) -> None: ...
    def started(self, slot: int, job: Job) -> None: ...
    def finished(self, slot: int, job: Job) -> None: ...
    def tick(self, running: dict[int, Job]) -> None: ...
    def end(self) -> None: ...


class LineProgress(NullProgress):
    """One line per job start and end (for logs: stderr not a terminal)."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.done = self.failed = self.total = 0

    def _p(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)

    def begin(self, sweep: Sweep) -> None:
        self.total = len(sweep.runs)
        self.done = sum(j.status == "done" for j in sweep.runs)
        self._p(f"fedloom: sweep of {self.total} runs ({self.done} already finished), {sweep.jobs} at a time, "
                f"{sweep.threads} thread(s) each; out {sweep.out}")

    def started(self, slot: int, job: Job) -> None:
        verb = {"resume": "resuming", "restart": "restarting"}.get(job.status, "starting")
        self._p(f"[{self.done + self.failed}/{self.total}] {verb} {job.name}")

    def finished(self, slot: int, job: Job) -> None:
        if job.rc == 0:
            self.done += 1
            r = _final_of(job)
            self._p(f"[{self.done + self.failed}/{self.total}] done {job.name} in {job.seconds:.1f} s{r}")
        else:
            self.failed += 1
            self._p(f"[{self.done + self.failed}/{self.total}] FAILED {job.name} (exit {job.rc}): {job.error}; "
                    f"log {job.log}")


def _final_of(job: Job) -> str:
    try:
        from fedloom.metrics.runs import RunData, label_of

        r = RunData.load(job.run_dir)
        return f": {label_of(r.headline)} {r.final():.4f}, {r.total_mb():.1f} MB" if r.final() is not None else ""
    except (OSError, ValueError, TypeError):
        return ""


class BarProgress(LineProgress):
    """An overall bar (rounds of all runs) plus one line per running job: round, headline, loss, MB."""

    def begin(self, sweep: Sweep) -> None:
        from tqdm.auto import tqdm

        super().begin(sweep)
        self.heads = {id(j): headline_for(j.cfg) for j in sweep.runs}
        total = sum(j.cfg.rounds for j in sweep.runs)
        self.base = sum(j.cfg.rounds for j in sweep.runs if j.status == "done")
        self.bar = tqdm(total=total, initial=self.base, desc="sweep", unit="round", position=0, dynamic_ncols=True,
                        file=self.stream)
        self.lines = [tqdm(total=1, position=i + 1, bar_format="{desc}", leave=False, file=self.stream)
                      for i in range(sweep.jobs)]
        self.tails: dict[int, _Tail] = {}
        self.finished_rounds = 0
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"runs {self.done}/{self.total} done" + (f", {self.failed} failed" if self.failed
                                                                          else ""))

    def _p(self, msg: str) -> None:
        if hasattr(self, "bar"):
            self.bar.write(msg, file=self.stream)
        else:
            super()._p(msg)

    def started(self, slot: int, job: Job) -> None:
        self.tails[slot] = _Tail(job)

    def finished(self, slot: int, job: Job) -> None:
        self.finished_rounds += job.cfg.rounds
        self.tails.pop(slot, None)
        self.lines[slot].set_description_str("")
        LineProgress.finished(self, slot, job)
        self._postfix()

    def tick(self, running: dict[int, Job]) -> None:
        live = 0
        for slot, job in running.items():
            t = self.tails.get(slot)
            if t is None:
                continue
            head = self.heads[id(job)]
            t.read(head)
            live += t.rounds
            short = {"test_accuracy": "acc"}.get(head, head)
            val = f"{t.value:.4f}" if isinstance(t.value, (int, float)) else "-"
            loss = f"{t.loss:.3f}" if isinstance(t.loss, (int, float)) else "-"
            self.lines[slot].set_description_str(
                f"  {job.name:<32} round {t.rounds:>4}/{job.cfg.rounds}  {short} {val}  loss {loss}  {t.mb:8.1f} MB")
        self.bar.n = min(self.bar.total, self.base + self.finished_rounds + live)
        self.bar.refresh()

    def end(self) -> None:
        for ln in self.lines:
            ln.close()
        self.bar.close()


# -- summary ---------------------------------------------------------------------------------------------------
STATS = ("final", "best", "rounds_to_target", "total_mb")


@dataclass
class PointSummary:
    label: str
    point: dict[str, str]
    jobs: list[Job]
    stats: dict[str, dict[str, Any]]
    reached: int = 0

    @property
    def ok(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]


def default_target(runs: list[Any], metric: str) -> float | None:
    """Within 10% of the best final value over all of a sweep's runs (above it for a lower-is-better metric)."""
    from fedloom.metrics.runs import lower_is_better

    finals = [r.final(metric) for r in runs if r.final(metric) is not None]
    if not finals:
        return None
    if lower_is_better(metric):
        best = min(finals)
        return best + 0.1 * abs(best)
    best = max(finals)
    return best - 0.1 * abs(best)


def summarize(sweep: Sweep, target: float | None = None) -> tuple[list[PointSummary], str, float | None, str]:
    """One :class:`PointSummary` per grid point; the headline metric, the target used and how it was chosen."""
    from fedloom.metrics.runs import RunData, interval

    data: dict[int, Any] = {}
    for j in sweep.runs:
        if j.ok:
            try:
                data[id(j)] = RunData.load(j.run_dir)
            except (OSError, ValueError) as e:  # counted as failed
                j.rc, j.status, j.error = 1, "failed", f"unreadable metrics.jsonl: {e}"
    heads = {d.headline for d in data.values()}
    head = sorted(heads)[0] if heads else headline_for(sweep.runs[0].cfg)
    how = "--target"
    if target is None:
        target = default_target(list(data.values()), head)
        how = "within 10% of the best final value of the sweep (set with --target)"
    out: list[PointSummary] = []
    labels: list[str] = []
    for j in sweep.runs:
        if j.label not in labels:
            labels.append(j.label)
    for label in labels:
        jobs = [j for j in sweep.runs if j.label == label]
        runs = [data[id(j)] for j in jobs if id(j) in data]
        rtt = [r.rounds_to(target, head) for r in runs] if target is not None else []
        stats = {"final": interval([r.final(head) for r in runs]), "best": interval([r.best(head) for r in runs]),
                 "rounds_to_target": interval([float(x) for x in rtt if x is not None]),
                 "total_mb": interval([r.total_mb() for r in runs])}
        out.append(PointSummary(label, jobs[0].point, jobs, stats, reached=sum(x is not None for x in rtt)))
    return out, head, target, how


def _cell(st: dict[str, Any], digits: int = 4) -> str:
    if st["mean"] is None:
        return "-"
    f = f"{{:.{digits}f}}"
    s = f.format(st["mean"])
    if st["lo"] is not None:
        s += f" ± {f.format(st['hi'] - st['mean'])} (sd {f.format(st['std'])})"
    return s


def _status(p: PointSummary) -> str:
    if not p.failed:
        return "ok"
    return f"{len(p.ok)}/{len(p.jobs)} ok; " + "; ".join(f"{j.run_dir.name} failed: {j.error}" for j in p.failed)


def to_csv(points: list[PointSummary], axes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["point", *axes, "n", "runs", "failed"]
    for s in STATS:
        head += [f"{s}_mean", f"{s}_std", f"{s}_ci95_lo", f"{s}_ci95_hi"]
    head += ["target_reached", "errors"]
    w.writerow(head)
    for p in points:
        row: list[Any] = [p.label, *(p.point.get(a, "") for a in axes), p.stats["final"]["n"], len(p.jobs), len(p.failed)]
        for s in STATS:
            st = p.stats[s]
            row += ["" if st[k] is None else st[k] for k in ("mean", "std", "lo", "hi")]
        row += [p.reached, " | ".join(f"{j.run_dir.name}: {j.error}" for j in p.failed)]
        w.writerow(row)
    return buf.getvalue()


def to_markdown(points: list[PointSummary], head: str, target: float | None, how: str) -> str:
    from fedloom.metrics.runs import label_of

    name = label_of(head)
    tgt = f"rounds to {target:.4g}" if target is not None else "rounds to target"
    lines = [f"| point | n | final {name} | best {name} | {tgt} | total MB | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        n = p.stats["final"]["n"]
        rtt = _cell(p.stats["rounds_to_target"], 1) + (f" ({p.reached}/{n} reached)" if n else "")
        lines.append(f"| {p.label} | {n} | {_cell(p.stats['final'])} | {_cell(p.stats['best'])} | {rtt} | "
                     f"{_cell(p.stats['total_mb'], 2)} | {_status(p).replace('|', '/')} |")
    note = (f"\nmean ± half-width of the 95% Student-t interval over seeds (sd: sample std; n = 1: no interval). "
            f"Target {target:.4g} {name}: {how}; rounds to target over the seeds that reached it.\n"
            if target is not None else "\nmean ± half-width of the 95% Student-t interval over seeds.\n")
    return "\n".join(lines) + "\n" + note


def _summary_html(points: list[PointSummary], head: str, target: float | None, how: str, sweep: Sweep) -> str:
    import html as h

    from fedloom.metrics.runs import label_of

    name = h.escape(label_of(head))
    rows = []
    for p in points:
        n = p.stats["final"]["n"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in [
            h.escape(p.label), str(n), _cell(p.stats["final"]), _cell(p.stats["best"]),
            _cell(p.stats["rounds_to_target"], 1) + (f" ({p.reached}/{n} reached)" if n else ""),
            _cell(p.stats["total_mb"], 2), h.escape(_status(p))]) + "</tr>")
    tgt = f"rounds to {target:.4g}" if target is not None else "rounds to target"
    fails = [j for p in points for j in p.failed]
    err = ""
    if fails:
        err = ('<div class="error"><b>Failed runs</b> (the others completed):<ul>' + "".join(
            f"<li>{h.escape(j.name)} (exit {j.rc}): {h.escape(str(j.error))}; log <code>{h.escape(str(j.log))}</code>"
            "</li>" for j in fails) + "</ul></div>")
    cmd = h.escape(" ".join(["fedloom sweep", str(sweep.config), *sweep.args]))
    return (f"<h2>Summary per grid point</h2><p><code>{cmd}</code></p>{err}<table><thead><tr><th>point</th><th>n</th>"
            f"<th>final {name}</th><th>best {name}</th><th>{h.escape(tgt)}</th><th>total MB</th><th>status</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table><p>mean ± half-width of the 95% Student-t "
            "interval over seeds (sd: sample std; n = 1: no interval); the charts draw the mean with that interval "
            f"as a band. Target: {h.escape(how)}.</p>")


def write_outputs(sweep: Sweep, target: float | None = None) -> tuple[list[PointSummary], str]:
    """summary.csv, summary.md and report.html in the sweep's directory; returns the summaries and the Markdown."""
    from fedloom.metrics import html as H
    from fedloom.metrics.runs import RunData

    points, head, target, how = summarize(sweep, target)
    axes = list(sweep.axes)
    write_text_atomic(sweep.out / "summary.csv", to_csv(points, axes))
    md = to_markdown(points, head, target, how)
    write_text_atomic(sweep.out / "summary.md", f"# Sweep {sweep.out.name}\n\n" + md)
    groups = []
    for p in points:
        runs = []
        for j in p.ok:
            try:
                r = RunData.load(j.run_dir)
            except (OSError, ValueError):
                continue
            r.label = f"{p.label}/{j.run_dir.name}"
            runs.append(r)
        if runs:
            groups.append(H.Group(p.label, runs))
    if groups:
        title = f"fedloom sweep {sweep.out.name}: {len(points)} grid point(s) x {len(sweep.seeds or [0])} seed(s)"
        H.write(sweep.out / "report.html", H.render(groups, title, extra=_summary_html(points, head, target, how, sweep)))
    return points, md


def main(config: str, args: list[str], out: str | None, jobs: int, target: float | None, quiet: bool,
         tensorboard: bool = False) -> int:
    """``fedloom sweep``: 0 when every run finished, 1 when some failed (the summary still written), 2 for bad
    input (nothing written)."""
    cfg_name = Path(config).stem
    out_dir = Path(out) if out else Path("runs") / f"sweep-{cfg_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sw = Sweep(Path(config), list(args), out_dir, jobs=jobs, target=target, tensorboard=tensorboard)
    try:
        sw.plan()
    except (SweepError, ConfigError) as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    prog: NullProgress = NullProgress() if quiet else (BarProgress() if sys.stderr.isatty() else LineProgress())
    t0 = time.perf_counter()

    def _stop(signum: int, frame: Any) -> None:  # SIGTERM / SIGHUP: stop the running jobs as Ctrl-C does
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        sw.run(prog)
    except KeyboardInterrupt:
        print(f"fedloom: sweep interrupted; run the same command again to resume ({out_dir})", file=sys.stderr)
        return 130
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    _, md = write_outputs(sw, target)
    failed = [j for j in sw.runs if not j.ok]
    print(md)
    print(f"{len(sw.runs) - len(failed)}/{len(sw.runs)} runs finished in {time.perf_counter() - t0:.1f} s"
          + (f", {len(failed)} failed" if failed else "") + f"; summary: {out_dir / 'summary.md'}, "
          f"{out_dir / 'summary.csv'}; report: {out_dir / 'report.html'}")
    return 1 if failed else 0
