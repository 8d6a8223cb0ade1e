"""Item 6: every file a run writes is replaced atomically (temporary file, fsync, os.replace) or appended with a
flushed, fsync'd line; a write that fails mid-way (a full disk) leaves the previous file intact and no temporary
file behind; ``--out`` is checked and locked before the build, so two runs cannot share it."""

import errno
import fcntl
import os

import pytest
import torch

import fedloom.build
from fedloom.checkpoint import save_atomic
from fedloom.config import validate_config
from fedloom.metrics.history import MetricsWriter
from fedloom.simulation import Simulation
from tests.conftest import small_config


def _full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


def test_failed_torch_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, path)

    def half_then_full(obj, f):
        f.write(b"\x80\x02 half a pickle")
        _full_disk()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space"):
        save_atomic({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert _leftovers(tmp_path) == []


def test_run_files_survive_a_failed_rewrite(tmp_path, monkeypatch):
    out = tmp_path / "run"
    sim = Simulation(validate_config(small_config(rounds=1, checkpoint_every=1)), out)
    sim.run()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(os, "fsync", _full_disk)  # every later write fails at its fsync
    with pytest.raises(OSError):
        sim.save_checkpoint()
    with pytest.raises(OSError):
        save_atomic(sim.algorithm.final_state(sim.ctx, sim.state), out / "model.pt")
    from fedloom import atomic

    with pytest.raises(OSError):
        atomic.write_text_atomic(out / "config.yaml", "rounds: 5\n")
    from fedloom.metrics.report import make_report

    with pytest.raises(OSError):
        make_report([out])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _leftovers(out) == []


def test_metrics_lines_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    w.write({"round": 1})
    w.write({"round": 2})
    w.close()
    assert len(synced) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 1}\n{"round": 2}\n'


def test_out_in_use_by_another_run_is_refused_before_the_build(tmp_path, config_file, cli, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
    monkeypatch.setattr(fedloom.build, "build_run", lambda *a, **k: pytest.fail("built before --out was checked"))
    try:
        rc, _, err = cli("run", config_file(), "--out", out)
    finally:
        os.close(fd)
    assert rc == 2 and "in use by another fedloom run" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_the_run_holds_the_lock_while_it_runs(tmp_path, config_file, cli, monkeypatch):
    out = tmp_path / "run"
    seen = []
    real = Simulation.round

    def round_(self, rnd):
        fd = os.open(out / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(rnd)
        finally:
            os.close(fd)
        return real(self, rnd)

    monkeypatch.setattr(Simulation, "round", round_)
    rc, _, err = cli("run", config_file(rounds=2), "--out", out, "--quiet")
    assert rc == 0, err
    assert seen == [1, 2]
    fd = os.open(out / ".lock", os.O_RDWR)  # released at the end
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
