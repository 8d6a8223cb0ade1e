"""Item 4: resume after damage. A torn last metrics line (the run died while writing it) is dropped with a warning;
an unreadable checkpoint gets one message naming the file and what to do (exit 2, no traceback); a metrics.jsonl
that lost rounds the checkpoint covers is refused instead of resuming into halved totals."""

import json
import logging

import pytest
import torch

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config


def _interrupted(tmp_path, rounds=3, done=2):
    """A run of ``rounds`` rounds stopped after round ``done`` (checkpointed every round), as a kill leaves it."""
    out = tmp_path / "run"
    sim = Simulation(validate_config(small_config(rounds=rounds, checkpoint_every=1)), out)
    for r in range(1, done + 1):
        sim.round(r)
    sim.metrics.close()
    return out


def _rounds(out):
    return [json.loads(ln)["round"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, cli, caplog):
    out = _interrupted(tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "test_accuracy": 0.4, "tra')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        rc, _, err = cli("run", "--resume", out, "--quiet")
    assert rc == 0, err
    assert any("torn last line" in m for m in caplog.messages)
    assert _rounds(out) == [1, 2, 3]


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "not_a_checkpoint"])
def test_unreadable_checkpoint_is_one_message(tmp_path, cli, damage):
    out = _interrupted(tmp_path)
    ck = out / "checkpoint.pt"
    data = ck.read_bytes()
    if damage == "empty":
        ck.write_bytes(b"")
    elif damage == "truncated":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        ck.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.uint8).numpy().tobytes())
    else:
        torch.save({"hello": 1}, ck)
    before = (out / "metrics.jsonl").read_text()
    rc, _, err = cli("run", "--resume", out)
    assert rc == 2
    assert str(ck) in err and "start the run again" in err and "config.yaml" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == before  # nothing was written


@pytest.mark.parametrize("how", ["deleted", "emptied", "rounds_lost"])
def test_metrics_missing_rounds_is_refused(tmp_path, cli, how):
    out = _interrupted(tmp_path, rounds=4, done=3)
    m = out / "metrics.jsonl"
    if how == "deleted":
        m.unlink()
    elif how == "emptied":
        m.write_text("")
    else:
        m.write_text(m.read_text().splitlines()[-1] + "\n")  # only round 3 left
    rc, _, err = cli("run", "--resume", out)
    assert rc == 2
    assert "metrics.jsonl" in err and "after round 3" in err and "Traceback" not in err
    assert not (out / "model.pt").exists()
