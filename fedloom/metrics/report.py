"""Plots for a run directory: accuracy vs round and accuracy vs cumulative bytes (up + down)."""

from __future__ import annotations

from pathlib import Path

from fedloom.metrics.history import read_metrics


def _series(records):
    rounds, acc, cum_bytes, cum_up = [], [], [], []
    total = up = 0
    for r in records:
        total += (r.get("bytes_up") or 0) + (r.get("bytes_down") or 0)
        up += r.get("bytes_up") or 0
        if r.get("test_accuracy") is not None:
            rounds.append(r["round"])
            acc.append(r["test_accuracy"])
            cum_bytes.append(total)
            cum_up.append(up)
    return rounds, acc, cum_bytes, cum_up


def make_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Draw the plots for one or more runs (overlaid); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    fig1, ax1 = plt.subplots(figsize=(6, 4))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    for d in run_dirs:
        rounds, acc, cb, _ = _series(read_metrics(d))
        label = d.name
        ax1.plot(rounds, acc, marker=".", label=label)
        ax2.plot([b / 1e6 for b in cb], acc, marker=".", label=label)
    ax1.set(xlabel="round", ylabel="test accuracy", title="accuracy vs round")
    ax2.set(xlabel="cumulative MB on the wire (up + down)", ylabel="test accuracy", title="accuracy vs bytes")
    paths = []
    for fig, ax, name in ((fig1, ax1, "accuracy_vs_round.png"), (fig2, ax2, "accuracy_vs_bytes.png")):
        ax.grid(alpha=0.3)
        if len(run_dirs) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths
