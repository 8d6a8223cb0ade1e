"""Shared helpers of the fault-injection suite: a tiny config on disk, the CLI in-process, an uplink rewriter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedloom import wire
from tests.conftest import small_config


@pytest.fixture
def config_file(tmp_path):
    """Write a tiny digits config (``small_config`` plus overrides) and return its path."""

    def make(name: str = "tiny", **overrides) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(small_config(**overrides)))
        return path

    return make


@pytest.fixture
def cli(capsys):
    """``fedloom ...`` in this process: (exit status, stdout, stderr)."""
    from fedloom.cli import main

    def run(*args) -> tuple[int, str, str]:
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def rewrite_meta(change):
    """An uplink rewrite (for ``tests.conftest.tap``) that re-encodes each plaintext upload with ``change(client,
    tensors, meta) -> (tensors, meta)`` applied: what a buggy or malicious client could send."""

    def rewrite(rnd, k, msg):
        m = wire.decode(msg)
        tensors, meta = change(k, dict(m.tensors), dict(m.meta))
        return wire.encode(tensors, meta)

    return rewrite
