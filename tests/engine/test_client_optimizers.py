"""Client optimizers (``client.optimizer``: sgd, adam, adamw; fedloom.optim).

* one client's trajectory equals ``torch.optim``'s (Adam, AdamW, SGD with momentum) on the same batches, in both
  engines, to 1e-6;
* vectorized == sequential to 1e-5 with unequal batch counts (inactive steps leave params, moments and the
  per-client step count alone), restarted each round or persisted; persisted states equal across engines;
* a persisted state is carried across rounds (and persisting changes the run), and is checkpointed: resume ==
  uninterrupted bit for bit, and the same resume with the states dropped differs;
* the distributed engine on 2 ranks keeps every client's persisted state, equal to 1 process;
* config validation: bad names, SGD-only parameters, and the compatibility rules.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from fedloom.config import ConfigError, dump_config, features, validate_config
from fedloom.core.compat import check
from fedloom.core.types import LocalSchedule
from fedloom.engine import CohortJob, SequentialEngine, VectorizedEngine
from fedloom.simulation import Simulation
from tests.conftest import small_config

SKEW = {"data.partition": dict(name="quantity_skew", sigma=1.5)}  # client sizes differ: unequal batch counts


def _rel(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


# -- one client against torch.optim -----------------------------------------------------------------------------
TORCH_CASES = {
    "adam": (dict(optimizer="adam", lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam-l2-betas": (dict(optimizer="adam", lr=0.02, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
                      lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6)),
    "adamw": (dict(optimizer="adamw", lr=0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    "sgd-momentum": (dict(lr=0.1, momentum=0.9, weight_decay=0.01),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
}


def _job(sim: Simulation, sched: LocalSchedule, clients: list[int], rnd: int = 1) -> CohortJob:
    return CohortJob(sim.model, dict(sim.state.params), sim.buffers, clients, sim.data, sched, sim.algorithm,
                     sim.cfg.seed, rnd, sim.device, task=sim.ctx.task)


@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("warmup", [False, True])
def test_one_client_matches_torch_optim(case, warmup):
    kw, make = TORCH_CASES[case]
    sim = Simulation(validate_config(small_config(rounds=1)))
    k = 2
    H = 12
    # warmup: per-step learning rates (what client.lr_schedule produces), fed to torch through param_groups
    lrs = tuple(kw["lr"] * min(1.0, (s + 1) / 5) for s in range(H)) if warmup else None
    sched = LocalSchedule(batch_size=8, local_steps=H, lr_steps=lrs, **kw)
    job = _job(sim, sched, [k])
    # torch: an nn.Module copy of the broadcast model, trained on client k's batches of this round
    net = copy.deepcopy(sim.model)
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(sim.state.params[n])
    opt = make(list(net.parameters()))
    cohort = sim.data.cohort([k])
    for s, b in enumerate(job.batches(k)):
        rows = cohort.rows[0][b]
        x, y = cohort.x[rows], cohort.y[rows]
        if lrs is not None:
            for g in opt.param_groups:
                g["lr"] = lrs[s]
        opt.zero_grad()
        loss, _ = sim.ctx.task.weighted_loss(net(x), y, torch.ones(len(b)))
        loss.backward()
        opt.step()
    want = {n: p.detach() for n, p in net.named_parameters()}
    for engine in (SequentialEngine(), VectorizedEngine()):
        (rep,) = engine.run(job)
        got = {n: sim.state.params[n] + rep.update[n] for n in rep.update}
        for n in got:
            assert float((got[n] - want[n]).abs().max()) <= 1e-6, (engine.name, n)
    assert _rel(want, sim.state.params) > 1e-3  # it trained


def test_inactive_clients_keep_params_and_adam_state():
    """A cohort where one client has no data at all and others fewer steps: stacked and one-at-a-time agree,
    and the zero-data client's persisted state is still fresh (step 0, zero moments)."""
    sim = Simulation(validate_config(small_config(rounds=1, **SKEW)))
    sizes = sim.data.client_sizes
    clients = sorted(range(len(sizes)), key=lambda k: int(sizes[k]))[:4]
    sched = LocalSchedule(lr=0.01, batch_size=16, epochs=2, optimizer="adam")
    steps = [sched.num_steps(int(sizes[k])) for k in clients]
    assert len(set(steps)) > 1  # unequal step counts: the shorter clients are inactive on the last steps
    data = sim.data
    empty = clients[0]
    real_size = data.client_size

    def client_size(k):  # client `empty` holds no samples this time
        return 0 if k == empty else real_size(k)

    data.client_size = client_size
    inner = data.cohort

    def cohort(ks):
        c = inner(ks)
        c.rows = [r[:0] if k == empty else r for k, r in zip(ks, c.rows)]
        return c

    data.cohort = cohort
    states: dict = {}
    for engine in (SequentialEngine(), VectorizedEngine()):
        job = _job(sim, sched, clients)
        job.optimizer_states = {}
        reps = engine.run(job)
        states[engine.name] = (reps, job.optimizer_states)
    (rs, ss), (rv, sv) = states["sequential"], states["vectorized"]
    for a, b in zip(rs, rv):
        assert a.client == b.client
        for n in a.update:
            assert torch.allclose(a.update[n], b.update[n], rtol=1e-5, atol=1e-7)
    for k, st in zip(clients, steps):
        want = 0 if k == empty else st
        assert float(ss[k]["step"]) == float(sv[k]["step"]) == want
    assert all(float(v.abs().max()) == 0 for v in sv[empty]["exp_avg"].values())
    assert all(float(v.abs().max()) == 0 for v in rv[0].update.values())  # no data: the model did not move


# -- whole runs: engines agree, persisted state is carried and checkpointed -------------------------------------
RUN_CASES = {
    "adam": {"client.optimizer": "adam", "client.lr": 0.003, **SKEW},
    "adamw-epochs2": {"client.optimizer": dict(name="adamw"), "client.lr": 0.003, "client.weight_decay": 0.05,
                      "client.epochs": 2, **SKEW},
    "adam-persist": {"client.optimizer": dict(name="adam", persist=True), "client.lr": 0.003, "rounds": 4, **SKEW},
    "adamw-persist-chunked": {"client.optimizer": dict(name="adamw", persist=True, betas=[0.8, 0.95]),
                              "client.lr": 0.003, "client.weight_decay": 0.05, "rounds": 4,
                              "engine": dict(name="vectorized", chunk_size=2), **SKEW},
    "sgd-momentum-persist": {"client.optimizer": dict(name="sgd", persist=True), "client.momentum": 0.9,
                             "client.lr": 0.03, "rounds": 4, **SKEW},
    "fedprox-adam": {"algorithm": dict(name="fedprox", mu=0.5), "client.optimizer": "adam", "client.lr": 0.003},
}


def _run(engine, **ov):
    sim = Simulation(validate_config(small_config(engine=engine, **ov)))
    recs = sim.run()
    return sim, recs


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_vectorized_equals_sequential(case):
    ov = dict(RUN_CASES[case])
    vec = ov.pop("engine", "vectorized")
    a, ra = _run(vec, **ov)
    b, rb = _run("sequential", **ov)
    assert a.engine.name == "vectorized"
    assert _rel(a.state.params, b.state.params) <= 1e-5
    for x, y in zip(ra, rb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    sa, sb = a.built.clients.optimizer_states, b.built.clients.optimizer_states
    if not a.cfg.client.optimizer.persist:
        assert sa is None and sb is None
        return
    assert sa and set(sa) == set(sb)
    for k in sa:
        assert set(sa[k]) == set(sb[k])
        for key, v in sa[k].items():
            if isinstance(v, dict):
                assert _rel(v, sb[k][key]) <= 1e-5, (k, key)
            else:
                assert torch.equal(v, sb[k][key])  # Adam's step counts: exactly equal


def test_persisted_state_is_carried_across_rounds():
    ov = {"client.optimizer": dict(name="adam", persist=True), "client.lr": 0.003, "rounds": 4, **SKEW}
    sim, recs = _run("vectorized", **ov)
    sched = sim.round_schedule(1)
    sizes = sim.data.client_sizes
    taken: dict[int, int] = {}
    for r in recs:
        for k in r["sampled_ids"]:
            taken[k] = taken.get(k, 0) + sched.num_steps(int(sizes[k]))
    states = sim.built.clients.optimizer_states
    assert set(states) == set(taken)
    assert {k: int(s["step"]) for k, s in states.items()} == taken  # steps summed over a client's rounds
    assert max(sum(k in r["sampled_ids"] for r in recs) for k in taken) > 1  # some client took part twice
    restarted, _ = _run("vectorized", **{**ov, "client.optimizer": "adam"})
    assert restarted.built.clients.optimizer_states is None
    assert _rel(sim.state.params, restarted.state.params) > 1e-4  # persisting changes training


def _resume_cfg():
    return validate_config(small_config(rounds=4, cohort_size=5, checkpoint_every=2, client=dict(
        lr=0.003, batch_size=16, epochs=1, optimizer=dict(name="adam", persist=True)), **SKEW))


def test_resume_equals_uninterrupted_with_persisted_adam(tmp_path):
    whole = Simulation(_resume_cfg(), tmp_path / "whole")
    recs = whole.run()
    part = Simulation(_resume_cfg(), tmp_path / "part")
    part.round(1)
    part.round(2)  # checkpoint after round 2
    part.metrics.close()
    shutil.copytree(tmp_path / "part", tmp_path / "part-copy")
    resumed = Simulation.resume(tmp_path / "part")
    assert resumed.built.clients.optimizer_states  # restored from the checkpoint
    recs2 = resumed.run()
    assert [r["test_accuracy"] for r in recs2] == [r["test_accuracy"] for r in recs]
    assert all(torch.equal(resumed.state.params[k], whole.state.params[k]) for k in whole.state.params)
    # the same resume with the optimizer states dropped: differs (the check has teeth)
    amnesiac = Simulation.resume(tmp_path / "part-copy")
    amnesiac.built.clients.optimizer_states.clear()
    amnesiac.run()
    assert not all(torch.equal(amnesiac.state.params[k], whole.state.params[k]) for k in whole.state.params)


def _ranks(rank: int, world: int, raws: list[dict]) -> list:
    out = []
    for raw in raws:
        sim, recs = _run(**raw)
        out.append(({k: v.clone() for k, v in sim.state.params.items()},
                    {k: float(s["step"]) for k, s in sim.built.clients.optimizer_states.items()}))
    return out


def test_distributed_two_ranks_keep_every_persisted_state():
    from fedloom.distributed.launch import spawn

    ov = {"client.optimizer": dict(name="adam", persist=True), "client.lr": 0.003, "rounds": 3, "cohort_size": 6,
          "checkpoint_every": 0, **SKEW}
    res = spawn(_ranks, 2, [dict(engine="distributed", **ov)], start_method="fork")
    one, _ = _run("vectorized", **ov)
    steps1 = {k: float(s["step"]) for k, s in one.built.clients.optimizer_states.items()}
    for rank in (0, 1):
        params, steps = res[rank][0]
        assert _rel(params, one.state.params) <= 1e-5
        assert steps == steps1  # every rank holds every client's state, not only its shard's


# -- configuration --------------------------------------------------------------------------------------------
def _errors(**ov) -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate_config(small_config(**ov))
    return e.value.errors


def test_defaults_and_backwards_compatibility():
    cfg = validate_config(small_config(**{"client.momentum": 0.9, "client.lr": 0.05}))
    assert cfg.client.optimizer.name == "sgd" and not cfg.client.optimizer.persist
    sched = Simulation(cfg).round_schedule(1)
    assert (sched.optimizer, sched.momentum, sched.lr) == ("sgd", 0.9, 0.05)
    # a dumped config (config.yaml of a run dir, resume) validates again to the same config
    import yaml

    for opt in ("sgd", dict(name="adamw", betas=[0.8, 0.9], eps=1e-6, persist=True)):
        c = validate_config(small_config(**{"client.optimizer": opt}))
        assert validate_config(yaml.safe_load(dump_config(c))) == c
    c = validate_config(small_config(**{"client.optimizer": dict(name="adam", betas=[0.8, 0.9])}))
    s = Simulation(c).round_schedule(1)
    assert (s.optimizer, s.betas, s.eps) == ("adam", (0.8, 0.9), 1e-8)


@pytest.mark.parametrize("opt,words", [
    ("adagrad", "client.optimizer.name"),
    (dict(name="rmsprop"), "client.optimizer.name"),
    (dict(name="adam", betas=[0.9, 1.0]), "betas"),
    (dict(name="adam", eps=0), "client.optimizer.eps"),
    (dict(name="adam", lr=0.1), "client.optimizer.lr"),  # the lr stays client.lr
    (dict(name="sgd", betas=[0.8, 0.9]), "adam/adamw parameters only"),
])
def test_bad_optimizer_is_a_config_error_naming_the_field(opt, words):
    errors = _errors(**{"client.optimizer": opt})
    assert any(words in e and e.startswith("client.optimizer") for e in errors), errors


def test_momentum_is_sgds():
    errors = _errors(**{"client.optimizer": "adam", "client.momentum": 0.9})
    assert any("client.momentum / client.optimizer" in e for e in errors), errors


@pytest.mark.parametrize("ov,fields,words", [
    ({"algorithm": "fednova", "client.optimizer": "adam"}, "client.optimizer / algorithm.name", "||a_i||_1"),
    ({"algorithm": "fednova", "client.optimizer": dict(name="sgd", persist=True), "client.momentum": 0.9},
     "client.optimizer / algorithm.name", "momentum kept between rounds"),
    ({"algorithm": "scaffold", "client.optimizer": "adamw"}, "client.optimizer / algorithm.name", "option-II"),
    ({"algorithm": "fd", "client.optimizer": "adam"}, "client.optimizer / algorithm.name", "own client code"),
    ({"client.optimizer": dict(name="adam", persist=True), "codecs": [dict(name="lowrank", fraction=0.25)]},
     "client.optimizer / codecs", "fresh variables"),
])
def test_compatibility_rules(ov, fields, words):
    errors = _errors(**ov)
    assert any(e.startswith(fields + ":") and words in e for e in errors), errors


def test_allowed_combinations():
    for ov in ({"algorithm": "fednova", "client.momentum": 0.9},          # SGD restarted each round: fine
               {"algorithm": "fednova", "client.optimizer": dict(name="sgd", persist=True)},  # no momentum: no state
               {"algorithm": "scaffold", "client.momentum": 0.5},
               {"algorithm": "fedprox", "client.optimizer": dict(name="adamw", persist=True)},
               {"client.optimizer": "adam", "codecs": [dict(name="lowrank", fraction=0.25)]}):
        validate_config(small_config(**ov))


def test_persist_refused_on_deploy():
    cfg = validate_config(small_config(**{"client.optimizer": dict(name="adam", persist=True)}))
    errors = check(features(cfg, runtime="deploy"))
    assert any(e.startswith("client.optimizer / runtime:") for e in errors), errors
    assert not check(features(validate_config(small_config(**{"client.optimizer": "adam"})), runtime="deploy"))
