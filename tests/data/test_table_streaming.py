"""Table import streams (issue 16): record batches, rows spilled per bucket of clients, grouped one bucket at a
time -- the result equals grouping the whole table in memory, whatever the batch size and memory budget; float
labels import as regression targets."""

import json

import numpy as np
import pytest
import torch
import yaml

from fedloom.cli import main
from fedloom.data.base import DataError
from fedloom.data.importers import _holdout, import_table
from fedloom.data.store import StoreDataset

pa = pytest.importorskip("pyarrow", reason="the `data` extra (pyarrow) is not installed; make test installs it")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")


def _shuffled_table(n_clients=57, seed=0, string_ids=False):
    """Clients with 1..12 rows each, rows in a random order, ids not in table order."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, n_clients)
    raw = rng.permutation(10 * n_clients)[:n_clients]  # distinct ids, unsorted
    ids = np.repeat(raw, sizes)
    perm = rng.permutation(len(ids))
    ids = ids[perm]
    feats = rng.normal(size=(len(ids), 4)).astype(np.float32)
    labels = rng.integers(0, 5, len(ids))
    ids_col = np.array([f"u{v}" for v in ids]) if string_ids else ids
    return ids_col, feats, labels


def _in_memory(ids, feats, labels, holdout=None):
    """The reference: every client's rows (in table order), clients in id order, grouped in memory."""
    out = {}
    test_x = []
    for i, u in enumerate(sorted(set(ids.tolist()))):
        rows = np.flatnonzero(ids == u)
        if holdout is not None:
            tr, te = _holdout(len(rows), holdout, 0, i)
            test_x.append(feats[rows[te]])
            rows = rows[tr]
        out[str(u)] = (feats[rows], labels[rows])
    return out, (np.concatenate(test_x) if test_x else None)


@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("batch_rows, memory_mb", [(1 << 17, 256), (7, 0.0005)])  # one batch / many buckets
def test_streamed_import_equals_in_memory_grouping(tmp_path, string_ids, batch_rows, memory_mb):
    ids, feats, labels = _shuffled_table(string_ids=string_ids)
    t = pa.table({"cid": ids, "a": feats[:, 0], "b": feats[:, 1], "c": feats[:, 2], "d": feats[:, 3],
                  "y": labels})
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=50)
    out = tmp_path / "store"
    import_table(tmp_path / "t.parquet", out, "cid", "y", test_fraction=0.25, memory_mb=memory_mb,
                 batch_rows=batch_rows)
    ref, ref_test = _in_memory(ids, feats, labels, holdout=0.25)
    s = StoreDataset(out)
    assert s.client_ids() == list(ref)  # clients in id order (numeric order for integer ids)
    for k, u in enumerate(s.client_ids()):
        x, y = s.client_data(k)
        np.testing.assert_array_equal(x.numpy(), ref[u][0])
        assert y.tolist() == ref[u][1].tolist()
    np.testing.assert_array_equal(s.source.test_x.numpy(), ref_test)
    assert s.manifest["info"]["label_type"] == "class" and s.source.num_classes == 5


def test_streamed_csv_with_a_test_table_and_small_batches(tmp_path):
    ids, feats, labels = _shuffled_table(31, seed=3)
    t = pa.table({"cid": ids, "a": feats[:, 0], "b": feats[:, 1], "label": labels})
    pcsv.write_csv(t, tmp_path / "t.csv")
    pcsv.write_csv(t.slice(0, 9).drop_columns(["cid"]), tmp_path / "test.csv")
    out = tmp_path / "store"
    import_table(tmp_path / "t.csv", out, "cid", "label", test=tmp_path / "test.csv", memory_mb=0.0002, batch_rows=5)
    ref, _ = _in_memory(ids, feats[:, :2], labels)
    s = StoreDataset(out)
    assert s.client_ids() == list(ref) and int(s.client_sizes.sum()) == len(ids)
    for k, u in enumerate(s.client_ids()):
        x, y = s.client_data(k)
        np.testing.assert_allclose(x.numpy(), ref[u][0], rtol=1e-6)
        assert y.tolist() == ref[u][1].tolist()
    assert s.source.test_x.shape == (9, 2) and s.source.test_y.tolist() == labels[:9].tolist()


def test_float_labels_round_trip_as_regression_targets(tmp_path):
    ids, feats, _ = _shuffled_table(20, seed=5)
    target = (feats @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32) + 0.25).astype(np.float32)
    pq.write_table(pa.table({"cid": ids, "x": pa.array(list(feats)), "price": target}), tmp_path / "t.parquet")
    out = tmp_path / "store"
    import_table(tmp_path / "t.parquet", out, "cid", "price", test_fraction=0.2, batch_rows=16, memory_mb=0.001)
    s = StoreDataset(out)
    assert s.manifest["y"]["dtype"] == "float32" and s.manifest["info"]["label_type"] == "float"
    assert s.source.num_classes == 1  # one regression output
    ref, _ = _in_memory(ids, feats, target, holdout=0.2)
    for k, u in enumerate(s.client_ids()):
        x, y = s.client_data(k)
        assert y.dtype == torch.float32
        np.testing.assert_array_equal(y.numpy(), ref[u][1])
        np.testing.assert_array_equal(x.numpy(), ref[u][0])
    assert s.source.test_y.dtype == torch.float32 and len(s.source.test_y) + int(s.client_sizes.sum()) == len(ids)
    # and train a regression on it by config alone
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"rounds": 2, "cohort_size": 5, "progress": False, "threads": 1, "task": "regression",
                                   "data": {"dataset": {"name": "store", "path": str(out)}, "partition": "natural",
                                            "num_clients": 20}, "model": "logreg", "client": {"lr": 0.01}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and np.isfinite(recs[-1]["test_rmse"])


def test_label_type_auto_class_and_float(tmp_path):
    ids = np.array([1, 1, 2, 2, 3, 3])
    x = np.arange(6, dtype=np.float32)
    pq.write_table(pa.table({"cid": ids, "x": x, "y": np.array([0.0, 1.0, 2.0, 1.0, 0.0, 2.0])}), tmp_path / "i.parquet")
    pq.write_table(pa.table({"cid": ids, "x": x, "y": np.array([0.5, 1.0, 2.0, 1.0, 0.0, 2.0])}), tmp_path / "f.parquet")
    pq.write_table(pa.table({"cid": ids, "x": x, "y": np.array([0.0, 1.0, np.nan, 1.0, 0.0, 2.0])}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"cid": ids, "x": x, "y": np.array([0, -1, 2, 1, 0, 2])}), tmp_path / "neg.parquet")
    args = dict(client_column="cid", label_column="y", test_fraction=0.5)
    s = StoreDataset(import_table(tmp_path / "i.parquet", tmp_path / "s1", **args))  # integral floats: classes
    assert s.manifest["y"]["dtype"] == "int64" and s.source.num_classes == 3
    s = StoreDataset(import_table(tmp_path / "i.parquet", tmp_path / "s2", label_type="float", **args))
    assert s.manifest["y"]["dtype"] == "float32"
    s = StoreDataset(import_table(tmp_path / "f.parquet", tmp_path / "s3", **args))  # non-integral: float
    assert s.manifest["y"]["dtype"] == "float32"
    s = StoreDataset(import_table(tmp_path / "neg.parquet", tmp_path / "s6", label_type="float", **args))
    assert s.source.test_y.dtype == torch.float32
    with pytest.raises(DataError, match="non-negative integers.*--label-type float"):
        import_table(tmp_path / "f.parquet", tmp_path / "s4", label_type="class", **args)
    with pytest.raises(DataError, match="non-negative integers"):
        import_table(tmp_path / "neg.parquet", tmp_path / "s5", **args)
    with pytest.raises(DataError, match="n.parquet.*NaN"):
        import_table(tmp_path / "n.parquet", tmp_path / "s5", **args)
    assert not (tmp_path / "s4").exists() and not (tmp_path / "s5").exists()


def test_spill_files_are_removed_and_a_bad_batch_leaves_nothing(tmp_path):
    ids, feats, labels = _shuffled_table(10, seed=7)
    a = pa.array([None if i == len(ids) - 1 else float(v) for i, v in enumerate(feats[:, 0])])
    pq.write_table(pa.table({"cid": ids, "a": a, "y": labels}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="column 'a' has 1 null values"):
        import_table(tmp_path / "t.parquet", tmp_path / "s", "cid", "y", batch_rows=4, memory_mb=0.0001)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # no store, no spill files
