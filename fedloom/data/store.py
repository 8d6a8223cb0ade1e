"""The on-disk client store: Apache Arrow IPC files, memory-mapped, rows grouped by client.

A store is a directory, written once (``fedloom data import``, :class:`StoreWriter`) and read by any run::

    fedloom-store.json   manifest: format version, x/y dtype and per-row shape, num_classes, row and client
                         counts, each file's byte size and SHA-256, where the data came from
    train.arrow          training rows, columns x, y; client k's rows are contiguous, in the client's order
    clients.arrow        one row per client: client_id (string), offset, num_samples -- the offsets index
    test.arrow           the server's evaluation split (columns x, y)

    data: {dataset: {name: store, path: stores/femnist}, partition: natural, num_clients: 3500}

Why Arrow IPC via pyarrow (not Parquet files read through Hugging Face ``datasets``): an uncompressed Arrow IPC
file is the in-memory layout itself, so ``pyarrow.memory_map`` reads it zero-copy -- opening a store reads the
manifest and the clients index only, and a cohort read touches exactly its clients' rows (pages of the mmap);
Parquet pages are encoded/compressed and must be decoded whole. ``datasets`` stores Arrow IPC files too but
adds its own cache, fingerprinting and a dependency tree (pandas, fsspec, requests, huggingface-hub) for no
gain here; pyarrow alone is one wheel with no required dependencies. Parquet (and CSV, Arrow) is what the
importers read (:mod:`fedloom.data.importers`).

Portability: the manifest names files relative to the directory, Arrow IPC records its byte order (a reader
on another byte order swaps on read), and the dtypes are Arrow's, so a store copied to another machine reads
there. Opening checks every file's presence and size against the manifest and the Arrow schemas and row counts,
and raises one :class:`~fedloom.data.base.DataError` naming the bad file; ``verify()`` (``fedloom data info
--verify``) also checks the SHA-256 sums.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.data.base import Cohort, DataError, DatasetInfo, FederatedDataset, SizedByArray, int64_sizes
from fedloom.data.datasets import DataSource, DataUnavailable, sha256_file
from fedloom.data.federated import FederatedData
from fedloom.data.partition import partition
from fedloom.registry import DATASETS

MANIFEST = "fedloom-store.json"
FORMAT = "fedloom-client-store"
VERSION = 1
FILES = ("train.arrow", "clients.arrow", "test.arrow")
PYARROW_INSTALL = "pip install 'fedloom[data]'  (pyarrow)"
BATCH_ROWS = 1 << 16  # rows per Arrow record batch when writing
FAULT_AROUND = 1 << 21  # a page fault maps cached pages around it: fault-around (64 KiB) or a whole large folio (<= 2 MiB)


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:  # pragma: no cover - the data extra is installed in tests
        raise DataUnavailable(f"client stores need pyarrow. Install it with:  {PYARROW_INSTALL}") from None
    return pa


# -- writing ------------------------------------------------------------------------------------------------
class StoreWriter:
    """Writes a store into a temporary directory beside ``out`` and renames it into place on :meth:`close`:
    a failed import leaves nothing behind (use as a context manager). Clients are added in order, each with
    all of its rows; the first client fixes the x/y dtypes and per-row shapes."""

    def __init__(self, out: str | Path, name: str, num_classes: int | None = None, info: dict | None = None):
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise DataError(f"--out {self.out}: exists and is not an empty directory; choose another path")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.pa = _pa()
        self.name, self.num_classes, self.info = name, num_classes, dict(info or {})
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        self._writer: Any = None
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        # client ids and sizes in chunks: lists (add_client) or arrays (add_clients: no per-client objects)
        self._ids: list[list[str] | np.ndarray] = []
        self._sizes: list[list[int] | np.ndarray] = []
        self.num_clients = 0
        self.rows = 0
        self._test_writer: Any = None
        self._test_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._test_pending_rows = 0
        self.test_rows = 0
        self.x_spec: tuple[np.dtype, tuple[int, ...]] | None = None
        self.y_spec: tuple[np.dtype, tuple[int, ...]] | None = None
        self.test: tuple[np.ndarray, np.ndarray] | None = None
        self.y_max = -1
        self._seen: set[str] = set()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- rows -----------------------------------------------------------------------------------------
    def _spec(self, what: str, a: np.ndarray, client: str) -> np.ndarray:
        a = np.ascontiguousarray(a)
        if a.dtype.kind == "b":
            a = a.astype(np.uint8)  # Arrow packs booleans into bits: store bytes (zero-copy reads)
        spec = (a.dtype, tuple(a.shape[1:]))
        cur = self.x_spec if what == "x" else self.y_spec
        if cur is None:
            if a.dtype.kind not in "iuf":
                raise DataError(f"client {client!r}: {what} has dtype {a.dtype}; only numeric data can be stored")
            if what == "x":
                self.x_spec = spec
            else:
                self.y_spec = spec
        elif spec[1] != cur[1]:
            raise DataError(f"client {client!r}: {what} rows have shape {spec[1]}, earlier clients' have {cur[1]}")
        elif a.dtype != cur[0]:
            a = a.astype(cur[0])
        return a

    def add_client(self, client_id: str, x: np.ndarray, y: np.ndarray) -> None:
        cid = str(client_id)
        if cid in self._seen:
            raise DataError(f"client {cid!r} appears twice; a client's rows must be added at once")
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise DataError(f"client {cid!r}: {len(x)} inputs but {len(y)} targets")
        self._seen.add(cid)
        if not self._ids or not isinstance(self._ids[-1], list):
            self._ids.append([])
            self._sizes.append([])
        self._ids[-1].append(cid)  # type: ignore[union-attr]
        self._sizes[-1].append(len(y))  # type: ignore[union-attr]
        self.num_clients += 1
        if len(y):  # a client without rows is listed (num_samples 0) but fixes no dtype or shape
            self._rows(x, y, cid)

    def _rows(self, x: np.ndarray, y: np.ndarray, cid: str) -> None:
        x, y = self._spec("x", x, cid), self._spec("y", y, cid)
        if y.dtype.kind in "iu":
            self.y_max = max(self.y_max, int(y.max()))
        self._pending.append((x, y))
        self._pending_rows += len(y)
        self.rows += len(y)
        if self._pending_rows >= BATCH_ROWS:
            self._flush()

    def add_clients(self, client_ids: np.ndarray | Sequence[str], sizes: np.ndarray, x: np.ndarray,
                    y: np.ndarray) -> None:
        """Many clients at once, their rows contiguous in ``x``/``y`` (client i's are the next ``sizes[i]``).
        The ids must be distinct and new: they are not checked (no per-client Python objects are made; the
        importers pass ids from a sorted unique array)."""
        ids = np.asarray(client_ids).astype(str)
        sizes = np.asarray(sizes, dtype=np.int64)
        x, y = np.asarray(x), np.asarray(y)
        if len(ids) != len(sizes) or int(sizes.sum()) != len(y) or len(x) != len(y) or (sizes < 0).any():
            raise DataError(f"add_clients: {len(ids)} ids, {len(sizes)} sizes summing to {int(sizes.sum())}, "
                            f"{len(x)} inputs, {len(y)} targets")
        if self._seen:
            raise DataError("add_clients after add_client: ids could repeat; use one of the two")
        self._ids.append(ids)
        self._sizes.append(sizes)
        self.num_clients += len(ids)
        if len(y):
            self._rows(x, y, str(ids[int(np.flatnonzero(sizes)[0])]))

    def set_test(self, x: np.ndarray, y: np.ndarray) -> None:
        """The whole test split at once (in memory; :meth:`add_test` streams it)."""
        x, y = self._test_arrays(x, y)
        if self._test_writer is not None or self._test_pending:
            raise DataError("test split: set_test after add_test")
        self.test = (x, y)

    def add_test(self, x: np.ndarray, y: np.ndarray) -> None:
        """More test rows, written as they come (after the first training rows fixed the dtypes and shapes)."""
        x, y = self._test_arrays(x, y)
        if self.test is not None:
            raise DataError("test split: add_test after set_test")
        if not len(y):
            return
        if self.x_spec is None or self.y_spec is None:
            raise DataError("test split: add training rows first (they fix the dtypes and shapes)")
        self._test_pending.append((x.astype(self.x_spec[0], copy=False), y.astype(self.y_spec[0], copy=False)))
        self._test_pending_rows += len(y)
        self.test_rows += len(y)
        if self._test_pending_rows >= BATCH_ROWS:
            self._flush_test()

    def _test_arrays(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise DataError(f"test split: {len(x)} inputs but {len(y)} targets")
        if self.x_spec is not None and len(x) and tuple(x.shape[1:]) != self.x_spec[1]:
            raise DataError(f"test split: x rows have shape {tuple(x.shape[1:])}, training rows have {self.x_spec[1]}")
        if self.y_spec is not None and len(y) and tuple(y.shape[1:]) != self.y_spec[1]:
            raise DataError(f"test split: y rows have shape {tuple(y.shape[1:])}, training rows have {self.y_spec[1]}")
        if len(y) and y.dtype.kind in "iu":
            self.y_max = max(self.y_max, int(y.max()))
        return x, y

    def _flush_test(self) -> None:
        if not self._test_pending:
            return
        if self._test_writer is None:
            self._test_writer = self.pa.ipc.new_file(str(self.tmp / "test.arrow"), self._schema())
        x = np.concatenate([p[0] for p in self._test_pending])
        y = np.concatenate([p[1] for p in self._test_pending])
        self._write_rows(self._test_writer, x, y, len(y))
        self._test_pending, self._test_pending_rows = [], 0

    def _schema(self):
        pa = self.pa
        fields = []
        for col, (dt, shape) in (("x", self.x_spec), ("y", self.y_spec)):
            t = pa.from_numpy_dtype(dt)
            fields.append(pa.field(col, pa.list_(t, int(np.prod(shape))) if shape else t, nullable=False))
        return pa.schema(fields)

    def _batch(self, x: np.ndarray, y: np.ndarray):
        pa = self.pa
        cols = []
        for a, (_, shape) in ((x, self.x_spec), (y, self.y_spec)):
            if shape:
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), int(np.prod(shape))))
            else:
                cols.append(pa.array(a))
        return pa.record_batch(cols, schema=self._schema())

    def _write_rows(self, writer, x: np.ndarray, y: np.ndarray, stop: int) -> None:
        """Rows [0, stop) of (x, y) to ``writer`` as record batches of at most BATCH_ROWS rows."""
        for a in range(0, stop, BATCH_ROWS):
            b = min(a + BATCH_ROWS, stop)
            writer.write_batch(self._batch(x[a:b], y[a:b]))

    def _flush(self, final: bool = False) -> None:
        """Write the pending rows as record batches of BATCH_ROWS rows (a client may straddle two); the
        remainder waits for more rows unless ``final``."""
        if not self._pending:
            return
        if self._writer is None:
            self._writer = self.pa.ipc.new_file(str(self.tmp / "train.arrow"), self._schema())
        x = np.concatenate([p[0] for p in self._pending])
        y = np.concatenate([p[1] for p in self._pending])
        n = len(y) if final else len(y) // BATCH_ROWS * BATCH_ROWS
        self._write_rows(self._writer, x, y, n)
        self._pending = [(x[n:].copy(), y[n:].copy())] if n < len(y) else []  # copies: free the rest
        self._pending_rows = len(y) - n

    # -- finishing ------------------------------------------------------------------------------------
    def close(self) -> Path:
        """Write the index, the test split and the manifest, then move the store into place."""
        pa = self.pa
        try:
            if self.x_spec is None or self.y_spec is None:
                raise DataError("no client has any rows: nothing to store")
            self._flush(final=True)
            if self._writer is None:  # pragma: no cover - x_spec is set only with rows
                self._writer = pa.ipc.new_file(str(self.tmp / "train.arrow"), self._schema())
            self._writer.close()
            self._writer = None
            sizes = np.concatenate([np.asarray(c, dtype=np.int64) for c in self._sizes])
            offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).astype(np.int64)
            ids = pa.concat_arrays([pa.array(c, pa.string()) for c in self._ids])
            clients = pa.table({"client_id": ids, "offset": pa.array(offsets, pa.int64()),
                                "num_samples": pa.array(sizes, pa.int64())})
            del sizes, offsets, ids
            with pa.ipc.new_file(str(self.tmp / "clients.arrow"), clients.schema) as w:
                w.write_table(clients, max_chunksize=1 << 20)
            del clients
            if self._test_writer is not None or self._test_pending:
                self._flush_test()
                self._test_writer.close()
                self._test_writer = None
                test_rows = self.test_rows
            else:
                tx, ty = self.test if self.test is not None else (
                    np.empty((0, *self.x_spec[1]), self.x_spec[0]), np.empty((0, *self.y_spec[1]), self.y_spec[0]))
                tx, ty = np.ascontiguousarray(tx, dtype=self.x_spec[0]), np.ascontiguousarray(ty, dtype=self.y_spec[0])
                with pa.ipc.new_file(str(self.tmp / "test.arrow"), self._schema()) as w:
                    self._write_rows(w, tx, ty, max(len(ty), 1))  # at least one (maybe empty) batch
                test_rows = len(ty)
            num_classes = self.num_classes if self.num_classes is not None else max(self.y_max + 1, 0)
            manifest = {
                "format": FORMAT, "version": VERSION, "name": self.name, "num_clients": self.num_clients,
                "train_rows": self.rows, "test_rows": test_rows, "num_classes": int(num_classes),
                "x": {"dtype": str(self.x_spec[0]), "shape": list(self.x_spec[1])},
                "y": {"dtype": str(self.y_spec[0]), "shape": list(self.y_spec[1])},
                "files": {f: {"bytes": (self.tmp / f).stat().st_size, "sha256": sha256_file(self.tmp / f)} for f in FILES},
                "info": self.info,
            }
            (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            if self.out.exists():
                self.out.rmdir()  # the empty directory checked in __init__
            os.replace(self.tmp, self.out)
        except BaseException:
            self.abort()
            raise
        return self.out

    def abort(self) -> None:
        for attr in ("_writer", "_test_writer"):
            if getattr(self, attr) is not None:
                try:
                    getattr(self, attr).close()
                except Exception:  # noqa: BLE001 - cleaning up after the real error
                    pass
                setattr(self, attr, None)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- reading ------------------------------------------------------------------------------------------------
def _read_manifest(root: Path) -> dict:
    if not root.exists():
        raise DataUnavailable(f"no client store at {root}; create one with `fedloom data import` "
                              "(leaf | table | partition)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DataError(f"{mpath}: missing; {root} is not a fedloom client store (or its manifest was deleted)")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{mpath}: not a readable store manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{mpath}: not a fedloom client store manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("version") != VERSION:
        raise DataError(f"{mpath}: store format version {m.get('version')!r}; this fedloom reads version {VERSION}")
    try:
        for f in FILES:
            int(m["files"][f]["bytes"])
        for c in ("x", "y"):
            np.dtype(m[c]["dtype"]), [int(s) for s in m[c]["shape"]]
        int(m["num_clients"]), int(m["train_rows"]), int(m["test_rows"]), int(m["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{mpath}: incomplete store manifest ({type(e).__name__}: {e})") from None
    return m


class _Columns:
    """One memory-mapped Arrow IPC file of (x, y) rows: zero-copy numpy views of any row range."""

    def __init__(self, path: Path, m: dict, rows: int):
        pa = _pa()
        self.path = path
        try:
            # Python's mmap (not pa.memory_map) so that pages can be handed back (madvise, see release())
            with open(path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else None
            if self._mmap is None:
                raise OSError("empty file")
            if hasattr(mmap, "MADV_RANDOM"):
                self._mmap.madvise(mmap.MADV_RANDOM)  # no read-ahead: a cohort read touches its rows' pages only
            table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mmap))).read_all()
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable Arrow IPC file ({e}); the store is damaged, re-import it") from None
        self.specs = {c: (np.dtype(m[c]["dtype"]), tuple(int(s) for s in m[c]["shape"])) for c in ("x", "y")}
        for c, (dt, shape) in self.specs.items():
            want = pa.from_numpy_dtype(dt)
            want = pa.list_(want, int(np.prod(shape))) if shape else want
            if c not in table.column_names or table.schema.field(c).type != want:
                got = table.schema.field(c).type if c in table.column_names else "missing"
                raise DataError(f"{path}: column {c!r} is {got}, the manifest says {want}; the store is damaged")
        if table.num_rows != rows:
            raise DataError(f"{path}: {table.num_rows} rows, the manifest says {rows}; the store is damaged")
        self.chunks = {c: table.column(c).chunks for c in ("x", "y")}
        self._base = pa.py_buffer(self._mmap).address
        lengths = [len(ch) for ch in self.chunks["x"]]
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)

    def rows(self, col: str, a: int, b: int) -> list[np.ndarray]:
        """Rows [a, b) of column ``col`` as zero-copy numpy views (one per Arrow chunk they span)."""
        dt, shape = self.specs[col]
        out = []
        i = int(np.searchsorted(self.starts, a, side="right")) - 1
        while a < b:
            lo = a - int(self.starts[i])
            hi = min(b, int(self.starts[i + 1])) - int(self.starts[i])
            arr = self.chunks[col][i].slice(lo, hi - lo)
            flat = arr.flatten() if shape else arr
            out.append(flat.to_numpy(zero_copy_only=True).reshape(hi - lo, *shape))
            a = int(self.starts[i]) + hi
            i += 1
        return out

    def read(self, col: str, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of ``col`` copied into one writable array."""
        dt, shape = self.specs[col]
        parts = self.rows(col, a, b)
        out = np.concatenate(parts) if parts else np.empty((0, *shape), dt)
        self.release(parts)
        return out

    def release(self, views: Sequence[np.ndarray]) -> None:
        """Unmap the pages under ``views`` (already copied): the file stays in the page cache, but the process's
        RSS does not grow with every client a run has ever read (file-backed pages of a mapping count in it)."""
        if not hasattr(mmap, "MADV_DONTNEED"):  # pragma: no cover - not Linux/macOS
            return
        page = max(mmap.PAGESIZE, FAULT_AROUND)  # the kernel maps the cached pages around a fault too
        for v in views:
            if not v.nbytes:
                continue
            lo = v.__array_interface__["data"][0] - self._base
            a, b = lo // page * page, -(-(lo + v.nbytes) // page) * page
            self._mmap.madvise(mmap.MADV_DONTNEED, a, min(b, len(self._mmap)) - a)


class StoreDataset(SizedByArray):
    """A client store opened for reading (memory-mapped); ``num_clients`` limits it to its first clients."""

    def __init__(self, path: str | Path, num_clients: int | None = None):
        self.root = Path(path)
        self.manifest = m = _read_manifest(self.root)
        for f in FILES:
            fp = self.root / f
            if not fp.is_file():
                raise DataError(f"{fp}: missing store file; the store is damaged, re-import it")
            size, want = fp.stat().st_size, int(m["files"][f]["bytes"])
            if size != want:
                raise DataError(f"{fp}: {size} bytes, the manifest says {want} (truncated or replaced); re-import "
                                "the store")
        pa = _pa()
        cpath = self.root / "clients.arrow"
        try:
            self._cmap = pa.memory_map(str(cpath), "r")
            clients = pa.ipc.open_file(self._cmap).read_all()
            self._ids = clients.column("client_id")
            self.offsets = np.array(clients.column("offset").to_numpy(), dtype=np.int64)  # a private copy
            self.sizes = np.array(clients.column("num_samples").to_numpy(), dtype=np.int64)
        except (OSError, KeyError, pa.ArrowException) as e:
            raise DataError(f"{cpath}: not a readable clients index ({e}); the store is damaged, re-import it") from None
        total = int(m["num_clients"])
        if len(self.sizes) != total or (total and (self.offsets[0] != 0 or (self.sizes < 0).any()
                                                   or (np.diff(self.offsets) != self.sizes[:-1]).any()
                                                   or self.offsets[-1] + self.sizes[-1] != int(m["train_rows"]))):
            raise DataError(f"{cpath}: the offsets index does not match the manifest ({total} clients, "
                            f"{m['train_rows']} rows); the store is damaged, re-import it")
        n = total if num_clients is None else int(num_clients)
        if not 1 <= n <= total:
            raise DataError(f"data.num_clients: {n} but the store {self.root} holds {total} clients")
        self.n = n
        self._sizes_t = int64_sizes(self.sizes[:n])
        self.train = _Columns(self.root / "train.arrow", m, int(m["train_rows"]))
        self.test = _Columns(self.root / "test.arrow", m, int(m["test_rows"]))  # checked now, read on first use
        self.source = DatasetInfo(str(m["name"]), tuple(int(v) for v in m["x"]["shape"]), int(m["num_classes"]),
                                  self.test_split, {**dict(m.get("info") or {}), "store": str(self.root), "lazy": True})

    # -- the interface ----------------------------------------------------------------------------------
    def _span(self, k: int) -> tuple[int, int]:
        a = int(self.offsets[k])
        return a, a + int(self.sizes[k])

    def _client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._span(k)
        return torch.from_numpy(self.train.read("x", a, b)), torch.from_numpy(self.train.read("y", a, b))

    def cohort(self, clients: Sequence[int]) -> Cohort:
        """The cohort's rows, copied once out of the memory map (nothing else is read); each client's pages are
        handed back as soon as they are copied (see ``_Columns.release``)."""
        (xd, xs_), (yd, ys_) = self.train.specs["x"], self.train.specs["y"]
        for k in clients:
            self._check(k)
        total = sum(int(self.sizes[k]) for k in clients)
        x, y = np.empty((total, *xs_), xd), np.empty((total, *ys_), yd)
        rows, off, flips = [], 0, []
        for k in clients:
            a, b = self._span(k)
            for col, out in (("x", x), ("y", y)):
                parts = self.train.rows(col, a, b)
                o = off
                for part in parts:
                    out[o : o + len(part)] = part
                    o += len(part)
                self.train.release(parts)
            rows.append(torch.arange(off, off + b - a, dtype=torch.int64))
            if k in self._flipped:
                flips.append((off, off + b - a))
            off += b - a
        for a, b in flips:
            y[a:b] = self.source.num_classes - 1 - y[a:b]
        return Cohort(torch.from_numpy(x), torch.from_numpy(y), rows)

    # -- the rest of the store ------------------------------------------------------------------------------
    def client_id(self, k: int) -> str:
        return str(self._ids[k].as_py())

    def client_ids(self) -> list[str]:
        return [str(s) for s in self._ids.slice(0, self.n).to_pylist()]

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.manifest["test_rows"])
        return torch.from_numpy(self.test.read("x", 0, n)), torch.from_numpy(self.test.read("y", 0, n))

    def pooled(self) -> DataSource:
        """All of the (first ``num_clients``) clients' rows in memory, with the store's clients as the natural
        partition: for partitioners other than ``natural``."""
        end = int(self.offsets[self.n - 1] + self.sizes[self.n - 1])
        x, y = torch.from_numpy(self.train.read("x", 0, end)), torch.from_numpy(self.train.read("y", 0, end))
        parts = [np.arange(self.offsets[k], self.offsets[k] + self.sizes[k], dtype=np.int64) for k in range(self.n)]
        tx, ty = self.source.test_x, self.source.test_y
        return DataSource(self.source.name, x, y, tx, ty, self.source.num_classes, natural_partition=parts,
                          info=dict(self.source.info))

    def verify(self) -> list[str]:
        """Problems found by checking every file's SHA-256 against the manifest (empty: the store is intact)."""
        bad = []
        for f in FILES:
            got, want = sha256_file(self.root / f), self.manifest["files"][f].get("sha256")
            if want and got != want:
                bad.append(f"{self.root / f}: SHA-256 {got}, the manifest says {want}")
        return bad


def open_store(path: str | Path, num_clients: int | None = None) -> StoreDataset:
    return StoreDataset(path, num_clients)


class StoreParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, description="the store directory written by `fedloom data import`")


class StoreSpec:
    """What the registry factory returns: the store is opened at build time, sized by ``data.num_clients``."""

    def __init__(self, p: StoreParams):
        self.p = p

    def federate(self, num_clients: int, partitioner: str, partition_params: dict | None, seed: int
                 ) -> FederatedDataset:
        if partitioner == "natural":
            if partition_params:
                raise DataError(f"data.partition: 'natural' takes no parameters, got {sorted(partition_params)}")
            return StoreDataset(self.p.path, num_clients)
        # another partitioner re-splits the store's pooled rows (in memory), like any centralized dataset
        src = StoreDataset(self.p.path).pooled()
        parts = partition(src.train_y.numpy(), num_clients, partitioner, partition_params, seed,
                          natural=src.natural_partition)
        return FederatedData(src, [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in parts])


@DATASETS.register("store", StoreParams, "a client store on disk (Arrow, memory-mapped; `fedloom data import`); "
                                         "partition natural = its own clients")
def load_store(p: StoreParams) -> StoreSpec:
    return StoreSpec(p)
