"""``fedloom sweep``: grid x seeds as separate processes, a failing run isolated and reported, resumable (done
runs skipped, interrupted ones resumed from their checkpoint, broken ones restarted), summaries with Student-t
intervals over seeds, bad input refused before anything is written."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.metrics.runs import RunData, interval
from fedloom.simulation import Simulation
from fedloom.sweep import Sweep, SweepError, split_values, write_outputs

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fedavg_digits.yaml"
SMALL = ["rounds=2", "data.num_clients=10", "cohort_size=4", "model.hidden=[32]", "client.epochs=1",
         "checkpoint_every=1"]

WRAPPER = """
import sys
if "seed=1" in sys.argv and "data.partition.alpha=0.1" in sys.argv:
    raise RuntimeError("injected failure")
from fedloom.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_split_values():
    assert split_values("0.1,1.0") == ["0.1", "1.0"]
    assert split_values("[64,64],[200]") == ["[64,64]", "[200]"]
    assert split_values("[64,64]") == ["[64,64]"]
    assert split_values("{name: quantize, bits: 2},topk") == ["{name: quantize, bits: 2}", "topk"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


def test_plan_grid_seeds_threads_and_dirs(tmp_path):
    sw = Sweep(DEMO, ["data.partition.alpha=0.1,1.0", "client.lr=0.1,0.05", "seed=0,1,2", *SMALL], tmp_path / "s",
               jobs=2, cores=4)
    jobs = sw.plan()
    assert len(jobs) == 12 and sw.threads == 2 and all(j.cfg.threads == 2 for j in jobs)
    assert jobs[0].run_dir == tmp_path / "s" / "alpha=0.1,lr=0.1" / "seed=0"
    assert {j.cfg.seed for j in jobs} == {0, 1, 2} and {j.cfg.client.lr for j in jobs} == {0.1, 0.05}
    assert all(j.cfg.rounds == 2 and not j.cfg.progress for j in jobs) and not (tmp_path / "s").exists()
    # a shared last key part is disambiguated by the full key
    two = Sweep(DEMO, ["client.lr=0.1,0.2", "server_optimizer.lr=1.0,0.5"], tmp_path / "t").plan()
    assert two[0].label == "client.lr=0.1,server_optimizer.lr=1.0"
    # a config file that sets threads keeps them (two sweeps side by side with threads: 1 each)
    own = tmp_path / "own.yaml"
    own.write_text(DEMO.read_text() + "threads: 1\n")
    one = Sweep(own, ["seed=0,1", *SMALL], tmp_path / "u", jobs=1, cores=4).plan()
    assert all(j.cfg.threads == 1 and not any(o.startswith("threads=") for o in j.overrides) for j in one)


@pytest.mark.parametrize("args, msg", [
    (["engine=warp,vectorized"], "engine.name: unknown engine 'warp'"),
    (["seed=0,x"], "seeds must be integers"),
    (["rounds"], "expected key=value"),
    (["rounds=2", "rounds=3"], "given twice"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, msg):
    out = tmp_path / "s"
    assert main(["sweep", str(DEMO), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedloom: ") and msg in err
    assert not out.exists()


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {r["point"]: r for r in csv.DictReader(f)}


def test_failure_isolated_then_resume_skips_resumes_and_restarts(tmp_path):
    out = tmp_path / "s"
    wrapper = tmp_path / "fake_fedloom.py"
    wrapper.write_text(WRAPPER)
    args = ["data.partition.alpha=0.1,1.0", "seed=0,1", *SMALL]
    sw = Sweep(DEMO, args, out, jobs=2, command=[sys.executable, str(wrapper)])
    sw.plan()
    sw.run()
    failed = [j for j in sw.runs if not j.ok]
    assert [j.name for j in failed] == ["alpha=0.1/seed=1"] and "RuntimeError: injected failure" in failed[0].error
    points, md = write_outputs(sw)
    rows = _summary(out)
    assert rows["alpha=0.1"]["n"] == "1" and "injected failure" in rows["alpha=0.1"]["errors"]
    assert rows["alpha=0.1"]["final_ci95_lo"] == ""  # n = 1: no interval
    assert rows["alpha=1.0"]["n"] == "2" and rows["alpha=1.0"]["failed"] == "0"
    finals = [RunData.load(j.run_dir).final() for j in sw.runs if j.label == "alpha=1.0"]
    st = interval(finals)
    assert float(rows["alpha=1.0"]["final_mean"]) == pytest.approx(st["mean"])
    assert float(rows["alpha=1.0"]["final_ci95_hi"]) == pytest.approx(st["hi"])
    assert "1/2 ok; seed=1 failed: RuntimeError: injected failure" in md
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Failed runs" in page and "injected failure" in page and "Summary per grid point" in page
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["axes"] == {"data.partition.alpha": ["0.1", "1.0"]} and spec["seeds"] == [0, 1]

    # now: alpha=1.0/seed=0 was interrupted after round 1 (checkpoint, no model.pt), alpha=1.0/seed=1 lost its
    # checkpoint mid-way, alpha=0.1/seed=0 is finished, alpha=0.1/seed=1 never ran
    by = {j.name: j for j in sw.runs}
    done_dir = by["alpha=0.1/seed=0"].run_dir
    done_mtime = (done_dir / "metrics.jsonl").stat().st_mtime_ns
    interrupted = by["alpha=1.0/seed=0"]
    for p in interrupted.run_dir.iterdir():
        p.unlink()
    sim = Simulation(interrupted.cfg, interrupted.run_dir)
    sim.round(1)
    sim.metrics.close()
    broken = by["alpha=1.0/seed=1"].run_dir
    (broken / "checkpoint.pt").unlink()
    (broken / "model.pt").unlink()
    again = Sweep(DEMO, args, out, jobs=2)
    status = {j.name: j.status for j in again.plan()}
    assert status == {"alpha=0.1/seed=0": "done", "alpha=0.1/seed=1": "new", "alpha=1.0/seed=0": "resume",
                      "alpha=1.0/seed=1": "restart"}
    again.run()
    assert all(j.ok for j in again.runs)
    assert (done_dir / "metrics.jsonl").stat().st_mtime_ns == done_mtime  # skipped
    for j in again.runs:
        assert [r["round"] for r in RunData.load(j.run_dir).records] == [1, 2] and (j.run_dir / "model.pt").is_file()
    assert "--resume" in (interrupted.log).read_text()
    write_outputs(again)
    assert {r["n"] for r in _summary(out).values()} == {"2"}
    # the same directory with another experiment is refused
    with pytest.raises(SweepError, match="another config .*rounds"):
        Sweep(DEMO, ["data.partition.alpha=0.1,1.0", "seed=0,1", "rounds=3", *SMALL[1:]], out).plan()


def test_cli_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["sweep", str(DEMO), "data.partition.alpha=0.1,1.0", "--jobs", "2", *SMALL, "--out", str(out),
               "--quiet", "--tensorboard"])
    cap = capsys.readouterr()
    assert rc == 0, cap
    assert cap.err == "" and "| alpha=0.1 | 1 |" in cap.out and "2/2 runs finished" in cap.out
    for name in ("summary.csv", "summary.md", "report.html", "sweep.json"):
        assert (out / name).is_file()
    assert list((out / "alpha=0.1" / "seed=0" / "tensorboard").glob("events.*"))
