"""The HTML report in a real browser: headless Chromium loads it from disk (no network), every chart is drawn
(Plotly's SVG layers and traces exist, and the screenshot shows coloured pixels where the charts are), and no
JavaScript error reaches the console."""

from __future__ import annotations

import pytest

from fedloom.metrics.html import html_report
from tests.metrics import browser

pytestmark = pytest.mark.skipif(browser.chromium() is None,
                                reason=f"headless Chromium is not installed: {browser.INSTALL}")


def check_page(page, tmp_path, min_charts: int) -> list[dict]:
    _, charts, errors, console = browser.dom(page)
    assert errors == [] and console == [], (errors, console)
    assert len(charts) >= min_charts
    for c in charts:
        assert c["svg"] >= 1 and c["traces"] >= 1 and c["w"] > 300 and c["h"] > 250, c
    height = int(max(c["y"] + c["h"] for c in charts)) + 40
    shot = tmp_path / "shot.png"
    assert browser.screenshot(page, shot, height=height) == []
    for c in charts:
        nonwhite, coloured = browser.drawn(shot, c)
        assert nonwhite > 0.02 and coloured > 300, (c["title"], nonwhite, coloured)
    return charts


def test_run_report_draws_in_chromium(runs, tmp_path):
    page = html_report([runs["a"], runs["b"], runs["dp"], runs["rl"]], tmp_path / "report.html")
    charts = check_page(page, tmp_path, min_charts=10)
    titles = " | ".join(c["title"] for c in charts)
    for t in ("test accuracy vs round", "cumulative MB", "wall time", "epsilon", "client participation",
              "mean return", "return per environment"):
        assert t in titles, t


def test_a_blank_chart_is_detected(runs, tmp_path):
    """The check itself: the same page with Plotly's drawing call removed fails it."""
    page = html_report([runs["a"]], tmp_path / "report.html")
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace("Plotly.newPlot(", "(function(){})("),
                      encoding="utf-8")
    _, charts, errors, _ = browser.dom(broken)
    assert charts and all(c["svg"] == 0 for c in charts)
    shot = tmp_path / "blank.png"
    browser.screenshot(broken, shot, height=int(max(c["y"] + c["h"] for c in charts)) + 40)
    assert all(browser.drawn(shot, c)[1] < 100 for c in charts)
