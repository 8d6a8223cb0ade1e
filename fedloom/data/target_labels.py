"""The non-IID split of Jeong et al. 2018's Table 1 (FD/FAug), as a registered partitioner ``target_labels``.

Each device draws ``samples_per_client`` training images uniformly at random (disjoint across devices; the
paper's 2,000). Then ``target_labels`` labels are picked at random per device (the paper's 3) and all but
``keep_per_target`` samples of each are deleted (the paper keeps 5, "about 97.5%" deleted). A device ends up
with about 2,000 - 3 * 195 = 1,415 images.

    data: {dataset: mnist, partition: {name: target_labels, samples_per_client: 2000, target_labels: 3}}
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import PARTITIONERS


class TargetLabelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples_per_client: int = Field(2000, ge=1, description="images each device draws uniformly (before the cut)")
    target_labels: int = Field(3, ge=0, description="labels per device cut down to keep_per_target samples")
    keep_per_target: int = Field(5, ge=0, description="samples kept of each target label")


@PARTITIONERS.register("target_labels", TargetLabelParams,
                       "FD/FAug Table 1: n uniform samples per client, then t random labels cut to k samples")
def target_labels(labels: np.ndarray, num_clients: int, p: TargetLabelParams, rng: np.random.Generator
                  ) -> list[np.ndarray]:
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients * p.samples_per_client > n:
        raise ValueError(f"target_labels: {num_clients} clients x {p.samples_per_client} samples exceed the "
                         f"{n} training samples")
    classes = np.unique(labels)
    if p.target_labels >= len(classes):
        raise ValueError(f"target_labels={p.target_labels} must be below the number of labels ({len(classes)})")
    perm = rng.permutation(n)
    out = []
    for k in range(num_clients):
        idx = perm[k * p.samples_per_client : (k + 1) * p.samples_per_client]
        targets = rng.choice(classes, size=p.target_labels, replace=False)
        keep = [idx[~np.isin(labels[idx], targets)]]
        for t in targets:
            of_t = idx[labels[idx] == t]
            keep.append(rng.permutation(of_t)[: p.keep_per_target])
        out.append(np.sort(np.concatenate(keep)).astype(np.int64))
    return out
