"""Item 1: a client's message is validated as a whole before any of it is used. Counts (the aggregation weight),
the train loss and the metadata reject that client like a NaN tensor does; a cohort that claims no samples at all
ends the round without an update (it used to divide by zero)."""

import math

import pytest
import torch

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config, tap
from tests.faults.conftest import rewrite_meta


def _sim(**ov):
    return Simulation(validate_config(small_config(rounds=1, **ov)))


def _one_round(change):
    sim = _sim()
    before = {k: v.clone() for k, v in sim.state.params.items()}
    tap(sim, rewrite_meta(change))
    rec = sim.round(1)
    return sim, before, rec


@pytest.mark.parametrize("field,value,words", [
    ("num_samples", 10**9, "exceeds"),  # far more than the client holds: would take over the mean
    ("num_samples", float("nan"), "num_samples"),
    ("num_samples", -5, "num_samples"),
    ("train_loss", float("nan"), "train_loss"),
    ("train_loss", float("inf"), "train_loss"),
    ("extra", {"score": [1.0, float("nan")]}, "meta.extra.score.1"),
])
def test_bad_count_loss_or_metadata_rejects_that_client_only(field, value, words):
    sim = _sim()
    plan = sim.server.planner.plan(1, 0)
    bad = min(plan.reporting)
    tap(sim, rewrite_meta(lambda k, t, m: (t, {**m, field: value} if k == bad else m)))
    rec = sim.round(1)
    assert [r["client"] for r in rec["rejected"]] == [bad]
    assert words in rec["rejected"][0]["reason"]
    assert rec["reported"] == len(plan.reporting) - 1
    assert bad not in rec["reported_ids"]
    assert rec["train_loss"] is not None and math.isfinite(rec["train_loss"])
    assert all(torch.isfinite(v).all() for v in sim.state.params.values())


def test_a_client_may_claim_up_to_its_own_data_size():
    sim = _sim()
    sizes = sim.data.client_sizes
    tap(sim, rewrite_meta(lambda k, t, m: (t, {**m, "num_samples": int(sizes[k])})))
    assert sim.round(1)["rejected"] == []


def test_all_zero_cohort_ends_the_round_without_an_update():
    sim, before, rec = _one_round(lambda k, t, m: (t, {**m, "num_samples": 0}))
    assert rec["reported"] == 0 and len(rec["rejected"]) == rec["clients"]
    assert all("0 samples" in r["reason"] for r in rec["rejected"])
    assert rec["train_loss"] is None
    assert all(torch.equal(before[k], v) for k, v in sim.state.params.items())  # the model is kept


def test_all_zero_cohort_run_completes(tmp_path):
    sim = Simulation(validate_config(small_config(rounds=2)), tmp_path / "run")
    tap(sim, rewrite_meta(lambda k, t, m: (t, {**m, "num_samples": 0})))
    recs = sim.run()
    assert [r["round"] for r in recs] == [1, 2] and (tmp_path / "run" / "model.pt").is_file()
