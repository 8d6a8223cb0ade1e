"""TensorBoard tracking: event files with the per-round scalars, read back with tensorboard's own reader;
a resumed run continues them without duplicated rounds; the CLI flag and its missing-package message."""

from __future__ import annotations

import json
import shutil

import pytest

from fedloom.cli import main
from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config

pytest.importorskip("tensorboard", reason="the tracking extra: pip install 'fedloom[tracking]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_event_files_hold_the_per_round_scalars(tmp_path):
    out = tmp_path / "tb"
    raw = small_config(rounds=3, tracking={"tensorboard": True}, privacy={"clip": 1.0, "noise_multiplier": 0.5})
    Simulation(validate_config(raw), out).run()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    got, recs = scalars(out), records(out)
    for key in ("test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down", "seconds", "reported",
                "epsilon"):
        assert [s for s, _ in got[key]] == [1, 2, 3], key
        assert [v for _, v in got[key]] == pytest.approx([r[key] for r in recs], rel=1e-6), key
    cum = 0
    for (step, v), r in zip(got["cum_bytes"], recs):
        cum += r["bytes_up"] + r["bytes_down"]
        assert step == r["round"] and v == pytest.approx(cum)
    assert got["cum_bytes_up"][-1][1] == pytest.approx(sum(r["bytes_up"] for r in recs))
    assert got["num_rejected"][-1][1] == 0
    assert "sampled_ids" not in got and "rejected" not in got  # lists are not scalars


def test_resumed_run_continues_its_event_file_without_duplicates(tmp_path):
    out = tmp_path / "tb"
    raw = small_config(rounds=4, checkpoint_every=2, tracking={"tensorboard": True})
    Simulation(validate_config(raw), out).run()
    full = scalars(out)
    # the same run, killed after round 3 (its last checkpoint is from round 2), then resumed
    ref = tmp_path / "ref"
    sim = Simulation(validate_config(raw), ref)
    sim.round(1)
    sim.round(2)  # checkpoint at 2
    sim.round(3)
    sim.metrics.close()
    sim.trackers.close()
    res = Simulation.resume(ref)
    res.run()
    got = scalars(ref)
    assert [s for s, _ in got["test_accuracy"]] == [1, 2, 3, 4]  # round 3 redone, not duplicated
    assert [v for _, v in got["test_accuracy"]] == pytest.approx([v for _, v in full["test_accuracy"]])
    assert [v for _, v in got["cum_bytes"]] == pytest.approx([v for _, v in full["cum_bytes"]])
    env = json.loads((ref / "environment.json").read_text())
    assert len(env["resumed"]) == 1


def test_cli_flag_quiet_and_missing_package(tmp_path, capsys, monkeypatch):
    demo = "examples/fedavg_digits.yaml"
    out = tmp_path / "r"
    args = ["run", demo, "rounds=2", "data.num_clients=10", "cohort_size=4", "threads=1", "--out", str(out)]
    assert main([*args, "--tensorboard", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "final test accuracy" in cap.out  # --quiet: no bar, no notes; the result stays
    assert [s for s, _ in scalars(out)["test_accuracy"]] == [1, 2]
    import fedloom.metrics.tensorboard as tb

    monkeypatch.setattr(tb, "available", lambda: False)
    shutil.rmtree(out)
    assert main([*args, "--tensorboard"]) == 1
    assert "pip install" in capsys.readouterr().err and not out.exists()
