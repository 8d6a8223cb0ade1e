"""``fedloom data``: import federated data into a client store, and inspect one.

    fedloom data import leaf TRAIN.json|DIR ... --out STORE [--test TEST.json|DIR ...] [--test-fraction F]
    fedloom data import table TABLE --out STORE --client-column C --label-column Y [--features a,b,...]
                              [--input-shape 1,28,28] [--test TABLE] [--test-fraction F]
                              [--label-type auto|class|float] [--memory-mb 256]   (streamed: bounded memory)
    fedloom data import partition CONFIG --out STORE [key=value ...]   (the config's data section, frozen)
    fedloom data info STORE [--verify]

Parsers live in :mod:`fedloom.cli` (argparse only, so that ``fedloom --help`` imports nothing heavy). Then
train on it by config alone: ``data: {dataset: {name: store, path: STORE}, partition: natural,
num_clients: N}``. Exit status 2 for bad input (the file, user, column or field is named; nothing is
written), 1 when pyarrow is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def _ints(text: str | None) -> list[int] | None:
    from fedloom.data.base import DataError

    if not text:
        return None
    try:
        out = [int(s) for s in text.replace("x", ",").split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise DataError(f"--input-shape {text!r}: expected positive integers, e.g. 1,28,28")
    return out


def _summary(path) -> str:
    from fedloom.data.store import StoreDataset

    s = StoreDataset(path)
    m = s.manifest
    sizes = s.sizes
    return (f"{path}: {m['num_clients']} clients, {m['train_rows']} training rows (per client min "
            f"{int(sizes.min()) if len(sizes) else 0}, median {int(_median(sizes))}, max "
            f"{int(sizes.max()) if len(sizes) else 0}), {m['test_rows']} test rows; x {m['x']['dtype']} "
            f"{tuple(m['x']['shape'])}, y {m['y']['dtype']} {tuple(m['y']['shape'])}, {m['num_classes']} classes")


def _median(a) -> float:
    import numpy as np

    return float(np.median(a)) if len(a) else 0.0


def run(a: argparse.Namespace, load_config: Callable[[str, list[str]], Any]) -> int:
    """The ``fedloom data`` subcommands; ``load_config`` parses a run config (``fedloom.config.load_config``)."""
    from fedloom.data.base import DataError
    from fedloom.data.datasets import DataUnavailable

    try:
        if a.data_cmd == "info":
            from fedloom.data.store import StoreDataset

            print(_summary(a.store))
            if a.verify:
                bad = StoreDataset(a.store).verify()
                for b in bad:
                    print(f"fedloom: {b}", file=sys.stderr)
                if bad:
                    return 2
                print("checksums: ok")
            return 0
        from fedloom.data import importers

        if a.kind == "leaf":
            importers.import_leaf(a.train, a.out, a.test, a.test_fraction, a.seed, a.name)
        elif a.kind == "table":
            feats = [c.strip() for c in a.features.split(",") if c.strip()] if a.features else None
            importers.import_table(a.train, a.out, a.client_column, a.label_column, feats, a.test, a.test_fraction,
                                   _ints(a.input_shape), a.x_dtype, a.seed, a.name, a.num_classes, a.label_type,
                                   a.memory_mb)
        else:  # partition: a run config's data section, exactly as `fedloom run` would build it
            try:
                cfg = load_config(a.config, list(a.overrides))
            except ValueError as e:  # fedloom.config.ConfigError: one message per bad field
                print(f"fedloom: {e}", file=sys.stderr)
                return 2
            d = cfg.data
            importers.import_partition(d.dataset.name, d.dataset.params, d.num_clients, d.partition.name,
                                       d.partition.params, cfg.seed, a.out)
    except DataUnavailable as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 1
    except DataError as e:
        print(f"fedloom: {e}", file=sys.stderr)
        return 2
    print(_summary(a.out))
    return 0
