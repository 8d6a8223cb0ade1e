"""The client pipeline and its server-side inverse: stages run in order on the client and are undone in reverse on
the server; the server validates the whole report and rejects what no honest client sends."""

from dataclasses import replace

import pytest
import torch

from fedloom import wire
from fedloom.core import ClientPipeline, ClientReport, PlainEncoder, RoundInfo, ServerPipeline

SPEC = {"w": ((3,), torch.float32)}


class Affine:
    """A toy invertible stage: client x -> a x + b, server undoes it. Two of them in a row only round-trip if the
    server undoes them in reverse order."""

    def __init__(self, name, a, b, stateful=False):
        self.name, self.a, self.b, self.stateful = name, a, b, stateful

    def init(self, client):
        return 0 if self.stateful else None

    def client(self, report, state, info):
        new = state + 1 if self.stateful else None  # counts the client's messages
        return replace(report, update={k: self.a * v + self.b for k, v in report.update.items()}), new

    def server(self, report):
        return replace(report, update={k: (v - self.b) / self.a for k, v in report.update.items()})

    def out_spec(self, spec):
        return spec


def _pipes(stages, check=lambda r: None):
    enc = PlainEncoder()
    return ClientPipeline(stages, enc), ServerPipeline(stages, enc, SPEC, check, torch.device("cpu"))


def _report(k=3, n=7, loss=0.5, **meta):
    return ClientReport(k, {"w": torch.tensor([1.0, -2.0, 0.25])}, n, loss, meta)


def test_stages_round_trip_in_reverse_and_state_is_kept():
    cp, sp = _pipes([Affine("add", 1.0, 3.0, stateful=True), Affine("mul", 4.0, 0.0)])
    states: dict = {}
    msg = cp.run(_report(), states, RoundInfo(1, 3))
    assert torch.equal(wire.decode(msg).tensors["w"], torch.tensor([16.0, 4.0, 13.0]))  # (x + 3) * 4 on the wire
    got = sp.receive(3, msg)
    assert torch.equal(got.update["w"], torch.tensor([1.0, -2.0, 0.25]))
    assert (got.client, got.num_samples, got.train_loss) == (3, 7, 0.5)
    assert states == {"add": 1}  # only the stateful stage keeps state
    cp.run(_report(), states, RoundInfo(2, 3))
    assert states == {"add": 2}


@pytest.mark.parametrize("bad,words", [
    (dict(n=-1), "num_samples"), (dict(n=2.5), "num_samples"), (dict(n=float("nan")), "num_samples"),
    (dict(n=True), "num_samples"), (dict(n="7"), "num_samples"), (dict(loss="low"), "train_loss"),
])
def test_bad_report_fields_are_rejected(bad, words):
    cp, sp = _pipes([])
    msg = cp.run(_report(**bad), {}, RoundInfo(1, 3))
    with pytest.raises(wire.MessageError, match=words):
        sp.receive(3, msg)


def test_non_finite_tensor_wrong_layout_and_impostor_are_rejected():
    cp, sp = _pipes([])
    nan = ClientReport(3, {"w": torch.tensor([1.0, float("nan"), 0.0])}, 7, 0.5)
    with pytest.raises(wire.MessageError, match="NaN or Inf"):
        sp.receive(3, cp.run(nan, {}, RoundInfo(1, 3)))
    wrong = ClientReport(3, {"w": torch.zeros(4)}, 7, 0.5)
    with pytest.raises(wire.MessageError, match="shape"):
        sp.receive(3, cp.run(wrong, {}, RoundInfo(1, 3)))
    with pytest.raises(wire.MessageError, match="claims to be from client 3"):
        sp.receive(5, cp.run(_report(), {}, RoundInfo(1, 3)))
    with pytest.raises(wire.MessageError, match="bad magic"):
        sp.receive(3, b"not a message at all")


def test_the_algorithms_own_check_rejects_as_a_message_error():
    def check(r):
        if r.meta.get("label_counts") is None:
            raise ValueError("meta 'label_counts' missing")

    cp, sp = _pipes([], check)
    with pytest.raises(wire.MessageError, match="label_counts"):
        sp.receive(3, cp.run(_report(), {}, RoundInfo(1, 3)))
    assert sp.receive(3, cp.run(_report(label_counts=[1, 2]), {}, RoundInfo(1, 3))).meta["label_counts"] == [1, 2]


def test_validation_keeps_the_norm_and_names_every_kind_of_non_finite_entry():
    """The finiteness check and the norm guard's norm are one pass: a finite norm proves the entries finite. The
    cases where the norm alone cannot tell: Inf (norm Inf), NaN (norm NaN), and huge finite values whose float32
    norm overflows (kept: the norm is redone in float64, and the guard, not validation, judges them)."""
    spec = {"a": ((2,), torch.float32), "b": ((3,), torch.float32)}
    enc = PlainEncoder()
    cp, sp = ClientPipeline([], enc), ServerPipeline([], enc, spec, lambda r: None, torch.device("cpu"))
    ok = ClientReport(3, {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0, 0.0])}, 7, 0.5)
    got = sp.receive(3, cp.run(ok, {}, RoundInfo(1, 3)))
    assert got.norm == pytest.approx(5.0)
    for bad in (float("inf"), float("-inf"), float("nan")):
        rep = ClientReport(3, {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, bad, 0.0])}, 7, 0.5)
        with pytest.raises(wire.MessageError, match="entry 'b' contains NaN or Inf"):
            sp.receive(3, cp.run(rep, {}, RoundInfo(1, 3)))
    huge = ClientReport(3, {"a": torch.tensor([3e30, 0.0]), "b": torch.tensor([0.0, 4e30, 0.0])}, 7, 0.5)
    got = sp.receive(3, cp.run(huge, {}, RoundInfo(1, 3)))
    assert got.norm == pytest.approx(5e30, rel=1e-6)
