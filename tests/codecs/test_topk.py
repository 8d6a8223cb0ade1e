"""Top-k sparsification with error feedback (Aji & Heafield 2017; Stich et al. 2018; Karimireddy et al. 2019):
selection, the memory invariant, explicit state, untrusted-input validation, and the codec chain around it."""

import io
import json
import math
import struct

import numpy as np
import pytest
import torch

from fedloom.codecs import LayerSpec, UpdateCodec, build_codec, chain, chain_errors
from fedloom.codecs.topk import TopKState, top_indices


def _codec(n, **params):
    c = build_codec("topk", params or {"fraction": 0.1})
    return c, c.init(LayerSpec("w", (n,)), n)


def _brute_topk(a, k):
    """The k largest |a|, ties to the lower index: a full sort by (-|a|, index)."""
    order = sorted(range(a.numel()), key=lambda i: (-abs(float(a[i])), i))
    return sorted(order[:k])


def _pack(vals, idx):
    return torch.from_numpy(np.frombuffer(np.asarray(vals, "<f4").tobytes() + np.asarray(idx, "<i4").tobytes(),
                                          dtype=np.uint8).copy())


# -- selection and round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,params,k", [(100, {"fraction": 0.1}, 10), (101, {"fraction": 0.1}, 11),
                                        (7, {"fraction": 0.01}, 1), (50, {"k": 5, "fraction": 0.9}, 5),
                                        (30, {"k": 30}, 30), (30, {"fraction": 1.0}, 30)])
def test_k_from_fraction_or_absolute(n, params, k):
    c, st = _codec(n, **params)
    assert (st.n, st.k, st.residual) == (n, k, None)
    assert c.out_spec(st) == (8 * k, torch.uint8)


def test_bad_sizes_are_rejected():
    c = build_codec("topk", {"k": 11})
    with pytest.raises(ValueError, match=r"topk: k=11 exceeds the 10 values of 'w'"):
        c.init(LayerSpec("w", (10,)), 10)
    with pytest.raises(ValueError, match="fraction or k"):
        build_codec("topk", {})
    for bad in ({"fraction": 0}, {"fraction": 1.5}, {"k": 0}):
        with pytest.raises(ValueError):
            build_codec("topk", bad)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_keeps_exactly_the_k_largest(seed):
    g = torch.Generator().manual_seed(seed)
    n = 257
    v = torch.randn(n, generator=g)
    c, st = _codec(n, fraction=0.05)
    out, _ = c.encode(v, st, seed=0)
    assert out.dtype == torch.uint8 and out.shape == (8 * st.k,)
    dec = c.decode(out, st, seed=123)  # the seed plays no part
    keep = _brute_topk(v, st.k)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    assert torch.equal(dec[mask], v[mask])  # float32 values travel bit-exactly
    assert torch.equal(dec[~mask], torch.zeros(n - st.k))
    assert torch.nonzero(dec).reshape(-1).tolist() == keep
    # the wire itself: values then strictly increasing int32 indices
    idx = np.frombuffer(out.numpy().tobytes(), "<i4", count=st.k, offset=4 * st.k)
    assert idx.tolist() == keep


def test_ties_go_to_the_lower_index():
    v = torch.tensor([1.0, -3.0, 2.0, 3.0, -2.0, 2.0, 0.5, -3.0, 2.0])
    # |v| = 1 3 2 3 2 2 .5 3 2: the three 3's, then the 2's at the lowest indices (2, 4)
    assert top_indices(v, 5).tolist() == [1, 2, 3, 4, 7]
    assert top_indices(v, 5).tolist() == _brute_topk(v, 5)
    flat = torch.full((1000,), 0.25)  # all tied: the first k, whatever torch.topk does internally
    assert top_indices(flat, 17).tolist() == list(range(17))
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(-3, 4, (500,), generator=g).float()  # many ties at every magnitude
    for k in (1, 40, 123, 499, 500):
        assert top_indices(coarse, k).tolist() == _brute_topk(coarse, k)


def test_non_finite_entries_rank_first_and_are_rejected_by_the_server():
    v = torch.tensor([1.0, float("nan"), -5.0, float("inf"), 2.0])
    assert top_indices(v, 2).tolist() == [1, 3]
    c, st = _codec(5, k=3)
    out, st2 = c.encode(v, st, 0)
    assert torch.isfinite(st2.residual).all()  # what was sent (NaN, Inf) is not remembered
    with pytest.raises(ValueError, match="NaN or Inf"):
        c.decode(out, st, 0)


# -- error feedback ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"fraction": 0.03}, {"k": 1}, {"fraction": 1.0}])
def test_error_feedback_loses_nothing(params):
    """sum_t decode(out_t) + e_T == sum_t v_t (Stich et al. 2018): the memory only delays what is not sent."""
    n, rounds = 200, 40
    g = torch.Generator().manual_seed(7)
    c, st = _codec(n, **params)
    sent = torch.zeros(n, dtype=torch.float64)
    total = torch.zeros(n, dtype=torch.float64)
    for t in range(rounds):
        v = torch.randn(n, generator=g) * (1 + t % 3)
        e_before = torch.zeros(n) if st.residual is None else st.residual
        out, st = c.encode(v, st, t)
        d = c.decode(out, st, t)
        # per round: decode + e' == v + e exactly (the sent entries are cut out of a, not recomputed)
        assert torch.equal(d + st.residual, v + e_before)
        assert torch.equal(st.residual[d != 0], torch.zeros(int((d != 0).sum())))
        sent += d.double()
        total += v.double()
    assert (st.n, st.k) == c.init(LayerSpec("w", (n,)), n)[:2]  # the plan is carried unchanged
    assert torch.allclose(sent + st.residual.double(), total, atol=1e-4, rtol=0)
    if st.k < n:
        assert st.residual.abs().sum() > 0  # it really remembers something (the invariant is not 0 == 0)
    else:
        assert torch.equal(st.residual, torch.zeros(n))


def test_memory_eventually_sends_small_coordinates():
    """A coordinate too small to ever be picked alone accumulates until it is sent."""
    v = torch.tensor([1.0, 0.3])
    c, st = _codec(2, k=1)
    picks = []
    for t in range(6):
        out, st = c.encode(v, st, t)
        picks.append(int(torch.nonzero(c.decode(out, st, t))[0]))
    assert 1 in picks
    c0, st0 = _codec(2, k=1, error_feedback=False)
    assert all(int(torch.nonzero(c0.decode(c0.encode(v, st0, t)[0], st0, t))[0]) == 0 for t in range(6))


def test_without_error_feedback_the_state_is_unchanged():
    n = 64
    c, st = _codec(n, fraction=0.1, error_feedback=False)
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(n, generator=g)
    for t in range(5):
        v = torch.randn(n, generator=g)
        out, st2 = c.encode(v, st, t)
        assert st2 is st and st2.residual is None
        assert torch.nonzero(c.decode(out, st, t)).reshape(-1).tolist() == _brute_topk(v, st.k)
    assert torch.equal(c.encode(v0, st, 0)[0], c.encode(v0, st, 9)[0])


# -- state is explicit ---------------------------------------------------------------------------------------


def test_state_is_returned_not_hidden():
    n = 90
    g = torch.Generator().manual_seed(3)
    c, st = _codec(n, fraction=0.1)
    _, st = c.encode(torch.randn(n, generator=g), st, 0)  # a state with a nonzero residual
    e0 = st.residual.clone()
    v = torch.randn(n, generator=g)
    v_copy = v.clone()
    out1, st1 = c.encode(v, st, 1)
    out2, st2 = c.encode(v, st, 1)
    assert torch.equal(out1, out2) and torch.equal(st1.residual, st2.residual)  # same input state, same result
    assert torch.equal(st.residual, e0)  # the input state is not mutated
    assert torch.equal(v, v_copy)  # nor the update
    assert st1.residual is not st.residual and not torch.equal(st1.residual, e0)
    out3, _ = c.encode(v, st1, 1)
    assert not torch.equal(out3, out1)  # the memory does change what is sent


def test_topk_declares_its_state():
    """The runtime keeps per-client chain states only for stages that declare them (else the memory is lost)."""
    assert build_codec("topk", {"fraction": 0.1}).stateful
    assert not build_codec("quantize", {"bits": 2}).stateful


def test_state_round_trips_through_torch_save():
    n = 50
    c, st = _codec(n, fraction=0.2)
    g = torch.Generator().manual_seed(4)
    for t in range(3):
        _, st = c.encode(torch.randn(n, generator=g), st, t)
    buf = io.BytesIO()
    torch.save({"s": st}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)["s"]
    assert isinstance(back, TopKState) and (back.n, back.k) == (st.n, st.k) and torch.equal(back.residual, st.residual)
    v = torch.randn(n, generator=g)
    assert torch.equal(c.encode(v, back, 3)[0], c.encode(v, st, 3)[0])


# -- untrusted input on the server ---------------------------------------------------------------------------

N, K = 20, 4
MALICIOUS = {
    "index out of range": (_pack([1, 2, 3, 4], [0, 5, 9, 20]), r"index 20 out of range \[0, 20\)"),
    "negative index": (_pack([1, 2, 3, 4], [-1, 5, 9, 10]), r"index -1 out of range"),
    "duplicate index": (_pack([1, 2, 3, 4], [0, 5, 5, 10]), "strictly increasing"),
    "unsorted indices": (_pack([1, 2, 3, 4], [0, 9, 5, 10]), "strictly increasing"),
    "NaN value": (_pack([1, float("nan"), 3, 4], [0, 5, 9, 10]), "NaN or Inf"),
    "Inf value": (_pack([1, 2, float("-inf"), 4], [0, 5, 9, 10]), "NaN or Inf"),
    "too short": (_pack([1, 2, 3, 4], [0, 5, 9, 10])[:-1], "expected 32 bytes"),
    "too long": (torch.cat((_pack([1, 2, 3, 4], [0, 5, 9, 10]), torch.zeros(8, dtype=torch.uint8))), "expected 32 bytes"),
    "wrong dtype": (torch.zeros(32), "expected 32 bytes"),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_decode_rejects_malicious_payloads(case):
    out, msg = MALICIOUS[case]
    c, st = _codec(N, k=K)
    with pytest.raises(ValueError, match=msg):
        c.decode(out, st, 0)


def test_decode_accepts_the_valid_neighbour_of_each_malicious_case():
    c, st = _codec(N, k=K)
    d = c.decode(_pack([1, -2, 3, 4], [0, 5, 9, 19]), st, 0)
    assert d.tolist() == [1 if i == 0 else -2 if i == 5 else 3 if i == 9 else 4 if i == 19 else 0 for i in range(N)]


# -- in the codec chain and UpdateCodec ----------------------------------------------------------------------


def _entries(msg):
    (hlen,) = struct.unpack("<I", msg[4:8])
    header = json.loads(msg[8 : 8 + hlen])
    return hlen, {e["name"]: e["nbytes"] for e in header["entries"]}


def test_update_codec_keeps_a_per_client_residual():
    layout = {"0.weight": ((8, 16), torch.float32), "0.bias": ((8,), torch.float32)}
    uc = UpdateCodec([("topk", {"fraction": 0.1})], layout, seed=0)
    k = math.ceil(0.1 * 128)
    assert uc.compressed_layers() == ["0.weight"]
    assert uc.wire_layout["0.weight"] == ((8 * k,), torch.uint8)
    g = torch.Generator().manual_seed(5)
    residuals = []
    for rnd in (1, 2):
        upd = {"0.weight": torch.randn(8, 16, generator=g), "0.bias": torch.randn(8, generator=g)}
        before = uc.states.get(3, uc.plan).layers["0.weight"][1][0]
        msg = uc.encode(upd, {"client": 3}, rnd=rnd, client=3)
        hlen, nbytes = _entries(msg)
        assert nbytes == {"0.weight": 8 * k, "0.bias": 4 * 8}  # the bias travels raw
        assert len(msg) == 8 + hlen + 8 * k + 4 * 8
        st = uc.states[3].layers["0.weight"][1][0]
        assert st.residual is not None and st.residual.shape == (128,)
        residuals.append(st.residual.clone())
        dec = uc.decode(msg).tensors
        a = upd["0.weight"].reshape(-1) + (before.residual if before.residual is not None else 0)
        want = torch.zeros(128)
        keep = _brute_topk(a, k)
        want[keep] = a[keep]
        assert torch.equal(dec["0.weight"], want.reshape(8, 16))
        assert torch.equal(dec["0.weight"].reshape(-1) + st.residual, a)
        assert torch.equal(dec["0.bias"], upd["0.bias"])
    assert not torch.equal(residuals[0], residuals[1])
    assert 4 not in uc.states  # per client: another client's memory is untouched
    assert uc.plan.layers["0.weight"][1][0].residual is None  # the server's plan has no memory


def test_codec_states_round_trip_through_torch_save():
    """What a checkpoint would need for a bit-identical resume: the per-client chain states."""
    layout = {"0.weight": ((8, 16), torch.float32), "0.bias": ((8,), torch.float32)}
    uc = UpdateCodec([("topk", {"k": 7})], layout, seed=0)
    upd = {"0.weight": torch.randn(8, 16), "0.bias": torch.randn(8)}
    uc.encode(upd, {}, 1, 0)
    buf = io.BytesIO()
    torch.save(uc.states, buf)
    buf.seek(0)
    uc2 = UpdateCodec([("topk", {"k": 7})], layout, seed=0)
    uc2.states = torch.load(buf, weights_only=False)
    assert uc2.encode(upd, {}, 2, 0) == uc.encode(upd, {}, 2, 0)


def test_nothing_can_follow_topk():
    errs = chain_errors([("topk", {}), ("quantize", {})])
    assert errs == ["codecs.1: nothing can follow 'topk' (codecs.0): it emits packed bits"]
    assert chain_errors([("topk", {}), ("quantize", {})])[0].replace("topk", "quantize") == \
        chain_errors([("quantize", {}), ("quantize", {})])[0]
    assert chain_errors([("hadamard", {}), ("topk", {})]) == []
    ch = chain(build_codec("topk", {"fraction": 0.5}), build_codec("quantize", {"bits": 2}))
    with pytest.raises(ValueError, match="codecs.1: nothing can follow 'topk' on 'w'"):
        ch.init([LayerSpec("w", (4, 4))])
    # on disjoint layers they compose
    ok = chain(build_codec("topk", {"fraction": 0.5, "layers": ["a"]}), build_codec("quantize", {"bits": 2, "layers": ["b"]}))
    assert set(ok.init([LayerSpec("a", (4, 4)), LayerSpec("b", (4, 4))]).layers) == {"a", "b"}


def test_hadamard_then_topk_round_trips_on_the_kept_energy():
    ch = chain(build_codec("hadamard"), build_codec("topk", {"fraction": 1.0}))
    spec = LayerSpec("w", (8, 16))
    st = ch.init([spec])
    x = torch.randn(8, 16)
    enc, _ = ch.encode({"w": x}, st, 11)
    assert torch.allclose(ch.decode(enc, st, 11, {"w": (8, 16)})["w"], x, atol=1e-5)


def test_config_validation():
    from fedloom.config import ConfigError, validate_config
    from tests.conftest import small_config

    cfg = validate_config(small_config(codecs=[{"name": "topk", "fraction": 0.1}]))
    assert cfg.codecs[0].params == {"layers": "all", "fraction": 0.1, "k": None, "error_feedback": True}
    for bad, field in (([{"name": "topk"}], "fraction or k"), ([{"name": "topk", "fraction": 2}], "codecs.0.fraction"),
                       ([{"name": "topk", "k": 3}, {"name": "quantize", "bits": 2}], "codecs.1: nothing can follow")):
        with pytest.raises(ConfigError) as e:
            validate_config(small_config(codecs=bad))
        assert any(field in err for err in e.value.errors), e.value.errors


# -- end to end ----------------------------------------------------------------------------------------------


def test_simulation_smoke():
    from fedloom.config import validate_config
    from fedloom.simulation import Simulation
    from tests.conftest import small_config

    # 6 rounds, not 3: at 3 rounds digits accuracy (with or without the codec) is still ~0.1-0.33 depending on
    # the seed; by round 6 it is 0.38-0.54 over seeds 0-2 with topk at 10%, so 0.3 has a margin
    recs = Simulation(validate_config(small_config(rounds=6, codecs=[{"name": "topk", "fraction": 0.1}]))).run()
    base = Simulation(validate_config(small_config(rounds=6))).run()
    assert len(recs) == 6
    acc = recs[-1]["test_accuracy"]
    assert math.isfinite(acc) and acc > 0.3, acc
    up, up0 = sum(r["bytes_up"] for r in recs), sum(r["bytes_up"] for r in base)
    assert up < 0.5 * up0, (up, up0)
