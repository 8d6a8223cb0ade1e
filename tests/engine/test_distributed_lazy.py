"""Scale-out reads the same data: with engine=distributed on 2 gloo ranks, every rank opens the same client store
(or generates the same population), reads only its shard of each cohort, and the run equals 1 rank."""

from __future__ import annotations

import pytest

from fedloom.config import validate_config
from fedloom.distributed.launch import spawn
from fedloom.simulation import Simulation


def _raw(data: dict, engine: str, **kw) -> dict:
    return dict(dict(rounds=2, cohort_size=6, progress=False, seed=1, threads=1, checkpoint_every=0, engine=engine,
                     data=data, model=dict(name="mlp", hidden=[16]), client=dict(lr=0.1, batch_size=16, epochs=1)),
                **kw)


def _store_data(path) -> dict:
    return dict(dataset=dict(name="store", path=str(path)), partition="natural", num_clients=10)


POP = dict(dataset=dict(name="synthetic_population", eval_clients=10), partition="natural", num_clients=100_000)


def _run_recording(raw: dict):
    """Run ``raw``; returns the final params, the records and every client id this process read data for."""
    sim = Simulation(validate_config(raw))
    read: list[int] = []
    inner = sim.data.cohort

    def cohort(clients):
        read.extend(int(k) for k in clients)
        return inner(clients)

    sim.data.cohort = cohort  # instance attribute: the engines call data.cohort(...)
    recs = sim.run()
    return {k: v.detach().clone() for k, v in sim.state.params.items()}, recs, read


def _ranks(rank: int, world: int, jobs: list[dict]) -> list:
    import torch.distributed as dist

    out = []
    for raw in jobs:
        out.append(_run_recording(raw))
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("pyarrow", reason="the `data` extra (pyarrow) is not installed; make test installs it")
    from fedloom.data.importers import import_partition

    out = tmp_path_factory.mktemp("stores") / "digits10"
    import_partition("digits", None, 10, "dirichlet", {"alpha": 0.5}, 1, out)
    return out


def test_two_ranks_read_their_shards_and_equal_one_rank(store):
    jobs = [_raw(_store_data(store), "distributed"), _raw(POP, "distributed", model="logreg")]
    res = spawn(_ranks, 2, jobs, start_method="fork")
    for j, one_rank in enumerate([_raw(_store_data(store), "vectorized"), _raw(POP, "vectorized", model="logreg")]):
        params1, recs1, read1 = _run_recording(one_rank)
        for rank in (0, 1):
            params, recs, read = res[rank][j]
            for k in params1:
                assert float((params[k] - params1[k]).abs().max()) <= 1e-5, (j, rank, k)
            assert [r["sampled_ids"] for r in recs] == [r["sampled_ids"] for r in recs1]
            # this rank read exactly its shard of each round's cohort, nothing else
            shard = [k for r in recs1 for k in r["sampled_ids"][rank::2]]
            assert sorted(read) == sorted(shard)
        assert sorted(res[0][j][2] + res[1][j][2]) == sorted(read1)
