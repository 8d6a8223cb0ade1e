"""Headless Chromium for the report tests: the DOM after the page's scripts ran, and a screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL = "apt-get install chromium (as root; `make test` does it)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, width: int, height: int, *extra: str) -> subprocess.CompletedProcess:
    exe = chromium()
    assert exe is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *extra,
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    """Console lines reporting a JavaScript error (uncaught exceptions; console.error goes to data-fl-errors)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]


def dom(page: Path, width: int = 1400, height: int = 3000) -> tuple[str, list[dict], list[str], list[str]]:
    """The DOM after load, the charts' boxes as the page reports them, the errors the page caught, and the
    console's error lines."""
    p = _run(page, width, height, "--dump-dom")
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'data-fl-charts="([^"]*)"', p.stdout)
    e = re.search(r'data-fl-errors="([^"]*)"', p.stdout)
    charts = json.loads(html.unescape(m.group(1))) if m else []
    errors = json.loads(html.unescape(e.group(1))) if e else ["the page's load handler never ran"]
    return p.stdout, charts, errors, console_errors(p.stderr)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 3000) -> list[str]:
    """Screenshot of the page's top ``height`` pixels to ``out``; returns the console's error lines."""
    p = _run(page, width, height, f"--screenshot={out}")
    assert p.returncode == 0 and out.is_file(), p.stderr[-2000:]
    return console_errors(p.stderr)


def drawn(png: Path, box: dict) -> tuple[float, int]:
    """In ``box`` of the screenshot: the fraction of pixels that are not white, and how many pixels of its
    plotting area are coloured (saturated: lines, bands and bars, not the gray axes, grid and text)."""
    import numpy as np
    from PIL import Image

    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x0, y0 = int(box["x"]), int(box["y"])
    region = im[y0:y0 + int(box["h"]), x0:x0 + int(box["w"])]
    if region.size == 0:
        return 0.0, 0
    nonwhite = (region.min(axis=2) < 245).mean()
    h = region.shape[0]
    plot = region[int(0.12 * h):int(0.75 * h)]  # the plotting area: below the title, above the legend
    coloured = int(((plot.max(axis=2) - plot.min(axis=2)) > 60).sum())
    return float(nonwhite), coloured
