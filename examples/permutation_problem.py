"""The permutation problem behind Fed2 and FedMA, made executable (runs in a few seconds on a CPU).

Hidden units can be reordered without changing what a network computes: W1 W0 x = (W1 P)(P^T W0) x
(Fed2, Yu et al. KDD'21, eq. 1; FedMA, Wang et al. ICLR'20). So "coordinate i" of two models need not mean
the same feature, and averaging coordinate by coordinate, as FedAvg does, can mix unrelated features.

    python examples/permutation_problem.py

1. Train a 2-hidden-layer MLP on the bundled 8x8 digits.
2. Permute its hidden units. The outputs are identical (max |diff| ~ 1e-6).
3. Average the network with its permuted copy coordinate-wise: accuracy collapses.
4. Match the units first (Hungarian algorithm, :mod:`fedloom.algorithms.matching`), then average: the
   original accuracy comes back exactly.
5. A less artificial case: two networks trained from *different* initializations on the same data. The
   coordinate-wise average again falls far below either network. Matching recovers part of the gap; an
   exact recovery is not possible because the two networks learned different features, not the same
   features in a different order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedloom.algorithms.matching import hidden_units, matched_average, permute_units, weighted_mean
from fedloom.data.datasets import load_dataset
from fedloom.models import build_model


def train(seed: int, src, steps: int = 600, hidden=(64, 32)):
    torch.manual_seed(seed)
    m = build_model("mlp", {"hidden": list(hidden)}, src.input_shape, src.num_classes)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(src.train_x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(src.train_x[i]), src.train_y[i]).backward()
        opt.step()
    return m


def accuracy(m, params, src) -> float:
    with torch.no_grad():
        return float((functional_call(m, params, (src.test_x,)).argmax(1) == src.test_y).float().mean())


def main() -> None:
    torch.set_num_threads(1)
    src = load_dataset("digits")
    m = train(0, src)
    units = hidden_units(m)
    a = {k: v.detach().clone() for k, v in m.named_parameters()}

    gen = torch.Generator().manual_seed(1)
    b = dict(a)
    for layer, n in enumerate(units.sizes):
        b = permute_units(b, units, layer, torch.randperm(n, generator=gen))
    with torch.no_grad():
        diff = (functional_call(m, a, (src.test_x,)) - functional_call(m, b, (src.test_x,))).abs().max()
    print(f"network A accuracy                         {accuracy(m, a, src):.3f}")
    print(f"B = A with hidden units permuted: accuracy  {accuracy(m, b, src):.3f}  (max |output diff| {diff:.1e})")
    print(f"coordinate-wise average (A + B) / 2         {accuracy(m, weighted_mean([a, b], [1, 1]), src):.3f}")
    print(f"matched average (Hungarian, layer-wise)     {accuracy(m, matched_average([a, b], [1, 1], units), src):.3f}")

    print("\ntwo networks from different initializations, same data:")
    m2 = train(1, src)
    c = {k: v.detach().clone() for k, v in m2.named_parameters()}
    print(f"  A {accuracy(m, a, src):.3f}   C {accuracy(m, c, src):.3f}")
    print(f"  coordinate-wise average   {accuracy(m, weighted_mean([a, c], [1, 1]), src):.3f}")
    print(f"  matched average           {accuracy(m, matched_average([a, c], [1, 1], units), src):.3f}")


if __name__ == "__main__":
    main()
