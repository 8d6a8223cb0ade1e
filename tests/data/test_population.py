"""The lazy generated population: client k comes from (seed, k) alone, and only sampled clients are generated."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.config import validate_config
from fedloom.data.base import DataError
from fedloom.data.federated import build_federated
from fedloom.data.population import PopulationParams, SyntheticPopulation
from fedloom.simulation import Simulation

ROOT = Path(__file__).resolve().parents[2]


def test_million_clients_build_in_well_under_a_second_and_generate_nothing():
    t0 = time.perf_counter()
    data = build_federated("synthetic_population", {}, 10**6, "natural", None, 0)
    took = time.perf_counter() - t0
    assert took < 0.5, f"building a 10^6-client population took {took:.2f} s"
    assert data.num_clients == 10**6
    sizes = data.client_sizes
    assert sizes.dtype == torch.int64 and sizes.shape == (10**6,) and int(sizes.min()) >= 1
    assert data.generated == {}  # no client generated, not even the test set's
    assert data.source.input_shape == (60,) and data.source.num_classes == 10


def test_a_run_over_a_million_clients_generates_only_the_sampled_ones():
    cfg = validate_config(dict(
        rounds=2, cohort_size=20, progress=False, seed=0, threads=1, eval_every=2, checkpoint_every=0,
        data=dict(dataset="synthetic_population", partition="natural", num_clients=10**6),
        model="logreg", client=dict(lr=0.05, batch_size=10, epochs=1)))
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    assert time.perf_counter() - t0 < 5.0
    pop = sim.data
    assert pop.generated == {}
    recs = sim.run()
    sampled = [k for r in recs for k in r["sampled_ids"]]
    assert len(sampled) == 40
    # every generation is a sampled client, once per round it was sampled in: no other client was touched
    assert sum(pop.generated.values()) == len(sampled)
    assert set(pop.generated) == set(sampled)
    assert recs[-1]["test_accuracy"] is not None and np.isfinite(recs[-1]["train_loss"])


def test_client_depends_only_on_seed_and_id():
    small = SyntheticPopulation(PopulationParams(), 1000)
    big = SyntheticPopulation(PopulationParams(), 10**5)
    assert torch.equal(small.client_sizes, big.client_sizes[:1000])  # a population is a prefix of a larger one
    for k in (0, 7, 999):
        xa, ya = small.client_data(k)
        xb, yb = big.client_data(k)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert len(ya) == small.client_size(k) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    other = SyntheticPopulation(PopulationParams(seed=1), 1000)
    assert not torch.equal(other.client_data(7)[0][:5], small.client_data(7)[0][:5])
    # clients differ from one another (non-IID: each has its own model and input distribution)
    assert not torch.equal(small.label_counts(0), small.label_counts(1))


def test_iid_variant_shares_one_model():
    pop = SyntheticPopulation(PopulationParams(iid=True), 50)
    counts = torch.stack([pop.label_counts(k) for k in range(50)]).sum(0)
    assert int(counts.sum()) == int(pop.client_sizes.sum())


def test_test_split_is_held_out_samples_of_seeded_clients():
    pop = SyntheticPopulation(PopulationParams(eval_clients=5), 1000)
    x, y = pop.source.test_x, pop.source.test_y
    assert x.shape[1] == 60 and len(x) == len(y) == int(pop.n_test[pop.test_split()[2]].sum())
    assert pop.generated == {}  # held-out samples are not training generations
    assert pop.source.info["eval_clients"] == 5


def test_population_needs_the_natural_partition(tmp_path, capsys):
    with pytest.raises(DataError, match="data.partition.*natural"):
        build_federated("synthetic_population", {}, 100, "iid", None, 0)
    from fedloom.cli import main

    rc = main(["run", str(ROOT / "examples/population_1m.yaml"), "data.partition=iid", "--out", str(tmp_path / "r")])
    assert rc == 2 and "data.partition" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_example_config_is_a_million_clients():
    from fedloom.config import load_config

    cfg = load_config(ROOT / "examples/population_1m.yaml")
    assert cfg.data.num_clients == 10**6 and cfg.cohort_size == 1000 and cfg.data.dataset.name == "synthetic_population"
