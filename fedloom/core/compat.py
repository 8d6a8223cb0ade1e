"""Which options work together: one table of rules, consulted by config validation (before anything is written)
and by :func:`fedloom.build.build_run` for runs built from Python.

A rule names the two config fields that conflict and says why; :func:`check` returns one message per broken
rule, ``"<field a> / <field b>: <why>"``. The facts a rule reads are gathered once into :class:`Features`
(from the config and the components' declared traits), so no component re-derives them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Features:
    """What the compatibility rules need to know about a run."""

    algorithm: str
    plain_mean: bool = True  # the algorithm aggregates by the plain weighted mean of model updates
    custom_client: bool = False  # client work is the algorithm's own code, not local SGD on a loss
    uploads_model: bool = True  # uploads are model updates (FD uploads per-label logits)
    algorithm_data: str = "labelled"  # what the algorithm's clients hold: labelled data or RL environments
    dataset: str = "digits"
    dataset_kind: str = "labelled"
    codecs: tuple[str, ...] = ()
    structured_codecs: tuple[str, ...] = ()
    secure_aggregation: bool = False
    privacy: bool = False
    dp_exact_count: bool = False  # privacy.adaptive in central mode with count_noise_std 0 (an exact clipped count)
    sampling: str = "uniform"  # system.sampling
    aggregator: str = "mean"
    max_norm: bool = False
    personalized_models: bool = False  # clients train from per-client models (hierarchical groups)
    averages_models: bool = False  # the server must average models exactly (server optimizer sgd, lr 1)
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    runtime: str = "simulation"  # "simulation" (one process) or "deploy" (Flower SuperNodes)
    client_optimizer: str = "sgd"  # client.optimizer.name
    optimizer_persist: bool = False  # client.optimizer.persist: optimizer state kept between rounds
    client_momentum: float = 0.0
    sgd_only: str = ""  # why the algorithm assumes clients run SGD restarted each round ("" = it does not)

    @property
    def stateful_optimizer(self) -> bool:
        """The clients' optimizer is not plain SGD restarted every round."""
        return self.client_optimizer != "sgd" or (self.optimizer_persist and self.client_momentum > 0)

    @property
    def robust(self) -> bool:
        return self.aggregator != "mean" or self.max_norm


@dataclass(frozen=True)
class Rule:
    fields: tuple[str, str]
    broken: Callable[[Features], bool]
    why: Callable[[Features], str]


RULES: tuple[Rule, ...] = (
    Rule(("data.dataset", "algorithm.name"),
         lambda f: f.dataset_kind != f.algorithm_data,
         lambda f: (f"algorithm {f.algorithm!r} needs an RL environment, got {f.dataset!r}"
                    if f.algorithm_data == "environment" else
                    f"algorithm {f.algorithm!r} needs a labelled dataset, got {f.dataset!r} (an environment: use "
                    "fedppo or fedtrpo)")),
    Rule(("secure_aggregation", "codecs"),
         lambda f: f.secure_aggregation and bool(f.codecs),
         lambda f: "encryption replaces the codec chain; they cannot be combined"),
    Rule(("secure_aggregation", "privacy"),
         lambda f: f.secure_aggregation and f.privacy,
         lambda f: "DP-FedAvg clips and noises plaintext updates on the server; it cannot run on ciphertexts"),
    Rule(("secure_aggregation", "aggregator"),
         lambda f: f.secure_aggregation and f.robust,
         lambda f: f"only the weighted mean can be computed on ciphertexts; aggregator {f.aggregator!r}"
                   + (" with max_norm" if f.max_norm else "") + " needs plaintext updates"),
    Rule(("secure_aggregation", "algorithm.name"),
         lambda f: f.secure_aggregation and not f.plain_mean,
         lambda f: f"algorithm {f.algorithm!r} aggregates its own way; only the weighted mean can be computed on "
                   "Paillier ciphertexts"),
    Rule(("privacy", "aggregator"),
         lambda f: f.privacy and f.robust,
         lambda f: f"DP-FedAvg aggregates by a clipped, noised mean; got aggregator {f.aggregator!r}"
                   + (" with max_norm (DP clips already: use privacy.clip)" if f.max_norm else "")),
    Rule(("privacy", "algorithm.name"),
         lambda f: f.privacy and not f.plain_mean,
         lambda f: f"algorithm {f.algorithm!r} aggregates its own way (structured or aligned averaging); "
                   "DP-FedAvg needs the plain weighted mean"),
    Rule(("privacy.adaptive", "privacy.count_noise_std"),
         lambda f: f.privacy and f.dp_exact_count,
         lambda f: "adaptive clipping publishes a clip norm computed from the count of clipped clients; with "
                   "count_noise_std 0 that count is exact and no epsilon bounds it (leave it unset: cohort_size / 20)"),
    Rule(("privacy", "system.sampling"),
         lambda f: f.privacy and f.sampling != "uniform",
         lambda f: f"{f.sampling} sampling includes some clients more often than cohort_size / num_clients, which the "
                   "DP accountant cannot bound; use system.sampling uniform"),
    Rule(("aggregator", "algorithm.name"),
         lambda f: f.robust and not f.plain_mean,
         lambda f: f"algorithm {f.algorithm!r} aggregates its own way (structured or aligned averaging); robust "
                   "rules need the plain weighted mean"),
    Rule(("codecs", "algorithm.name"),
         lambda f: bool(f.codecs) and not f.uploads_model,
         lambda f: f"algorithm {f.algorithm!r} does not upload a model update; codecs compress model updates"),
    Rule(("codecs", "algorithm.name"),
         lambda f: bool(f.structured_codecs) and f.uploads_model and (f.custom_client or f.personalized_models),
         lambda f: f"structured codecs ({', '.join(f.structured_codecs)}) restrict local SGD on a loss around one "
                   f"shared model; algorithm {f.algorithm!r} "
                   + ("runs its own client code" if f.custom_client else "trains per-client models")),
    Rule(("algorithm.name", "runtime"),
         lambda f: f.runtime == "deploy" and not f.uploads_model,
         lambda f: f"algorithm {f.algorithm!r} is evaluated on the devices' own models, which stay on the nodes; "
                   "`fedloom deploy` evaluates on the server (run it in the simulator)"),
    Rule(("server_optimizer", "algorithm.name"),
         lambda f: f.averages_models and (f.server_optimizer != "sgd" or f.server_lr != 1.0 or f.server_momentum != 0),
         lambda f: f"algorithm {f.algorithm!r} averages models; use server_optimizer sgd with lr 1"),
    Rule(("client.optimizer", "algorithm.name"),
         lambda f: f.custom_client and (f.client_optimizer != "sgd" or f.optimizer_persist),
         lambda f: f"algorithm {f.algorithm!r} runs its own client code with its own optimizer; client.optimizer "
                   f"{f.client_optimizer}" + (" with persist" if f.optimizer_persist else "")
                   + " applies to local SGD on a loss"),
    Rule(("client.optimizer", "algorithm.name"),
         lambda f: bool(f.sgd_only) and not f.custom_client and f.stateful_optimizer,
         lambda f: f"algorithm {f.algorithm!r} needs plain client SGD restarted each round: {f.sgd_only}; got "
                   + (f"client.optimizer {f.client_optimizer}" if f.client_optimizer != "sgd"
                      else "momentum kept between rounds (client.optimizer.persist)")),
    Rule(("client.optimizer", "codecs"),
         lambda f: f.optimizer_persist and bool(f.structured_codecs),
         lambda f: f"structured codecs ({', '.join(f.structured_codecs)}) train fresh variables each round (a new "
                   "random basis or mask); an optimizer state kept between rounds would not match them"),
    Rule(("client.optimizer", "runtime"),
         lambda f: f.runtime == "deploy" and f.optimizer_persist,
         lambda f: "client.optimizer.persist keeps optimizer state with the simulated clients; not supported yet by "
                   "`fedloom deploy` (nodes keep only algorithm and pipeline state; run it in the simulator)"),
)


def check(features: Features) -> list[str]:
    """One message per broken rule, each naming both fields."""
    return [f"{r.fields[0]} / {r.fields[1]}: {r.why(features)}" for r in RULES if r.broken(features)]
