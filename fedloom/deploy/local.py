"""``fedloom deploy``: run a config on a Flower federation -- a local one started here, or a running SuperLink.

``--local N`` starts a SuperLink and N SuperNodes as separate processes on 127.0.0.1 (free ports, logs under
``OUT/logs``), node i holding partition i of the configured federated data (``partition-id=i``), submits the run
with ``flwr run`` (the Flower App is written to ``OUT/app``: its components are :mod:`fedloom.deploy.apps`), waits
for it to finish and tears every process down by its process group -- also on an error or Ctrl-C. The ServerApp
writes the same run directory as ``fedloom run`` (config.yaml, metrics.jsonl, model.pt, plots).

Under ``secure_aggregation`` the key authority is started first, as a process of its own
(:mod:`fedloom.crypto.authority`), and the config submitted names it. ``--secure`` adds TLS on every link (a CA
and certificates made for the run, :mod:`fedloom.deploy.tls`) and Flower's SuperNode authentication: each node's
public key is registered with ``flwr supernode register`` before it connects.

``--superlink HOST:PORT`` submits the run to a federation that is already running (its SuperNodes started with
``--node-config "partition-id=<i> num-partitions=<N>"``): TLS verified against ``--root-certificates``, else an
insecure connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedloom.config import RunConfig, dump_config
from fedloom.crypto.authority import TOKEN_ENV
from fedloom.deploy.tls import TLSFiles, make_certificates, make_node_key


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
    """A SuperLink and N SuperNodes on 127.0.0.1, as process groups this object owns and ends.

    ``secagg``: the run's ``secure_aggregation`` section; when enabled (and it names no authority of its own) the
    key authority is started first as a process of its own (:mod:`fedloom.crypto.authority`), and
    :meth:`configure` points the config at it. ``secure``: TLS on every link (a CA and a server certificate made
    for the run, :mod:`fedloom.deploy.tls`) and Flower's SuperNode authentication: only nodes whose public keys
    were registered with the SuperLink (``flwr supernode register``) may join."""

    def __init__(self, num_nodes: int, num_partitions: int, logs: Path, isolation: str = "subprocess",
                 warm: bool = True, workers: dict[int, Path] | None = None, *, secagg: Any = None,
                 secure: bool = False):
        self.n, self.partitions, self.logs, self.isolation, self.warm = num_nodes, num_partitions, logs, isolation, warm
        self.workers = dict(workers or {})  # node -> the unix socket of a worker started elsewhere (tests)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONUNBUFFERED="1")
        self.env.pop(TOKEN_ENV, None)
        # Flower's SuperExecs poll for work every second by default: a round would wait up to that per side
        self.env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.25")
        self.server_env = dict(self.env)  # the SuperLink's (and so the ServerApp's): only it gets the token
        self.secagg = secagg if secagg is not None and secagg.enabled and not secagg.authority else None
        self.authority_url: str | None = None
        self.secure = secure
        self.creds = logs.parent / "credentials"
        self.tls: TLSFiles | None = None
        self.home = logs.parent / ".flwr"  # FLWR_HOME of `flwr run` / `flwr supernode register`

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (closed when the process is reaped)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.procs.append((name, p))
        return p

    def start(self) -> None:
        """Everything at once where nothing waits on it: the key authority and the node workers (which import
        torch) start first, the SuperNodes as soon as the SuperLink listens."""
        if self.secure:
            self.tls = make_certificates(self.creds)
        auth = self._launch_authority() if self.secagg is not None else None
        socks = {i: self._start_worker(i) for i in range(self.n) if self.warm and i not in self.workers}
        tls = (["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert), "--ssl-keyfile",
                str(self.tls.key), "--enable-supernode-auth"] if self.tls else ["--insecure"])
        sl = self._start("superlink", [_bin("flower-superlink"), *tls, "--host", "127.0.0.1", "--port",
                                       str(self.port), "--disable-runtime-dependency-installation"], self.server_env)
        _wait_port(self.port, sl, "flower-superlink")
        keys = {i: self._node_key(i) for i in range(self.n)} if self.tls else {}
        if keys:
            self.register(*(pub for _, pub in keys.values()))
        for i in range(self.n):
            self._launch_node(i, socks[i][1] if i in socks else self.workers.get(i), keys.get(i))
        if auth is not None:
            _wait_port(auth[1], auth[0], "the key authority")
        # The SuperNodes and workers are not waited for: they finish starting (Flower's and torch's imports) while
        # the run is submitted and its ServerApp starts, which waits for the nodes to connect (``fedloom-wait``);
        # a ClientApp waits for its worker's socket. One that has already failed is an error now.
        time.sleep(0.5)
        for name, p in self.procs:
            if p.poll() is not None:
                raise DeployError(f"{name} exited with status {p.returncode} (see {self.logs / (name + '.log')})")

    def _launch_authority(self) -> tuple[subprocess.Popen, int]:
        """The key authority (:mod:`fedloom.crypto.authority`) as its own process; only the SuperLink's
        environment (so the ServerApp's) gets the bearer token for decryption."""
        sa, port = self.secagg, free_port()
        self.creds.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        token_file = self.creds / "authority.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        cmd = [sys.executable, "-m", "fedloom.crypto.authority", "--host", "127.0.0.1", "--port", str(port),
               "--key-bits", str(sa.key_bits), "--min-contributors", str(sa.min_contributors), "--workers",
               str(sa.workers), "--token-file", str(token_file), "--log", str(self.logs / "authority.jsonl")]
        if self.tls:
            cmd += ["--certfile", str(self.tls.cert), "--keyfile", str(self.tls.key)]
        p = self._start("authority", cmd)
        self.authority_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        self.server_env[TOKEN_ENV] = token
        return p, port

    def configure(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` pointed at this federation's key authority (when it started one)."""
        if self.authority_url is None or cfg.secure_aggregation is None:
            return cfg
        sa = cfg.secure_aggregation.model_copy(update={
            "authority": self.authority_url, "authority_ca": str(self.tls.ca.resolve()) if self.tls else None})
        return cfg.model_copy(update={"secure_aggregation": sa})

    def _start_worker(self, i: int) -> tuple[subprocess.Popen, Path]:
        """Node i's fedloom worker; each start gets a socket of its own (a restarted node's is not its
        predecessor's)."""
        k = sum(name == f"worker-{i}" for name, _ in self.procs)
        sock = self.logs / (f"node-{i}.sock" if k == 0 else f"node-{i}.{k}.sock")
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        return self._start(f"worker-{i}", [sys.executable, "-m", "fedloom.deploy.worker", str(sock)]), sock

    def _node_key(self, i: int) -> tuple[Path, Path]:
        return make_node_key(self.creds, f"supernode-{i}-{secrets.token_hex(4)}")

    def register(self, *public_keys: Path) -> None:
        """Put SuperNodes' public keys on the SuperLink's list (``flwr supernode register``, one process each)."""
        env = dict(self.env, FLWR_HOME=str(flwr_home(self.home, self.address, self.tls.ca if self.tls else None)))
        procs = [(k, subprocess.Popen([_bin("flwr"), "supernode", "register", str(k), "fedloom"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                 for k in public_keys]
        errors = []
        for k, p in procs:
            try:
                text, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate()
            with open(self.logs / "register.log", "a") as f:
                f.write(text)
            if p.returncode != 0 or "registered" not in text:
                errors.append(f"flwr supernode register {k.name} failed: {text.strip()[-400:]}")
        if errors:
            raise DeployError("; ".join(errors))

    def _launch_node(self, i: int, worker: Path | None, key: tuple[Path, Path] | None,
                     name: str | None = None) -> tuple[subprocess.Popen, int]:
        node_config = f"partition-id={i} num-partitions={self.partitions}"
        if worker is not None:
            node_config += f' fedloom-worker="{worker}"'
        link = ["--root-certificates", str(self.tls.ca), "--auth-supernode-private-key", str(key[0])] \
            if self.tls and key else ["--insecure"]
        port = free_port()
        p = self._start(name or f"supernode-{i}", [
            _bin("flower-supernode"), *link, "--superlink", self.address, "--port", str(port), "--isolation",
            self.isolation, "--node-config", node_config])
        return p, port

    def start_node(self, i: int, *, worker: Path | None = None, authorized: bool = True) -> subprocess.Popen:
        """SuperNode i (holding partition i), e.g. a restarted one, with its fedloom worker (started here when
        ``warm`` and none is given). Under ``secure`` the node gets a fresh key pair, registered with the
        SuperLink unless ``authorized=False`` (a node that is not on the list: the SuperLink refuses it)."""
        if worker is None and i in self.workers:
            worker = self.workers[i]
        elif worker is None and self.warm:
            worker = self._start_worker(i)[1]
        key = self._node_key(i) if self.tls else None
        if key and authorized:
            self.register(key[1])
        p, port = self._launch_node(i, worker, key, None if authorized else f"intruder-{i}")
        if self.tls and not authorized:
            return p  # it is refused: it never serves its port for long
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


def flwr_home(home: Path, address: str, root_certificates: Path | str | None = None) -> Path:
    """A FLWR_HOME whose config.toml names the SuperLink as connection ``fedloom``: TLS verified against
    ``root_certificates`` when given, else insecure."""
    home.mkdir(parents=True, exist_ok=True)
    link = (f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\ninsecure = false\n"
            if root_certificates else "insecure = true\n")
    (home / "config.toml").write_text(f'[superlink.fedloom]\naddress = "{address}"\n{link}')
    return home


def submit(app_dir: Path, address: str, home: Path, log_path: Path, timeout: float, env: dict | None = None,
           root_certificates: Path | str | None = None) -> int:
    """``flwr run APP fedloom --stream`` against ``address``; its output goes to ``log_path``. Returns its status."""
    env = dict(env or os.environ, FLWR_HOME=str(flwr_home(home, address, root_certificates)))
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
                 run_timeout: float = 3600.0, isolation: str = "subprocess", warm: bool = True,
                 secure: bool = False) -> int:
    """Run ``cfg`` on a local federation of ``nodes`` SuperNodes; returns ``flwr run``'s exit status."""
    out.mkdir(parents=True, exist_ok=True)
    with _interrupts_as_exceptions(), LocalFederation(nodes, cfg.data.num_clients, out / "logs", isolation, warm,
                                                      secagg=cfg.secure_aggregation, secure=secure) as fed:
        app = write_app(out / "app", fed.configure(cfg), out, timeout, wait)
        return submit(app, fed.address, fed.home, out / "logs" / "flwr-run.log", run_timeout, fed.env,
                      fed.tls.ca if fed.tls else None)


def deploy_remote(cfg: RunConfig, out: Path, superlink: str, *, timeout: float = 120.0, wait: float = 60.0,
                  run_timeout: float = 3600.0, root_certificates: Path | str | None = None) -> int:
    """Submit ``cfg`` to a running SuperLink: TLS verified against ``root_certificates``, else insecure."""
    out.mkdir(parents=True, exist_ok=True)
    app = write_app(out / "app", cfg, out, timeout, wait)
    (out / "logs").mkdir(exist_ok=True)
    return submit(app, superlink, out / ".flwr", out / "logs" / "flwr-run.log", run_timeout,
                  root_certificates=root_certificates)
