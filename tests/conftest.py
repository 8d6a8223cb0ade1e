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


class UplinkTap:
    """A man in the middle between a simulation's clients and its server: records every upload (client, bytes)
    and optionally rewrites it with ``rewrite(round, client, msg) -> msg``. The two sides meet only in bytes, so
    this is how tests inject bad client input."""

    def __init__(self, inner, rewrite=None):
        self.inner, self.rewrite, self.sent = inner, rewrite, []

    def run(self, rnd, down, clients):
        ups = self.inner.run(rnd, down, clients)
        if self.rewrite is not None:
            ups = [(k, self.rewrite(rnd, k, m)) for k, m in ups]
        self.sent.extend(ups)
        return ups

    def round_metrics(self):
        return self.inner.round_metrics()


def tap(sim, rewrite=None) -> UplinkTap:
    """Put an :class:`UplinkTap` into ``sim``'s uplink and return it."""
    t = UplinkTap(sim.client_runtime, rewrite)
    sim.client_runtime = t
    return t


def through_the_wire(sim, report, rnd=1):
    """``report`` sent as client ``report.client`` would send it in round ``rnd`` (client pipeline -> bytes), then
    received by the server (decoded, the stages undone, validated): the server's view of it."""
    from fedloom.core import RoundInfo

    msg = sim.built.clients.pipeline.run(report, {}, RoundInfo(rnd, report.client))
    return sim.server.pipeline.receive(report.client, msg)
