"""The same run on real networked clients: a Flower SuperLink and SuperNodes started here, on loopback only.

Deployed == simulated (FedAvg, a codec chain, SCAFFOLD with its c_i on the nodes), a node killed mid-run and
restarted, a malformed reply, and nothing left running afterwards. Each federation is bounded in time and torn
down by the PIDs it started, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
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
            during=None, run_timeout: float = 170.0) -> tuple[Path, int]:
    out = tmp_path / "run"
    app = write_app(out / "app", cfg, out, timeout, wait=60.0)
    with LocalFederation(nodes, cfg.data.num_clients, out / "logs", warm=warm, workers=workers) as fed:
        t = threading.Thread(target=during, args=(fed, out), daemon=True) if during else None
        if t:
            t.start()
        rc = submit(app, f"127.0.0.1:{fed.port}", out / ".flwr", out / "logs" / "flwr-run.log", run_timeout, fed.env)
        if t:
            t.join(5)
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


def test_a_killed_node_is_dropped_and_a_restarted_one_rejoins(tmp_path):
    cfg = validate_config(small_config(rounds=5, cohort_size=3, **{"data.num_clients": 3}))
    events: dict = {}

    def chaos(fed, out):
        deadline = time.monotonic() + 150
        while len(_records(out)) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in ("supernode-1", "worker-1"):  # SIGKILL: no goodbye to the SuperLink
            os.killpg(dict(fed.procs)[name].pid, signal.SIGKILL)
        events["killed_after"] = len(_records(out))
        while len(_records(out)) < events["killed_after"] + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        fed.start_node(1)
        events["restarted_after"] = len(_records(out))

    out, rc = _deploy(tmp_path, cfg, 3, timeout=15.0, during=chaos)
    assert rc == 0
    recs = _records(out)
    assert len(recs) == 5
    gone = recs[events["killed_after"]]  # the first round after the kill: the others complete it
    assert {"client": 1, "reason": "no reply"} in gone["dropped"] and 1 in gone["timed_out"]
    assert gone["reported"] == 2 and gone["test_accuracy"] is not None
    assert any(1 in r["reported_ids"] for r in recs[events["restarted_after"]:]), [r["reported_ids"] for r in recs]


def test_deploy_refuses_what_it_cannot_run_and_bad_arguments(tmp_path, capsys):
    demo = str(ROOT / "examples" / "fedavg_digits.yaml")
    assert main(["deploy", demo, "--local", "2", "secure_aggregation.key_bits=1024", "--out", str(tmp_path / "a")]) == 2
    assert "secure_aggregation / runtime" in capsys.readouterr().err
    assert main(["deploy", demo, "--local", "2", "algorithm=fd", "--out", str(tmp_path / "b")]) == 2
    assert "algorithm.name / runtime" in capsys.readouterr().err
    assert main(["deploy", demo, "--out", str(tmp_path / "c")]) == 2  # neither --local nor --superlink
    assert main(["deploy", demo, "--local", "99", "--out", str(tmp_path / "d")]) == 2  # more nodes than clients
    assert "data.num_clients=50" in capsys.readouterr().err
    assert main(["deploy", demo, "--local", "2", "rounds=0", "--out", str(tmp_path / "e")]) == 2
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing written
