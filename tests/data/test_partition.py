import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.data.partition import partition

labels_st = st.integers(50, 400).flatmap(
    lambda n: st.lists(st.integers(0, 9), min_size=n, max_size=n).map(np.array)
)


def _check_disjoint_cover(parts, n, cover=True):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)), "partitions overlap"
    assert allidx.min() >= 0 and allidx.max() < n
    if cover:
        assert len(allidx) == n, "partitions do not cover the data"


@settings(max_examples=25, deadline=None)
@given(labels=labels_st, k=st.integers(1, 20), seed=st.integers(0, 10**6),
       spec=st.sampled_from([("iid", {}), ("dirichlet", {"alpha": 0.3, "min_size": 0}), ("dirichlet", {"alpha": 10.0, "min_size": 0}),
                             ("shards", {"shards_per_client": 2}), ("quantity_skew", {"sigma": 1.5})]))
def test_disjoint_covering_deterministic(labels, k, seed, spec):
    name, params = spec
    parts = partition(labels, k, name, params, seed)
    assert len(parts) == k
    _check_disjoint_cover(parts, len(labels))
    again = partition(labels, k, name, params, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_seed_changes_partition():
    labels = np.repeat(np.arange(10), 50)
    a = partition(labels, 10, "iid", None, 0)
    b = partition(labels, 10, "iid", None, 1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def _mean_label_entropy(parts, labels):
    ents = []
    for p in parts:
        if len(p) == 0:
            continue
        c = np.bincount(labels[p], minlength=10) / len(p)
        c = c[c > 0]
        ents.append(-(c * np.log(c)).sum())
    return float(np.mean(ents))


def test_dirichlet_alpha_controls_skew():
    labels = np.repeat(np.arange(10), 300)
    ent = {a: np.mean([_mean_label_entropy(partition(labels, 20, "dirichlet", {"alpha": a}, s), labels) for s in range(3)])
           for a in (0.05, 0.5, 100.0)}
    assert ent[0.05] < ent[0.5] < ent[100.0]
    assert ent[100.0] > 0.95 * np.log(10)  # large alpha ~ iid label mix


def test_shards_pathological():
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "shards", {"shards_per_client": 2}, 0)
    for p in parts:
        assert len(np.unique(labels[p])) <= 2
        assert len(p) == 100


def test_quantity_skew_sizes_vary_and_min_size():
    labels = np.zeros(2000, dtype=int)
    parts = partition(labels, 20, "quantity_skew", {"sigma": 2.0, "min_size": 5}, 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5 and sizes.max() > 4 * np.median(sizes)


def test_dirichlet_min_size():
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "dirichlet", {"alpha": 0.5, "min_size": 20}, 0)
    assert min(len(p) for p in parts) >= 20


@pytest.mark.parametrize("name,params,k,msg", [
    ("iid", {}, 0, "num_clients"),
    ("iid", {}, 1000, "exceeds"),
    ("natural", {}, 3, "natural"),
])
def test_bad_partition_arguments(name, params, k, msg):
    with pytest.raises(ValueError, match=msg):
        partition(np.zeros(100, dtype=int), k, name, params, 0)


def test_unknown_partitioner_names_allowed():
    with pytest.raises(KeyError, match="allowed: dirichlet"):
        partition(np.zeros(10, dtype=int), 2, "nope")
