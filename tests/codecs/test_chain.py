"""Composition, layer selection, config validation and exact byte accounting of the codec chain."""

import json
import math
import struct

import pytest
import torch

from fedloom import wire
from fedloom.codecs import CODECS, LayerSpec, UpdateCodec, build_codec, chain, layer_seed, select_layers
from fedloom.config import ConfigError, validate_config
from tests.conftest import small_config

# McMahan et al.'s CNN on 28x28 MNIST: conv1 (first layer) and fc2 (last) are not "inner".
CNN = {"0.weight": (32, 1, 5, 5), "0.bias": (32,), "3.weight": (64, 32, 5, 5), "3.bias": (64,),
       "7.weight": (512, 3136), "7.bias": (512,), "9.weight": (10, 512), "9.bias": (10,)}
SPECS = [LayerSpec(n, s) for n, s in CNN.items()]
LAYOUT = {n: (s, torch.float32) for n, s in CNN.items()}


def test_layer_selection():
    assert select_layers("all", SPECS) == ["0.weight", "3.weight", "7.weight", "9.weight"]
    assert select_layers("inner", SPECS) == ["3.weight", "7.weight"]
    assert select_layers(["7.*", "0.bias"], SPECS) == ["0.bias", "7.weight", "7.bias"]
    with pytest.raises(ValueError, match=r"codecs.2.layers: pattern 'fc\*' matches no parameter"):
        select_layers(["fc*"], SPECS, "codecs.2.layers")


def test_chain_equals_manual_sequence_and_decodes_in_reverse():
    stages = [build_codec("hadamard"), build_codec("subsample", {"fraction": 0.1}), build_codec("quantize", {"bits": 3})]
    specs = [LayerSpec("a", (20, 30)), LayerSpec("b", (7,))]
    ch = chain(*stages)
    st = ch.init(specs)
    upd = {"a": torch.randn(20, 30), "b": torch.randn(7)}
    key = 1234
    enc, st2 = ch.encode(upd, st, key)
    assert st2 == st  # built-in stages carry only their static plan
    # manual: the same stages one after another, each with its per-layer seed
    v, n, manual_states = upd["a"].reshape(-1), 600, []
    for i, s in enumerate(stages):
        state = s.init(specs[0], n)
        manual_states.append(state)
        v, _ = s.encode(v, state, layer_seed(key, i, "a"))
        n = s.out_spec(state)[0]
    assert torch.equal(enc["a"], v)
    assert torch.equal(enc["b"], upd["b"])  # 1-D 'b' is not selected by 'all': travels raw
    dec = ch.decode(enc, st, key, {"a": (20, 30), "b": (7,)})
    for i in reversed(range(3)):
        v = stages[i].decode(v, manual_states[i], layer_seed(key, i, "a"))
    assert torch.equal(dec["a"], v.reshape(20, 30))
    assert torch.equal(dec["b"], upd["b"])


def test_sketch_chain_is_unbiased():
    ch = chain(build_codec("hadamard"), build_codec("subsample", {"fraction": 0.25}), build_codec("quantize", {"bits": 2}))
    spec = LayerSpec("w", (8, 16))
    st = ch.init([spec])
    x = torch.randn(8, 16)
    trials = 1500
    mean = sum(ch.decode(ch.encode({"w": x}, st, k)[0], st, k, {"w": (8, 16)})["w"].double() for k in range(trials)) / trials
    err = (mean - x.double()).norm() / x.double().norm()
    assert err < 0.15  # a single encoding's relative error is ~2: averaging 1500 brings it down ~sqrt(1500)
    single = ch.decode(ch.encode({"w": x}, st, 0)[0], st, 0, {"w": (8, 16)})["w"]
    assert (single - x).norm() / x.norm() > 5 * err


def _entries(msg):
    (hlen,) = struct.unpack("<I", msg[4:8])
    header = json.loads(msg[8 : 8 + hlen])
    return hlen, {e["name"]: e["nbytes"] for e in header["entries"]}


FORMULAS = {
    # name: (codec list, bytes of the payload of 7.weight (d = 1,605,632 = 6272 * 256) and 3.weight (d = 51,200))
    "none": ([], lambda d: 4 * d),
    "quantize-1bit": ([{"name": "quantize", "bits": 1}], lambda d: 8 + math.ceil(d / 8)),
    "subsample-25": ([{"name": "subsample", "fraction": 0.25}], lambda d: 4 * round(0.25 * d)),
    "hd-2bit-6.25": ([{"name": "hadamard"}, {"name": "subsample", "fraction": 0.0625}, {"name": "quantize", "bits": 2}],
                     lambda d: 8 + math.ceil(2 * round(0.0625 * d) / 8)),
    "mask-25": ([{"name": "mask", "fraction": 0.25}], lambda d: 4 * round(0.25 * d)),
}


@pytest.mark.parametrize("case", list(FORMULAS))
def test_byte_count_matches_formula(case):
    comps, formula = FORMULAS[case]
    comps = [{**c, "layers": "inner"} for c in comps]
    uc = UpdateCodec([(c["name"], {k: v for k, v in c.items() if k != "name"}) for c in comps], LAYOUT, seed=0)
    upd = {n: torch.randn(s) for n, s in uc.chain.training_shapes(uc.specs, uc.plan).items()}
    msg = uc.encode(upd, {"num_samples": 5}, rnd=1, client=3)
    hlen, nbytes = _entries(msg)
    assert len(msg) == 8 + hlen + sum(nbytes.values())  # the whole message is header + payloads, nothing else
    for name, shape in CNN.items():
        d = math.prod(shape)
        expect = formula(d) if name in ("3.weight", "7.weight") else 4 * d  # outer layers and biases travel raw
        assert nbytes[name] == expect, name
    if case == "hd-2bit-6.25":
        # 256x fewer bits on the compressed layers (6.25% of the values at 2 bits instead of 32) before headers;
        # d is a multiple of 256 here so the rotation adds no padding
        d = sum(math.prod(CNN[n]) for n in ("3.weight", "7.weight"))
        assert 32 * d / (8 * (nbytes["3.weight"] + nbytes["7.weight"])) > 250
    dec = uc.decode(msg)
    assert {n: tuple(t.shape) for n, t in dec.tensors.items()} == CNN


def test_hadamard_padding_bytes():
    uc = UpdateCodec([("hadamard", {"layers": ["w"]})], {"w": ((10, 100), torch.float32)}, 0)
    _, nb = _entries(uc.encode({"w": torch.randn(10, 100)}, {}, 1, 1))
    assert nb["w"] == 4 * 1024  # d = 1000 -> blocks 512 + 256 + 256 (padding to a multiple of min_block=256)


def test_decode_rejects_tampered_messages():
    uc = UpdateCodec([("quantize", {"bits": 2})], {"w": ((4, 4), torch.float32)}, 0)
    msg = uc.encode({"w": torch.randn(4, 4)}, {"client": 0}, 1, 0)
    assert uc.decode(msg).tensors["w"].shape == (4, 4)
    other = UpdateCodec([("quantize", {"bits": 3})], {"w": ((4, 4), torch.float32)}, 0)
    with pytest.raises(wire.MessageError, match="shape"):
        other.decode(msg)  # 3-bit layout expected, 2-bit payload received
    no_key = wire.encode(wire.decode(msg).tensors, {"client": 0})
    with pytest.raises(wire.MessageError, match="codec_key"):
        uc.decode(no_key)


# -- config validation ---------------------------------------------------------------------------------------

BAD = {
    "bits=0": ([{"name": "quantize", "bits": 0}], "codecs.0.bits"),
    "bits=17": ([{"name": "hadamard"}, {"name": "quantize", "bits": 17}], "codecs.1.bits"),
    "fraction=0": ([{"name": "subsample", "fraction": 0}], "codecs.0.fraction"),
    "fraction>1": ([{"name": "hadamard"}, {"name": "subsample", "fraction": 1.5}], "codecs.1.fraction"),
    "mask fraction<0": ([{"name": "mask", "fraction": -0.1}], "codecs.0.fraction"),
    "unknown codec": ([{"name": "hadamard"}, {"name": "zip"}], "codecs.1.name: unknown codec 'zip'"),
    "unknown param": ([{"name": "quantize", "bits": 2, "levels": 3}], "codecs.0.levels"),
    "bad layers": ([{"name": "quantize", "bits": 2, "layers": "outer"}], "codecs.0.layers"),
    "missing bits": ([{"name": "quantize"}], "codecs.0.bits"),
    "after quantize": ([{"name": "quantize", "bits": 2}, {"name": "subsample", "fraction": 0.5}], "codecs.1: nothing can follow"),
    "structured late": ([{"name": "hadamard"}, {"name": "lowrank", "fraction": 0.5}], "codecs.1: 'lowrank' changes client training"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_codec_config_is_rejected_naming_the_field(case):
    codecs, field = BAD[case]
    with pytest.raises(ConfigError) as e:
        validate_config(small_config(codecs=codecs))
    assert any(field in err for err in e.value.errors), e.value.errors


def test_good_config_resolves_defaults():
    cfg = validate_config(small_config(codecs=["hadamard", {"name": "quantize", "bits": 2, "layers": ["1.*"]}]))
    assert cfg.codecs[0].name == "hadamard" and cfg.codecs[0].params["padding"] == "blocks"
    assert cfg.codecs[1].params == {"layers": ["1.*"], "bits": 2}
    assert validate_config(small_config()).codecs == []


def test_registry_lists_every_codec():
    assert set(CODECS.names()) >= {"hadamard", "subsample", "quantize", "lowrank", "mask"}


# -- one contract for every registered codec (STYLE.md 10) ---------------------------------------------------

EXAMPLES = {
    "hadamard": {}, "subsample": {"fraction": 0.3}, "quantize": {"bits": 3},
    "lowrank": {"fraction": 0.5}, "mask": {"fraction": 0.5}, "topk": {"fraction": 0.3},
}


@pytest.mark.parametrize("name", CODECS.names())
def test_codec_contract(name):
    assert name in EXAMPLES, f"add an example for codec {name!r}"
    layout = {"a.weight": ((6, 3, 2, 2), torch.float32), "a.bias": ((6,), torch.float32), "b.weight": ((4, 24), torch.float32)}
    uc = UpdateCodec([(name, EXAMPLES[name])], layout, seed=1)
    shapes = uc.chain.training_shapes(uc.specs, uc.plan)
    upd = {n: torch.randn(s) for n, s in shapes.items()}
    msg = uc.encode(upd, {"client": 2}, rnd=3, client=2)
    uc.states.clear()  # from the same (fresh) client state: a stateful codec's memory changes the next message
    assert msg == uc.encode(upd, {"client": 2}, rnd=3, client=2)  # deterministic given (seed, round, client, state)
    hlen, nbytes = _entries(msg)
    for n, (shape, dt) in uc.wire_layout.items():  # the planned layout is what travels
        assert nbytes[n] == math.prod(shape) * torch.empty((), dtype=dt).element_size()
    assert set(uc.compressed_layers()) == {"a.weight", "b.weight"}
    dec = uc.decode(msg)
    assert dec.meta["client"] == 2 and dec.meta["codec_key"] == uc.key(3, 2)
    assert {n: tuple(t.shape) for n, t in dec.tensors.items()} == {n: s for n, (s, _) in layout.items()}
    assert all(torch.isfinite(t).all() for t in dec.tensors.values())
    assert torch.equal(dec.tensors["a.bias"], upd["a.bias"])


def test_layer_seeds_use_the_whole_key_and_differ_per_stage_and_layer():
    k = 123456789
    seeds = {layer_seed(k, 0, "a"), layer_seed(k + (1 << 32), 0, "a"), layer_seed(k, 1, "a"), layer_seed(k, 0, "b")}
    assert len(seeds) == 4
    uc = UpdateCodec([("quantize", {"bits": 1})], LAYOUT, seed=0)
    assert len({uc.key(r, c) for r in range(1, 4) for c in range(3)}) == 9  # per (round, client)
