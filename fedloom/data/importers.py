"""Importers into the client store (:mod:`fedloom.data.store`), behind ``fedloom data import``:

* :func:`import_leaf` -- LEAF JSON files (``{"users": [...], "num_samples": [...], "user_data": {user: {"x":
  [...], "y": [...]}}}``), e.g. LEAF's ``data/train/*.json`` (+ ``data/test/*.json`` as the test split).
  Numeric x (FEMNIST, Synthetic) is stored as float32; string x and y (Shakespeare: 80 characters -> the
  next one) as character ids of fedloom's Shakespeare vocabulary (:data:`fedloom.data.text.VOCAB`).
* :func:`import_table` -- any Parquet, CSV or Arrow/Feather table with a client-id column (the layout of
  flwr-datasets' NaturalIdPartitioner and of Hugging Face datasets saved to Parquet): rows are grouped by
  client (clients ordered by id, each client's rows in table order). The table is streamed (record batches,
  rows spilled to per-bucket files and grouped one bucket of clients at a time), so a table of tens of
  millions of rows imports in bounded memory. Labels: classes (integers, or strings -> ids) or float
  regression targets (``label_type``).
* :func:`import_federated` / :func:`import_partition` -- any fedloom dataset under any partitioner, frozen:
  the store reproduces the run's clients exactly, for others to reuse.

Without a test file, each client's rows are split: a seeded ``test_fraction`` of them is held out (LEAF's
per-user split) and pooled into the server's test set. Every importer writes through
:class:`~fedloom.data.store.StoreWriter` (a temporary directory renamed at the end: a failed import leaves
nothing) and raises :class:`~fedloom.data.base.DataError` naming the file, user or column at fault.
"""

from __future__ import annotations

import json
import shutil
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
TABLE_BATCH_ROWS = 1 << 17  # rows per record batch read from a table
TABLE_MEMORY_MB = 256  # what the grouping pass holds at once (rows of one bucket of clients, ~4 copies)
LABEL_TYPES = ("auto", "class", "float")
_TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "ipc",
                   ".feather": "ipc", ".ipc": "ipc"}


class TableFile:
    """A Parquet (.parquet, .pq), CSV (.csv, .tsv) or Arrow IPC / Feather (.arrow, .feather, .ipc; the IPC file
    or stream format, e.g. a Hugging Face dataset's ``save_to_disk`` shards) table, read in record batches --
    never whole: Parquet by row groups / batches of ``batch_rows``, CSV in blocks, Arrow one record batch at a
    time (from the file, not a memory map). Errors name the file."""

    def __init__(self, path: str | Path, batch_rows: int = TABLE_BATCH_ROWS):
        self.pa = _pa()
        self.path = p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        self.kind = _TABLE_SUFFIXES.get(p.suffix.lower())
        if self.kind is None:
            raise DataError(f"{p}: unknown table format {p.suffix.lower()!r}; use .parquet, .csv, .tsv, .arrow or "
                            ".feather")
        self.batch_rows = int(batch_rows)
        self.schema = next(self._open(None, schema_only=True))

    def _csv_options(self, columns):
        import pyarrow.csv as pcsv

        return dict(parse_options=pcsv.ParseOptions(delimiter="\t" if self.path.suffix.lower() == ".tsv" else ","),
                    convert_options=pcsv.ConvertOptions(include_columns=columns) if columns else None,
                    read_options=pcsv.ReadOptions(block_size=max(1 << 20, 64 * self.batch_rows)))

    def _open(self, columns: list[str] | None, schema_only: bool = False):
        pa, p = self.pa, self.path
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            # no pre-buffering, 1 MiB reads: a row group's column chunks are decoded page by page, not read whole
            with pq.ParquetFile(p, pre_buffer=False, buffer_size=1 << 20) as f:
                if schema_only:
                    yield f.schema_arrow
                    return
                yield from f.iter_batches(batch_size=self.batch_rows, columns=columns)
        elif self.kind == "csv":
            import pyarrow.csv as pcsv

            with pcsv.open_csv(p, **self._csv_options(columns)) as r:
                if schema_only:
                    yield r.schema
                    return
                yield from r
        else:
            with pa.OSFile(str(p), "r") as src:
                try:
                    r = pa.ipc.open_file(src)  # the Arrow IPC file format (Feather v2)
                    batches = (r.get_batch(i) for i in range(r.num_record_batches))
                except pa.ArrowInvalid:
                    src.seek(0)
                    r = pa.ipc.open_stream(src)  # the IPC stream format (Hugging Face datasets' .arrow)
                    batches = iter(r)
                if schema_only:
                    yield r.schema
                    return
                for b in batches:
                    b = b.select(columns) if columns else b
                    for a in range(0, b.num_rows, self.batch_rows):
                        yield b.slice(a, self.batch_rows)

    def batches(self, columns: list[str] | None = None):
        """Record batches (as one-chunk tables) of ``columns`` (default: all), in file order."""
        pa = self.pa
        try:
            for b in self._open(columns):
                if b.num_rows:
                    yield pa.Table.from_batches([b])
        except (OSError, pa.ArrowException) as e:
            what = {"ipc": "an Arrow IPC"}.get(self.kind, f"a {self.kind}")
            hint = " (CSV column types are inferred from the first block)" if self.kind == "csv" else ""
            raise DataError(f"{self.path}: cannot read it as {what} table ({e}){hint}") from None

    def require(self, names: Sequence[str]) -> None:
        for n in names:
            if n not in self.schema.names:
                raise DataError(f"{self.path}: no column {n!r}; columns: {', '.join(self.schema.names)}")


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


def _ids(col, path: Path, name: str) -> np.ndarray:
    """A batch's client ids as a sortable numpy array: integers as they are, strings as numpy unicode."""
    pa = _pa()
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_integer(t):
        return col.to_numpy()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=str)
    raise DataError(f"{path}: client column {name!r} has type {t}; client ids must be integers or strings")


class _Distinct:
    """Distinct values of a stream of arrays, with their counts, in bounded memory (O(distinct values))."""

    def __init__(self):
        self.values: np.ndarray | None = None
        self.counts = np.zeros(0, np.int64)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(self, v: np.ndarray) -> None:
        u, c = np.unique(v, return_counts=True)
        self._parts.append((u, c))
        self._pending += len(u)
        if self._pending > max(1 << 20, 0 if self.values is None else len(self.values)):
            self._merge()

    def _merge(self) -> None:
        parts = ([(self.values, self.counts)] if self.values is not None else []) + self._parts
        if not parts:
            return
        u, inv = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        self.values = u
        self.counts = np.bincount(inv.reshape(-1), weights=np.concatenate([p[1] for p in parts]),
                                  minlength=len(u)).astype(np.int64)
        self._parts, self._pending = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return (self.values if self.values is not None else np.zeros(0, np.int64)), self.counts


class _LabelScan:
    """What a label column holds (first pass): string classes, or numbers and whether they are all class ids."""

    def __init__(self, name: str, label_type: str):
        if label_type not in LABEL_TYPES:
            raise DataError(f"--label-type {label_type!r}: use one of {', '.join(LABEL_TYPES)}")
        self.name, self.label_type = name, label_type
        self.strings: _Distinct | None = None
        self.numeric = False
        self.floating = False
        self.integral = True  # every value a non-negative integer

    def add(self, col, path: Path) -> None:
        pa = _pa()
        t = col.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            if self.label_type == "float":
                raise DataError(f"{path}: label column {self.name!r} holds strings; --label-type float needs numbers")
            if self.numeric:
                raise DataError(f"{path}: label column {self.name!r} holds strings here and numbers elsewhere")
            self.strings = self.strings or _Distinct()
            self.strings.add(np.asarray(col.to_numpy(zero_copy_only=False), dtype=str))
            return
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{path}: label column {self.name!r} has type {t}; labels must be numbers or strings")
        if self.strings is not None:
            raise DataError(f"{path}: label column {self.name!r} holds numbers here and strings elsewhere")
        self.numeric = True
        y = col.to_numpy(zero_copy_only=False)
        if y.dtype.kind == "f":
            self.floating = True
            if not np.isfinite(y).all():
                raise DataError(f"{path}: label column {self.name!r} has NaN or infinite values")
        if self.integral and y.size and ((y.dtype.kind == "f" and (y != np.round(y)).any()) or y.min() < 0):
            self.integral = False
            if self.label_type == "class" or (self.label_type == "auto" and not self.floating):
                raise DataError(f"{path}: label column {self.name!r}: labels must be non-negative integers "
                                "(classification); --label-type float imports them as regression targets")

    def decide(self) -> tuple[str, list[str] | None]:
        """("class" | "float", the string classes if any)."""
        if self.strings is not None:
            return "class", [str(s) for s in self.strings.result()[0].tolist()]
        if self.label_type == "float" or (self.label_type == "auto" and not self.integral):
            return "float", None
        return "class", None


def _label_values(col, kind: str, classes: np.ndarray | None) -> np.ndarray:
    pa = _pa()
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if classes is not None:
        v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=str)
        return np.searchsorted(classes, v).astype(np.int64)
    y = col.to_numpy(zero_copy_only=False)
    return y.astype(np.float32 if kind == "float" else np.int64)


class _Buckets:
    """Rows routed into per-bucket spill files (a bucket = a range of clients in id order, about ``rows`` rows),
    then read back one bucket at a time: the grouping pass of :func:`import_table` in bounded memory."""

    def __init__(self, directory: Path, counts: np.ndarray, rows: int):
        start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        raw = start // max(int(rows), 1)
        _, self.of_client = np.unique(raw, return_inverse=True)  # dense bucket ids, non-decreasing in client rank
        self.of_client = self.of_client.reshape(-1).astype(np.int64)
        self.n = int(self.of_client[-1]) + 1 if len(counts) else 0
        # clients [first[b], first[b + 1]) are bucket b's
        self.first = np.searchsorted(self.of_client, np.arange(self.n + 1)).astype(np.int64)
        self.dir = directory
        directory.mkdir()
        self._files = [open(directory / f"{b}.bin", "wb", buffering=1 << 20) for b in range(self.n)]  # noqa: SIM115
        self.x_spec: tuple[np.dtype, tuple[int, ...]] | None = None
        self.y_dtype: np.dtype | None = None

    def add(self, ranks: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        b = self.of_client[ranks]
        order = np.argsort(b, kind="stable")  # within a bucket, rows stay in table order
        bs = b[order]
        cuts = np.flatnonzero(np.diff(bs)) + 1
        for sel in np.split(order, cuts):
            f = self._files[int(b[sel[0]])]
            r, xs, ys = ranks[sel].astype(np.int64), np.ascontiguousarray(x[sel]), np.ascontiguousarray(y[sel])
            f.write(np.int64(len(sel)).tobytes())
            f.write(r.tobytes())
            f.write(xs.tobytes())
            f.write(ys.tobytes())

    def close_writing(self) -> None:
        for f in self._files:
            f.close()

    def read(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bucket b's (ranks, x, y), rows grouped by client (in rank order), each client's in table order."""
        assert self.x_spec is not None and self.y_dtype is not None
        (xd, xshape), yd = self.x_spec, self.y_dtype
        xrow = int(np.prod(xshape, dtype=np.int64)) * xd.itemsize
        rs, xs, ys = [], [], []
        path = self.dir / f"{b}.bin"
        with open(path, "rb") as f:
            while head := f.read(8):
                n = int(np.frombuffer(head, np.int64)[0])
                rs.append(np.frombuffer(f.read(8 * n), np.int64))
                xs.append(np.frombuffer(f.read(xrow * n), xd).reshape(n, *xshape))
                ys.append(np.frombuffer(f.read(yd.itemsize * n), yd))
        path.unlink()
        r = np.concatenate(rs)
        del rs
        order = np.argsort(r, kind="stable")
        x = np.concatenate(xs)
        del xs  # the file's bytes
        x = x[order]
        return r[order], x, np.concatenate(ys)[order]


def import_table(train: str | Path, out: str | Path, client_column: str, label_column: str,
                 features: Sequence[str] | None = None, test: str | Path | None = None, test_fraction: float = 0.2,
                 input_shape: Sequence[int] | None = None, x_dtype: str = "float32", seed: int = 0,
                 name: str | None = None, num_classes: int | None = None, label_type: str = "auto",
                 memory_mb: float = TABLE_MEMORY_MB, batch_rows: int = TABLE_BATCH_ROWS) -> Path:
    """A table with a client-id column into a store at ``out`` (see the module docstring), streamed: the table
    is read in record batches, three times -- (1) the client and label columns: the distinct client ids, each
    one's row count, the label kind; (2) all columns: each row is routed to a spill file of its bucket (a
    range of clients in id order, about ``memory_mb`` / 4 of rows); (3) bucket by bucket: rows grouped by
    client (a stable sort), held out, written to the store. Peak memory is about ``memory_mb`` plus
    O(clients) arrays (ids and counts), whatever the table's size (its largest client's rows at least).

    ``label_type``: ``class`` (integers >= 0, or strings -> ids of their sorted distinct values), ``float``
    (regression targets, stored as float32, ``num_classes`` 1 = one output unless given), ``auto`` (strings and
    integers are classes; a float column is classes if every value is a non-negative integer, else float)."""
    tfile = TableFile(train, batch_rows)
    tpath = tfile.path
    tfile.require([client_column, label_column])
    cols = list(features) if features else [c for c in tfile.schema.names if c not in (client_column, label_column)]
    if not cols:
        raise DataError(f"{tpath}: no feature columns besides {client_column!r} and {label_column!r}")
    tfile.require(cols)
    if not test and not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction: {test_fraction}; without a --test file it must be in (0, 1)")
    shape = tuple(int(s) for s in input_shape) if input_shape else None
    test_file = TableFile(test, batch_rows) if test else None
    if test_file is not None:
        test_file.require([label_column, *cols])
    # pass 1: client ids and counts; what the labels are
    ids_seen, labels = _Distinct(), _LabelScan(label_column, label_type)
    for t in tfile.batches([client_column, label_column]):
        ids_seen.add(_ids(_column(t, client_column, tpath), tpath, client_column))
        labels.add(_column(t, label_column, tpath), tpath)
    if test_file is not None:
        for t in test_file.batches([label_column]):
            labels.add(_column(t, label_column, test_file.path), test_file.path)
    uniq, counts = ids_seen.result()
    if not len(uniq):
        raise DataError(f"{tpath}: the table has no rows")
    kind, classes = labels.decide()
    lut = np.asarray(classes, dtype=str) if classes is not None else None
    info = {"imported_from": "table", "file": tpath.name, "client_column": client_column, "label_column": label_column,
            "features": cols, "test_file": Path(test).name if test else None,
            "test_fraction": None if test else test_fraction, "seed": seed, "label_type": kind}
    if classes is not None:
        info["classes"] = classes
    if kind == "float" and num_classes is None:
        num_classes = 1  # one regression output
    ids = uniq.astype(str)
    with StoreWriter(out, name or tpath.stem, num_classes, info) as w:
        buckets: _Buckets | None = None
        try:
            # pass 2: route every row to its bucket's spill file
            for t in tfile.batches([client_column, label_column, *cols]):
                x = _features(t, cols, tpath, x_dtype, shape)
                y = _label_values(_column(t, label_column, tpath), kind, lut)
                ranks = np.searchsorted(uniq, _ids(_column(t, client_column, tpath), tpath, client_column))
                if buckets is None:
                    row_bytes = 8 + x[:1].nbytes + y.itemsize
                    rows = max(int(memory_mb * 2**20 / 4 / row_bytes), 1, int(counts.sum()) // 1000)
                    buckets = _Buckets(w.tmp / "import-buckets", counts, rows)
                    buckets.x_spec, buckets.y_dtype = (x.dtype, tuple(x.shape[1:])), y.dtype
                elif tuple(x.shape[1:]) != buckets.x_spec[1]:  # type: ignore[index]
                    raise DataError(f"{tpath}: feature rows of shape {tuple(x.shape[1:])} after rows of shape "
                                    f"{buckets.x_spec[1]}; every row needs the same length")  # type: ignore[index]
                buckets.add(ranks, x, y)
            assert buckets is not None
            buckets.close_writing()
            # pass 3: bucket by bucket, group by client, hold out, write
            for b in range(buckets.n):
                lo, hi = int(buckets.first[b]), int(buckets.first[b + 1])
                _, x, y = buckets.read(b)
                n = counts[lo:hi]
                if test_file is not None:
                    w.add_clients(ids[lo:hi], n, x, y)
                    continue
                keep, held = [], []
                off = 0
                for i in range(lo, hi):
                    tr, te = _holdout(int(counts[i]), test_fraction, seed, i)
                    keep.append(off + tr)
                    held.append(off + te)
                    off += int(counts[i])
                kept = np.concatenate(keep)
                heldi = np.concatenate(held)
                w.add_clients(ids[lo:hi], np.array([len(k) for k in keep], np.int64), x[kept], y[kept])
                w.add_test(x[heldi], y[heldi])
        finally:
            if buckets is not None:
                buckets.close_writing()
                shutil.rmtree(buckets.dir, ignore_errors=True)
        if test_file is not None:
            for t in test_file.batches([label_column, *cols]):
                w.add_test(_features(t, cols, test_file.path, x_dtype, shape),
                           _label_values(_column(t, label_column, test_file.path), kind, lut))
        if not w.test_rows:
            raise DataError("the test split is empty: pass a --test file or a larger --test-fraction")
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
