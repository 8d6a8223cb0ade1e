"""``fedloom data import``: LEAF JSON, tables with a client-id column, frozen fedloom partitions -- then training
on the store by config alone."""

import json

import numpy as np
import pytest
import torch
import yaml

from fedloom.cli import main
from fedloom.data.federated import build_federated
from fedloom.data.store import StoreDataset
from fedloom.data.text import VOCAB_SIZE, encode

pa = pytest.importorskip("pyarrow", reason="the `data` extra (pyarrow) is not installed; make test installs it")
pcsv = pytest.importorskip("pyarrow.csv")
pq = pytest.importorskip("pyarrow.parquet")


def _leaf_users(rng, users, dim=5, classes=3, sizes=None):
    out = {}
    for i, u in enumerate(users):
        n = sizes[i] if sizes else int(rng.integers(4, 12))
        out[u] = {"x": rng.normal(size=(n, dim)).round(4).tolist(), "y": rng.integers(0, classes, n).tolist()}
    return out


def _write_leaf(path, user_data):
    users = list(user_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": users, "num_samples": [len(user_data[u]["y"]) for u in users],
                                "user_data": user_data}))


@pytest.fixture
def leaf(tmp_path):
    """LEAF's layout: data/train/*.json and data/test/*.json, the same users in both."""
    rng = np.random.default_rng(0)
    tr1, tr2 = _leaf_users(rng, ["f_00", "f_01"]), _leaf_users(rng, ["f_02"])
    te1, te2 = _leaf_users(rng, ["f_00", "f_01"]), _leaf_users(rng, ["f_02"])
    _write_leaf(tmp_path / "data/train/all_data_0_train.json", tr1)
    _write_leaf(tmp_path / "data/train/all_data_1_train.json", tr2)
    _write_leaf(tmp_path / "data/test/all_data_0_test.json", te1)
    _write_leaf(tmp_path / "data/test/all_data_1_test.json", te2)
    return tmp_path / "data", {**tr1, **tr2}, {**te1, **te2}


def test_leaf_json_import_round_trip_and_train_by_config_alone(leaf, tmp_path, capsys):
    root, train, test = leaf
    out = tmp_path / "store"
    assert main(["data", "import", "leaf", str(root / "train"), "--test", str(root / "test"), "--out", str(out)]) == 0
    assert "3 clients" in capsys.readouterr().out
    s = StoreDataset(out)
    assert s.client_ids() == ["f_00", "f_01", "f_02"] and s.source.num_classes == 3
    for k, u in enumerate(s.client_ids()):
        x, y = s.client_data(k)
        assert torch.equal(x, torch.tensor(train[u]["x"], dtype=torch.float32))
        assert y.tolist() == train[u]["y"]
    assert torch.equal(s.source.test_x, torch.tensor([r for u in test for r in test[u]["x"]], dtype=torch.float32))
    assert s.source.test_y.tolist() == [v for u in test for v in test[u]["y"]]
    # train on it by config alone
    cfg = tmp_path / "leaf.yaml"
    cfg.write_text(yaml.safe_dump({"rounds": 2, "cohort_size": 2, "progress": False, "threads": 1,
                                   "data": {"dataset": {"name": "store", "path": str(out)}, "partition": "natural",
                                            "num_clients": 3},
                                   "model": "logreg", "client": {"lr": 0.1, "batch_size": 4}}))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(run)]) == 0
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and recs[-1]["test_accuracy"] is not None


def test_leaf_without_test_files_holds_out_per_user(leaf, tmp_path):
    root, train, _ = leaf
    out = tmp_path / "store"
    assert main(["data", "import", "leaf", str(root / "train"), "--test-fraction", "0.25", "--out", str(out)]) == 0
    s = StoreDataset(out)
    n = {u: len(train[u]["y"]) for u in train}
    assert sum(s.client_sizes.tolist()) + len(s.source.test_y) == sum(n.values())
    for k, u in enumerate(s.client_ids()):
        assert s.client_size(k) == n[u] - min(int(round(n[u] * 0.25)), n[u] - 1)
        rows = {tuple(np.float32(v) for v in r) for r in train[u]["x"]}
        assert all(tuple(r) in rows for r in s.client_data(k)[0].tolist())
    out2 = tmp_path / "again"
    assert main(["data", "import", "leaf", str(root / "train"), "--test-fraction", "0.25", "--out", str(out2)]) == 0
    assert torch.equal(StoreDataset(out2).source.test_x, s.source.test_x)  # the split is seeded


def test_leaf_text_users_become_character_ids(tmp_path):
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"
    ud = {"HAMLET": {"x": [text[i : i + 10] for i in range(6)], "y": [text[i + 10] for i in range(6)]}}
    _write_leaf(tmp_path / "sh.json", ud)
    out = tmp_path / "store"
    assert main(["data", "import", "leaf", str(tmp_path / "sh.json"), "--out", str(out), "--test-fraction", "0.3"]) == 0
    s = StoreDataset(out)
    assert s.source.num_classes == VOCAB_SIZE and s.source.input_shape == (10,)
    x, y = s.client_data(0)
    assert x.dtype == torch.int64 and all(int(a) in encode(text).tolist() for a in y)


@pytest.mark.parametrize("bad, needle", [
    ("{not json", "not a readable LEAF JSON"),
    (json.dumps({"users": ["a"], "num_samples": [1], "user_data": {}}), "user 'a' has no user_data"),
    (json.dumps({"users": ["a"], "num_samples": [3], "user_data": {"a": {"x": [[1]], "y": [0]}}}), "num_samples says 3"),
    (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[1], [1, 2]], "y": [0, 1]}}}), "user 'a'"),
    (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[1]], "y": [0.5]}}}), "non-negative integers"),
    (json.dumps([1, 2]), "not LEAF's layout"),
])
def test_bad_leaf_file_is_named_and_nothing_written(tmp_path, capsys, bad, needle):
    f = tmp_path / "bad.json"
    f.write_text(bad)
    out = tmp_path / "store"
    assert main(["data", "import", "leaf", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_leaf_user_in_two_files_and_missing_input(tmp_path, capsys):
    rng = np.random.default_rng(1)
    _write_leaf(tmp_path / "a.json", _leaf_users(rng, ["u"]))
    _write_leaf(tmp_path / "b.json", _leaf_users(rng, ["u"]))
    assert main(["data", "import", "leaf", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "user 'u' already appeared in" in capsys.readouterr().err
    assert main(["data", "import", "leaf", str(tmp_path / "nope.json"), "--out", str(tmp_path / "s")]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.choice(["carol", "alice", "bob", "dave"], n)
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    return ids, feats, labels


@pytest.mark.parametrize("fmt", ["parquet", "csv", "arrow", "arrow-stream"])
def test_table_with_a_client_column(tmp_path, fmt):
    ids, feats, labels = _table()
    t = pa.table({"user": ids, "a": feats[:, 0], "b": feats[:, 1], "c": feats[:, 2], "label": labels})
    path = tmp_path / f"t.{fmt.split('-')[0]}"
    if fmt == "parquet":
        pq.write_table(t, path)
    elif fmt == "csv":
        pcsv.write_csv(t, path)
    elif fmt == "arrow-stream":  # what Hugging Face datasets' save_to_disk writes
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
    else:
        import pyarrow.feather as feather

        feather.write_feather(t, path)
    te = pa.table({"a": feats[:5, 0], "b": feats[:5, 1], "c": feats[:5, 2], "label": labels[:5]})
    pq.write_table(te, tmp_path / "test.parquet")
    out = tmp_path / "store"
    assert main(["data", "import", "table", str(path), "--client-column", "user", "--label-column", "label",
                 "--test", str(tmp_path / "test.parquet"), "--out", str(out)]) == 0
    s = StoreDataset(out)
    assert s.client_ids() == ["alice", "bob", "carol", "dave"]  # clients in id order
    for k, u in enumerate(s.client_ids()):
        rows = np.flatnonzero(ids == u)  # each client's rows in table order
        x, y = s.client_data(k)
        np.testing.assert_allclose(x.numpy(), feats[rows], rtol=1e-6)
        assert y.tolist() == labels[rows].tolist()
    assert s.source.test_x.shape == (5, 3) and s.source.num_classes == 4
    if fmt == "parquet":  # and train on it by config alone
        cfg = tmp_path / "t.yaml"
        cfg.write_text(yaml.safe_dump({"rounds": 1, "cohort_size": 4, "progress": False, "threads": 1,
                                       "data": {"dataset": {"name": "store", "path": str(out)},
                                                "partition": "natural", "num_clients": 4}, "model": "logreg"}))
        assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 0


def test_table_list_column_string_labels_and_holdout(tmp_path):
    ids, feats, _ = _table(80)
    img = np.random.default_rng(2).integers(0, 255, (80, 12)).astype(np.float32)
    names = np.array(["cat", "dog", "emu"])[np.arange(80) % 3]
    t = pa.table({"cid": pa.array(np.arange(80) % 7), "pixels": pa.array(list(img)), "animal": names})
    pq.write_table(t, tmp_path / "t.parquet")
    out = tmp_path / "store"
    assert main(["data", "import", "table", str(tmp_path / "t.parquet"), "--client-column", "cid", "--label-column",
                 "animal", "--input-shape", "1,3,4", "--test-fraction", "0.2", "--out", str(out)]) == 0
    s = StoreDataset(out)
    assert s.client_ids() == [str(i) for i in range(7)] and s.source.input_shape == (1, 3, 4)
    assert s.manifest["info"]["classes"] == ["cat", "dog", "emu"] and s.source.num_classes == 3
    assert int(s.client_sizes.sum()) + len(s.source.test_y) == 80


def test_table_errors_name_the_column_and_file(tmp_path, capsys):
    ids, feats, labels = _table()
    pq.write_table(pa.table({"user": ids, "a": feats[:, 0], "label": labels}), tmp_path / "t.parquet")
    args = ["data", "import", "table", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "s")]
    assert main([*args, "--client-column", "client", "--label-column", "label"]) == 2
    err = capsys.readouterr().err
    assert "no column 'client'" in err and "t.parquet" in err
    assert main([*args, "--client-column", "user", "--label-column", "label", "--features", "a,zz"]) == 2
    assert "no column 'zz'" in capsys.readouterr().err
    pq.write_table(pa.table({"user": ids, "a": pa.array([None] + feats[1:, 0].tolist()), "label": labels}),
                   tmp_path / "n.parquet")
    assert main(["data", "import", "table", str(tmp_path / "n.parquet"), "--out", str(tmp_path / "s"),
                 "--client-column", "user", "--label-column", "label"]) == 2
    assert "column 'a' has 1 null values" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_partition_import_freezes_a_run_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 3, "data": {"dataset": "digits", "num_clients": 20,
                                                       "partition": {"name": "dirichlet", "alpha": 0.5}}}))
    out = tmp_path / "store"
    assert main(["data", "import", "partition", str(cfg), "--out", str(out), "data.num_clients=8",
                 "cohort_size=4"]) == 0
    s = StoreDataset(out)
    mem = build_federated("digits", None, 8, "dirichlet", {"alpha": 0.5}, 3)
    assert s.num_clients == 8 and s.manifest["info"]["seed"] == 3
    for k in range(8):
        assert torch.equal(s.client_data(k)[0], mem.client_data(k)[0])
    assert main(["data", "import", "partition", str(cfg), "--out", str(tmp_path / "s2"), "data.num_clients=x"]) == 2
    assert main(["data", "import", "partition", str(cfg), "--out", str(out)]) == 2  # exists
