"""One self-contained HTML report for one run or several overlaid (``fedloom report RUN_DIR... --html OUT.html``)
and for a sweep (groups of seeds drawn as mean +- 95% interval bands).

Everything is in the one file: Plotly's bundled JavaScript is inlined, so it opens from disk with no network.
Per kind of run (classification, regression, reinforcement learning: never mixed on one axis) it draws the
headline metric and the losses vs round, vs cumulative megabytes (up, down, total) and vs wall time; DP epsilon
over rounds when recorded; RL returns on the clients' and on held-out dynamics; FD per-device accuracy (mean and
min-max); the clients' participation; a per-round table (sampled, reported, dropped and rejected with reasons,
bytes, seconds). Then the config diff between the compared runs and their environments.

After the page has loaded, ``<body data-fl-charts=...>`` lists each chart's box and how many SVG layers and
traces it drew, and ``data-fl-errors`` the JavaScript errors caught: what the browser test reads.
"""

from __future__ import annotations

import html
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.atomic import write_text_atomic
from fedloom.metrics.runs import RunData, config_diff, interval, kind_of, label_of

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]

ENV_KEYS = ("fedloom", "torch", "python", "platform", "cpu", "cores", "torch_threads", "cuda", "git_commit",
            "git_dirty", "date")


@dataclass
class Group:
    """What one legend entry stands for: one run, or a sweep's grid point (its seeds, drawn as a band)."""

    label: str
    runs: list[RunData]
    color: str = PALETTE[0]

    @property
    def headline(self) -> str:
        return self.runs[0].headline


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    return f"rgba({int(c[0:2], 16)}, {int(c[2:4], 16)}, {int(c[4:6], 16)}, {alpha})"


def _x(run: RunData, x: str) -> list[float]:
    if x == "round":
        return [float(r) for r in run.rounds]
    if x == "wall":
        return run.wall()
    return run.cum_mb(x.removeprefix("mb_"))


def _aggregate(group: Group, key: str, x: str) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Per round over the group's runs: mean x, mean y and the 95% interval of y (equal to the mean where a
    round has fewer than two values); and the largest number of runs behind a point."""
    per: dict[int, list[tuple[float, float]]] = {}
    for run in group.runs:
        for rnd, xv, yv in zip(run.rounds, _x(run, x), run.series(key)):
            if yv == yv:
                per.setdefault(rnd, []).append((xv, yv))
    xs, ys, lo, hi, n = [], [], [], [], 0
    for rnd in sorted(per):
        pts = per[rnd]
        st = interval([p[1] for p in pts])
        m = float(st["mean"])  # type: ignore[arg-type]
        xs.append(sum(p[0] for p in pts) / len(pts))
        ys.append(m)
        lo.append(float(st["lo"]) if st["lo"] is not None else m)
        hi.append(float(st["hi"]) if st["hi"] is not None else m)
        n = max(n, len(pts))
    return xs, ys, lo, hi, n


def _line_traces(group: Group, key: str, x: str, *, dash: str = "solid", suffix: str = "", legend: bool = True,
                 band: tuple[str, str] | None = None) -> list[Any]:
    """The mean line of ``key`` vs ``x`` for ``group``, with its 95% interval band when it has several runs;
    ``band=(low_key, high_key)`` draws that range instead (e.g. FD's min-max over devices)."""
    import plotly.graph_objects as go

    xs, ys, lo, hi, n = _aggregate(group, key, x)
    if not xs:
        return []
    if band is not None:
        _, lo, _, _, _ = _aggregate(group, band[0], x)
        _, hi, _, _, _ = _aggregate(group, band[1], x)
    name = group.label + suffix
    traces = []
    if (band is not None and lo and hi) or n > 1:
        what = "min-max" if band is not None else f"95% interval, n={n}"
        traces.append(go.Scatter(x=xs, y=hi, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip",
                                 legendgroup=name))
        traces.append(go.Scatter(x=xs, y=lo, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=_rgba(group.color, 0.18), name=f"{name} ({what})", showlegend=False,
                                 hoverinfo="skip", legendgroup=name))
    traces.append(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(xs) <= 60 else "lines", name=name,
                             legendgroup=name, showlegend=legend,
                             line={"color": group.color, "dash": dash, "width": 2}, marker={"size": 4}))
    return traces


def _layout(fig: Any, title: str, xlabel: str, ylabel: str, height: int = 380) -> Any:
    fig.update_layout(template="plotly_white", title={"text": title, "x": 0.01, "font": {"size": 15}}, height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": -0.22},
                      hovermode="x unified")
    fig.update_xaxes(title_text=xlabel, showline=True, linecolor="#888")
    fig.update_yaxes(title_text=ylabel, showline=True, linecolor="#888")
    return fig


def _metric_fig(groups: list[Group], key: str, x: str, title: str, xlabel: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for g in groups:
        fig.add_traces(_line_traces(g, key, x))
    return _layout(fig, title, xlabel, label_of(key))


def _bytes_fig(groups: list[Group], key: str) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("uplink (clients to server)", "downlink (server to clients)", "total"))
    for col, x in enumerate(("mb_up", "mb_down", "mb_total"), start=1):
        for g in groups:
            for t in _line_traces(g, key, x, legend=col == 1):
                fig.add_trace(t, row=1, col=col)
    _layout(fig, f"{label_of(key)} vs cumulative MB on the wire", "", "")
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="cumulative MB", row=1, col=col)
    fig.update_yaxes(title_text=label_of(key), row=1, col=1)
    return fig


def _loss_fig(groups: list[Group]) -> Any | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for g in groups:
        if any(r.has("test_loss") for r in g.runs):
            fig.add_traces(_line_traces(g, "test_loss", "round", suffix=" test"))
        if any(r.has("train_loss") for r in g.runs):
            fig.add_traces(_line_traces(g, "train_loss", "round", dash="dot", suffix=" train"))
    if not fig.data:
        return None
    return _layout(fig, "loss vs round (solid: test, dotted: train, sample-weighted over clients)", "round", "loss")


def _returns_fig(groups: list[Group]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for g in groups:
        fig.add_traces(_line_traces(g, "return_mean", "round", suffix=" clients"))
        fig.add_traces(_line_traces(g, "return_heldout_mean", "round", dash="dash", suffix=" held-out"))
    return _layout(fig, "mean return: clients' dynamics (solid) vs held-out dynamics (dashed)", "round", "return")


def _last_returns_fig(groups: list[Group]) -> Any | None:
    """Each environment's return at the last evaluated round (client dynamics vs held-out dynamics)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for g in groups:
        for side, key in (("clients", "return_clients"), ("held-out", "return_heldout")):
            vals: list[float] = []
            for run in g.runs:
                last = next((r[key] for r in reversed(run.records) if isinstance(r.get(key), list)), None)
                vals += [float(v) for v in last or [] if v is not None]
            if vals:
                fig.add_trace(go.Box(y=vals, x=[side] * len(vals), name=g.label, boxpoints="all", jitter=0.4,
                                     marker={"color": g.color, "size": 5}, line={"color": g.color},
                                     legendgroup=g.label, showlegend=side == "clients", offsetgroup=g.label))
    if not fig.data:
        return None
    fig.update_layout(boxmode="group")
    return _layout(fig, "return per environment at the last evaluation", "dynamics", "return")


def _participation_fig(groups: list[Group]) -> Any | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    single = len(groups) == 1 and len(groups[0].runs) == 1
    for g in groups:
        n = max([int((r.config.get("data") or {}).get("num_clients") or 0) for r in g.runs]
                + [max(rec.get("sampled_ids") or [-1]) + 1 for r in g.runs for rec in r.records])
        if n <= 0:
            continue
        for key, what, alpha in (("sampled_ids", "sampled", 0.35), ("reported_ids", "reported", 1.0)):
            if key == "sampled_ids" and not single:
                continue
            counts = [0.0] * n
            for run in g.runs:
                for rec in run.records:
                    for c in rec.get(key) or []:
                        counts[int(c)] += 1 / len(g.runs)
            fig.add_trace(go.Bar(x=list(range(n)), y=counts, name=f"{g.label} {what}" if single else g.label,
                                 marker={"color": _rgba(g.color, alpha)}))
    if not fig.data:
        return None
    fig.update_layout(barmode="overlay" if single else "group", bargap=0.15)
    what = ("rounds sampled and reported" if single else "rounds reported"
            + (" (mean over seeds)" if any(len(g.runs) > 1 for g in groups) else ""))
    return _layout(fig, f"client participation: {what} per client", "client id", "rounds")


# -- HTML pieces ----------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _reasons(items: list[dict[str, Any]]) -> str:
    if not items:
        return "0"
    by = Counter(str(i.get("reason", "?")) for i in items)
    detail = "; ".join(f"client {i.get('client')}: {i.get('reason')}" for i in items)
    summary = ", ".join(f"{n} {html.escape(r)}" for r, n in by.most_common())
    return f'<span title="{html.escape(detail)}">{len(items)} ({summary})</span>'


def round_table(run: RunData) -> str:
    """The per-round table of one run."""
    head = run.headline
    eps = run.has("epsilon")
    cols = ["round", html.escape(label_of(head)), "test loss", "train loss", "sampled", "reported", "dropped",
            "rejected", "MB up", "MB down", "seconds"] + (["epsilon"] if eps else [])
    rows = []
    for r in run.records:
        row = [str(r.get("round")), _fmt(r.get(head)), _fmt(r.get("test_loss")), _fmt(r.get("train_loss")),
               str(len(r.get("sampled_ids") or [])) if "sampled_ids" in r else _fmt(r.get("clients")),
               _fmt(r.get("reported")), _reasons(r.get("dropped") or []), _reasons(r.get("rejected") or []),
               _fmt((r.get("bytes_up") or 0) / 1e6, 3), _fmt((r.get("bytes_down") or 0) / 1e6, 3),
               _fmt(r.get("seconds"), 3)]
        if eps:
            row.append(_fmt(r.get("epsilon"), 3))
        rows.append(row)
    return _table(cols, rows, "rounds")


class _Page:
    """Collects the charts (each a div drawn by Plotly) and the HTML around them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0

    def add(self, s: str) -> None:
        self.parts.append(s)

    def chart(self, fig: Any, wide: bool = False) -> None:
        import plotly.io as pio

        if fig is None:
            return
        self.n += 1
        cid = f"fl-chart-{self.n}"
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"{cid}-plot",
                          config={"displaylogo": False, "responsive": True})
        title = html.escape(str(fig.layout.title.text or ""))
        self.add(f'<div class="fl-chart{" wide" if wide else ""}" id="{cid}" data-title="{title}">{div}</div>')


def _kind_section(page: _Page, kind: str, groups: list[Group]) -> None:
    head = groups[0].headline
    page.add(f'<h2>{html.escape(kind.capitalize())} runs: {html.escape(label_of(head))}</h2><div class="grid">')
    page.chart(_metric_fig(groups, head, "round", f"{label_of(head)} vs round", "round"))
    page.chart(_loss_fig(groups))
    page.chart(_bytes_fig(groups, head), wide=True)
    page.chart(_metric_fig(groups, head, "wall", f"{label_of(head)} vs wall time (cumulative round seconds)",
                           "seconds"))
    runs = [r for g in groups for r in g.runs]
    if any(r.has("return_mean") or r.has("return_heldout_mean") for r in runs):
        page.chart(_returns_fig(groups))
        page.chart(_last_returns_fig(groups))
    if any(r.has("test_accuracy_min") for r in runs):
        import plotly.graph_objects as go

        fig = go.Figure()
        for g in groups:
            if any(r.has("test_accuracy_min") for r in g.runs):
                fig.add_traces(_line_traces(g, "test_accuracy", "round",
                                            band=("test_accuracy_min", "test_accuracy_max")))
        page.chart(_layout(fig, "FD: per-device test accuracy (mean, band: worst to best device)", "round",
                           "test accuracy"))
    if any(r.has("epsilon") for r in runs):
        page.chart(_metric_fig(groups, "epsilon", "round", "DP: epsilon spent vs round", "round"))
    page.chart(_participation_fig(groups))
    page.add("</div>")


def _runs_table(groups: list[Group]) -> str:
    rows = []
    for g in groups:
        for r in g.runs:
            head = r.headline
            rows.append([f'<span class="swatch" style="background:{g.color}"></span>{html.escape(g.label)}',
                         html.escape(r.label) if r.label != g.label else "", f"<code>{html.escape(str(r.path))}</code>",
                         html.escape(r.kind), f"{len(r.records)}",
                         f"{_fmt(r.final())} ({html.escape(label_of(head))})", _fmt(r.best()),
                         _fmt(r.total_mb(), 3), _fmt(r.wall()[-1] if r.records else None, 3)])
    return _table(["", "run", "directory", "kind", "rounds", "final", "best", "total MB", "round seconds"], rows)


def _diff_section(groups: list[Group]) -> str:
    reps = [g.runs[0] for g in groups]
    if len(reps) == 1:
        return ""
    ignore = ("seed",) if any(len(g.runs) > 1 for g in groups) else ()
    diff = config_diff([r.config for r in reps], ignore=ignore)
    if not diff:
        return "<h2>Config diff</h2><p>The compared runs have identical configs.</p>"
    rows = [[f"<code>{html.escape(k)}</code>"] + [html.escape(v) if v is not None else "<i>absent</i>" for v in vals]
            for k, vals in diff.items()]
    note = " (seeds within a grid point not shown)" if ignore else ""
    return (f"<h2>Config diff</h2><p>Keys whose values differ between the compared runs{note}; all others are equal."
            "</p>" + _table(["key"] + [html.escape(g.label) for g in groups], rows))


def _env_section(groups: list[Group]) -> str:
    reps = [(g.label if len(g.runs) == 1 else f"{g.label} ({g.runs[0].label})", g.runs[0]) for g in groups][:16]
    rows = []
    for k in ENV_KEYS:
        vals = [_fmt((r.environment or {}).get(k)) for _, r in reps]
        rows.append([k] + vals)
    rows.append(["resumed"] + [str(len((r.environment or {}).get("resumed", []))) + " time(s)" for _, r in reps])
    missing = [lab for lab, r in reps if r.environment is None]
    note = (f"<p>No environment.json in: {html.escape(', '.join(missing))} (runs made before it was recorded).</p>"
            if missing else "")
    from fedloom.metrics.environment import environment

    now = environment()
    gen = ", ".join(f"{k} {html.escape(str(now[k]))}" for k in ("fedloom", "torch", "python", "git_commit", "date"))
    return ("<h2>Environment</h2><p>Where each run ran (recorded when it started)." + (" One run per grid point shown."
            if any(len(g.runs) > 1 for g in groups) else "") + "</p>" + note
            + _table(["", *[html.escape(lab) for lab, _ in reps]], rows) + f"<p>Report generated with {gen}.</p>")


def _tables_section(groups: list[Group]) -> str:
    out = ["<h2>Per-round tables</h2>"]
    runs = [r for g in groups for r in g.runs]
    for i, r in enumerate(runs):
        open_ = " open" if len(runs) == 1 else ""
        out.append(f"<details{open_}><summary>{html.escape(r.label)} ({len(r.records)} rounds; "
                   f"<code>{html.escape(str(r.path))}</code>)</summary>{round_table(r)}</details>")
        if i >= 200:
            out.append(f"<p>... {len(runs) - i - 1} more runs not shown.</p>")
            break
    return "".join(out)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 12px} .notice{background:#fff4d6;border:1px solid #e5c76b;padding:8px 12px;margin:12px 0}
.error{background:#fde2e1;border:1px solid #e08a85;padding:8px 12px;margin:12px 0}
.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}
.fl-chart{border:1px solid #eee;min-height:380px} .fl-chart.wide{grid-column:1 / -1}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left} code{font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
details{margin:4px 0} summary{cursor:pointer}
"""

_ERRORS_JS = ("window.__flErrors=[];window.addEventListener('error',function(e){window.__flErrors.push(String("
              "e.message||e))});(function(){var ce=console.error;console.error=function(){window.__flErrors.push("
              "'console.error: '+Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments)}})();")
_STATUS_JS = """
window.addEventListener('load', function () {
  var charts = Array.prototype.map.call(document.querySelectorAll('.fl-chart'), function (d) {
    var r = d.getBoundingClientRect();
    return {id: d.id, title: d.getAttribute('data-title'), x: r.left + window.scrollX, y: r.top + window.scrollY,
            w: r.width, h: r.height, svg: d.querySelectorAll('.main-svg').length,
            traces: d.querySelectorAll('.trace').length};
  });
  document.body.setAttribute('data-fl-charts', JSON.stringify(charts));
  document.body.setAttribute('data-fl-errors', JSON.stringify(window.__flErrors));
});
"""


def render(groups: list[Group], title: str, *, intro: str = "", extra: str = "", tables: bool = True) -> str:
    """The report's HTML for ``groups`` (each a run or a grid point's seeds), one section per kind of run."""
    import plotly.offline

    for i, g in enumerate(groups):
        g.color = PALETTE[i % len(PALETTE)]
    kinds: dict[str, list[Group]] = {}
    for g in groups:
        kinds.setdefault(g.runs[0].kind, []).append(g)
    page = _Page()
    page.add(f"<h1>{html.escape(title)}</h1><p class='sub'>fedloom report, {html.escape(time.strftime('%Y-%m-%d %H:%M'))}"
             f"; {sum(len(g.runs) for g in groups)} run(s)</p>")
    if len(kinds) > 1:
        parts = "; ".join(f"{html.escape(k)}: {html.escape(', '.join(g.label for g in gs))}" for k, gs in kinds.items())
        page.add(f'<div class="notice">These runs are of different kinds ({parts}). Each kind has its own section '
                 "below with its own headline metric; they are never drawn on one axis.</div>")
    page.add(intro)
    page.add("<h2>Runs</h2>" + _runs_table(groups))
    page.add(extra)
    for kind, gs in kinds.items():
        _kind_section(page, kind, gs)
    if tables:
        page.add(_tables_section(groups))
    page.add(_diff_section(groups))
    page.add(_env_section(groups))
    body = "\n".join(page.parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{_ERRORS_JS}</script>\n"
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>\n</head>\n"
            f"<body>\n{body}\n<script>{_STATUS_JS}</script>\n</body></html>\n")


def write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def html_report(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` (overlaid; each kind in its own section) to ``out``."""
    runs = [RunData.load(d) for d in run_dirs]
    labels = [r.label for r in runs]
    for r in runs:  # two runs named alike (a/seed=0, b/seed=0): label them by their last two path parts
        if labels.count(r.label) > 1:
            r.label = "/".join(r.path.resolve().parts[-2:])
    groups = [Group(r.label, [r]) for r in runs]
    title = title or ("fedloom run " + runs[0].label if len(runs) == 1 else f"fedloom: {len(runs)} runs compared")
    return write(out, render(groups, title))


def kinds_of(run_dirs: list[str | Path]) -> dict[str, list[str]]:
    """kind -> run directories (for messages about mixed kinds)."""
    out: dict[str, list[str]] = {}
    for d in run_dirs:
        r = RunData.load(d)
        out.setdefault(kind_of(r.headline), []).append(str(d))
    return out


__all__ = ["Group", "html_report", "kinds_of", "render", "round_table", "write"]
