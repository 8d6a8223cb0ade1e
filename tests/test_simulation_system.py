"""Issue-9 features through the real round loop: dropouts, DP, robust aggregation, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[1]


def test_dropouts_recorded_and_round_completes():
    cfg = validate_config(small_config(rounds=4, cohort_size=4, system={"dropout": 0.4, "over_selection": 0.5}))
    recs = Simulation(cfg).run()
    for r in recs:
        assert len(r["sampled_ids"]) == 6
        dropped = {d["client"] for d in r["dropped"]}
        assert set(r["reported_ids"]) | dropped == set(r["sampled_ids"])
        assert r["reported"] == len(r["reported_ids"]) <= 4
    assert any(r["dropped"] for r in recs)
    # every sampled client received the model
    down = recs[0]["bytes_down"] / len(recs[0]["sampled_ids"])
    assert down == int(down)


def test_dp_epsilon_every_round_matches_library():
    from dp_accounting import dp_event, rdp

    cfg = validate_config(small_config(rounds=3, privacy={"clip": 0.5, "noise_multiplier": 1.2, "delta": 1e-5}))
    recs = Simulation(cfg).run()
    for r in recs:
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.PoissonSampledDpEvent(5 / 10, dp_event.GaussianDpEvent(1.2)), r["round"])
        assert r["epsilon"] == pytest.approx(acc.get_epsilon(1e-5))
    assert recs[0]["epsilon"] < recs[-1]["epsilon"]


def _acc(**ov):
    cfg = validate_config(small_config(rounds=8, cohort_size=10, **{"client.epochs": 2, "data.partition": "iid"}, **ov))
    return Simulation(cfg).run()[-1]["test_accuracy"]


def test_sign_flip_breaks_fedavg_but_not_median():
    clean = _acc()
    attack = {"name": "scale", "fraction": 0.2, "factor": -10.0}
    assert _acc(attack=attack, aggregator={"name": "mean", "norm_guard": None}) < clean - 0.3  # the plain mean fails
    assert _acc(attack=attack, aggregator="median") > clean - 0.05
    assert _acc(attack=attack, aggregator={"name": "krum", "f": 2}) > clean - 0.15


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fedloom.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_kill_and_resume_is_bit_identical(tmp_path):
    cfg = small_config(rounds=40, cohort_size=5, checkpoint_every=3, threads=1, name="killme",
                       **{"data.num_clients": 10, "model": {"name": "mlp", "hidden": [64]},
                          "server_optimizer": {"name": "momentum", "momentum": 0.9}})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = _run_cli([str(path), "run"][:0] + ["run", str(path), "--out", str(tmp_path / "ref")])
    assert ref.wait(300) == 0, ref.stderr.read()
    # the same run, killed with SIGKILL once it has recorded some rounds
    victim = _run_cli(["run", str(path), "--out", str(tmp_path / "v")])
    metrics = tmp_path / "v" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    done = len(metrics.read_text().splitlines())
    assert 8 <= done < 40, "the run must really have been interrupted"
    res = _run_cli(["run", "--resume", str(tmp_path / "v")])
    assert res.wait(300) == 0, res.stderr.read()
    a = torch.load(tmp_path / "ref" / "model.pt")
    b = torch.load(tmp_path / "v" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines()]
    assert rounds == list(range(1, 41))  # no duplicated or missing rounds
    ref_acc = [json.loads(x)["test_accuracy"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(x)["test_accuracy"] for x in metrics.read_text().splitlines()] == ref_acc


def test_resume_errors(tmp_path, capsys):
    from fedloom.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
