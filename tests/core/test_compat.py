"""The compatibility rules: each one fires on its conflict, names both fields, and stays quiet otherwise."""

import pytest

from fedloom.core.compat import RULES, Features, check

# one conflicting run per rule (by the fields it names), with the words its message must contain
CASES = [
    (dict(algorithm="fedavg", dataset="cartpole", dataset_kind="environment"), "data.dataset / algorithm.name",
     "needs a labelled dataset"),
    (dict(algorithm="fedppo", algorithm_data="environment", custom_client=True), "data.dataset / algorithm.name",
     "needs an RL environment"),
    (dict(algorithm="fedavg", secure_aggregation=True, codecs=("quantize",)), "secure_aggregation / codecs",
     "replaces the codec chain"),
    (dict(algorithm="fedavg", secure_aggregation=True, privacy=True), "secure_aggregation / privacy", "plaintext"),
    (dict(algorithm="fedavg", secure_aggregation=True, aggregator="krum"), "secure_aggregation / aggregator", "krum"),
    (dict(algorithm="fedavg", secure_aggregation=True, max_norm=True), "secure_aggregation / aggregator", "max_norm"),
    (dict(algorithm="fed2", secure_aggregation=True, plain_mean=False), "secure_aggregation / algorithm.name",
     "aggregates its own way"),
    (dict(algorithm="fedavg", privacy=True, aggregator="median"), "privacy / aggregator", "median"),
    (dict(algorithm="fedavg", privacy=True, max_norm=True), "privacy / aggregator", "DP clips already"),
    (dict(algorithm="heterofl", privacy=True, plain_mean=False), "privacy / algorithm.name", "plain weighted mean"),
    (dict(algorithm="fedavg", privacy=True, dp_exact_count=True), "privacy.adaptive / privacy.count_noise_std",
     "no epsilon bounds it"),
    (dict(algorithm="fedavg", privacy=True, sampling="weighted"), "privacy / system.sampling", "cannot bound"),
    (dict(algorithm="matched_avg", aggregator="median", plain_mean=False), "aggregator / algorithm.name",
     "robust rules"),
    (dict(algorithm="fd", codecs=("quantize",), uploads_model=False, plain_mean=False), "codecs / algorithm.name",
     "does not upload a model update"),
    (dict(algorithm="fedppo", codecs=("lowrank",), structured_codecs=("lowrank",), custom_client=True,
          algorithm_data="environment", dataset_kind="environment"), "codecs / algorithm.name", "own client code"),
    (dict(algorithm="hierarchical", codecs=("mask",), structured_codecs=("mask",), personalized_models=True,
          plain_mean=False), "codecs / algorithm.name", "per-client models"),
    (dict(algorithm="fd", uploads_model=False, plain_mean=False, runtime="deploy"), "algorithm.name / runtime",
     "devices' own models"),
    (dict(algorithm="hierarchical", averages_models=True, plain_mean=False, server_optimizer="adam"),
     "server_optimizer / algorithm.name", "sgd with lr 1"),
    (dict(algorithm="hierarchical", averages_models=True, plain_mean=False, server_lr=0.5),
     "server_optimizer / algorithm.name", "sgd with lr 1"),
    (dict(algorithm="fd", custom_client=True, uploads_model=False, plain_mean=False, client_optimizer="adam"),
     "client.optimizer / algorithm.name", "own client code"),
    (dict(algorithm="fednova", plain_mean=False, sgd_only="SGD's step coefficients", client_optimizer="adamw"),
     "client.optimizer / algorithm.name", "plain client SGD restarted each round"),
    (dict(algorithm="fedavg", optimizer_persist=True, codecs=("mask",), structured_codecs=("mask",)),
     "client.optimizer / codecs", "fresh variables"),
    (dict(algorithm="fedavg", optimizer_persist=True, runtime="deploy"), "client.optimizer / runtime",
     "not supported yet"),
]


@pytest.mark.parametrize("kw,fields,words", CASES)
def test_rule_fires_and_names_both_fields(kw, fields, words):
    errors = check(Features(**kw))
    assert any(e.startswith(fields + ":") and words in e for e in errors), errors


def test_every_rule_has_a_case():
    fired = set()
    for kw, _, _ in CASES:
        f = Features(**kw)
        fired |= {i for i, r in enumerate(RULES) if r.broken(f)}
    assert fired == set(range(len(RULES)))


@pytest.mark.parametrize("kw", [
    dict(algorithm="fedavg"),
    dict(algorithm="fedavg", secure_aggregation=True),
    dict(algorithm="fedavg", secure_aggregation=True, runtime="deploy"),  # the key authority is its own process
    dict(algorithm="fedavg", privacy=True),
    dict(algorithm="fedavg", aggregator="krum", max_norm=True),
    dict(algorithm="fedavg", codecs=("lowrank", "quantize"), structured_codecs=("lowrank",)),
    dict(algorithm="fedppo", custom_client=True, algorithm_data="environment", dataset_kind="environment",
         secure_aggregation=True),
    dict(algorithm="fedppo", custom_client=True, algorithm_data="environment", dataset_kind="environment",
         codecs=("quantize",)),
    dict(algorithm="hierarchical", averages_models=True, plain_mean=False, personalized_models=True),
])
def test_compatible_runs_pass(kw):
    assert check(Features(**kw)) == []
