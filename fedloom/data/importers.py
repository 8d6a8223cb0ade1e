"""Importers into the client store (:mod:`fedloom.data.store`), behind ``fedloom data import``:

* :func:`import_leaf` -- LEAF JSON files (``{"users": [...], "num_samples": [...], "user_data": {user: {"x":
  [...], "y": [...]}}}``), e.g. LEAF's ``data/train/*.json`` (+ ``data/test/*.json`` as the test split).
  Numeric x (FEMNIST, Synthetic) is stored as float32; string x and y (Shakespeare: 80 characters -> the
  next one) as character ids of fedloom's Shakespeare vocabulary (:data:`fedloom.data.text.VOCAB`).
* :func:`import_table` -- any Parquet, CSV or Arrow/Feather table with a client-id column (the layout of
  flwr-datasets' NaturalIdPartitioner and of Hugging Face datasets saved to Parquet): rows are grouped by
  client (clients ordered by id, each client's rows in table order).
* :func:`import_federated` / :func:`import_partition` -- any fedloom dataset under any partitioner, frozen:
  the store reproduces the run's clients exactly, for others to reuse.

Without a test file, each client's rows are split: a seeded ``test_fraction`` of them is held out (LEAF's
per-user split) and pooled into the server's test set. Every importer writes through
:class:`~fedloom.data.store.StoreWriter` (a temporary directory renamed at the end: a failed import leaves
nothing) and raises :class:`~fedloom.data.base.DataError` naming the file, user or column at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.data.base import DataError, FederatedDataset
from fedloom.data.store import StoreWriter, _pa
from fedloom.rng import numpy_rng


def _holdout(n: int, fraction: float, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a client with ``n`` rows: a seeded ``fraction`` held out, at least one row
    kept for training; both in the client's own order."""
    t = min(int(round(n * fraction)), n - 1) if n > 1 else 0
    perm = numpy_rng(seed, "import-holdout", i).permutation(n)
    return np.sort(perm[t:]), np.sort(perm[:t])


def _expand(paths: Iterable[str | Path], what: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise DataError(f"{what} {p}: a directory with no *.json files")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{what} {p}: no such file or directory")
    return out


# -- LEAF JSON ----------------------------------------------------------------------------------------------
def _leaf_file(path: Path) -> tuple[list[str], dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable LEAF JSON file ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("users"), list) or not isinstance(d.get("user_data"), dict):
        raise DataError(f"{path}: not LEAF's layout; expected {{\"users\": [...], \"num_samples\": [...], "
                        "\"user_data\": {user: {\"x\": [...], \"y\": [...]}}}")
    users = [str(u) for u in d["users"]]
    ns = d.get("num_samples")
    if ns is not None and (not isinstance(ns, list) or len(ns) != len(users)):
        raise DataError(f"{path}: num_samples has {len(ns) if isinstance(ns, list) else ns!r} entries for "
                        f"{len(users)} users")
    data = {str(k): v for k, v in d["user_data"].items()}
    for i, u in enumerate(users):
        ud = data.get(u)
        if not isinstance(ud, dict) or not isinstance(ud.get("x"), list) or not isinstance(ud.get("y"), list):
            raise DataError(f"{path}: user {u!r} has no user_data entry with lists 'x' and 'y'")
        if len(ud["x"]) != len(ud["y"]):
            raise DataError(f"{path}: user {u!r} has {len(ud['x'])} x but {len(ud['y'])} y")
        if ns is not None and int(ns[i]) != len(ud["y"]):
            raise DataError(f"{path}: user {u!r}: num_samples says {ns[i]}, user_data has {len(ud['y'])} samples")
    return users, data


def _leaf_arrays(xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """A LEAF user's (x, y) as arrays; the flag says they are text (character ids)."""
    from fedloom.data.text import encode

    text = bool(xs) and isinstance(xs[0], str)
    try:
        if text:
            if not all(isinstance(s, str) for s in xs) or len({len(s) for s in xs}) > 1:
                raise ValueError("text samples must all be strings of one length")
            x = np.stack([encode(s) for s in xs]).astype(np.int64)
        else:
            x = np.asarray(xs, dtype=np.float32)
        if ys and isinstance(ys[0], str):
            if not all(isinstance(s, str) and len(s) == 1 for s in ys):
                raise ValueError("text targets must be single characters")
            y = encode("".join(ys)).astype(np.int64)
            text = True
        else:
            yf = np.asarray(ys, dtype=np.float64)
            if yf.size and (not np.isfinite(yf).all() or (yf != np.round(yf)).any() or yf.min() < 0):
                raise ValueError("labels must be non-negative integers (classification)")
            y = yf.astype(np.int64)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: {e}") from None
    return x, y, text


def import_leaf(train: Sequence[str | Path], out: str | Path, test: Sequence[str | Path] | None = None,
                test_fraction: float = 0.2, seed: int = 0, name: str | None = None) -> Path:
    """LEAF JSON files (or directories of them) into a store at ``out``; ``test`` files give the test split,
    else ``test_fraction`` of each user's samples is held out."""
    from fedloom.data.text import VOCAB_SIZE

    files = _expand(train, "--train")
    test_files = _expand(test, "--test") if test else []
    if not test_files and not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction: {test_fraction}; without --test files it must be in (0, 1)")
    tx: list[np.ndarray] = []
    ty: list[np.ndarray] = []
    seen: dict[str, Path] = {}
    kinds: set[bool] = set()
    with StoreWriter(out, name or files[0].parent.name or "leaf",
                     info={"imported_from": "leaf", "files": [f.name for f in files],
                           "test_files": [f.name for f in test_files],
                           "test_fraction": None if test_files else test_fraction, "seed": seed}) as w:
        i = 0
        for f in files:
            users, data = _leaf_file(f)
            for u in users:
                if u in seen:
                    raise DataError(f"{f}: user {u!r} already appeared in {seen[u]}; a user's data must be in one file")
                seen[u] = f
                x, y, text = _leaf_arrays(data[u]["x"], data[u]["y"], f"{f}: user {u!r}")
                kinds.add(text)
                if not test_files:
                    tr, te = _holdout(len(y), test_fraction, seed, i)
                    tx.append(x[te])
                    ty.append(y[te])
                    x, y = x[tr], y[tr]
                w.add_client(u, x, y)
                i += 1
        for f in test_files:
            users, data = _leaf_file(f)
            for u in users:
                x, y, text = _leaf_arrays(data[u]["x"], data[u]["y"], f"{f}: user {u!r}")
                kinds.add(text)
                tx.append(x)
                ty.append(y)
        if len(kinds) > 1:
            raise DataError("--train/--test: some users have text samples and others numeric ones")
        if True in kinds:
            w.num_classes = VOCAB_SIZE
        _set_test(w, tx, ty)
    return Path(out)


def _set_test(w: StoreWriter, tx: list[np.ndarray], ty: list[np.ndarray]) -> None:
    tx, ty = [a for a in tx if len(a)], [a for a in ty if len(a)]
    if not ty:
        raise DataError("the test split is empty: pass a --test file or a larger --test-fraction")
    w.set_test(np.concatenate(tx), np.concatenate(ty))


# -- tables -------------------------------------------------------------------------------------------------
def read_table(path: str | Path):
    """A Parquet (.parquet, .pq), CSV (.csv, .tsv) or Arrow IPC / Feather (.arrow, .feather, .ipc; the IPC file
    or stream format, e.g. a Hugging Face dataset's ``save_to_disk`` shards) table."""
    pa = _pa()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(p)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            return pcsv.read_csv(p, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".arrow", ".feather", ".ipc"):
            import pyarrow.feather as feather

            try:
                return feather.read_table(p)  # Arrow IPC file format (and Feather v1)
            except pa.ArrowInvalid:
                with pa.memory_map(str(p), "r") as src:  # the IPC stream format (Hugging Face datasets' .arrow)
                    return pa.ipc.open_stream(src).read_all()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{p}: cannot read it as a {suffix[1:]} table ({e})") from None
    raise DataError(f"{p}: unknown table format {suffix!r}; use .parquet, .csv, .tsv, .arrow or .feather")


def _column(table, name: str, path: Path):
    if name not in table.column_names:
        raise DataError(f"{path}: no column {name!r}; columns: {', '.join(table.column_names)}")
    col = table.column(name)
    if col.null_count:
        raise DataError(f"{path}: column {name!r} has {col.null_count} null values")
    return col


def _features(table, cols: list[str], path: Path, x_dtype: str, input_shape: tuple[int, ...] | None) -> np.ndarray:
    pa = _pa()
    parts = []
    for c in cols:
        col = _column(table, c, path)
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            if len(cols) != 1:
                raise DataError(f"{path}: column {c!r} holds lists; a list column must be the only feature column")
            arr = col.combine_chunks()
            vals = arr.flatten()
            if not (pa.types.is_integer(vals.type) or pa.types.is_floating(vals.type)):
                raise DataError(f"{path}: column {c!r} holds lists of {vals.type}, not numbers")
            n = len(arr)
            if len(vals) % max(n, 1) or (not pa.types.is_fixed_size_list(t) and n and
                                         len(set(np.diff(arr.offsets.to_numpy()).tolist())) > 1):
                raise DataError(f"{path}: column {c!r}: lists of different lengths; every row needs the same length")
            parts.append(vals.to_numpy(zero_copy_only=False).reshape(n, -1))
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            parts.append(col.to_numpy(zero_copy_only=False).reshape(-1, 1))
        else:
            raise DataError(f"{path}: feature column {c!r} has type {t}; features must be numbers or lists of numbers "
                            "(choose the feature columns with --features)")
    x = np.concatenate([p.astype(x_dtype) for p in parts], axis=1) if len(parts) > 1 else parts[0].astype(x_dtype)
    if input_shape:
        if int(np.prod(input_shape)) != x.shape[1]:
            raise DataError(f"--input-shape {list(input_shape)}: {int(np.prod(input_shape))} values per row, the "
                            f"feature columns give {x.shape[1]}")
        x = x.reshape(len(x), *input_shape)
    return np.ascontiguousarray(x)


def _labels(cols: list, names: list[Path], label: str) -> tuple[list[np.ndarray], list[str] | None]:
    """Integer labels as int64; string labels as ids of their sorted distinct values (returned)."""
    pa = _pa()
    import pyarrow.compute as pc

    t = cols[0].type
    if pa.types.is_dictionary(t):
        cols = [c.cast(t.value_type) for c in cols]
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        classes = sorted(set().union(*[set(pc.unique(c).to_pylist()) for c in cols]))
        lut = {s: i for i, s in enumerate(classes)}
        return [np.fromiter((lut[s] for s in c.to_pylist()), dtype=np.int64, count=len(c)) for c in cols], classes
    out = []
    for c, p in zip(cols, names):
        if not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type)):
            raise DataError(f"{p}: label column {label!r} has type {c.type}; labels must be integers or strings")
        y = c.to_numpy(zero_copy_only=False)
        if y.size and (y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any())
                       or y.min() < 0):
            raise DataError(f"{p}: label column {label!r}: labels must be non-negative integers (classification)")
        out.append(y.astype(np.int64))
    return out, None


def import_table(train: str | Path, out: str | Path, client_column: str, label_column: str,
                 features: Sequence[str] | None = None, test: str | Path | None = None, test_fraction: float = 0.2,
                 input_shape: Sequence[int] | None = None, x_dtype: str = "float32", seed: int = 0,
                 name: str | None = None, num_classes: int | None = None) -> Path:
    """A table with a client-id column into a store at ``out`` (see the module docstring)."""
    pa = _pa()
    import pyarrow.compute as pc

    tpath = Path(train)
    table = read_table(tpath)
    ids_col = _column(table, client_column, tpath)
    ycol = _column(table, label_column, tpath)
    cols = list(features) if features else [c for c in table.column_names if c not in (client_column, label_column)]
    if not cols:
        raise DataError(f"{tpath}: no feature columns besides {client_column!r} and {label_column!r}")
    if not test and not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction: {test_fraction}; without a --test file it must be in (0, 1)")
    shape = tuple(int(s) for s in input_shape) if input_shape else None
    x = _features(table, cols, tpath, x_dtype, shape)
    ytabs, ypaths = [ycol], [tpath]
    test_table = None
    if test:
        test_table = read_table(test)
        ytabs.append(_column(test_table, label_column, Path(test)))
        ypaths.append(Path(test))
    ys, classes = _labels(ytabs, ypaths, label_column)
    y = ys[0]
    # group rows by client: clients in id order, each client's rows in table order (a stable sort)
    enc = pc.dictionary_encode(ids_col).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    uniq = enc.dictionary
    try:
        order = np.asarray(pc.sort_indices(uniq).to_numpy(zero_copy_only=False), dtype=np.int64)
    except pa.ArrowException as e:
        raise DataError(f"{tpath}: client column {client_column!r} of type {ids_col.type} cannot be sorted ({e})") from None
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    r = rank[codes]
    perm = np.argsort(r, kind="stable")
    counts = np.bincount(r, minlength=len(uniq))
    ids = [str(v) for v in uniq.take(pa.array(order)).to_pylist()]
    info = {"imported_from": "table", "file": tpath.name, "client_column": client_column, "label_column": label_column,
            "features": cols, "test_file": Path(test).name if test else None,
            "test_fraction": None if test else test_fraction, "seed": seed}
    if classes is not None:
        info["classes"] = classes
    tx: list[np.ndarray] = []
    ty: list[np.ndarray] = []
    with StoreWriter(out, name or tpath.stem, num_classes, info) as w:
        off = 0
        for i, (cid, n) in enumerate(zip(ids, counts.tolist())):
            rows = perm[off : off + n]
            off += n
            if not test:
                tr, te = _holdout(n, test_fraction, seed, i)
                tx.append(x[rows[te]])
                ty.append(y[rows[te]])
                rows = rows[tr]
            w.add_client(cid, x[rows], y[rows])
        if test_table is not None:
            tx, ty = [_features(test_table, cols, Path(test), x_dtype, shape)], [ys[1]]  # type: ignore[arg-type]
        _set_test(w, tx, ty)
    return Path(out)


# -- fedloom datasets ---------------------------------------------------------------------------------------
def import_federated(data: FederatedDataset, out: str | Path, name: str | None = None, info: dict | None = None,
                     client_ids: Sequence[str] | None = None) -> Path:
    """Every client of ``data`` (in order, rows in the client's order) and its test split into a store."""
    src = data.source
    ids = list(client_ids) if client_ids is not None else [str(k) for k in range(data.num_clients)]
    with StoreWriter(out, name or src.name, int(src.num_classes), info) as w:
        for k in range(data.num_clients):
            x, y = data.client_data(k)
            w.add_client(ids[k], x.cpu().numpy(), y.cpu().numpy())
        w.set_test(src.test_x.cpu().numpy(), src.test_y.cpu().numpy())
    return Path(out)


def import_partition(dataset: str, dataset_params: dict | None, num_clients: int, partitioner: str,
                     partition_params: dict | None, seed: int, out: str | Path) -> Path:
    """A fedloom dataset split by a partitioner exactly as a run with these settings splits it, frozen."""
    from fedloom.data.federated import build_federated

    data = build_federated(dataset, dataset_params, num_clients, partitioner, partition_params, seed)
    natural_ids = data.source.info.get("clients") if partitioner == "natural" else None
    ids = [str(c) for c in natural_ids[: data.num_clients]] if isinstance(natural_ids, list) else None
    if ids is not None and (len(ids) != data.num_clients or len(set(ids)) != len(ids)):
        ids = None  # the dataset's own client names only when they name every client once
    info = {"imported_from": "partition", "dataset": dataset, "dataset_params": dict(dataset_params or {}),
            "partition": partitioner, "partition_params": dict(partition_params or {}), "num_clients": num_clients,
            "seed": seed}
    return import_federated(data, out, data.source.name, info, ids)
