"""FD math (Jeong et al. 2018, Algorithm 1): accumulation, teachers, the local objective, payload size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedloom import wire
from fedloom.algorithms.fd import (
    LogitAccumulator,
    ModelSpec,
    fd_bits_per_message,
    fd_loss,
    present_labels,
    soft_cross_entropy,
    teacher_for,
    teachers,
)

torch.set_num_threads(1)


def test_accumulator_per_label_averages_by_hand():
    acc = LogitAccumulator(3)
    acc.add(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]]), torch.tensor([0, 1]))
    acc.add(torch.tensor([[0.7, 0.1, 0.2]]), torch.tensor([0]))
    avg = acc.averages()
    assert avg.dtype == torch.float32 and avg.shape == (3, 3)
    torch.testing.assert_close(avg[0], torch.tensor([0.6, 0.2, 0.2]))  # (0.5+0.7)/2, (0.3+0.1)/2, (0.2+0.2)/2
    torch.testing.assert_close(avg[1], torch.tensor([0.1, 0.8, 0.1]))
    assert torch.equal(avg[2], torch.zeros(3))  # label 2 never seen: left out (zero row)
    assert present_labels(avg).tolist() == [True, True, False]
    assert acc.counts.tolist() == [2, 1, 0]


def test_accumulator_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        LogitAccumulator(3).add(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))


def test_teacher_excludes_own_logits_hand_computed():
    # 3 devices, 2 labels; every device holds both labels.
    a0 = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    a1 = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    a2 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    T = teachers(torch.stack([a0, a1, a2]))
    # Fhat^(i) = (sum_j Fbar^(j) - Fbar^(i)) / (M - 1)
    torch.testing.assert_close(T[0], torch.tensor([[0.6, 0.4], [0.2, 0.8]]))  # (a1 + a2) / 2
    torch.testing.assert_close(T[1], torch.tensor([[0.7, 0.3], [0.1, 0.9]]))  # (a0 + a2) / 2
    torch.testing.assert_close(T[2], torch.tensor([[0.8, 0.2], [0.3, 0.7]]))  # (a0 + a1) / 2
    # the one-device form agrees, and a device that did not upload gets the mean of all uploads
    stacked = torch.stack([a0, a1, a2])
    torch.testing.assert_close(teacher_for(stacked, 1), T[1])
    torch.testing.assert_close(teacher_for(stacked, None), (a0 + a1 + a2) / 3)


def test_zero_count_labels_left_out_of_sums_and_denominators():
    L = 3
    a0 = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    a1 = torch.tensor([[0.6, 0.2, 0.2], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # device 1 has no label 2
    a2 = torch.tensor([[0.4, 0.3, 0.3], [0.0, 0.0, 0.0], [0.3, 0.3, 0.4]])  # device 2 has no label 1
    T = teachers(torch.stack([a0, a1, a2]))
    # label 2 for device 0: only device 2 holds it among the others -> denominator 1, not M - 1 = 2
    torch.testing.assert_close(T[0, 2], a2[2])
    # label 1 for device 0: only device 1
    torch.testing.assert_close(T[0, 1], a1[1])
    # device 1's teacher for its missing label 2 is still the others' mean: (a0 + a2) / 2
    torch.testing.assert_close(T[1, 2], (a0[2] + a2[2]) / 2)
    # label 0 held by everyone: the usual (sum - own) / 2
    torch.testing.assert_close(T[2, 0], (a0[0] + a1[0]) / 2)
    # a label held by nobody else gives a zero teacher row, and then a zero distillation term
    b0 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    b1 = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    Tb = teachers(torch.stack([b0, b1]))
    assert torch.equal(Tb[0, 2], torch.zeros(L))
    logits = torch.randn(4, L)
    y = torch.tensor([2, 2, 2, 2])
    _, _, kd = fd_loss(logits, y, Tb[0], gamma=1.0)
    assert float(kd) == 0.0
    assert torch.isfinite(Tb).all()


def test_fd_loss_gamma_zero_is_plain_cross_entropy_and_kd_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    teacher = torch.softmax(torch.randn(4, 4), 1)
    loss0, _, kd = fd_loss(logits, y, teacher, gamma=0.0)
    assert torch.equal(loss0, F.cross_entropy(logits, y))
    assert float(kd) > 0  # reported, but not in the loss
    g0 = torch.autograd.grad(loss0, logits)[0]
    gce = torch.autograd.grad(F.cross_entropy(logits, y), logits)[0]
    assert torch.equal(g0, gce)
    # phi(F, q) = -sum_c q_c log F_c, with q = teacher[y_b]
    by_hand = torch.stack([-(teacher[y[b]] * torch.log(torch.softmax(logits[b], 0))).sum() for b in range(6)]).mean()
    torch.testing.assert_close(kd, by_hand.detach())
    loss, _, _ = fd_loss(logits, y, teacher, gamma=0.5)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + 0.5 * by_hand)
    torch.testing.assert_close(soft_cross_entropy(logits, torch.zeros(6, 4)), torch.zeros(6))
    with pytest.raises(ValueError, match="gamma"):
        fd_loss(logits, y, teacher, gamma=-1.0)
    with pytest.raises(ValueError, match="teacher"):
        fd_loss(logits, y, torch.zeros(3, 3), gamma=1.0)


@pytest.mark.parametrize("L", [2, 10, 47])
def test_fd_message_payload_is_L_by_L_float32(L):
    """One FD message carries exactly L*L*32 bits of payload, whatever the model; the wire adds its header."""
    avgs = torch.softmax(torch.randn(L, L), 1)
    msg = wire.encode({"fd.logits": avgs}, {"client": 3, "num_samples": 100, "train_loss": 0.5})
    header = 8 + int.from_bytes(msg[4:8], "little")
    assert (len(msg) - header) * 8 == L * L * 32 == fd_bits_per_message(L)
    back = wire.decode(msg, {"fd.logits": ((L, L), torch.float32)}).tensors["fd.logits"]
    assert torch.equal(back, avgs)


def test_model_spec_forms_and_errors():
    assert ModelSpec.model_validate("mlp").name == "mlp"
    s = ModelSpec.model_validate({"name": "mlp", "hidden": [100]})
    assert s.params == {"hidden": [100]}
    assert ModelSpec.model_validate({"name": "mlp", "params": {"hidden": [7]}}).params == {"hidden": [7]}
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        ModelSpec.model_validate({"name": "resnet9000"})
    with pytest.raises(ValueError, match="hidden"):
        ModelSpec.model_validate({"name": "mlp", "hidden": "wide"})
