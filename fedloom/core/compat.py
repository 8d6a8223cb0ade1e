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
    aggregator: str = "mean"
    max_norm: bool = False
    personalized_models: bool = False  # clients train from per-client models (hierarchical groups)
    averages_models: bool = False  # the server must average models exactly (server optimizer sgd, lr 1)
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    runtime: str = "simulation"  # "simulation" (one process) or "deploy" (Flower SuperNodes)

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
    Rule(("secure_aggregation", "runtime"),
         lambda f: f.runtime == "deploy" and f.secure_aggregation,
         lambda f: "deployed secure aggregation needs the key authority's public key distributed to every node; "
                   "not supported yet by `fedloom deploy` (run it in the simulator)"),
    Rule(("algorithm.name", "runtime"),
         lambda f: f.runtime == "deploy" and not f.uploads_model,
         lambda f: f"algorithm {f.algorithm!r} is evaluated on the devices' own models, which stay on the nodes; "
                   "`fedloom deploy` evaluates on the server (run it in the simulator)"),
    Rule(("server_optimizer", "algorithm.name"),
         lambda f: f.averages_models and (f.server_optimizer != "sgd" or f.server_lr != 1.0 or f.server_momentum != 0),
         lambda f: f"algorithm {f.algorithm!r} averages models; use server_optimizer sgd with lr 1"),
)


def check(features: Features) -> list[str]:
    """One message per broken rule, each naming both fields."""
    return [f"{r.fields[0]} / {r.fields[1]}: {r.why(features)}" for r in RULES if r.broken(features)]
