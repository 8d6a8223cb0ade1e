"""FedNova (Wang et al. 2020): normalized averaging, against hand-computed aggregates and FedAvg."""

import pytest
import torch

from fedloom.algorithms.fednova import FedNova, NormalizedAverage, step_norm
from fedloom.config import validate_config
from fedloom.core import AlgorithmParams, ClientReport, LocalSchedule, ServerState, WeightedMean
from fedloom.simulation import Simulation
from tests.conftest import small_config


def test_step_norm_plain_and_momentum():
    assert step_norm(7, 0.0) == 7.0
    # heavy ball: a_j = (1 - rho^(tau - j)) / (1 - rho) for j = 0..tau-1, summed
    rho, tau = 0.9, 5
    assert step_norm(tau, rho) == pytest.approx(sum((1 - rho ** (tau - j)) / (1 - rho) for j in range(tau)))


def _reports(sizes, values):
    return [ClientReport(k, {"w": torch.tensor([v])}, n, 0.0) for k, (n, v) in enumerate(zip(sizes, values))]


def test_hand_computed_normalized_average():
    # B=10, E=1: tau = ceil(n / 10) -> 2 and 5 steps
    agg = NormalizedAverage(FedNova(AlgorithmParams()), LocalSchedule(lr=0.1, batch_size=10))
    reps = _reports([20, 50], [1.0, 4.0])
    out = agg.aggregate(1, reps, ServerState({}, {}))
    p, tau = [20 / 70, 50 / 70], [2, 5]
    tau_eff = p[0] * tau[0] + p[1] * tau[1]
    expect = tau_eff * (p[0] * 1.0 / tau[0] + p[1] * 4.0 / tau[1])
    assert float(out.update["w"]) == pytest.approx(expect)
    assert out.metrics["fednova_tau_eff"] == pytest.approx(tau_eff)
    fedavg = float(WeightedMean("samples").aggregate(1, reps, ServerState({}, {})).update["w"])
    assert fedavg == pytest.approx(p[0] * 1.0 + p[1] * 4.0) and fedavg != pytest.approx(expect)


def test_equal_local_work_is_fedavg():
    agg = NormalizedAverage(FedNova(AlgorithmParams()), LocalSchedule(lr=0.1, batch_size=10, local_steps=4))
    reps = _reports([20, 50, 7], [1.0, -2.0, 3.0])
    st = ServerState({}, {})
    assert float(agg.aggregate(1, reps, st).update["w"]) == pytest.approx(
        float(WeightedMean("samples").aggregate(1, reps, st).update["w"]))


def test_client_without_data_moves_nothing_and_empty_round():
    agg = NormalizedAverage(FedNova(AlgorithmParams()), LocalSchedule(lr=0.1, batch_size=10))
    out = agg.aggregate(1, _reports([0, 30], [5.0, 3.0]), ServerState({}, {}))
    assert float(out.update["w"]) == pytest.approx(3.0)
    assert agg.aggregate(1, [], ServerState({}, {})).update is None


def test_fednova_in_the_loop_equals_fedavg_on_equal_work_and_differs_on_skew():
    base = dict(rounds=3, cohort_size=6, **{"data.num_clients": 12})
    eq = {"client.local_steps": 3}
    nova = Simulation(validate_config(small_config(algorithm="fednova", **base, **eq))).run()
    avg = Simulation(validate_config(small_config(algorithm="fedavg", **base, **eq))).run()
    assert [r["test_accuracy"] for r in nova] == pytest.approx([r["test_accuracy"] for r in avg], abs=1e-6)
    skew = {"data.partition": {"name": "quantity_skew"}}
    nova = Simulation(validate_config(small_config(algorithm="fednova", **base, **skew))).run()
    avg = Simulation(validate_config(small_config(algorithm="fedavg", **base, **skew))).run()
    assert nova[-1]["fednova_tau_eff"] > 1 and nova[-1]["test_accuracy"] > 0.5
    assert [r["train_loss"] for r in nova] != [r["train_loss"] for r in avg]
