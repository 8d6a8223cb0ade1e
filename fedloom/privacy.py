"""Differential privacy for federated averaging: DP-FedAvg (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models") with fixed or adaptive clipping (Andrew et al. 2021, "Differentially
Private Learning with Adaptive Clipping"), and a privacy accountant from Google's ``dp-accounting`` library
(RDP), not a hand-written one.

Per round, with cohort size m, clip norm S and noise multiplier z:

* every client update is clipped to L2 norm S;
* ``central`` mode: the (trusted) server adds N(0, (z S)^2 I) to the sum and divides by m;
  ``local`` mode: each client adds N(0, (z S)^2 I) to its own clipped update before sending;
* adaptive clipping: S <- S * exp(-eta_c (b - gamma)), b the noised fraction of clients with norm <= S, estimated
  from the centred count (Andrew et al.). The count noise has std ``count_noise_std`` (default m / 20, as the
  paper recommends; it must be > 0 in central mode); the accountant then uses Andrew et al.'s effective noise
  multiplier z_eff = (z^-2 + (2 sigma_b)^-2)^(-1/2)  (Theorem 1): the clip norm's privacy cost is composed in.

In the round loop :class:`DPAggregator` is the server-pipeline aggregator (central clipping, noise, adaptive
clip, accounting); in ``local`` mode :class:`LocalDPStage` clips and noises on each client, with the clip norm the
server sends in the round's broadcast (``dp_clip``).

Accounting assumption (stated, as in TF Privacy and TFF): each round is treated as Poisson subsampling with
rate q composed with the Gaussian mechanism, although the cohort is drawn as a fixed-size sample. q is the
largest probability that a client is in a round's cohort (:meth:`fedloom.system.CohortPlanner.max_inclusion`):
m / N for uniform sampling; ceil(m (1 + over_selection)) / N with over-selection (a fast client is kept whenever
it is sampled); with diurnal availability, the sampled count over the fewest clients on at any hour. Weighted
sampling has no such simple bound and is refused with ``privacy`` (:mod:`fedloom.core.compat`), as is adaptive
clipping on an exact count in central mode (``count_noise_std: 0``: the published clip norm is not private).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.core.types import Aggregate, ClientReport, ParamSpec, RoundInfo, ServerState
from fedloom.rng import torch_generator
from fedloom.robust import clip_to_norm

Params = dict[str, torch.Tensor]


class PrivacyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str = Field("central", pattern="^(central|local)$", description="who adds the noise")
    clip: float = Field(1.0, gt=0, description="initial L2 clip norm S")
    noise_multiplier: float = Field(1.0, ge=0, description="z: noise std = z * S")
    delta: float = Field(1e-5, gt=0, lt=1)
    adaptive: bool = Field(False, description="adaptive clipping (Andrew et al. 2021)")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="gamma")
    clip_lr: float = Field(0.2, gt=0, description="eta_c (geometric update)")
    count_noise_std: float | None = Field(None, ge=0, description="sigma_b: noise on the clipped count (adaptive); "
                                          "default cohort_size / 20 (Andrew et al.); 0 is refused in central mode")


def local_noise(update: Params, clip: float, noise_multiplier: float, seed: int, rnd: int, client: int) -> Params:
    """Local DP on one client: clip ``update`` to L2 norm ``clip`` and add N(0, (z clip)^2 I), seeded by
    (seed, round, client)."""
    clipped, _ = clip_to_norm(update, clip)
    g = torch_generator(seed, "dp-local", rnd, client)
    sd = noise_multiplier * clip
    return {k: v + sd * torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) for k, v in clipped.items()}


class DPFedAvg:
    """Clipping, noise and accounting, with explicit state (clip norm, rounds accounted)."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int, cohort_size: int, seed: int,
                 sampling_rate: float | None = None):
        self.cfg, self.N, self.m, self.seed = cfg, num_clients, cohort_size, seed
        #: q, the largest per-round probability that a client's update is used (the planner's bound; m / N for
        #: uniform sampling of the cohort)
        self.q = min(1.0, cohort_size / num_clients) if sampling_rate is None else sampling_rate
        self.state = {"clip": cfg.clip, "rounds": 0}

    @property
    def count_noise_std(self) -> float:
        """sigma_b: the configured one, default m / 20 (Andrew et al.'s recommendation)."""
        return self.m / 20 if self.cfg.count_noise_std is None else self.cfg.count_noise_std

    @property
    def effective_noise_multiplier(self) -> float:
        """The accountant's z: with adaptive clipping, the update (z) and the centred count (sensitivity 1/2,
        noise sigma_b) compose into one Gaussian mechanism of z_eff = (z^-2 + (2 sigma_b)^-2)^(-1/2) (Andrew et
        al., Theorem 1); an exact count (sigma_b = 0) has no finite bound."""
        z = self.cfg.noise_multiplier
        if self.cfg.adaptive and self.cfg.mode == "central":
            sb = self.count_noise_std
            return 0.0 if sb == 0 or z == 0 else (z**-2 + (2 * sb) ** -2) ** -0.5
        return z

    def client_side(self, client: int, rnd: int, update: Params, clip: float | None = None) -> Params:
        """Local mode: the client clips (to ``clip``, default the current S) and noises its own update."""
        if self.cfg.mode != "local":
            return update
        return local_noise(update, self.state["clip"] if clip is None else clip, self.cfg.noise_multiplier,
                           self.seed, rnd, client)

    def aggregate(self, rnd: int, updates: list[Params]) -> tuple[Params, dict]:
        """Server side: clip, sum, add central noise, divide by the cohort size m; adapt the clip norm."""
        S = self.state["clip"]
        acc = {k: torch.zeros_like(v) for k, v in updates[0].items()}
        below = 0
        for u in updates:
            c, norm = clip_to_norm(u, S)
            below += norm <= S
            for k, v in c.items():
                acc[k].add_(v)
        if self.cfg.mode == "central" and self.cfg.noise_multiplier > 0:
            g = torch_generator(self.seed, "dp-central", rnd)
            sd = self.cfg.noise_multiplier * S
            for v in acc.values():
                v.add_(torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) * sd)
        agg = {k: v / self.m for k, v in acc.items()}
        info = {"dp_clip": S, "dp_unclipped_fraction": below / max(len(updates), 1)}
        if self.cfg.adaptive:
            # Andrew et al.'s estimate: the centred indicators (b_i - 1/2, sensitivity 1/2) summed and noised, over
            # the expected cohort m; equal to below / m when the whole cohort reports and sigma_b = 0
            g = torch_generator(self.seed, "dp-count", rnd)
            centred = below - len(updates) / 2 + self.count_noise_std * float(torch.randn((), generator=g))
            b = centred / self.m + 0.5
            self.state["clip"] = S * math.exp(-self.cfg.clip_lr * (b - self.cfg.target_quantile))
        self.state["rounds"] += 1
        info["epsilon"] = self.epsilon(self.state["rounds"])
        return agg, info

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (RDP accountant of the dp-accounting library)."""
        from dp_accounting import dp_event, rdp

        z = self.effective_noise_multiplier
        if z == 0:
            return math.inf
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.PoissonSampledDpEvent(self.q, dp_event.GaussianDpEvent(z)), rounds)
        return float(acc.get_epsilon(self.cfg.delta))


class DPAggregator:
    """Server-pipeline aggregator: DP-FedAvg's clipped, noised mean over the cohort size, with accounting."""

    def __init__(self, dp: DPFedAvg):
        self.dp = dp

    def round_settings(self) -> dict[str, Any]:
        """What clients need in local mode: the current clip norm S (adaptive clipping changes it)."""
        return {"dp_clip": self.dp.state["clip"]} if self.dp.cfg.mode == "local" else {}

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports, {"epsilon": self.dp.epsilon(self.dp.state["rounds"])})
        agg, info = self.dp.aggregate(rnd, [r.update for r in reports])
        return Aggregate(agg, reports, info)


class LocalDPStage:
    """Client-pipeline stage (``privacy.mode: local``): clip to the server's S and add N(0, (z S)^2 I)."""

    name = "local_dp"

    def __init__(self, cfg: PrivacyConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    def init(self, client: int) -> Any:
        return None

    def client(self, report: ClientReport, state: Any, info: RoundInfo) -> tuple[ClientReport, Any]:
        clip = info.broadcast_meta.get("dp_clip")
        if not isinstance(clip, (int, float)) or not clip > 0:
            raise ValueError(f"local DP: the round's broadcast carries no valid clip norm (dp_clip={clip!r})")
        noised = local_noise(report.update, float(clip), self.cfg.noise_multiplier, self.seed, info.round, report.client)
        return replace(report, update=noised), None

    def server(self, report: ClientReport) -> ClientReport:
        return report

    def out_spec(self, spec: ParamSpec) -> ParamSpec:
        return spec
