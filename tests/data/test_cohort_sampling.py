"""The default cohort sampler costs O(cohort), not O(population) (issue 16), with exactly torch.randperm's cohorts."""

import numpy as np
import pytest
import torch

from fedloom.rng import _randperm_replay_ok, _replay, derive_seed, randperm_prefix, torch_generator
from fedloom.system import CohortPlanner, SystemConfig


@pytest.mark.parametrize("n, m", [(1, 1), (2, 2), (3, 3), (10, 4), (1000, 1000), (70_000, 1000), (1_000_000, 100)])
def test_prefix_is_bit_identical_to_randperm(n, m):
    assert _randperm_replay_ok()
    for seed in range(3):
        want = torch.randperm(n, generator=torch_generator(seed, "cohort", 5))[:m].tolist()
        assert _replay(n, m, derive_seed(seed, "cohort", 5)) == want  # the O(m) path itself
        assert randperm_prefix(n, m, seed, "cohort", 5) == want  # whichever path it picks


def test_sampler_properties_no_duplicates_deterministic_and_uniform():
    n, m, rounds = 100_000, 200, 400
    counts = np.zeros(n, np.int64)
    for r in range(rounds):
        c = randperm_prefix(n, m, 0, "cohort", r)
        assert len(set(c)) == m and 0 <= min(c) and max(c) < n  # without replacement, in range
        counts[c] += 1
    assert randperm_prefix(n, m, 0, "cohort", 7) == randperm_prefix(n, m, 0, "cohort", 7)  # seeded
    assert randperm_prefix(n, m, 1, "cohort", 7) != randperm_prefix(n, m, 0, "cohort", 7)
    # inclusion frequency ~ m / n for every part of the population (deciles: 8,000 expected draws each)
    dec = counts.reshape(10, -1).sum(1)
    assert np.all(np.abs(dec - m * rounds / 10) < 5 * np.sqrt(m * rounds / 10))


def test_default_planner_cohorts_unchanged_at_a_million_clients():
    n, m = 1_000_000, 1000
    pl = CohortPlanner(SystemConfig(), torch.ones(n, dtype=torch.int64), cohort_size=m, epochs=1, seed=3)
    for rnd in (1, 2):
        g = torch_generator(3, "cohort", rnd)
        assert pl.plan(rnd, 0).sampled == sorted(torch.randperm(n, generator=g)[:m].tolist())
