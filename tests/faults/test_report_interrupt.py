"""Item 9: ``fedloom report`` on damaged or empty metrics and bad ``--out`` gives one clear message (exit 2); runs
of the same name are told apart in the legend; Ctrl-C prints the command that resumes the run, not a traceback."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.axes

from fedloom.config import validate_config
from fedloom.metrics.report import make_report
from fedloom.simulation import Simulation
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]


def _run(out, rounds=1):
    Simulation(validate_config(small_config(rounds=rounds)), out).run()
    return out


def test_empty_metrics_is_an_error_not_a_blank_plot(tmp_path, cli):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("")
    rc, _, err = cli("report", d)
    assert rc == 2 and "no rounds recorded" in err
    assert not list(d.glob("*.png"))


def test_damaged_metrics_line_is_named(tmp_path, cli):
    d = _run(tmp_path / "run", rounds=2)
    lines = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text(lines[0][:20] + "\n" + lines[1] + "\n")
    rc, _, err = cli("report", d)
    assert rc == 2 and "metrics.jsonl, line 1" in err and "Traceback" not in err


def test_torn_last_line_is_dropped(tmp_path, cli):
    d = _run(tmp_path / "run", rounds=2)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "te')
    rc, out, err = cli("report", d)
    assert rc == 0, err
    assert "accuracy_vs_round.png" in out


def test_report_out_is_a_file(tmp_path, cli):
    d = _run(tmp_path / "run")
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = cli("report", d, "--out", f)
    assert rc == 2 and "is a file" in err and f.read_text() == "x"


def test_runs_of_the_same_name_are_told_apart(tmp_path, monkeypatch):
    from fedloom.metrics.report import run_labels

    a, b = _run(tmp_path / "a" / "run"), _run(tmp_path / "b" / "run")
    assert run_labels([a, b]) == ["a/run", "b/run"]
    assert run_labels([a, tmp_path / "b"]) == ["run", "b"]
    labels = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *x, **k: (labels.append(k.get("label")), real(self, *x, **k))[1])
    make_report([a, b], tmp_path / "plots")
    assert set(labels) == {"a/run", "b/run"}


def test_ctrl_c_prints_the_resume_command(tmp_path, config_file, cli, monkeypatch):
    out = tmp_path / "run"
    real = Simulation.round

    def round_(self, rnd):
        if rnd == 2:
            raise KeyboardInterrupt
        return real(self, rnd)

    monkeypatch.setattr(Simulation, "round", round_)
    rc, _, err = cli("run", config_file(rounds=3, checkpoint_every=1), "--out", out)
    assert rc == 130
    assert f"resume with: fedloom run --resume {out}" in err and "Traceback" not in err
    monkeypatch.undo()
    rc, _, err = cli("run", "--resume", out, "--quiet")
    assert rc == 0, err


def test_ctrl_c_before_the_first_checkpoint_says_so(tmp_path, config_file, cli, monkeypatch):
    monkeypatch.setattr(Simulation, "round", lambda self, rnd: (_ for _ in ()).throw(KeyboardInterrupt))
    rc, _, err = cli("run", config_file(rounds=3), "--out", tmp_path / "run")
    assert rc == 130 and "nothing to resume" in err and "Traceback" not in err


def test_sigint_to_a_real_run(tmp_path, config_file):
    """The signal itself, to a `fedloom run` process: a short message and exit status 130."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "fedloom.cli", "run", str(config_file(rounds=500, checkpoint_every=1)),
                          "--out", str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert f"resume with: fedloom run --resume {out}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
