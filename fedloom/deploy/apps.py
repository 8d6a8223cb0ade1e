"""The deployed ServerApp (a Flower ServerApp): fedloom's own round loop -- sampling, broadcast, the server
pipeline, the server optimizer, evaluation, metrics, checkpoints -- with
:class:`~fedloom.deploy.transport.FlowerClients` as its client runtime. The ClientApp is
:mod:`fedloom.deploy.clientapp`. Both are components of the Flower App that ``fedloom deploy`` submits.

Run config keys (``flwr run ... --run-config``, set by :mod:`fedloom.deploy.local`): ``fedloom-config`` (the
resolved config as YAML text), ``fedloom-out`` (run directory, server side), ``fedloom-timeout`` (seconds to
wait for replies), ``fedloom-wait`` (seconds to wait for the nodes to connect). Under secure aggregation the
config names the key authority's process (``secure_aggregation.authority``): the server holds its public key only
and writes ``secagg.json``, an audit from inside its own process that it holds no secret key. Node config keys:
``partition-id`` (the fedloom client id) and ``num-partitions`` (must equal ``data.num_clients``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedloom.config import RunConfig, validate_config
from fedloom.deploy.transport import FlowerClients, discover

log = logging.getLogger("fedloom")

server_app = ServerApp()


def _config(context: Context) -> RunConfig:
    text = context.run_config.get("fedloom-config")
    if not isinstance(text, str) or not text:
        raise ValueError("run config 'fedloom-config' (the fedloom config as YAML) is missing")
    return validate_config(yaml.safe_load(text))


# -- server side -------------------------------------------------------------------------------------------------
@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """fedloom's round loop with the SuperNodes as its clients; writes the run directory like ``fedloom run``."""
    from fedloom.metrics.report import make_report
    from fedloom.simulation import Simulation

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = _config(context)
    out = Path(str(context.run_config.get("fedloom-out") or "runs/deploy"))
    timeout = float(context.run_config.get("fedloom-timeout", 60.0))
    with ThreadPoolExecutor(1) as ex:  # the nodes say which partition they hold (and build their runs) meanwhile
        found = ex.submit(discover, grid, cfg.data.num_clients, float(context.run_config.get("fedloom-wait", 60.0)))
        sim = Simulation(cfg)
        nodes = found.result()
    missing = sorted(set(range(cfg.data.num_clients)) - set(nodes))
    log.info("fedloom: %d of %d partitions have a SuperNode%s", len(nodes), cfg.data.num_clients,
             f" (none for {missing})" if missing else "")
    sim.client_runtime = FlowerClients(grid, nodes, timeout, cfg.data.num_clients)
    sim.attach_output(out)
    t0 = time.perf_counter()
    recs = sim.run()
    if sim.built.secagg is not None:
        _audit_secret_keys(sim, out)
    make_report([out], metric=sim.headline)
    head = sim.headline
    last = next((r[head] for r in reversed(recs) if r.get(head) is not None), None)
    log.info("fedloom: deployed run finished: %d rounds in %.1f s, final %s %s", len(recs),
             time.perf_counter() - t0, head, last)


def _audit_secret_keys(sim: object, out: Path) -> None:
    """Record, from inside the ServerApp's process, that it never held a secret key: the key authority is another
    process (:mod:`fedloom.crypto.authority`) and this process has no Paillier private key object at all."""
    import gc
    import json
    import os

    from fedloom.crypto.paillier import PrivateKey
    from fedloom.crypto.protocol import KeyAuthority

    sa = sim.built.secagg  # type: ignore[attr-defined]
    held = sum(type(o) in (PrivateKey, KeyAuthority) for o in gc.get_objects())  # type(): no __class__ hooks
    audit = {"serverapp_pid": os.getpid(), "authority": getattr(sa.authority, "url", None),
             "authority_pid": getattr(sa.authority, "pid", None), "public_key": sa.public_key.fingerprint,
             "authority_type": type(sa.authority).__name__, "secret_keys_in_serverapp": held}
    (out / "secagg.json").write_text(json.dumps(audit, indent=1) + "\n")
    if held:
        log.error("fedloom: the ServerApp's process holds %d secret-key objects", held)
