"""Client-side state survives a checkpoint: a stateful codec's per-client memory (top-k with error feedback) is
checkpointed with the run, and resuming gives the uninterrupted run bit for bit. Without that state the resumed
run differs (the same test with the pipeline state dropped fails), so the check has teeth."""

import shutil

import torch

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config


def _cfg():
    return validate_config(small_config(rounds=4, cohort_size=10, checkpoint_every=2,
                                        codecs=[{"name": "topk", "fraction": 0.05}]))


def _params_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_error_feedback_memory_is_checkpointed_and_resumed(tmp_path):
    whole = Simulation(_cfg(), tmp_path / "whole")
    recs = whole.run()
    states = whole.built.clients.pipeline_states
    assert states and all("codecs" in s for s in states.values())  # every sampled client kept a residual
    res = next(iter(states.values()))["codecs"].layers
    assert any(float(st[-1].residual.abs().sum()) > 0 for _, st in res.values())

    part = Simulation(_cfg(), tmp_path / "part")
    part.round(1)
    part.round(2)  # checkpoint after round 2
    part.metrics.close()
    shutil.copytree(tmp_path / "part", tmp_path / "part-copy")
    resumed = Simulation.resume(tmp_path / "part")
    assert resumed.built.clients.pipeline_states  # restored from the checkpoint
    recs2 = resumed.run()
    assert [r["test_accuracy"] for r in recs2] == [r["test_accuracy"] for r in recs]
    assert _params_equal(resumed.state.params, whole.state.params)

    # the same resume with the codec memory dropped (what a checkpoint without client-side state gives): differs
    amnesiac = Simulation.resume(tmp_path / "part-copy")
    assert amnesiac.state.round == 2
    amnesiac.built.clients.pipeline_states.clear()
    amnesiac.run()
    assert not _params_equal(amnesiac.state.params, whole.state.params)
