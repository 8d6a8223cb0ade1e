"""``fedloom deploy``: run a config on a Flower federation -- a local one started here, or a running SuperLink.

``--local N`` starts a SuperLink and N SuperNodes as separate processes on 127.0.0.1 (free ports, logs under
``OUT/logs``), node i holding partition i of the configured federated data (``partition-id=i``), submits the run
with ``flwr run`` (the Flower App is written to ``OUT/app``: its components are :mod:`fedloom.deploy.apps`), waits
for it to finish and tears every process down by its process group -- also on an error or Ctrl-C. The ServerApp
writes the same run directory as ``fedloom run`` (config.yaml, metrics.jsonl, model.pt, plots).

``--superlink HOST:PORT`` submits the run to a federation that is already running (its SuperNodes started with
``--node-config "partition-id=<i> num-partitions=<N>"``); ``--insecure`` or ``--root-certificates`` as for Flower.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fedloom.config import RunConfig, dump_config


class DeployError(RuntimeError):
    """The federation could not be started or the run did not complete."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _wait_path(path: Path, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"{what} exited with status {proc.returncode} before creating {path}")
        if path.exists():
            return
        time.sleep(0.1)
    raise DeployError(f"{what} did not create {path} within {timeout:.0f} s")


def _bin(name: str) -> str:
    """A Flower executable of this environment (the venv's bin next to this Python)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeployError(f"{name} not found next to {sys.executable}: install the deploy extra "
                          "(pip install 'fedloom[deploy]')")
    return str(path)


def write_app(app_dir: Path, cfg: RunConfig, out: Path, timeout: float, wait: float) -> Path:
    """The Flower App (a pyproject.toml) whose components are fedloom's apps, with the run's config inside."""
    import tomli_w

    app_dir.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedloom-run", "version": "1.0.0", "description": f"fedloom run {cfg.name}",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedloom",
            "components": {"serverapp": "fedloom.deploy.apps:server_app", "clientapp": "fedloom.deploy.clientapp:app"},
            "config": {"fedloom-config": dump_config(cfg), "fedloom-out": str(out.resolve()),
                       "fedloom-timeout": float(timeout), "fedloom-wait": float(wait)},
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project))
    return app_dir


class LocalFederation:
    """A SuperLink and N SuperNodes on 127.0.0.1, as process groups this object owns and ends."""

    def __init__(self, num_nodes: int, num_partitions: int, logs: Path, isolation: str = "subprocess",
                 warm: bool = True, workers: dict[int, Path] | None = None):
        self.n, self.partitions, self.logs, self.isolation, self.warm = num_nodes, num_partitions, logs, isolation, warm
        self.workers = dict(workers or {})  # node -> the unix socket of a worker started elsewhere (tests)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONUNBUFFERED="1")

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (closed when the process is reaped)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.procs.append((name, p))
        return p

    def start(self) -> None:
        sl = self._start("superlink", [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                                       str(self.port), "--disable-runtime-dependency-installation"])
        _wait_port(self.port, sl, "flower-superlink")
        for i in range(self.n):
            self.start_node(i)

    def start_node(self, i: int) -> subprocess.Popen:
        """SuperNode i (holding partition i), with its fedloom worker first when ``warm``."""
        node_config = f"partition-id={i} num-partitions={self.partitions}"
        if i in self.workers:
            node_config += f' fedloom-worker="{self.workers[i]}"'
        elif self.warm:
            sock = self.logs / f"node-{i}.sock"
            w = self._start(f"worker-{i}", [sys.executable, "-m", "fedloom.deploy.worker", str(sock)])
            _wait_path(sock, w, f"fedloom node worker {i}")
            node_config += f' fedloom-worker="{sock}"'
        port = free_port()
        p = self._start(f"supernode-{i}", [
            _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(port),
            "--isolation", self.isolation, "--node-config", node_config])
        _wait_port(port, p, f"flower-supernode {i}")
        return p

    def node(self, i: int) -> subprocess.Popen:
        return dict(self.procs)[f"supernode-{i}"]

    def pids(self) -> set[int]:
        """Every live process this federation started, and all their descendants (ServerApp / ClientApp
        subprocesses that Flower starts, possibly in sessions of their own)."""
        return descendants({p.pid for _, p in self.procs if p.poll() is None})

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process this federation started and their descendants (by PID), then SIGKILL what is
        left; reap the direct children."""
        tree = self.pids()
        for _, p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        _signal(tree, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        tree |= self.pids()
        for _, p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        _signal(tree, signal.SIGKILL)
        for _, p in self.procs:
            p.wait()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them (from /proc; empty where /proc is not available)."""
    if not os.path.isdir("/proc"):
        return set(roots)
    kids, out, stack = _children(), set(), list(roots)
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(kids.get(p, []))
    return out


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def flwr_home(home: Path, address: str, insecure: bool = True) -> Path:
    """A FLWR_HOME whose config.toml names the SuperLink as connection ``fedloom``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink.fedloom]\naddress = "{address}"\ninsecure = {json.dumps(insecure)}\n')
    return home


def submit(app_dir: Path, address: str, home: Path, log_path: Path, timeout: float, env: dict | None = None) -> int:
    """``flwr run APP fedloom --stream`` against ``address``; its output goes to ``log_path``. Returns its status."""
    env = dict(env or os.environ, FLWR_HOME=str(flwr_home(home, address)))
    with open(log_path, "ab") as log:
        p = subprocess.Popen([_bin("flwr"), "run", str(app_dir), "fedloom", "--stream"], stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return p.wait(timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise


@contextlib.contextmanager
def _interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM ends the deploy like Ctrl-C (KeyboardInterrupt), so the federation is torn down either way."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def deploy_local(cfg: RunConfig, out: Path, nodes: int, *, timeout: float = 120.0, wait: float = 60.0,
                 run_timeout: float = 3600.0, isolation: str = "subprocess", warm: bool = True) -> int:
    """Run ``cfg`` on a local federation of ``nodes`` SuperNodes; returns ``flwr run``'s exit status."""
    out.mkdir(parents=True, exist_ok=True)
    app = write_app(out / "app", cfg, out, timeout, wait)
    with _interrupts_as_exceptions(), \
            LocalFederation(nodes, cfg.data.num_clients, out / "logs", isolation, warm) as fed:
        return submit(app, f"127.0.0.1:{fed.port}", out / ".flwr", out / "logs" / "flwr-run.log", run_timeout,
                      fed.env)


def deploy_remote(cfg: RunConfig, out: Path, superlink: str, *, timeout: float = 120.0, wait: float = 60.0,
                  run_timeout: float = 3600.0) -> int:
    """Submit ``cfg`` to a running SuperLink (insecure connection; see the README for TLS)."""
    out.mkdir(parents=True, exist_ok=True)
    app = write_app(out / "app", cfg, out, timeout, wait)
    (out / "logs").mkdir(exist_ok=True)
    return submit(app, superlink, out / ".flwr", out / "logs" / "flwr-run.log", run_timeout)
