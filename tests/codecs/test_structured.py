"""Structured updates (Konecny et al. 2016, Sec. 2) and end-to-end runs through the round loop."""

import pytest
import torch

from fedloom.codecs import LayerSpec, build_codec
from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config, tap


def test_conv_kernel_is_an_in_kh_kw_by_out_matrix():
    assert LayerSpec("c", (64, 32, 5, 5)).matrix_shape == (800, 64)
    assert LayerSpec("fc", (512, 3136)).matrix_shape == (3136, 512)
    with pytest.raises(ValueError, match="not a matrix"):
        LayerSpec("b", (10,)).matrix_shape


def test_lowrank_update_has_rank_k_and_server_rebuilds_it_from_the_seed():
    c = build_codec("lowrank", {"fraction": 0.25})
    spec = LayerSpec("c", (16, 8, 3, 3))  # d1 = 72, d2 = 16
    st = c.init(spec, spec.numel)
    assert (st.d1, st.d2, st.k) == (72, 16, 18) and c.train_shape(st) == (18, 16)
    B = torch.randn(18, 16)
    consts = c.constants(st, seed=5)
    H = c.expand(B, consts, st)
    assert H.shape == (16, 8, 3, 3)
    assert torch.linalg.matrix_rank(H.reshape(16, 72).double()) <= 18
    assert torch.allclose(H.reshape(16, 72).T, consts["A"] @ B)  # W = (in*kh*kw) x out, H = A B
    out, _ = c.encode(B.reshape(-1), st, 5)
    assert out.numel() == 18 * 16  # only B travels
    assert torch.equal(c.decode(out, st, 5).reshape(H.shape), H)
    assert not torch.allclose(c.decode(out, st, 6).reshape(H.shape), H)  # A comes from the seed


def test_mask_expands_only_masked_entries():
    c = build_codec("mask", {"fraction": 0.1})
    spec = LayerSpec("w", (20, 10))
    st = c.init(spec, 200)
    v = torch.randn(20)
    H = c.expand(v, c.constants(st, 1), st)
    assert int((H != 0).sum()) == 20 and torch.equal(H[H != 0].sort().values, v.sort().values)


def _sim(engine, codecs, **ov):
    return Simulation(validate_config(small_config(engine=engine, codecs=codecs, **ov)))


STRUCT = {
    "lowrank-cnn": ([{"name": "lowrank", "fraction": 0.25, "layers": "all"}],
                    {"model": dict(name="cnn", channels=[4, 8], hidden=16), "client.momentum": 0.9}),
    "mask-then-quantize": ([{"name": "mask", "fraction": 0.3}, {"name": "quantize", "bits": 4}], {}),
    "sketch-inner": ([{"name": "hadamard", "layers": "inner"}, {"name": "subsample", "fraction": 0.0625, "layers": "inner"},
                      {"name": "quantize", "bits": 2, "layers": "inner"}], {"model": dict(name="mlp", hidden=[32, 32])}),
}


@pytest.mark.parametrize("case", list(STRUCT))
def test_codec_runs_match_across_engines(case):
    codecs, ov = STRUCT[case]
    a, b = _sim("vectorized", codecs, **ov), _sim("sequential", codecs, **ov)
    ra, rb = a.run(), b.run()
    rel = max(float((a.state.params[k] - b.state.params[k]).norm() / b.state.params[k].norm()) for k in a.state.params)
    assert rel <= 1e-5
    for x, y in zip(ra, rb):
        assert abs(x["bytes_up"] - y["bytes_up"]) <= 8 * x["clients"]  # only the train-loss repr may differ
        assert x["reported"] == x["clients"]


def test_structured_client_trains_only_its_subspace():
    sim = _sim("vectorized", [{"name": "mask", "fraction": 0.2, "layers": ["1.weight"]}])
    from fedloom.core import RoundInfo
    from fedloom.engine import CohortJob

    st, codec = sim.state, sim.built.codec
    task = CohortJob(sim.model, st.params, sim.buffers, [0, 1], sim.data, sim.round_schedule(1), sim.algorithm, 0, 1,
                     sim.device, reparam=codec.reparam(1))
    outs = sim.engine.run(task)
    m = codec.plan.layers["1.weight"][1][0].m
    assert outs[0].update["1.weight"].shape == (m,)  # only the masked coordinates were trained
    assert outs[0].update["1.bias"].shape == st.params["1.bias"].shape
    msg = sim.built.clients.pipeline.run(outs[0], {}, RoundInfo(1, 0))  # client pipeline -> bytes
    full = sim.server.pipeline.receive(0, msg).update  # server: decode, undo the codec chain, validate
    assert int((full["1.weight"] != 0).sum()) <= m
    assert full["1.weight"].shape == st.params["1.weight"].shape


def test_end_to_end_digits_bytes_and_learning():
    """A digits run with HD + 6.25% subsample + 2-bit on the inner layer: learns, bytes_up = real payloads."""
    codecs = [{"name": "hadamard", "layers": "inner"}, {"name": "subsample", "fraction": 0.0625, "layers": "inner"},
              {"name": "quantize", "bits": 2, "layers": "inner"}]
    ov = {"model": dict(name="mlp", hidden=[64, 64]), "rounds": 8, "client.epochs": 2}
    sim = _sim("vectorized", codecs, **ov)
    t = tap(sim)
    recs = sim.run()
    assert sum(r["bytes_up"] for r in recs) == sum(len(m) for _, m in t.sent)
    assert recs[-1]["test_accuracy"] > 0.6
    raw = _sim("vectorized", [], **ov).run()
    assert recs[0]["bytes_up"] < raw[0]["bytes_up"]


def test_nan_update_is_rejected_after_decoding(caplog):
    sim = _sim("vectorized", [{"name": "hadamard"}, {"name": "quantize", "bits": 2}])
    orig = sim.engine.run

    def poisoned(task):
        outs = orig(task)
        outs[0].update["1.weight"][0, 0] = float("nan")
        return outs

    sim.engine.run = poisoned
    rec = sim.round(1)
    assert rec["reported"] == rec["clients"] - 1
    assert "NaN" in rec["rejected"][0]["reason"]


def test_structured_codec_needs_local_sgd_algorithm():
    from fedloom.config import ConfigError

    rl = {"data.dataset": "cartpole", "data.partition": "iid", "model": "actor_critic", "algorithm": "fedppo"}
    with pytest.raises(ConfigError, match="codecs / algorithm.name: structured codecs .* runs its own client code"):
        validate_config(small_config(codecs=[{"name": "lowrank", "fraction": 0.5}], **rl))
    hier = {"algorithm": {"name": "hierarchical", "group_size": 2, "local_steps": 2}}
    with pytest.raises(ConfigError, match="structured codecs .* trains per-client models"):
        validate_config(small_config(codecs=[{"name": "mask", "fraction": 0.5}], **hier))
    validate_config(small_config(codecs=[{"name": "quantize", "bits": 4}], **rl))  # a sketch is fine


def test_default_path_has_no_codec_meta():
    sim = _sim("vectorized", [])
    assert sim.built.codec is None
    rec = sim.round(1)
    assert rec["bytes_up"] > 0
