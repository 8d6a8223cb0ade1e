"""The same run on real networked clients: a Flower SuperLink and SuperNodes started here, on loopback only.

Deployed == simulated (FedAvg, a codec chain, SCAFFOLD with its c_i on the nodes, Paillier secure aggregation
with the key authority in its own process), a node killed mid-run and restarted, a malformed reply, TLS with
SuperNode authentication refusing a node that is not on the list, and nothing left running afterwards. Each
federation is bounded in time (``flwr run`` is ended after 85 s) and torn down by the PIDs it started, also when a
test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="needs the deploy extra: pip install 'fedloom[deploy]'")

from fedloom.cli import main  # noqa: E402
from fedloom.config import load_config, validate_config  # noqa: E402
from fedloom.deploy.frames import frame, recv_frame, send_frame, unframe  # noqa: E402
from fedloom.deploy.local import LocalFederation, descendants, submit, write_app  # noqa: E402
from fedloom.simulation import Simulation  # noqa: E402
from tests.conftest import small_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _records(out: Path) -> list[dict]:
    p = out / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture(autouse=True)
def _children_before():
    """This process's descendants before the test (e.g. a process pool an earlier test left): not ours to end."""
    global _BEFORE
    _BEFORE = descendants({os.getpid()})
    yield


_BEFORE: set[int] = set()


def _no_children_left():
    left = {p for p in descendants({os.getpid()}) - _BEFORE if os.path.exists(f"/proc/{p}")}
    assert not left, f"processes left behind: {left}"


def _simulated(out: Path):
    sim = Simulation(load_config(out / "config.yaml"))
    return sim, sim.run()


def _assert_equal_to_simulation(out: Path, tol: float = 1e-5):
    dep = torch.load(out / "model.pt")
    sim, recs = _simulated(out)
    assert max(float((dep[k] - sim.state.params[k]).abs().max()) for k in dep) <= tol
    got = _records(out)
    assert [r["bytes_up"] for r in got] == [r["bytes_up"] for r in recs]  # the same fedloom messages travelled
    assert [r["test_accuracy"] for r in got] == pytest.approx([r["test_accuracy"] for r in recs], abs=1e-6)
    for r in got:  # deployment metrics: the Flower messages' own bytes, per-client seconds, who replied
        assert r["flower_bytes_up"] >= r["bytes_up"] and r["flower_bytes_down"] >= r["bytes_down"]
        assert sorted(r["replied"]) == sorted(r["reported_ids"]) and r["timed_out"] == []
        assert set(r["client_seconds"]) == {str(k) for k in r["reported_ids"]}
    return got


def test_fedloom_deploy_local_equals_fedloom_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["deploy", str(ROOT / "examples" / "fedavg_digits.yaml"), "--local", "5", "rounds=3",
               "data.num_clients=5", "cohort_size=5", "model.hidden=[32]", "threads=1", "--timeout", "60",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert {"config.yaml", "metrics.jsonl", "model.pt", "accuracy_vs_round.png", "logs"} <= {p.name for p in out.iterdir()}
    recs = _assert_equal_to_simulation(out)
    assert len(recs) == 3 and recs[-1]["test_accuracy"] > 0.6
    _no_children_left()


def _deploy(tmp_path: Path, cfg, nodes: int, *, timeout: float = 60.0, warm: bool = True, workers=None,
            during=None, run_timeout: float = 85.0, wait: float = 60.0, secure: bool = False, seen=None,
            before=None) -> tuple[Path, int]:
    """Run ``cfg`` on a local federation; ``during(fed, out)`` runs alongside, ``before(fed)`` before the submit;
    ``seen`` (a dict) gets the PIDs of the processes the federation started."""
    out = tmp_path / "run"
    with LocalFederation(nodes, cfg.data.num_clients, out / "logs", warm=warm, workers=workers,
                         secagg=cfg.secure_aggregation, secure=secure) as fed:
        if before:
            before(fed)
        app = write_app(out / "app", fed.configure(cfg), out, timeout, wait=wait)
        t = threading.Thread(target=during, args=(fed, out), daemon=True) if during else None
        if t:
            t.start()
        rc = submit(app, fed.address, fed.home, out / "logs" / "flwr-run.log", run_timeout, fed.env,
                    fed.tls.ca if fed.tls else None)
        if t:
            t.join(5)
        if seen is not None:
            seen.update({name: p.pid for name, p in fed.procs})
    _no_children_left()
    return out, rc


def test_codec_chain_deployed_equals_simulated(tmp_path):
    codecs = [{"name": "hadamard"}, {"name": "subsample", "fraction": 0.25}, {"name": "quantize", "bits": 4}]
    cfg = validate_config(small_config(rounds=2, cohort_size=4, codecs=codecs, **{"data.num_clients": 4}))
    out, rc = _deploy(tmp_path, cfg, 4)
    assert rc == 0
    _assert_equal_to_simulation(out)


def test_scaffold_control_variates_live_on_the_nodes(tmp_path):
    """Plain Flower isolation (no worker: a fresh ClientApp process per message); c_i survives between rounds only
    in each node's own context.state, and the result still equals the simulation."""
    cfg = validate_config(small_config(rounds=2, cohort_size=3, algorithm="scaffold", **{"data.num_clients": 3}))
    out, rc = _deploy(tmp_path, cfg, 3, warm=False)
    assert rc == 0
    _assert_equal_to_simulation(out)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["client_states"] == {} and ck["pipeline_states"] == {}  # the server never held a c_i


def _fake_worker(path: Path, stop: threading.Event):
    """A node worker that answers every round with bytes that are not a fedloom message."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with conn:
            unframe(recv_frame(conn))
            send_frame(conn, frame({"train_s": 0.0, "encode_s": 0.0}, {"upload": b"FLM1\xff\xff\xff\xffjunk"}))
    srv.close()


def test_malformed_reply_is_rejected_by_client_and_the_round_goes_on(tmp_path):
    cfg = validate_config(small_config(rounds=1, cohort_size=3, **{"data.num_clients": 3}))
    sock, stop = tmp_path / "fake.sock", threading.Event()
    th = threading.Thread(target=_fake_worker, args=(sock, stop), daemon=True)
    th.start()
    try:
        while not sock.exists():
            time.sleep(0.05)
        out, rc = _deploy(tmp_path, cfg, 3, workers={1: sock})
    finally:
        stop.set()
        th.join(5)
    assert rc == 0
    (rec,) = _records(out)
    assert [r["client"] for r in rec["rejected"]] == [1] and rec["reported"] == 2
    assert rec["test_accuracy"] is not None


def _kill_node_after_round(i: int, rounds: int, events: dict, restart: bool):
    """SIGKILL node i's SuperNode and worker (no goodbye to the SuperLink) as soon as ``rounds`` rounds are
    recorded; when ``restart``, a new SuperNode for partition i starts right after (a new Flower node id), with a
    new worker that was started beforehand (it imports torch meanwhile, so the new node is up within the round)."""
    def chaos(fed, out):
        deadline = time.monotonic() + 80
        procs = dict(fed.procs)
        old = [procs[f"supernode-{i}"].pid, procs[f"worker-{i}"].pid]
        spare = fed._start_worker(i) if restart else None
        while len(_records(out)) < rounds and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in old:
            os.killpg(pid, signal.SIGKILL)
        events["killed_after"] = len(_records(out))
        if spare is not None:
            fed.start_node(i, worker=spare[1])
            events["restarted_after"] = len(_records(out))
    return chaos


def test_a_killed_node_is_dropped_and_a_restarted_one_rejoins(tmp_path):
    cfg = validate_config(small_config(rounds=3, cohort_size=3, **{"data.num_clients": 3}))
    events: dict = {}
    out, rc = _deploy(tmp_path, cfg, 3, timeout=15.0, during=_kill_node_after_round(1, 1, events, restart=True))
    assert rc == 0
    recs = _records(out)
    assert len(recs) == 3 and events["killed_after"] == 1 and events["restarted_after"] == 1
    gone = recs[events["killed_after"]]  # the first round after the kill: the others complete it
    assert {"client": 1, "reason": "no reply"} in gone["dropped"] and 1 in gone["timed_out"]
    assert gone["reported"] == 2 and gone["test_accuracy"] is not None
    assert 15 <= gone["reply_wait_s"] <= 17  # it waited for the reply timeout, not longer
    assert any(1 in r["reported_ids"] for r in recs[events["restarted_after"]:]), [r["reported_ids"] for r in recs]


class _Drops:
    """A simulation's client runtime that loses the uploads a deployed run lost: ``keep[round]`` reached the server."""

    def __init__(self, inner, keep: dict[int, set[int]]):
        self.inner, self.keep = inner, keep

    def run(self, rnd, down, clients):
        return [(k, m) for k, m in self.inner.run(rnd, down, clients) if k in self.keep[rnd]]

    def round_metrics(self):
        return self.inner.round_metrics()


def test_secure_aggregation_deployed_with_the_key_authority_in_its_own_process(tmp_path):
    """Paillier deployed: the nodes encrypt under the public key they fetch from the key authority's process, the
    ServerApp multiplies ciphertexts and the authority decrypts the aggregate only. A node killed after round 1:
    round 2 is decrypted with the true count and weight, and the model equals the simulation that lost the same
    upload. The ServerApp's own process never held a secret key."""
    sa = {"key_bits": 1024, "value_bits": 16, "clip": 1.0, "min_contributors": 2}
    cfg = validate_config(small_config(rounds=2, cohort_size=3, secure_aggregation=sa, **{"data.num_clients": 3}))
    events, pids = {}, {}
    out, rc = _deploy(tmp_path, cfg, 3, timeout=15.0, during=_kill_node_after_round(1, 1, events, restart=False),
                      seen=pids)
    assert rc == 0
    recs = _records(out)
    assert [r["reported_ids"] for r in recs] == [[0, 1, 2], [0, 2]] and events["killed_after"] == 1
    assert {"client": 1, "reason": "no reply"} in recs[1]["dropped"]
    # the server holds the public key only; the secret key is in the authority's process, which the ServerApp is not
    audit = json.loads((out / "secagg.json").read_text())
    assert audit["secret_keys_in_serverapp"] == 0 and audit["authority_type"] == "RemoteAuthority"
    assert audit["authority_pid"] == pids["authority"] != audit["serverapp_pid"]
    assert audit["serverapp_pid"] not in pids.values()  # a ServerApp process Flower started, not the authority
    dep_cfg = load_config(out / "config.yaml")
    assert dep_cfg.secure_aggregation.authority.startswith("http://127.0.0.1:")
    # the authority decrypted each round's aggregate with the contributors that really replied
    sim = Simulation(cfg)  # the same config with an in-process authority (and its own key)
    sizes = sim.data.client_sizes
    decrypted = [json.loads(x) for x in (out / "logs" / "authority.jsonl").read_text().splitlines()]
    assert [(d["count"], sorted(d["contributors"])) for d in decrypted] == [(3, [0, 1, 2]), (2, [0, 2])]
    assert [d["total_weight"] for d in decrypted] == [int(sizes.sum()), int(sizes[0] + sizes[2])]
    sim.client_runtime = _Drops(sim.client_runtime, {1: {0, 1, 2}, 2: {0, 2}})
    simulated = sim.run()
    dep = torch.load(out / "model.pt")
    assert max(float((dep[k] - sim.state.params[k]).abs().max()) for k in dep) <= 1e-5
    assert [r["test_accuracy"] for r in recs] == pytest.approx([r["test_accuracy"] for r in simulated], abs=1e-6)
    assert [r["bytes_up"] for r in recs] == [r["bytes_up"] for r in simulated]  # ciphertexts travelled


def test_secure_federation_refuses_a_node_whose_key_is_not_on_the_list(tmp_path):
    """``--local --secure``: TLS with a CA made for the run, and Flower's SuperNode authentication. Nodes 0 and 1
    were registered (``flwr supernode register``); a third node with a key of its own is refused by the SuperLink,
    and the run completes with the authorized nodes. The key authority is served over TLS too."""
    import ssl

    cfg = validate_config(small_config(rounds=1, cohort_size=3, secure_aggregation={"key_bits": 1024},
                                       **{"data.num_clients": 3}))
    intruder = {}

    def before(fed):
        ctx = ssl.create_default_context(cafile=str(fed.tls.ca))  # the run's CA verifies what it issued
        for port in (fed.port, int(fed.authority_url.rsplit(":", 1)[1])):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                intruder.setdefault("tls", []).append(tls.version())
        with pytest.raises(OSError):  # no plaintext HTTP on the SuperLink's port
            urllib.request.urlopen(f"http://127.0.0.1:{fed.port}/health", timeout=10)
        intruder["proc"] = fed.start_node(2, authorized=False)

    out, rc = _deploy(tmp_path, cfg, 2, timeout=30.0, wait=10.0, secure=True, before=before)
    assert rc == 0
    (rec,) = _records(out)
    assert rec["reported_ids"] == [0, 1] and rec["no_node"] == [2]  # client 2's node never joined
    assert intruder["proc"].returncode not in (0, None)
    log = (out / "logs" / "intruder-2.log").read_text()
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert "registered successfully" in (out / "logs" / "register.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in (out / "logs" / "superlink.log").read_text()
    audit = json.loads((out / "secagg.json").read_text())
    assert audit["authority"].startswith("https://127.0.0.1:") and audit["secret_keys_in_serverapp"] == 0
    assert len(intruder["tls"]) == 2 and all(v in ("TLSv1.2", "TLSv1.3") for v in intruder["tls"])
    assert all((out / "credentials" / f).stat().st_mode & 0o077 == 0 for f in ("server.key", "authority.token"))


def test_deploy_refuses_what_it_cannot_run_and_bad_arguments(tmp_path, capsys):
    demo = str(ROOT / "examples" / "fedavg_digits.yaml")
    assert main(["deploy", demo, "--superlink", "127.0.0.1:1", "secure_aggregation.key_bits=1024", "--out",
                 str(tmp_path / "a")]) == 2  # a running federation: the key authority must be named
    assert "secure_aggregation.authority" in capsys.readouterr().err
    assert main(["deploy", demo, "--local", "2", "algorithm=fd", "--out", str(tmp_path / "b")]) == 2
    assert "algorithm.name / runtime" in capsys.readouterr().err
    assert main(["deploy", demo, "--out", str(tmp_path / "c")]) == 2  # neither --local nor --superlink
    assert main(["deploy", demo, "--local", "99", "--out", str(tmp_path / "d")]) == 2  # more nodes than clients
    assert "data.num_clients=50" in capsys.readouterr().err
    assert main(["deploy", demo, "--local", "2", "rounds=0", "--out", str(tmp_path / "e")]) == 2
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing written
