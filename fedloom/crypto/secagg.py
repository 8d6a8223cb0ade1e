"""The round loop's secure-aggregation branch: FedAvg's weighted mean computed on Paillier ciphertexts.

Steps 4 and 5 of :meth:`fedloom.simulation.Simulation.round` become (see :mod:`fedloom.crypto.protocol` for the
roles and the threat model):

4. each client flattens its update, packs ``n_k * update`` (integer weight from the algorithm's
   ``client_weight``; clipped to [-clip, clip], quantized to ``value_bits``) and encrypts it under the key
   authority's public key; ``bytes_up`` is the length of these messages (ciphertexts + header);
5. the server (:class:`~fedloom.crypto.protocol.Aggregator`, public key only) validates each message, rejecting
   bad ones by client, and multiplies the rest; the key authority decrypts only that product, told the
   contributor count and total weight W (dropouts are fine), and returns sum_k n_k update_k / W -- the weighted
   mean, which the loop applies with the server optimizer as usual.

Only algorithms whose aggregation is the base weighted mean qualify (FedAvg, FedSGD, FedProx, local SGD).
Example config section (``Simulation(cfg, secure_aggregation={...})``)::

    secure_aggregation: {key_bits: 2048, value_bits: 16, clip: 0.5, randomness: djn}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.crypto.packing import PackingSpec
from fedloom.crypto.parallel import ParallelEncryptor
from fedloom.crypto.protocol import Aggregator, Client, KeyAuthority
from fedloom.crypto.randomness import RandomnessSpec, build_randomness
from fedloom.rng import numpy_rng

log = logging.getLogger("fedloom")


class SecureAggregationConfig(BaseModel):
    """The ``secure_aggregation`` section: one documented field each."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="run steps 4-5 on Paillier ciphertexts")
    key_bits: int = Field(2048, ge=512, description="bits of the Paillier modulus n (2048/3072; 1024 for tests)")
    value_bits: int = Field(16, ge=1, le=48, description="quantization bits q per value")
    clip: float = Field(1.0, gt=0, description="update values are clipped to [-clip, clip] before quantization")
    stochastic_rounding: bool = Field(False, description="unbiased stochastic rounding instead of nearest")
    randomness: Literal["fresh", "pool", "djn"] = Field("fresh", description="where r^n comes from")
    djn_method: Literal["table", "powmod_sec"] = Field("table", description="DJN: fixed-base table or constant-time")
    workers: int = Field(1, ge=1, description="encryption / decryption processes (shared by the simulated parties)")
    min_contributors: int = Field(1, ge=1, description="the key authority refuses sums of fewer clients")


class SecureAggregation:
    """Client, server and key-authority sides of one simulated run (all three live in this process, but only
    through their own objects: the :class:`Aggregator` never holds the secret key)."""

    def __init__(self, cfg: SecureAggregationConfig, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 capacity: int, seed: int, weight_fn: Callable[[Mapping[str, Any]], float],
                 authority: KeyAuthority | None = None, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.expected = dict(expected)
        self.sizes = [int(np.prod(s)) for s, _ in self.expected.values()]
        self.length = sum(self.sizes)
        self.seed = seed
        self.weight_fn = weight_fn
        self.device = torch.device(device)
        self.authority = authority or KeyAuthority(cfg.key_bits, min_contributors=cfg.min_contributors,
                                                   workers=cfg.workers)
        pk = self.authority.public_key
        self.public_key = pk
        self.spec = PackingSpec(pk.n_bits, cfg.value_bits, cfg.clip, capacity, cfg.stochastic_rounding)
        rspec = RandomnessSpec("djn", {"method": cfg.djn_method}) if cfg.randomness == "djn" else RandomnessSpec(
            cfg.randomness)
        self.randomness = build_randomness(pk, rspec)  # DJN: one base h_s for every simulated client
        self.encryptor = (ParallelEncryptor(pk, self.randomness, cfg.workers) if cfg.workers > 1 else None)
        self.aggregator = Aggregator(pk, self.spec, self.length)
        self.round_info: dict[str, Any] = {}

    def close(self) -> None:
        if self.encryptor is not None:
            self.encryptor.close()

    # -- step 4, on client k ----------------------------------------------------------------------
    def flatten(self, update: Mapping[str, torch.Tensor]) -> np.ndarray:
        if set(update) != set(self.expected):
            raise ValueError(f"update entries {sorted(update)} != model entries {sorted(self.expected)}")
        return np.concatenate([update[k].detach().to("cpu", torch.float64).reshape(-1).numpy()
                               for k in self.expected])

    def encode(self, rnd: int, client: int, out: Any) -> bytes:
        meta = {"num_samples": out.num_samples, "train_loss": out.train_loss, **out.meta}
        w = self.weight_fn(meta)
        if w != int(w) or w < 1:
            raise ValueError(f"secure aggregation needs positive integer client weights, client {client} has {w}")
        rng = numpy_rng(self.seed, "secagg-rounding", rnd, client) if self.spec.stochastic else None
        c = Client(client, self.public_key, self.spec, self.randomness, self.encryptor)
        return c.encrypt(self.flatten(out.update), int(w), rng=rng, meta=meta)

    # -- step 5, server then key authority -------------------------------------------------------
    def aggregate(self, rnd: int, cohort: list[int], msgs: list[bytes]
                  ) -> tuple[list[dict[str, torch.Tensor]], list[float], list[dict], list[dict]]:
        """(updates, weights, metas, rejected) for step 6: the single decrypted weighted mean with weight 1."""
        enc_sum, rejected = self.aggregator.aggregate(list(zip(cohort, msgs)))
        for r in rejected:
            log.warning("round %d: rejected encrypted update from client %s: %s", rnd, r["client"], r["reason"])
        rejected = [{"client": r["client"], "reason": r["reason"]} for r in rejected]
        self.round_info = {"secagg_clipped": 0, "secagg_bytes_to_authority": 0}
        if enc_sum is None:
            return [], [], [], rejected
        to_authority = enc_sum.to_bytes(self.public_key)  # server -> key authority: the product only
        res = self.authority.decrypt_sum(to_authority, self.spec)
        self.round_info = {"secagg_clipped": res.clipped, "secagg_bytes_to_authority": len(to_authority)}
        mean, off, upd = torch.from_numpy(res.mean), 0, {}
        for (k, (shape, dt)), size in zip(self.expected.items(), self.sizes):
            upd[k] = mean[off : off + size].reshape(shape).to(self.device, dt)
            off += size
        metas = [self.aggregator.metas[k] for k in enc_sum.contributors]
        return [upd], [1.0], metas, rejected


def build_secure_aggregation(sim: Any, cfg: SecureAggregationConfig | Mapping[str, Any] | None
                             ) -> SecureAggregation | None:
    """The branch for a :class:`~fedloom.simulation.Simulation`, or None when not configured/enabled."""
    if cfg is None:
        return None
    cfg = cfg if isinstance(cfg, SecureAggregationConfig) else SecureAggregationConfig.model_validate(dict(cfg))
    if not cfg.enabled:
        return None
    from fedloom.algorithms.base import Algorithm

    alg = sim.algorithm
    for name in ("aggregate", "server_aggregate"):
        if getattr(type(alg), name, None) is not getattr(Algorithm, name, None):
            raise ValueError(f"secure_aggregation: algorithm {sim.cfg.algorithm.name!r} overrides {name}; only the "
                             "weighted mean can be computed on Paillier ciphertexts")
    if getattr(sim.cfg, "codecs", None):
        raise ValueError("secure_aggregation: cannot be combined with a codec chain (encryption replaces it)")
    if getattr(sim, "dp", None) is not None:
        raise ValueError("secure_aggregation: cannot be combined with privacy (DP-FedAvg clips and noises plaintext "
                         "updates on the server)")
    robust = getattr(sim, "aggregator", None)
    if robust is not None and (robust.name != "mean" or getattr(robust.p, "max_norm", None) is not None):
        raise ValueError(f"secure_aggregation: aggregator {robust.name!r} needs plaintext updates; only the "
                         "weighted mean can be computed on Paillier ciphertexts")
    weights = []
    for n_k in sim.data.client_sizes.tolist():
        w = alg.client_weight({"num_samples": int(n_k)})
        weights.append(int(w))
    capacity = sum(sorted(weights, reverse=True)[: sim.cfg.cohort_size])
    return SecureAggregation(cfg, sim.upload, max(capacity, 1), sim.cfg.seed, alg.client_weight, device=sim.device)
