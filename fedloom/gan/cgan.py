"""A small conditional GAN for FAug (Jeong et al. 2018, Sec. 2.2; Mirza & Osindero 2014's conditioning, with
Odena et al. 2017's auxiliary classifier).

The paper's server trains a conditional GAN with a 4-layer generator of 1,493,520 parameters and a 4-layer
discriminator. This one keeps the 4 + 4 linear layers but is sized to train on 2 CPU cores in a minute or two:
with the defaults the generator has 4 linear layers (z + one-hot label -> 128 -> 256 -> 512 -> pixels, with
BatchNorm) and 578,192 parameters on MNIST, the discriminator 4 (pixels + one-hot -> 512 -> 256 -> 128 ->
1 real/fake logit + L class logits).

Training is the non-saturating GAN game with Adam (lr 2e-4, beta1 0.5), one-sided label smoothing and, by
default, the AC-GAN auxiliary classification loss on both players: a concatenation-conditioned MLP GAN alone
took thousands of CPU steps before its samples followed their label (measured: ~10-30% of generated MNIST
digits classified as their label after 2,000 steps, against ~75-90% with the auxiliary loss). Minibatches draw
labels uniformly over the labels present in the training set, so a label with few seeds is not drowned by one
with many. The generator ends in (tanh + 1) / 2, so samples lie in [0, 1] like fedloom's image datasets.

Example::

    gen, info = train_cgan(x, y, num_classes=10, params=CGANParams(steps=2000), seed=0)
    imgs = gen.sample(torch.tensor([3, 3, 7]), torch_generator(0, "faug"))   # [3, 1, 28, 28] in [0, 1]
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedloom.rng import torch_generator


class CGANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z_dim: int = Field(64, ge=1, description="latent size")
    g_hidden: list[int] = Field(default_factory=lambda: [128, 256, 512], min_length=1,
                                description="generator hidden widths (3 -> a 4-layer generator, as in the paper)")
    d_hidden: list[int] = Field(default_factory=lambda: [512, 256, 128], min_length=1,
                                description="discriminator hidden widths (3 -> 4 layers)")
    steps: int = Field(3000, ge=1, description="generator updates (one discriminator update each)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of both players")
    beta1: float = Field(0.5, ge=0, lt=1)
    smooth: float = Field(0.9, gt=0, le=1, description="one-sided label smoothing: real target for D")
    dropout: float = Field(0.3, ge=0, lt=1, description="discriminator dropout")
    aux_classifier: bool = Field(True, description="AC-GAN: D also classifies, G is rewarded for its label")


class Generator(nn.Module):
    """G(z, y): latent z and one-hot label y -> an image in [0, 1] of ``out_shape``.

    Linear -> BatchNorm -> LeakyReLU blocks, then a linear layer and (tanh + 1) / 2. BatchNorm is fine here:
    the generator is trained on the server and only sampled (in eval mode) on the devices; it is never part
    of a vmapped client model.
    """

    def __init__(self, z_dim: int, num_classes: int, out_shape: tuple[int, ...], hidden: list[int]):
        super().__init__()
        self.z_dim, self.num_classes, self.out_shape = z_dim, num_classes, tuple(out_shape)
        self.hidden = list(hidden)
        layers: list[nn.Module] = []
        d = z_dim + num_classes
        for h in hidden:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.2)]
            d = h
        layers += [nn.Linear(d, math.prod(out_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
        return ((self.net(h) + 1) / 2).view(-1, *self.out_shape)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, gen: torch.Generator | None = None, batch_size: int = 1024) -> torch.Tensor:
        """Images of the requested ``labels`` ([n] int64) -> [n, *out_shape] in [0, 1]."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        dev = next(self.parameters()).device
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(labels), batch_size):
            y = labels[i : i + batch_size]
            z = torch.randn(len(y), self.z_dim, generator=gen).to(dev)
            out.append(self(z, y.to(dev)).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.empty(0, *self.out_shape)


class Discriminator(nn.Module):
    """D(x, y): image and one-hot label -> a real/fake logit and, with ``aux_classes``, class logits (AC-GAN,
    Odena et al. 2017: the auxiliary classifier makes the generator respect its label within a few hundred
    steps, where a plain concatenation-conditioned MLP GAN needs thousands)."""

    def __init__(self, num_classes: int, in_shape: tuple[int, ...], hidden: list[int], dropout: float = 0.3,
                 aux_classes: bool = True):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        d = math.prod(in_shape) + num_classes
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])
            d = h
        layers.append(nn.Linear(d, 1 + (num_classes if aux_classes else 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logit [B], class logits [B, L] or [B, 0]); images in [0, 1] are fed as 2x - 1."""
        out = self.net(torch.cat([x.flatten(1) * 2 - 1, F.one_hot(y, self.num_classes).to(x.dtype)], 1))
        return out[:, 0], out[:, 1:]


def build_generator(num_classes: int, out_shape: tuple[int, ...], p: CGANParams) -> Generator:
    return Generator(p.z_dim, num_classes, out_shape, p.g_hidden)


def num_parameters(m: nn.Module) -> int:
    return sum(t.numel() for t in m.parameters())


def train_cgan(x: torch.Tensor, y: torch.Tensor, num_classes: int, params: CGANParams | None = None,
               seed: int = 0) -> tuple[Generator, dict]:
    """Train a conditional GAN on images ``x`` ([N, ...] in [0, 1]) with labels ``y`` ([N]).

    Returns the generator and an info dict (parameter counts, final losses, seconds). Every draw comes from
    generators derived from ``seed``.
    """
    p = params or CGANParams()
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"train_cgan needs matching non-empty x and y, got {len(x)} and {len(y)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("train_cgan expects images in [0, 1]")
    t0 = time.perf_counter()
    shape = tuple(x.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = build_generator(num_classes, shape, p)
        D = Discriminator(num_classes, shape, p.d_hidden, p.dropout, p.aux_classifier)
    g = torch_generator(seed, "cgan-train")
    opt_g = torch.optim.Adam(G.parameters(), lr=p.lr, betas=(p.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=p.lr, betas=(p.beta1, 0.999))
    labels = torch.unique(y)
    by_label = [torch.nonzero(y == c).flatten() for c in labels.tolist()]
    sizes = torch.tensor([len(i) for i in by_label])
    B = p.batch_size
    real_t = torch.full((B,), p.smooth)
    fake_t = torch.zeros(B)
    d_loss = g_loss = float("nan")
    for _ in range(p.steps):
        li = torch.randint(len(labels), (B,), generator=g)  # labels uniform over those present
        pos = (torch.rand(B, generator=g) * sizes[li]).long()
        idx = torch.stack([by_label[a][b] for a, b in zip(li.tolist(), pos.tolist())])
        xr, yr = x[idx], y[idx]
        z = torch.randn(B, p.z_dim, generator=g)
        yf = labels[torch.randint(len(labels), (B,), generator=g)]
        xf = G(z, yf)
        dr, cr = D(xr, yr)
        df, cf = D(xf.detach(), yf)
        ld = F.binary_cross_entropy_with_logits(dr, real_t) + F.binary_cross_entropy_with_logits(df, fake_t)
        if p.aux_classifier:
            ld = ld + F.cross_entropy(cr, yr) + F.cross_entropy(cf, yf)
        opt_d.zero_grad(set_to_none=True)
        ld.backward()
        opt_d.step()
        dg, cg = D(xf, yf)
        lg = F.binary_cross_entropy_with_logits(dg, torch.ones(B))
        if p.aux_classifier:
            lg = lg + F.cross_entropy(cg, yf)
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        d_loss, g_loss = float(ld.detach()), float(lg.detach())
    G.eval()
    info = {"generator_params": num_parameters(G), "discriminator_params": num_parameters(D), "steps": p.steps,
            "train_samples": len(x), "labels": labels.tolist(), "d_loss": d_loss, "g_loss": g_loss,
            "seconds": time.perf_counter() - t0}
    return G, info
