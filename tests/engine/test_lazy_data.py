"""Engines read client data through the FederatedDataset interface: a store-backed run equals the in-memory run
bit for bit (every engine and the algorithms that read client data themselves), and the vectorized engine equals
the sequential one on lazy data."""

import pytest
import torch

from fedloom.config import validate_config
from fedloom.data.importers import import_partition
from fedloom.simulation import Simulation
from tests.conftest import small_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("pyarrow", reason="the `data` extra (pyarrow) is not installed; make test installs it")
    out = tmp_path_factory.mktemp("stores") / "digits10"
    import_partition("digits", None, 10, "dirichlet", {"alpha": 0.5}, 0, out)  # small_config's data
    return out


def _run(**ov):
    sim = Simulation(validate_config(small_config(rounds=2, **ov)))
    return sim, sim.run()


CASES = {
    "vectorized": {},
    "vectorized-chunked": {"engine": {"name": "vectorized", "chunk_size": 2}},
    "sequential": {"engine": "sequential"},
    "scaffold": {"algorithm": "scaffold"},
    "fed2-label-counts": {"model": {"name": "grouped_mlp", "groups": 2, "hidden": [16, 16]}, "algorithm": "fed2"},
    "fd-custom-client": {"algorithm": "fd"},
    "label-flip-attack": {"attack": {"name": "label_flip", "fraction": 0.3}, "aggregator": "median"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_store_backed_equals_in_memory(store, case):
    a, ra = _run(**CASES[case])
    b, rb = _run(**CASES[case], **{"data.dataset": {"name": "store", "path": str(store)}, "data.partition": "natural"})
    for k in a.state.params:
        assert torch.equal(a.state.params[k], b.state.params[k])
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}


def test_vectorized_equals_sequential_on_a_generated_population():
    pop = {"data.dataset": {"name": "synthetic_population", "eval_clients": 10}, "data.partition": "natural",
           "data.num_clients": 500, "cohort_size": 8, "model": "logreg", "client.batch_size": 20}
    a, ra = _run(**pop)
    b, rb = _run(engine="sequential", **pop)
    rel = max(float((a.state.params[k] - b.state.params[k]).norm() / b.state.params[k].norm())
              for k in a.state.params)
    assert rel <= 1e-5
    assert [r["sampled_ids"] for r in ra] == [r["sampled_ids"] for r in rb]
    assert ra[-1]["train_loss"] == pytest.approx(rb[-1]["train_loss"], rel=1e-5)
