import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom import wire

DTYPES = [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool, torch.int8]


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_round_trip_random_tensors(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, s in enumerate(shapes):
        dt = DTYPES[i % len(DTYPES)]
        t = (torch.randn(tuple(s), generator=g) * 100).to(dt)
        tensors[f"t{i}"] = t
    data = wire.encode(tensors, {"client": 3, "x": [1, 2]})
    m = wire.decode(data)
    assert m.meta == {"client": 3, "x": [1, 2]}
    for k, t in tensors.items():
        assert m.tensors[k].dtype == t.dtype and torch.equal(m.tensors[k], t)


def test_length_is_header_plus_raw_bytes():
    t = {"w": torch.zeros(10, 7), "b": torch.zeros(7)}
    data = wire.encode(t)
    assert data[:4] == wire.MAGIC
    hlen = int.from_bytes(data[4:8], "little")
    assert len(data) == 8 + hlen + 77 * 4


def test_expected_layout_enforced():
    data = wire.encode({"w": torch.zeros(3, 2)})
    wire.decode(data, {"w": ((3, 2), torch.float32)})
    with pytest.raises(wire.MessageError, match="shape"):
        wire.decode(data, {"w": ((2, 3), torch.float32)})
    with pytest.raises(wire.MessageError, match="missing"):
        wire.decode(data, {"w": ((3, 2), torch.float32), "b": ((2,), torch.float32)})
    with pytest.raises(wire.MessageError, match="dtype"):
        wire.decode(data, {"w": ((3, 2), torch.float64)})


@pytest.mark.parametrize("bad", [b"", b"XXXX\x00\x00\x00\x00", b"FLM1\xff\xff\x00\x00{}", b"FLM1\x02\x00\x00\x00{}junk"])
def test_malformed_bytes_rejected(bad):
    with pytest.raises(wire.MessageError):
        wire.decode(bad)


def test_truncated_payload_rejected():
    data = wire.encode({"w": torch.ones(100)})
    with pytest.raises(wire.MessageError):
        wire.decode(data[:-4])
