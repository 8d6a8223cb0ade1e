"""The on-disk client store: round trips, runs that equal the in-memory ones, portability, damaged files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.cli import main
from fedloom.config import validate_config
from fedloom.data import store as store_mod
from fedloom.data.base import DataError
from fedloom.data.datasets import DataUnavailable
from fedloom.data.federated import build_federated
from fedloom.data.importers import import_partition
from fedloom.data.store import StoreDataset, StoreWriter
from fedloom.simulation import Simulation
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("pyarrow", reason="the `data` extra (pyarrow) is not installed; make test installs it")


@pytest.fixture
def digits_store(tmp_path, monkeypatch):
    """digits under dirichlet(0.5) over 10 clients (small_config's data), written with tiny record batches so
    that clients straddle Arrow chunks."""
    monkeypatch.setattr(store_mod, "BATCH_ROWS", 37)
    out = tmp_path / "digits10"
    import_partition("digits", None, 10, "dirichlet", {"alpha": 0.5}, 0, out)
    return out


def test_round_trip_equals_the_source_per_client(digits_store):
    mem = build_federated("digits", None, 10, "dirichlet", {"alpha": 0.5}, 0)
    st = StoreDataset(digits_store)
    assert len(st.train.chunks["x"]) > 10  # many record batches: reads cross chunk boundaries
    assert st.num_clients == 10 and torch.equal(st.client_sizes, mem.client_sizes)
    assert st.source.input_shape == (1, 8, 8) and st.source.num_classes == 10 and st.source.train_x is None
    for k in range(10):
        xs, ys = st.client_data(k)
        xm, ym = mem.client_data(k)
        assert torch.equal(xs, xm) and torch.equal(ys, ym)
        assert torch.equal(st.label_counts(k), mem.label_counts(k))
    assert torch.equal(st.source.test_x, mem.source.test_x) and torch.equal(st.source.test_y, mem.source.test_y)
    # a cohort read holds exactly its clients' rows, in request order
    c = st.cohort([7, 2, 5])
    assert len(c.x) == sum(st.client_size(k) for k in (7, 2, 5))
    for rows, k in zip(c.rows, (7, 2, 5)):
        assert torch.equal(c.x[rows], mem.client_data(k)[0]) and torch.equal(c.y[rows], mem.client_data(k)[1])
    assert st.verify() == []


def test_store_backed_run_is_bit_identical_to_the_in_memory_run(digits_store):
    base = small_config(rounds=2)
    a = Simulation(validate_config(base))
    ra = a.run()
    b = Simulation(validate_config(small_config(rounds=2, **{
        "data.dataset": {"name": "store", "path": str(digits_store)}, "data.partition": "natural"})))
    rb = b.run()
    for k in a.state.params:
        assert torch.equal(a.state.params[k], b.state.params[k])
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}


def test_label_flip_reads_flipped_labels_for_attackers_only(digits_store):
    st = StoreDataset(digits_store)
    y0 = [st.client_data(k)[1].clone() for k in range(10)]
    st.flip_labels([1, 4])
    for k in range(10):
        want = 9 - y0[k] if k in (1, 4) else y0[k]
        assert torch.equal(st.client_data(k)[1], want)
    c = st.cohort([4, 0])
    assert torch.equal(c.y[c.rows[0]], 9 - y0[4]) and torch.equal(c.y[c.rows[1]], y0[0])


def test_first_clients_and_other_partitioners(digits_store):
    assert build_federated("store", {"path": str(digits_store)}, 4, "natural", None, 0).num_clients == 4
    with pytest.raises(DataError, match="data.num_clients: 11 .* holds 10 clients"):
        build_federated("store", {"path": str(digits_store)}, 11, "natural", None, 0)
    # another partitioner re-splits the store's pooled rows
    d = build_federated("store", {"path": str(digits_store)}, 6, "iid", None, 0)
    assert d.num_clients == 6 and int(d.client_sizes.sum()) == int(StoreDataset(digits_store).client_sizes.sum())


def test_a_store_copied_elsewhere_reads_in_a_fresh_process(digits_store, tmp_path):
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(digits_store, moved)
    shutil.rmtree(digits_store)  # nothing may point back at the original location
    code = ("import sys, json; from fedloom.data.store import StoreDataset; s = StoreDataset(sys.argv[1]); "
            "print(json.dumps([[float(s.client_data(k)[0].double().sum()), s.client_data(k)[1].tolist()] "
            "for k in range(s.num_clients)]))")
    p = subprocess.run([sys.executable, "-c", code, str(moved)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    mem = build_federated("digits", None, 10, "dirichlet", {"alpha": 0.5}, 0)
    for k, (xsum, ys) in enumerate(got):
        x, y = mem.client_data(k)
        assert xsum == pytest.approx(float(x.double().sum()), abs=0) and ys == y.tolist()


# -- missing and damaged stores: one clear error naming the file ---------------------------------------------
def test_missing_store_names_the_path(tmp_path):
    with pytest.raises(DataUnavailable, match=f"no client store at {tmp_path / 'nope'}"):
        StoreDataset(tmp_path / "nope")


@pytest.mark.parametrize("damage, fname", [
    ("delete", "fedloom-store.json"), ("garbage", "fedloom-store.json"), ("delete", "train.arrow"),
    ("truncate", "train.arrow"), ("garbage", "train.arrow"), ("truncate", "clients.arrow"),
    ("garbage", "clients.arrow"), ("delete", "test.arrow"), ("garbage", "test.arrow"),
])
def test_damaged_store_file_is_named(digits_store, damage, fname):
    f = digits_store / fname
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    else:  # same size, unreadable content
        f.write_bytes(b"\x00garbage" * (f.stat().st_size // 8) + b"\x00" * (f.stat().st_size % 8))
    with pytest.raises(DataError) as e:
        StoreDataset(digits_store)  # every file is checked when the store is opened
    assert str(f) in str(e.value)


def test_changed_bytes_are_caught_by_verify(digits_store):
    f = digits_store / "train.arrow"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF  # inside the float data: still a readable file of the right size
    f.write_bytes(bytes(b))
    bad = StoreDataset(digits_store).verify()
    assert len(bad) == 1 and str(f) in bad[0]


def test_cli_run_on_a_damaged_store_exits_2_naming_the_file(digits_store, tmp_path, capsys):
    (digits_store / "clients.arrow").write_bytes(b"not arrow")
    cfg = tmp_path / "store.yaml"
    cfg.write_text(json.dumps(small_config(**{"data.dataset": {"name": "store", "path": str(digits_store)},
                                              "data.partition": "natural"})))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(digits_store / "clients.arrow") in err and "Traceback" not in err
    assert not out.exists()
    assert main(["data", "info", str(digits_store)]) == 2


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(DataError, match="client 'b'.*shape"):
        with StoreWriter(out, "t") as w:
            w.add_client("a", np.zeros((3, 4), np.float32), np.zeros(3, np.int64))
            w.add_client("b", np.zeros((2, 5), np.float32), np.zeros(2, np.int64))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="appears twice"):
        with StoreWriter(out, "t") as w:
            w.add_client("a", np.zeros((3, 4), np.float32), np.zeros(3, np.int64))
            w.add_client("a", np.zeros((3, 4), np.float32), np.zeros(3, np.int64))
    assert list(tmp_path.iterdir()) == []
    (out / "x").parent.mkdir()
    (out / "x").write_text("taken")
    with pytest.raises(DataError, match="--out .* not an empty directory"):
        StoreWriter(out, "t")


def test_empty_clients_and_multidimensional_targets(tmp_path):
    with StoreWriter(tmp_path / "s", "t", num_classes=5) as w:
        w.add_client("empty", np.zeros((0,)), np.zeros((0,)))
        w.add_client("a", np.arange(12, dtype=np.int64).reshape(3, 4), np.arange(12, dtype=np.int64).reshape(3, 4) % 5)
        w.set_test(np.ones((2, 4), np.int64), np.ones((2, 4), np.int64))
    s = StoreDataset(tmp_path / "s")
    assert s.client_sizes.tolist() == [0, 3] and s.client_ids() == ["empty", "a"]
    x, y = s.client_data(1)
    assert x.dtype == torch.int64 and torch.equal(x, torch.arange(12).reshape(3, 4)) and y.shape == (3, 4)
    assert s.client_data(0)[0].shape == (0, 4)
    assert s.label_counts(1).tolist() == torch.bincount(torch.arange(12) % 5, minlength=5).tolist()
