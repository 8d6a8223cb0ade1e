"""Secure aggregation in the round's pipelines: FedAvg's weighted mean computed on Paillier ciphertexts.

Steps 4 and 5 of the round (:mod:`fedloom.core.loop`) become, with :class:`SecAggEncoder` as the client
pipeline's encoder and :class:`CiphertextSum` as the server's aggregator (see :mod:`fedloom.crypto.protocol` for
the roles and the threat model):

4. each client flattens its update, packs ``n_k * update`` (integer weight: n_k, or 1 under ``weighting:
   uniform``; clipped to [-clip, clip], quantized to ``value_bits``) and encrypts it under the key
   authority's public key; ``bytes_up`` is the length of these messages (ciphertexts + header);
5. the server (:class:`~fedloom.crypto.protocol.Aggregator`, public key only) validates each message, rejecting
   bad ones by client, and multiplies the rest; the key authority decrypts only that product, told the
   contributor count and total weight W (dropouts are fine), and returns sum_k n_k update_k / W -- the weighted
   mean, which the loop applies with the server optimizer as usual.

Only algorithms whose aggregation is the plain weighted mean qualify (``Traits.plain_mean``: FedAvg, FedSGD,
FedProx, local SGD, SCAFFOLD, FedPPO/TRPO); :mod:`fedloom.core.compat` refuses the rest at validation.
Example config section::

    secure_aggregation: {key_bits: 2048, value_bits: 16, clip: 0.5, randomness: djn}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.core.pipeline import report_from
from fedloom.core.types import Aggregate, ClientReport, ParamSpec, RoundInfo, ServerState
from fedloom.crypto.packing import PackingSpec
from fedloom.crypto.paillier import CryptoError
from fedloom.crypto.parallel import ParallelEncryptor
from fedloom.crypto.protocol import Aggregator, BadMessage, Client, KeyAuthority
from fedloom.crypto.randomness import RandomnessSpec, build_randomness
from fedloom.rng import numpy_rng
from fedloom.wire import MessageError

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
    authority: str | None = Field(None, description="URL of a key authority process (python -m "
                                  "fedloom.crypto.authority): the public key comes from it and only aggregates go "
                                  "to it; null = an in-process authority. `fedloom deploy --local` starts one")
    authority_ca: str | None = Field(None, description="CA certificate (PEM) that verifies an https authority")


class SecureAggregation:
    """Client, server and key-authority sides of one run. Simulated, all three live in this process, but only
    through their own objects (the :class:`Aggregator` never holds the secret key); with
    ``secure_aggregation.authority`` set (``fedloom deploy``) the key authority is another process
    (:class:`~fedloom.crypto.authority.RemoteAuthority`) and no secret key is in this one at all."""

    def __init__(self, cfg: SecureAggregationConfig, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 capacity: int, seed: int, weighting: str = "samples", authority: Any = None,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.expected = dict(expected)
        self.sizes = [int(np.prod(s)) for s, _ in self.expected.values()]
        self.length = sum(self.sizes)
        self.seed = seed
        self.weighting = weighting
        self.device = torch.device(device)
        if authority is None and cfg.authority:  # the key authority is another process: public key only here
            from fedloom.crypto.authority import RemoteAuthority

            authority = RemoteAuthority(cfg.authority, cfg.authority_ca)
        self.authority = authority or KeyAuthority(cfg.key_bits, min_contributors=cfg.min_contributors,
                                                   workers=cfg.workers)
        pk = self.authority.public_key
        if pk.n_bits != cfg.key_bits:
            raise CryptoError(f"the key authority's key has {pk.n_bits} bits, secure_aggregation.key_bits is "
                              f"{cfg.key_bits}")
        self.public_key = pk
        self.spec = PackingSpec(pk.n_bits, cfg.value_bits, cfg.clip, capacity, cfg.stochastic_rounding)
        rspec = RandomnessSpec("djn", {"method": cfg.djn_method}) if cfg.randomness == "djn" else RandomnessSpec(
            cfg.randomness)
        self.randomness = build_randomness(pk, rspec)  # DJN: one base h_s for every simulated client
        self.encryptor = (ParallelEncryptor(pk, self.randomness, cfg.workers) if cfg.workers > 1 else None)
        self.aggregator = Aggregator(pk, self.spec, self.length)

    def close(self) -> None:
        if self.encryptor is not None:
            self.encryptor.close()

    # -- step 4, on client k ----------------------------------------------------------------------
    def flatten(self, update: Mapping[str, torch.Tensor]) -> np.ndarray:
        if set(update) != set(self.expected):
            raise ValueError(f"update entries {sorted(update)} != model entries {sorted(self.expected)}")
        return np.concatenate([update[k].detach().to("cpu", torch.float64).reshape(-1).numpy()
                               for k in self.expected])

    def encode(self, rnd: int, report: ClientReport) -> bytes:
        meta = {"num_samples": report.num_samples, "train_loss": report.train_loss, **report.meta}
        w = float(report.num_samples) if self.weighting == "samples" else 1.0
        if w != int(w) or w < 1:
            raise ValueError(f"secure aggregation needs positive integer client weights, client {report.client} "
                             f"has {w}")
        rng = numpy_rng(self.seed, "secagg-rounding", rnd, report.client) if self.spec.stochastic else None
        c = Client(report.client, self.public_key, self.spec, self.randomness, self.encryptor)
        return c.encrypt(self.flatten(report.update), int(w), rng=rng, meta=meta)

    # -- step 5a, on the server: one message ------------------------------------------------------
    def decode(self, client: int, msg: bytes) -> ClientReport:
        """Validate one encrypted message (the server cannot read its values): a report whose payload is the
        parsed ciphertexts and header."""
        try:
            cts, header = self.aggregator.parse(client, msg)
        except BadMessage as e:
            raise MessageError(e.reason) from None
        return report_from(client, {}, dict(header.get("meta") or {}), payload=(cts, header))

    # -- step 5b, server then key authority -----------------------------------------------------
    def aggregate(self, rnd: int, reports: Sequence[ClientReport]) -> Aggregate:
        """The product of the accepted ciphertexts, decrypted by the key authority as the weighted mean."""
        agg = self.aggregator
        agg.reset()
        rejected, by_client = [], {}
        for r in reports:
            try:
                agg.add(r.client, *r.payload)
                by_client[r.client] = r
            except BadMessage as e:
                log.warning("round %d: rejected encrypted update from client %s: %s", rnd, r.client, e.reason)
                rejected.append({"client": r.client, "reason": e.reason})
        info: dict[str, Any] = {"secagg_clipped": 0, "secagg_bytes_to_authority": 0}
        enc_sum = agg.result()
        if enc_sum is None:
            return Aggregate(None, [], info, rejected)
        contributors = [by_client[k] for k in enc_sum.contributors]
        to_authority = enc_sum.to_bytes(self.public_key)  # server -> key authority: the product only
        info["secagg_bytes_to_authority"] = len(to_authority)
        try:
            res = self.authority.decrypt_sum(to_authority, self.spec)
        except CryptoError as e:  # e.g. fewer contributors than min_contributors (dropouts): no update this round
            log.warning("round %d: the key authority refused to decrypt: %s", rnd, e)
            return Aggregate(None, contributors, {**info, "secagg_refused": str(e)}, rejected)
        info["secagg_clipped"] = res.clipped
        mean, off, upd = torch.from_numpy(res.mean), 0, {}
        for (k, (shape, dt)), size in zip(self.expected.items(), self.sizes):
            upd[k] = mean[off : off + size].reshape(shape).to(self.device, dt)
            off += size
        return Aggregate(upd, contributors, info, rejected)


class SecAggEncoder:
    """The client pipeline's last step under secure aggregation: encrypt (client), validate (server)."""

    def __init__(self, sa: SecureAggregation):
        self.sa = sa

    def wire_spec(self, spec: ParamSpec) -> ParamSpec:
        return spec

    def encode(self, report: ClientReport, info: RoundInfo) -> bytes:
        return self.sa.encode(info.round, report)

    def decode(self, client: int, msg: bytes, spec: ParamSpec) -> ClientReport:
        return self.sa.decode(client, msg)


class CiphertextSum:
    """The server pipeline's aggregator under secure aggregation: the ciphertext product, decrypted by the key
    authority into the weighted mean (the server never sees an individual update)."""

    def __init__(self, sa: SecureAggregation):
        self.sa = sa

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        return self.sa.aggregate(rnd, reports)


def build_secure_aggregation(cfg: SecureAggregationConfig | Mapping[str, Any] | None, upload: ParamSpec,
                             client_sizes: torch.Tensor, cohort_size: int, weighting: str, seed: int,
                             device: torch.device | str = "cpu") -> SecureAggregation | None:
    """The three parties for a run, or None when not configured/enabled. The packing capacity is the largest
    total weight a cohort can have (the ``cohort_size`` largest client weights)."""
    if cfg is None:
        return None
    cfg = cfg if isinstance(cfg, SecureAggregationConfig) else SecureAggregationConfig.model_validate(dict(cfg))
    if not cfg.enabled:
        return None
    if weighting == "samples":
        top = torch.topk(client_sizes.to(torch.int64), min(cohort_size, len(client_sizes))).values
        capacity = int(top.sum())
    else:
        capacity = cohort_size
    return SecureAggregation(cfg, upload, max(capacity, 1), seed, weighting, device=device)
