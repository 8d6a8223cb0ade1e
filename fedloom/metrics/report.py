"""Plots for a run directory (PNG, for papers): the headline metric (test accuracy, or the algorithm's own, e.g.
an RL return) vs round and vs cumulative bytes (up + down). The interactive HTML report is
:mod:`fedloom.metrics.html`."""

from __future__ import annotations

from pathlib import Path

from fedloom.atomic import write_atomic
from fedloom.metrics.history import read_metrics


def headline_of(run_dir: Path, records: list[dict]) -> str:
    """The metric a run is judged by: test_accuracy when recorded, else (as ``Run.headline``) its algorithm's
    ``headline``, else its task's (``test_rmse`` for regression)."""
    if any(r.get("test_accuracy") is not None for r in records):
        return "test_accuracy"
    try:
        import yaml

        import fedloom.components  # noqa: F401
        from fedloom.registry import ALGORITHMS, TASKS

        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        alg, task = raw["algorithm"], raw.get("task") or "classification"
        head = getattr(ALGORITHMS.get(alg if isinstance(alg, str) else alg["name"]), "headline", None)
        if head is None:
            head = getattr(TASKS.get(task if isinstance(task, str) else task["name"]), "headline", None)
        return head or "test_accuracy"
    except (OSError, KeyError, TypeError, ValueError):
        return "test_accuracy"


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Legend labels: each run's directory name, extended by its parent directories (``a/run``, ``b/run``) as
    far as needed to tell runs of the same name apart."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    labels = []
    for i, p in enumerate(parts):
        n = 1
        while n < len(p) and any(q[-n:] == p[-n:] for j, q in enumerate(parts) if j != i and q != p):
            n += 1
        labels.append("/".join(p[-n:]))
    return labels


def _series(records, metric: str = "test_accuracy"):
    rounds, acc, cum_bytes, cum_up = [], [], [], []
    total = up = 0
    for r in records:
        total += (r.get("bytes_up") or 0) + (r.get("bytes_down") or 0)
        up += r.get("bytes_up") or 0
        if r.get(metric) is not None:
            rounds.append(r["round"])
            acc.append(r[metric])
            cum_bytes.append(total)
            cum_up.append(up)
    return rounds, acc, cum_bytes, cum_up


def make_report(run_dirs: list[str | Path], out_dir: str | Path | None = None, metric: str | None = None
                ) -> list[Path]:
    """Draw the plots for one or more runs (overlaid); returns the PNG paths. ``metric``: the y axis (default:
    each run's headline, see :func:`headline_of`; runs with different headlines, e.g. RL next to
    classification, get separate plots, never one axis)."""
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Path]] = {}
    for d in run_dirs:
        groups.setdefault(metric or headline_of(d, read_metrics(d)), []).append(d)
    paths: list[Path] = []
    for m, dirs in groups.items():
        paths += _plots(dirs, out, m)
    return paths


def _plots(run_dirs: list[Path], out: Path, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig1, ax1 = plt.subplots(figsize=(6, 4))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    for d, label in zip(run_dirs, run_labels(run_dirs)):
        rounds, acc, cb, _ = _series(read_metrics(d), metric)
        ax1.plot(rounds, acc, marker=".", label=label)
        ax2.plot([b / 1e6 for b in cb], acc, marker=".", label=label)
    label = "test accuracy" if metric == "test_accuracy" else metric.replace("_", " ")
    stem = "accuracy" if metric == "test_accuracy" else metric
    ax1.set(xlabel="round", ylabel=label, title=f"{label} vs round")
    ax2.set(xlabel="cumulative MB on the wire (up + down)", ylabel=label, title=f"{label} vs bytes")
    paths = []
    for fig, ax, name in ((fig1, ax1, f"{stem}_vs_round.png"), (fig2, ax2, f"{stem}_vs_bytes.png")):
        ax.grid(alpha=0.3)
        if len(run_dirs) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        write_atomic(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        paths.append(out / name)
    return paths
