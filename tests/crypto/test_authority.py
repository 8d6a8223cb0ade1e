"""The key authority as a process of its own (``python -m fedloom.crypto.authority``): the public key is fetched
from it, it decrypts only aggregates (refusing too few contributors, and callers without the server's token), it
audits every request, and a run that uses it holds no secret key anywhere in its object graph -- with the same
model as a run whose authority is in-process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from gmpy2 import mpz

from fedloom.config import validate_config
from fedloom.crypto.authority import AuthorityUnavailable, RemoteAuthority
from fedloom.crypto.packing import PackingSpec
from fedloom.crypto.paillier import CryptoError, PrivateKey
from fedloom.crypto.protocol import Aggregator, Client, KeyAuthority
from fedloom.simulation import Simulation
from tests.crypto.conftest import reachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    d = tmp_path_factory.mktemp("authority")
    port, token = _free_port(), "t0ken-for-the-server"
    (d / "token").write_text(token)
    p = subprocess.Popen([sys.executable, "-m", "fedloom.crypto.authority", "--port", str(port), "--key-bits", "1024",
                          "--min-contributors", "2", "--token-file", str(d / "token"), "--log", str(d / "audit.jsonl")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert p.poll() is None and time.monotonic() < deadline, "the key authority did not start"
            time.sleep(0.1)
        yield types.SimpleNamespace(url=url, token=token, pid=p.pid, audit=d / "audit.jsonl")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_remote_authority_decrypts_only_aggregates(authority):
    ra = RemoteAuthority(authority.url, token=authority.token)
    assert ra.pid == authority.pid != os.getpid() and ra.public_key.n_bits == 1024 and ra.min_contributors == 2
    spec = PackingSpec.for_contributors(1024, 8, value_bits=12, clip=1.0)
    rng = np.random.default_rng(0)
    xs = {k: rng.normal(0, 0.4, 200) for k in range(3)}
    agg = Aggregator(ra.public_key, spec, 200)
    s, rejected = agg.aggregate({k: Client(k, ra.public_key, spec).encrypt(x, k + 1) for k, x in xs.items()})
    assert rejected == []
    res = ra.decrypt_sum(s, spec)
    truth = sum((k + 1) * np.clip(x, -1, 1) for k, x in xs.items()) / 6
    assert res.count == 3 and res.total_weight == 6 and np.abs(res.mean - truth).max() <= spec.error_bound * (1 + 1e-9)
    one = Aggregator(ra.public_key, spec, 200)
    one.receive(0, Client(0, ra.public_key, spec).encrypt(xs[0]))
    with pytest.raises(CryptoError, match="min_contributors=2"):  # the authority's own minimum, not the caller's
        ra.decrypt_sum(one.result(), spec)
    with pytest.raises(CryptoError, match="own count"):  # a caller cannot tell it another count
        ra.decrypt_sum(s, spec, count=5)
    with pytest.raises(AuthorityUnavailable, match="HTTP 401"):  # a node (no token) cannot ask for decryptions
        RemoteAuthority(authority.url, token="").decrypt_sum(s, spec)
    audit = [json.loads(x) for x in authority.audit.read_text().splitlines()]
    assert [(a["count"], a["total_weight"], "refused" in a) for a in audit[:2]] == [(3, 6, False), (1, 1, True)]
    assert audit[0]["contributors"] == [0, 1, 2]


def _cfg(**sa):
    return validate_config({
        "seed": 3, "rounds": 2, "cohort_size": 4, "progress": False, "threads": 1, "engine": "sequential",
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 6}, "model": {"name": "mlp", "hidden": [16]},
        "client": {"lr": 0.1, "epochs": 1, "batch_size": 32},
        "secure_aggregation": {"key_bits": 1024, "value_bits": 16, "clip": 1.0, **sa}})


def test_a_run_with_a_remote_authority_holds_no_secret_key(authority, monkeypatch):
    monkeypatch.setenv("FEDLOOM_AUTHORITY_TOKEN", authority.token)  # as in the ServerApp's environment
    remote = Simulation(_cfg(authority=authority.url))
    local = Simulation(_cfg())
    assert isinstance(remote.built.secagg.authority, RemoteAuthority)
    rr = remote.run()
    local.run()
    assert [r["reported"] for r in rr] == [4, 4]
    for k in remote.state.params:  # the same decrypted means: the same model
        torch.testing.assert_close(remote.state.params[k], local.state.params[k], rtol=0, atol=1e-6)
    objs = reachable(remote)
    assert any(isinstance(o, RemoteAuthority) for o in objs)
    assert not any(isinstance(o, (PrivateKey, KeyAuthority)) for o in objs)
    assert any(isinstance(o, PrivateKey) for o in reachable(local))  # the walk does find an in-process key
    n = int(remote.built.secagg.public_key.n)
    assert not any(isinstance(o, (int, type(mpz(0)))) and not isinstance(o, bool) and 1 < int(o) < n and n % int(o) == 0
                   for o in objs)  # no factor of n anywhere


def test_unreachable_authority_is_an_error_not_a_skipped_round():
    with pytest.raises(AuthorityUnavailable, match="unreachable"):
        RemoteAuthority(f"http://127.0.0.1:{_free_port()}", connect_wait=0.5)
