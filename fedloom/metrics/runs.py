"""Run directories as data for reports and sweeps: records, headline metric, kind, per-round series, config
flattening and diffs, and the statistics over seeds (mean, std, Student-t 95% interval)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.metrics.history import read_metrics
from fedloom.metrics.report import headline_of

#: what a headline metric says about the kind of run; runs of different kinds are never drawn on one axis
KINDS = {"test_accuracy": "classification", "return_mean": "reinforcement learning", "test_rmse": "regression"}


def kind_of(headline: str) -> str:
    return KINDS.get(headline, headline.replace("_", " "))


def lower_is_better(metric: str) -> bool:
    return any(s in metric for s in ("rmse", "loss", "error"))


def label_of(metric: str) -> str:
    return {"test_accuracy": "test accuracy", "test_rmse": "test RMSE", "return_mean": "mean return (clients)",
            "return_heldout_mean": "mean return (held-out)"}.get(metric, metric.replace("_", " "))


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None else math.nan


@dataclass
class RunData:
    """One run directory, read: its records, resolved config (raw mapping), headline metric and environment."""

    path: Path
    records: list[dict[str, Any]]
    config: dict[str, Any]
    headline: str
    environment: dict[str, Any] | None = None
    label: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path, label: str | None = None) -> RunData:
        import yaml

        p = Path(run_dir)
        if not (p / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{p} has no metrics.jsonl")
        records = read_metrics(p)
        try:
            config = yaml.safe_load((p / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        env = None
        if (p / "environment.json").is_file():
            try:
                env = json.loads((p / "environment.json").read_text())
            except ValueError:
                env = None
        return cls(p, records, config, headline_of(p, records), env, label or p.name)

    @property
    def kind(self) -> str:
        return kind_of(self.headline)

    @property
    def rounds(self) -> list[int]:
        return [int(r["round"]) for r in self.records]

    def series(self, key: str) -> list[float]:
        """``key`` per round (NaN where not recorded)."""
        return [_num(r.get(key)) for r in self.records]

    def has(self, key: str) -> bool:
        return any(_num(r.get(key)) == _num(r.get(key)) for r in self.records)  # some finite value

    def cumulative(self, key: str) -> list[float]:
        out, tot = [], 0.0
        for r in self.records:
            v = _num(r.get(key))
            tot += v if v == v else 0.0
            out.append(tot)
        return out

    def cum_mb(self, which: str = "total") -> list[float]:
        """Cumulative megabytes on the wire: ``up``, ``down`` or ``total``."""
        up, down = self.cumulative("bytes_up"), self.cumulative("bytes_down")
        if which == "up":
            return [b / 1e6 for b in up]
        if which == "down":
            return [b / 1e6 for b in down]
        return [(u + d) / 1e6 for u, d in zip(up, down)]

    def wall(self) -> list[float]:
        """Cumulative seconds of the rounds (the run's wall time, less setup and evaluation outside rounds)."""
        return self.cumulative("seconds")

    def final(self, metric: str | None = None) -> float | None:
        metric = metric or self.headline
        vals = [v for v in self.series(metric) if v == v]
        return vals[-1] if vals else None

    def best(self, metric: str | None = None) -> float | None:
        metric = metric or self.headline
        vals = [v for v in self.series(metric) if v == v]
        if not vals:
            return None
        return min(vals) if lower_is_better(metric) else max(vals)

    def rounds_to(self, target: float, metric: str | None = None) -> int | None:
        """The first round whose ``metric`` reaches ``target`` (>= it, or <= for a lower-is-better metric)."""
        metric = metric or self.headline
        low = lower_is_better(metric)
        for rnd, v in zip(self.rounds, self.series(metric)):
            if v == v and (v <= target if low else v >= target):
                return rnd
        return None

    def total_mb(self) -> float:
        return self.cum_mb("total")[-1] if self.records else 0.0


# -- configs --------------------------------------------------------------------------------------------------
def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``dotted.key -> value`` (lists and scalars shown as compact JSON)."""
    out: dict[str, str] = {}
    if isinstance(cfg, dict) and cfg:
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif prefix:
        out[prefix] = json.dumps(cfg, sort_keys=True, default=str)
    return out


def config_diff(configs: list[dict[str, Any]], ignore: tuple[str, ...] = ()) -> dict[str, list[str | None]]:
    """The dotted keys whose values differ between ``configs``: key -> value per config (None: absent)."""
    flats = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    return {k: [f.get(k) for f in flats] for k in keys
            if k not in ignore and len({f.get(k) for f in flats}) > 1}


# -- statistics over seeds ------------------------------------------------------------------------------------
def interval(values: list[float | None], level: float = 0.95) -> dict[str, float | int | None]:
    """n, mean, sample std and the Student-t ``level`` interval mean +- t_{(1+level)/2, n-1} std / sqrt(n) of
    the finite ``values``; with one value there is no spread (std and the interval are None)."""
    xs = [float(v) for v in values if v is not None and v == v]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "lo": None, "hi": None}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "lo": None, "hi": None}
    from scipy.stats import t

    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}
