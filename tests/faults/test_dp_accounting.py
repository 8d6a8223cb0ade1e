"""Item 8: the reported epsilon is never optimistic. Adaptive clipping needs a noised count (default cohort / 20,
Andrew et al.) and its cost is composed into the accountant; sampling that includes some clients more often than
q = m / N is accounted with the largest inclusion probability (over-selection, diurnal availability) or refused
(weighted sampling)."""

import math

import pytest
import torch
from dp_accounting import dp_event, rdp

from fedloom.config import ConfigError, validate_config
from fedloom.privacy import DPFedAvg, PrivacyConfig
from fedloom.simulation import Simulation
from tests.conftest import small_config


def _eps(q, z, rounds, delta=1e-5):
    acc = rdp.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


def test_adaptive_clipping_on_an_exact_count_is_refused():
    with pytest.raises(ConfigError, match="privacy.adaptive / privacy.count_noise_std"):
        validate_config(small_config(privacy={"adaptive": True, "count_noise_std": 0.0}))
    validate_config(small_config(privacy={"adaptive": True, "count_noise_std": 0.0, "mode": "local"}))  # post-processing


def test_adaptive_clipping_default_count_noise_and_its_cost_in_epsilon():
    cfg = validate_config(small_config(rounds=2, cohort_size=5, privacy={"adaptive": True, "noise_multiplier": 1.0}))
    recs = Simulation(cfg).run()
    sb = 5 / 20
    z_eff = (1.0**-2 + (2 * sb) ** -2) ** -0.5
    for r in recs:
        assert r["epsilon"] == pytest.approx(_eps(5 / 10, z_eff, r["round"]))
        assert r["epsilon"] > _eps(5 / 10, 1.0, r["round"])  # the fixed-clipping epsilon it used to report


def test_the_published_clip_norm_is_noised():
    """Two cohorts differing in one client: the next clip norms differ by noise, not only by that client."""
    cfg = PrivacyConfig(clip=1.0, noise_multiplier=1.0, adaptive=True)
    ups = [{"w": torch.full((4,), 0.1 * (i + 1))} for i in range(8)]
    clips = []
    for seed in (0, 1):
        dp = DPFedAvg(cfg, num_clients=100, cohort_size=8, seed=seed)
        dp.aggregate(1, ups)
        clips.append(dp.state["clip"])
    assert clips[0] != clips[1]  # the same cohort, another noise draw: the count is noised
    assert DPFedAvg(cfg, 100, 8, 0).count_noise_std == pytest.approx(0.4)
    assert math.isfinite(DPFedAvg(cfg, 100, 8, 0).epsilon(10))


def test_weighted_sampling_with_privacy_is_refused():
    with pytest.raises(ConfigError, match="privacy / system.sampling"):
        validate_config(small_config(privacy={}, system={"sampling": "weighted"}))


def test_over_selection_is_accounted_with_its_inclusion_probability():
    cfg = validate_config(small_config(rounds=2, cohort_size=4, privacy={"noise_multiplier": 1.0},
                                       system={"over_selection": 0.5}))
    sim = Simulation(cfg)
    assert sim.built.dp.q == pytest.approx(6 / 10)  # ceil(4 * 1.5) sampled of 10: a fast client is always kept
    recs = sim.run()
    assert recs[-1]["epsilon"] == pytest.approx(_eps(6 / 10, 1.0, 2))
    assert recs[-1]["epsilon"] > _eps(4 / 10, 1.0, 2)


def test_diurnal_availability_is_accounted_with_the_fewest_clients_on():
    cfg = validate_config(small_config(rounds=1, cohort_size=2, privacy={"noise_multiplier": 1.0},
                                       system={"availability": "diurnal", "period": 4, "on_fraction": 0.5}))
    sim = Simulation(cfg)
    planner = sim.built.planner
    fewest = min(len(planner.available(t)) for t in range(4) if len(planner.available(t)))
    assert sim.built.dp.q == pytest.approx(min(1.0, 2 / fewest)) and sim.built.dp.q > 2 / 10
