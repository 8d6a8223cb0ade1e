"""Tasks carry the loss and the metrics: a regression problem runs through the unchanged round loop and engines."""

import math

import pytest
import torch

from fedloom.config import validate_config
from fedloom.data.datasets import DataSource
from fedloom.data.federated import FederatedData
from fedloom.models.tasks import Classification, Regression
from fedloom.simulation import Simulation
from tests.conftest import small_config


def test_classification_loss_and_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    w = torch.tensor([1.0, 1.0, 0.0])  # the third row is padding
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    loss, (lw, sw) = Classification().weighted_loss(logits, y, w)
    assert float(loss) == pytest.approx(float(ce[:2].mean())) and float(sw) == 2.0
    s = Classification().score(logits, y)
    assert s["correct"] == 2 and s["loss"] == pytest.approx(float(ce.sum()))
    assert Classification().summarize(s, 3) == {"test_loss": pytest.approx(float(ce.sum()) / 3),
                                                "test_accuracy": pytest.approx(2 / 3)}


def test_regression_loss_and_scores_by_hand():
    out = torch.tensor([[1.0], [2.0], [5.0]])
    y = torch.tensor([0.0, 2.0, 1.0])
    loss, _ = Regression().weighted_loss(out, y, torch.tensor([1.0, 1.0, 0.0]))
    assert float(loss) == pytest.approx(0.5)  # (1 + 0) / 2
    s = Regression().score(out, y)
    assert s["sse"] == pytest.approx(17.0)
    m = Regression().summarize(s, 3)
    assert m["test_loss"] == pytest.approx(17 / 3) and m["test_rmse"] == pytest.approx(math.sqrt(17 / 3))


def _linear_data(n_clients=8, per=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.randn(n_clients * per + 200, d, generator=g)
    y = x @ w + 0.01 * torch.randn(len(x), generator=g)
    src = DataSource("linear", x[:-200], y[:-200], x[-200:], y[-200:], num_classes=1)
    return FederatedData(src, [torch.arange(k * per, (k + 1) * per) for k in range(n_clients)])


def test_regression_runs_through_the_loop_on_both_engines():
    runs = {}
    for eng in ("vectorized", "sequential"):
        cfg = validate_config(small_config(rounds=15, cohort_size=4, task="regression", engine=eng, model="logreg",
                                           **{"data.num_clients": 8, "client.lr": 0.05}))
        sim = Simulation(cfg, data=_linear_data())
        assert sim.headline == "test_rmse"
        runs[eng] = (sim, sim.run())
    recs = runs["vectorized"][1]
    assert recs[-1]["test_rmse"] < 0.2 * recs[0]["test_rmse"] and "test_accuracy" in recs[-1]
    a, b = runs["vectorized"][0].state.params, runs["sequential"][0].state.params
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
