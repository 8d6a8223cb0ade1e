"""Item 2: under secure aggregation a bad client is rejected on its own and the run goes on; the key authority's
refusal (fewer contributors than ``min_contributors``) ends the round cleanly: recorded, model kept."""

from dataclasses import replace

import torch

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config

SEC = {"key_bits": 512, "value_bits": 16, "clip": 1.0}


def _sim(tmp_path=None, **ov):
    cfg = validate_config(small_config(rounds=2, engine="sequential", secure_aggregation=SEC, **ov))
    return Simulation(cfg, tmp_path)


def test_non_finite_update_is_rejected_per_client_not_the_run(tmp_path):
    # half the clients send NaN updates, which cannot be quantized for encryption (CryptoError on the client)
    sim = _sim(tmp_path / "run", attack={"name": "scale", "fraction": 0.5, "factor": float("nan")})
    recs = sim.run()
    attackers = sim.built.attack.attackers
    assert len(recs) == 2 and (tmp_path / "run" / "model.pt").is_file()
    seen = 0
    for r in recs:
        bad = {c for c in r["reported_ids"] + [x["client"] for x in r["rejected"]] if c in attackers}
        rejected = {x["client"]: x["reason"] for x in r["rejected"]}
        assert set(rejected) == bad, r["rejected"]
        assert all("failed on the client" in why and "NaN" in why for why in rejected.values())
        assert not r["dropped"]  # rejected with the reason, not "no reply"
        assert r["reported"] == r["clients"] - len(bad)
        seen += len(bad)
    assert seen > 0
    assert all(torch.isfinite(v).all() for v in sim.state.params.values())


def test_zero_weight_client_is_rejected_not_the_run():
    sim = _sim()
    plan = sim.server.planner.plan(1, 0)
    k = min(plan.reporting)
    engine = sim.built.clients.engine
    run = engine.run

    def claims_nothing(job):  # client k reports 0 samples: it cannot encrypt n_k * update with weight 0
        return [replace(r, num_samples=0) if r.client == k else r for r in run(job)]

    engine.run = claims_nothing
    rec = sim.round(1)
    assert [r["client"] for r in rec["rejected"]] == [k]
    assert rec["reported"] == len(plan.reporting) - 1


def test_authority_refusal_ends_the_round_cleanly(tmp_path):
    sim = _sim(tmp_path / "run", cohort_size=5, system={"dropout": 0.5},
               **{"secure_aggregation.min_contributors": 5})
    before = {k: v.clone() for k, v in sim.state.params.items()}
    recs = sim.run()
    assert len(recs) == 2 and all("secagg_refused" in r for r in recs)
    assert all("min_contributors=5" in r["secagg_refused"] for r in recs)
    assert all(torch.equal(before[k], v) for k, v in sim.state.params.items())  # no update applied: model kept
    assert (tmp_path / "run" / "model.pt").is_file()
