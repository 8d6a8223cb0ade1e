"""The HTML run report: self-contained, every section present, kinds never mixed on one axis; the PNG report
keeps working and separates kinds too; the helpers' statistics."""

from __future__ import annotations

import json
import math
import re

import pytest
from scipy import stats

from fedloom.cli import main
from fedloom.metrics.html import html_report
from fedloom.metrics.report import make_report
from fedloom.metrics.runs import RunData, config_diff, interval


def _text(path) -> str:
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained_with_every_section(runs, tmp_path):
    out = html_report([runs["a"], runs["b"], runs["dp"]], tmp_path / "r.html")
    s = _text(out)
    assert not re.search(r"<script[^>]*\bsrc=", s) and not re.search(r"<link[^>]*\bhref=", s)  # nothing fetched
    assert "Plotly.newPlot" in s and len(s) > 1_000_000  # plotly.js itself is inlined
    for title in ("test accuracy vs round", "loss vs round", "vs cumulative MB on the wire", "uplink", "downlink",
                  "vs wall time", "client participation", "DP: epsilon spent vs round", "Per-round tables",
                  "Config diff", "Environment"):
        assert title in s, title
    assert "Reinforcement learning runs" not in s and "different kinds" not in s
    # the per-round table: dropped and rejected clients with their reasons
    recs = RunData.load(runs["b"]).records
    assert any(r["dropped"] for r in recs) and any(r["rejected"] for r in recs)
    assert "dropout" in s
    rej = next(x for r in recs for x in r["rejected"])
    assert f"client {rej['client']}: {rej['reason']}" in s.replace("&#x27;", "'")
    # the config diff names what differs (alpha, dropout, privacy) and not what is equal (rounds)
    diff = s[s.index("<h2>Config diff"):s.index("<h2>Environment")]
    for key in ("data.partition.alpha", "system.dropout", "privacy.noise_multiplier"):
        assert key in diff, key
    assert "<code>rounds</code>" not in diff
    # the environment recorded when each run started
    env = json.loads((runs["a"] / "environment.json").read_text())
    assert env["torch"] in s and (env["git_commit"] is None or env["git_commit"] in s)
    for k in ("fedloom", "torch", "python", "platform", "cpu", "git_commit", "date"):
        assert k in env


def test_mixed_kinds_are_separated_never_one_axis(runs, tmp_path, capsys):
    out = tmp_path / "mixed.html"
    assert main(["report", str(runs["a"]), str(runs["rl"]), "--html", str(out)]) == 0
    assert "different kinds" in capsys.readouterr().err
    s = _text(out)
    assert "These runs are of different kinds" in s
    cls, rl = s.index("<h2>Classification runs"), s.index("<h2>Reinforcement learning runs")
    end = s.index("<h2>Per-round tables")
    first, second = sorted([(cls, "a"), (rl, "rl")])
    first_sec, second_sec = s[first[0]:second[0]], s[second[0]:end]
    other = {"a": "rl", "rl": "a"}
    for sec, own in ((first_sec, first[1]), (second_sec, second[1])):
        assert f'"name":"{own}' in sec and f'"name":"{other[own]}' not in sec
    rl_sec = s[rl:end] if rl > cls else s[rl:cls]
    for title in ("mean return: clients", "held-out", "return per environment at the last evaluation"):
        assert title in rl_sec
    assert not (runs["a"] / "return_mean_vs_round.png").exists()  # --html without --out writes no PNGs


def test_png_report_kept_and_split_by_kind(runs, tmp_path):
    paths = make_report([runs["a"], runs["dp"], runs["rl"]], tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_vs_bytes.png", "accuracy_vs_round.png", "return_mean_vs_bytes.png",
                     "return_mean_vs_round.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert main(["report", str(runs["a"]), "--out", str(tmp_path / "png"), "--html", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "png" / "accuracy_vs_round.png").exists() and (tmp_path / "x.html").exists()


def test_rundata_series(runs):
    r = RunData.load(runs["a"])
    assert r.headline == "test_accuracy" and r.kind == "classification"
    up = [x["bytes_up"] for x in r.records]
    assert r.cum_mb("up")[-1] == pytest.approx(sum(up) / 1e6)
    assert r.total_mb() == pytest.approx(sum(x["bytes_up"] + x["bytes_down"] for x in r.records) / 1e6)
    assert r.final() == r.records[-1]["test_accuracy"] and r.best() == max(x["test_accuracy"] for x in r.records)
    assert r.rounds_to(-1.0) == 1 and r.rounds_to(2.0) is None
    rl = RunData.load(runs["rl"])
    assert rl.headline == "return_mean" and rl.kind == "reinforcement learning"


def test_interval_matches_student_t():
    xs = [0.9, 0.92, 0.87]
    st = interval(xs)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 3, scale=stats.sem(xs))
    assert st["n"] == 3 and st["lo"] == pytest.approx(lo) and st["hi"] == pytest.approx(hi)
    assert st["std"] == pytest.approx(stats.tstd(xs))
    assert interval([0.5]) == {"n": 1, "mean": 0.5, "std": None, "lo": None, "hi": None}
    assert interval([None, math.nan])["n"] == 0


def test_config_diff():
    d = config_diff([{"a": 1, "b": {"c": 2, "d": [1, 2]}}, {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": True}])
    assert d == {"b.c": ["2", "3"], "e": [None, "true"]}


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--html", str(tmp_path / "x.html")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
