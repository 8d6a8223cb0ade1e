"""FAug (Jeong et al. 2018, Sec. 2.2): target labels, seeds, privacy leakage, the cGAN, augmentation, costs;
and Table 1's ``target_labels`` partition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom import wire
from fedloom.algorithms.faug import (
    FAugParams,
    SeedUpload,
    fill_counts,
    find_target_labels,
    from_uint8,
    privacy_leakage,
    run_faug,
    select_seeds,
    to_uint8,
)
from fedloom.data.datasets import DataSource
from fedloom.data.federated import FederatedData
from fedloom.data.partition import partition
from fedloom.gan.cgan import CGANParams, build_generator, num_parameters, train_cgan
from fedloom.rng import torch_generator

torch.set_num_threads(1)
TINY_GAN = CGANParams(z_dim=8, g_hidden=[16], d_hidden=[16], steps=30, batch_size=16)


def _source(n=600, L=4, shape=(1, 6, 6), seed=0) -> DataSource:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % L
    x = torch.rand(n, *shape, generator=g) * 0.5 + (y.float() / (2 * L)).view(-1, 1, 1, 1)
    return DataSource("toy", x.clamp(0, 1), y, x[:40].clone(), y[:40].clone(), L)


def test_target_labels_partition_matches_table1_setup():
    labels = np.repeat(np.arange(10), 1000)
    parts = partition(labels, 4, "target_labels", {"samples_per_client": 1000, "target_labels": 3,
                                                    "keep_per_target": 5}, seed=1)
    assert len(parts) == 4
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    for p in parts:
        counts = np.bincount(labels[p], minlength=10)
        targets = np.flatnonzero(counts <= 5)
        assert len(targets) == 3 and (counts[targets] == 5).all()
        assert len(p) < 1000
        assert counts.sum() == len(p) and counts[np.setdiff1d(np.arange(10), targets)].min() > 50
    assert parts[0].tolist() == partition(labels, 4, "target_labels", {"samples_per_client": 1000}, seed=1)[0].tolist()
    with pytest.raises(ValueError, match="exceed"):
        partition(labels, 11, "target_labels", {"samples_per_client": 1000}, seed=0)
    with pytest.raises(ValueError, match="below the number of labels"):
        partition(labels, 2, "target_labels", {"samples_per_client": 100, "target_labels": 10}, seed=0)


def test_find_target_labels_and_fill_counts():
    counts = torch.tensor([200, 5, 190, 0, 210, 5])
    assert find_target_labels(counts, 0.1) == [1, 3, 5]  # share = 610/6 ~ 101.7; threshold 10.2
    fill = fill_counts(counts, [1, 3, 5], "mean")  # mean of others = 200
    assert fill == {1: 195, 3: 200, 5: 195}
    assert fill_counts(counts, [1, 3, 5], "max") == {1: 205, 3: 210, 5: 205}
    with pytest.raises(ValueError, match="every label is a target"):
        fill_counts(torch.tensor([1, 1]), [0, 1])


def test_seeds_targets_plus_redundant_and_privacy_leakage():
    y = torch.tensor([0] * 20 + [1] * 3 + [2] * 20 + [3] * 20)
    x = torch.rand(len(y), 1, 2, 2)
    p = FAugParams(seeds_per_label=5, redundant_labels=2)
    up = select_seeds(0, x, y, [1], 4, p, torch_generator(0, "s"))
    assert up.targets == [1] and len(up.redundant) == 2 and 1 not in up.redundant
    assert up.x.dtype == torch.uint8 and sorted(torch.bincount(up.y).tolist()) == [0, 3, 5, 5]  # all 3 of label 1
    assert up.bits_formula == 8 * 13 * 4  # 8 bits per pixel
    msg = up.encode()
    assert len(msg) - (8 + int.from_bytes(msg[4:8], "little")) == 13 * 4 + 13  # pixels + uint8 labels
    with pytest.raises(ValueError, match="redundant_labels=5"):
        select_seeds(0, x, y, [1], 4, FAugParams(redundant_labels=5), torch_generator(0, "s"))
    # the paper's PL: device-server |Lt|/(|Lt|+|Lr|); inter-device |Lt^(i)| / |union_j (Lt^(j) u Lr^(j))|
    e = torch.zeros(0, dtype=torch.uint8)
    ups = [SeedUpload(0, e, e.long(), [1, 2, 3], []), SeedUpload(1, e, e.long(), [4], [5, 6, 7]),
           SeedUpload(2, e, e.long(), [8, 9], [1])]
    ds, inter = privacy_leakage(ups)
    assert ds == [1.0, 0.25, 2 / 3]
    assert inter == [3 / 9, 1 / 9, 2 / 9]  # union = {1..9}


def test_uint8_round_trip_is_8_bit_exact():
    x = torch.rand(5, 1, 3, 3)
    q = to_uint8(x)
    assert q.dtype == torch.uint8
    assert (from_uint8(q) - x).abs().max() <= 0.5 / 255 + 1e-7


def test_generator_samples_requested_labels_shape_and_range():
    src = _source()
    G, info = train_cgan(src.train_x, src.train_y, 4, TINY_GAN, seed=0)
    assert info["generator_params"] == num_parameters(G) > 0 and info["steps"] == 30
    labels = torch.tensor([3, 0, 0, 2, 1])
    s = G.sample(labels, torch_generator(0, "g"))
    assert s.shape == (5, 1, 6, 6) and s.dtype == torch.float32
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert torch.equal(s, G.sample(labels, torch_generator(0, "g")))  # seeded
    assert G.sample(torch.tensor([], dtype=torch.long)).shape == (0, 1, 6, 6)
    with pytest.raises(ValueError, match="labels must be in"):
        G.sample(torch.tensor([4]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_cgan(src.train_x * 3, src.train_y, 4, TINY_GAN)
    # the default generator is the 4-layer one (3 hidden blocks + output), sized for CPUs
    G28 = build_generator(10, (1, 28, 28), CGANParams())
    assert sum(isinstance(m, torch.nn.Linear) for m in G28.modules()) == 4


def test_gan_learns_label_conditioning():
    """Two labels with distinct means (dark vs bright): after training, the generated means follow the label."""
    n = 400
    y = torch.arange(n) % 2
    x = (torch.rand(n, 1, 4, 4) * 0.2 + 0.1 + 0.6 * y.float().view(-1, 1, 1, 1))
    p = CGANParams(z_dim=8, g_hidden=[32, 32], d_hidden=[32], steps=300, batch_size=32, lr=1e-3)
    G, _ = train_cgan(x, y, 2, p, seed=0)
    s0 = G.sample(torch.zeros(200, dtype=torch.long), torch_generator(1, "a")).mean()
    s1 = G.sample(torch.ones(200, dtype=torch.long), torch_generator(1, "b")).mean()
    assert float(s1 - s0) > 0.3, (float(s0), float(s1))


def test_run_faug_balances_target_labels_and_counts_bytes():
    src = _source(n=800, L=4)
    labels = src.train_y.numpy()
    parts = partition(labels, 3, "target_labels", {"samples_per_client": 200, "target_labels": 1,
                                                    "keep_per_target": 2}, seed=0)
    data = FederatedData(src, [torch.from_numpy(p) for p in parts])
    p = FAugParams(seeds_per_label=2, redundant_labels=1, gan=TINY_GAN)
    aug, rep = run_faug(data, p, seed=0)
    assert aug.num_clients == 3 and torch.equal(aug.source.test_x, src.test_x)
    for k in range(3):
        before = torch.bincount(data.client_data(k)[1], minlength=4)
        after = torch.bincount(aug.client_data(k)[1], minlength=4)
        (t,) = rep.targets[k]
        assert before[t] == 2 and len(rep.redundant[k]) == 1
        others = [int(before[c]) for c in range(4) if c != t]
        assert int(after[t]) == round(sum(others) / 3)  # filled up to the mean of the other labels
        assert [int(after[c]) for c in range(4) if c != t] == others  # others untouched
        xk, _ = aug.client_data(k)
        assert torch.equal(xk[: len(parts[k])], src.train_x[parts[k]])  # own samples kept, in order
        assert float(xk.min()) >= 0 and float(xk.max()) <= 1
        assert rep.generated[k] == {t: int(after[t] - before[t])}
    assert rep.device_server_pl == [0.5, 0.5, 0.5]  # 1 target, 1 redundant label each
    # costs: 8 bits per seed pixel (2 seeds x 2 labels x 36 pixels); generator 32 bits per parameter
    assert rep.seed_bits_formula == [8 * 4 * 36] * 3
    assert all(b > f // 8 for b, f in zip(rep.seed_bytes, rep.seed_bits_formula))  # + header and labels
    assert rep.generator_bits_formula == 32 * rep.generator_params
    G = build_generator(4, (1, 6, 6), TINY_GAN)
    assert rep.generator_bytes == len(wire.encode(dict(G.state_dict()), {"kind": "faug-generator"}))
    assert rep.generator_bytes >= 4 * rep.generator_params
    # oversampling needs a public pool; the toy dataset has none
    with pytest.raises(ValueError, match="public pool"):
        run_faug(data, FAugParams(oversample=10, gan=TINY_GAN), seed=0)
    _, rep2 = run_faug(data, FAugParams(oversample=10, gan=TINY_GAN), seed=0,
                          pool=(src.train_x[:100], src.train_y[:100]))
    uploaded = {t for ts in rep2.targets for t in ts}  # no redundant labels by default
    assert rep2.server_train_samples == 3 * 2 + 10 * len(uploaded)  # seeds + 10 pool images per uploaded label
