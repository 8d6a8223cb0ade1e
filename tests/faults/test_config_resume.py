"""Item 5: resume compares config.yaml with the config stored in the checkpoint. An edited field is refused,
naming it and the ``--force`` that accepts it; an architecture change that cannot load is one message."""

import yaml

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config


def _interrupted(tmp_path):
    out = tmp_path / "run"
    sim = Simulation(validate_config(small_config(rounds=3, checkpoint_every=1)), out)
    sim.round(1)
    sim.metrics.close()
    return out


def _edit(out, change):
    raw = yaml.safe_load((out / "config.yaml").read_text())
    change(raw)
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_edited_config_is_refused_unless_forced(tmp_path, cli):
    out = _interrupted(tmp_path)
    _edit(out, lambda raw: raw["client"].update(lr=0.5))
    rc, _, err = cli("run", "--resume", out)
    assert rc == 2
    assert "client.lr 0.1 -> 0.5" in err and "--force client.lr" in err and "Traceback" not in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # nothing was run or written
    rc, _, err = cli("run", "--resume", out, "--force", "client.lr", "--quiet")
    assert rc == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_volatile_fields_are_no_change(tmp_path):
    out = _interrupted(tmp_path)
    _edit(out, lambda raw: raw.update(progress=True, threads=2))
    from fedloom.checkpoint import load
    from fedloom.config import load_config
    from fedloom.simulation import config_changes

    assert config_changes(load(out / "checkpoint.pt")["config"], load_config(out / "config.yaml")) == []


def test_forced_architecture_change_is_one_message(tmp_path, cli):
    out = _interrupted(tmp_path)
    _edit(out, lambda raw: raw["model"].update(hidden=[48]))
    rc, _, err = cli("run", "--resume", out)
    assert rc == 2 and "model.hidden [32] -> [48]" in err and "--force model.hidden" in err
    rc, _, err = cli("run", "--resume", out, "--force", "model")  # a section name covers its fields
    assert rc == 2 and "does not fit" in err and "Traceback" not in err


def test_force_needs_resume(config_file, cli, tmp_path):
    rc, _, err = cli("run", config_file(), "--force", "client.lr", "--out", tmp_path / "x")
    assert rc == 2 and "--resume" in err and not (tmp_path / "x").exists()
