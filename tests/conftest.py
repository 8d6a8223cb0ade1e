import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads():
    # CI runs on 2 cores; keep each test single-threaded and deterministic.
    torch.set_num_threads(1)
    yield


def small_config(**overrides):
    """A tiny, fast digits config (raw dict) for loop-level tests."""
    raw = dict(
        rounds=3, cohort_size=5, progress=False, seed=0, threads=1,
        data=dict(dataset="digits", partition=dict(name="dirichlet", alpha=0.5), num_clients=10),
        model=dict(name="mlp", hidden=[32]),
        client=dict(lr=0.1, batch_size=16, epochs=1),
    )
    for k, v in overrides.items():
        node = raw
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return raw
