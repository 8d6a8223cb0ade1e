import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedloom.cli import main
from fedloom.config import ConfigError, apply_overrides, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "fedavg_digits.yaml"


@pytest.mark.parametrize("overrides,field,allowed", [
    (["engine=warp"], "engine.name", "sequential, vectorized"),
    (["algorithm=fedfoo"], "algorithm.name", "fedavg"),
    (["data.dataset=cifar10"], "data.dataset.name", "digits"),
    (["data.partition.name=weird"], "data.partition.name", "dirichlet"),
    (["model=resnet"], "model.name", "mlp"),
    (["device=tpu"], "device", "'cpu' or 'cuda'"),
    (["rounds=0"], "rounds", "greater than or equal to 1"),
    (["client.lr=-1"], "client.lr", "greater than 0"),
    (["data.partition.alpha=0"], "data.partition.alpha", "greater than 0"),
    (["algorithm=fedprox", "algorithm.mu=-0.5"], "algorithm.mu", "greater than or equal to 0"),
    (["client.epochs=two"], "client.epochs", "integer"),
    (["roundz=3"], "roundz", "Extra inputs are not permitted"),
    (["server_optimizer.lr=0"], "server_optimizer.lr", "greater than 0"),
    (["cohort_size=999"], "cohort_size", "exceeds data.num_clients"),
])
def test_bad_values_name_field_and_allowed(overrides, field, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, overrides)
    msg = str(e.value)
    assert field in msg and allowed in msg, msg


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", str(DEMO), "engine=warp", "--out", str(out)])
    assert rc == 2
    assert "engine.name" in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["run", str(DEMO), "rounds"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_overrides_expand_component_names():
    raw = {"data": {"partition": "iid"}}
    out = apply_overrides(raw, ["data.partition.alpha=0.1", "data.partition.name=dirichlet", "rounds=3", "client.batch_size=null"])
    assert out["data"]["partition"] == {"name": "dirichlet", "alpha": 0.1}
    assert out["rounds"] == 3 and out["client"]["batch_size"] is None
    assert raw == {"data": {"partition": "iid"}}


def test_overrides_index_lists():
    raw = {"codecs": [{"name": "hadamard"}, "quantize"]}
    out = apply_overrides(raw, ["codecs.1.bits=3", "codecs.0.layers=inner"])
    assert out["codecs"] == [{"name": "hadamard", "layers": "inner"}, {"name": "quantize", "bits": 3}]
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(raw, ["codecs.5.bits=3"])
    with pytest.raises(ConfigError, match="codecs.0.bits"):
        validate_config(apply_overrides({"codecs": [{"name": "quantize", "bits": 2}]}, ["codecs.0.bits=0"]))


def test_secure_aggregation_conflicts_rejected():
    with pytest.raises(ConfigError, match="secure_aggregation / codecs: encryption replaces the codec chain"):
        validate_config({"secure_aggregation": {"key_bits": 1024}, "codecs": [{"name": "quantize", "bits": 2}]})
    with pytest.raises(ConfigError, match="secure_aggregation / aggregator: only the weighted mean"):
        validate_config({"secure_aggregation": {"key_bits": 1024}, "aggregator": "median"})


def test_resolved_config_has_component_defaults():
    cfg = validate_config({"algorithm": "fedprox"})
    assert cfg.algorithm.params == {"weighting": "samples", "mu": 0.01}
    assert cfg.server_optimizer.params == {"lr": 1.0}


def test_list_shows_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("algorithms:", "fedavg", "fedprox", "fedsgd", "localsgd", "datasets:", "digits", "mnist",
                 "fashion_mnist", "synthetic", "partitioners:", "dirichlet", "shards", "quantity_skew",
                 "models:", "cnn", "engines:", "vectorized", "sequential", "adam"):
        assert word in out


def test_run_writes_config_metrics_plots_and_report(tmp_path):
    out = tmp_path / "r"
    rc = main(["run", str(DEMO), "rounds=3", "data.num_clients=10", "cohort_size=4", "progress=false", "--out", str(out)])
    assert rc == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["rounds"] == 3 and cfg["data"]["partition"]["alpha"] == 0.5
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2, 3]
    for p in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "model.pt"):
        assert (out / p).stat().st_size > 1000
    # the saved config reproduces the run exactly
    out2 = tmp_path / "r2"
    assert main(["run", str(out / "config.yaml"), "--out", str(out2)]) == 0
    recs2 = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_accuracy"] for r in recs] == [r["test_accuracy"] for r in recs2]
    (out / "accuracy_vs_round.png").unlink()
    assert main(["report", str(out)]) == 0 and (out / "accuracy_vs_round.png").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert main(["run", str(DEMO), "--out", str(out)]) == 2  # refuses to overwrite a run


@pytest.mark.slow
def test_demo_reaches_90_percent(tmp_path):
    """The README's demo: >= 90% test accuracy on digits (run as the real console command)."""
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "fedloom.cli", "run", str(DEMO), "progress=false", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["test_accuracy"] >= 0.90
    assert (out / "accuracy_vs_round.png").exists()
