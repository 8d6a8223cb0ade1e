"""SCAFFOLD: stateful clients (control variates kept between rounds and checkpointed), both engines."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedloom.config import validate_config
from fedloom.simulation import Simulation

N = 10


def _cfg(alg: str, engine: str = "vectorized", rounds: int = 30, cohort: int = N, **extra):
    return validate_config({
        "name": "t", "seed": 0, "threads": 1, "rounds": rounds, "cohort_size": cohort, "eval_every": rounds, "progress": False,
        "engine": engine, "checkpoint_every": 0,
        "data": {"dataset": "digits", "partition": {"name": "dirichlet", "alpha": 0.1}, "num_clients": N},
        "model": "logreg", "algorithm": {"name": alg, "weighting": "uniform"},
        "client": {"lr": 0.05, "local_steps": 20, "batch_size": None, "weight_decay": 1e-3}, **extra})


def _objective(sim: Simulation) -> tuple[float, float]:
    """The global objective (uniform mean of client losses + weight decay) and its gradient norm."""
    p = {k: v.clone().requires_grad_(True) for k, v in sim.state.params.items()}
    tot = sum(F.cross_entropy(functional_call(sim.model, p, (sim.data.client_data(k)[0],)), sim.data.client_data(k)[1])
              for k in range(N)) / N + 0.5e-3 * sum((v ** 2).sum() for v in p.values())
    g = torch.autograd.grad(tot, list(p.values()))
    return float(tot.detach()), float(torch.sqrt(sum((x ** 2).sum() for x in g)))


def test_scaffold_corrects_client_drift():
    """Label-skewed clients, 20 local steps: FedAvg's iterate drifts; SCAFFOLD gets closer to the optimum."""
    fa, sc = Simulation(_cfg("fedavg")), Simulation(_cfg("scaffold"))
    fa.run(), sc.run()
    (obj_fa, g_fa), (obj_sc, g_sc) = _objective(fa), _objective(sc)
    assert obj_sc < obj_fa - 0.05, (obj_sc, obj_fa)
    assert g_sc < 0.8 * g_fa, (g_sc, g_fa)


def test_scaffold_vectorized_equals_sequential_with_state():
    a = Simulation(_cfg("scaffold", "sequential", rounds=3, cohort=5))
    b = Simulation(_cfg("scaffold", "vectorized", rounds=3, cohort=5))
    a.run(), b.run()
    for k in a.state.params:
        torch.testing.assert_close(a.state.params[k], b.state.params[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.state.algo_state["c"][k], b.state.algo_state["c"][k], rtol=1e-4, atol=1e-6)
    assert a.client_states.keys() == b.client_states.keys() and len(a.client_states) > 5  # partial participation


def test_server_control_variate_is_mean_of_client_variates():
    """Full participation, uniform weights: c = (1/N) sum_i c_i after every round (c, c_i start at 0)."""
    sim = Simulation(_cfg("scaffold", rounds=3))
    for r in (1, 2, 3):
        sim.round(r)
        assert len(sim.client_states) == N
        for k, c in sim.state.algo_state["c"].items():
            mean_ci = torch.stack([sim.client_states[i]["c"][k] for i in range(N)]).mean(0)
            torch.testing.assert_close(c, mean_ci, rtol=1e-4, atol=1e-6)


def test_control_variates_travel_and_are_counted():
    fa, sc = Simulation(_cfg("fedavg", rounds=1)), Simulation(_cfg("scaffold", rounds=1))
    r_fa, r_sc = fa.round(1), sc.round(1)
    # x and c both travel: about twice FedAvg's bytes each way (plus a few header bytes per entry)
    assert 1.9 < r_sc["bytes_up"] / r_fa["bytes_up"] < 2.1
    assert 1.9 < r_sc["bytes_down"] / r_fa["bytes_down"] < 2.1


def test_resume_restores_client_states(tmp_path):
    """Checkpoint after round 2, resume, finish: identical to an uninterrupted run (model, c and every c_i)."""
    full = Simulation(_cfg("scaffold", rounds=4, cohort=4))
    full.run()
    cut = Simulation(_cfg("scaffold", rounds=4, cohort=4, checkpoint_every=2), out_dir=tmp_path / "run")
    cut.round(1), cut.round(2)
    del cut
    res = Simulation.resume(tmp_path / "run")
    assert res.state.round == 2 and res.client_states
    res.run()
    for k in full.state.params:
        assert torch.equal(full.state.params[k], res.state.params[k])
        assert torch.equal(full.state.algo_state["c"][k], res.state.algo_state["c"][k])
    assert full.client_states.keys() == res.client_states.keys()
    for i in full.client_states:
        for k, v in full.client_states[i]["c"].items():
            assert torch.equal(v, res.client_states[i]["c"][k])
