"""The deployed ServerApp (a Flower ServerApp): fedloom's own round loop -- sampling, broadcast, the server
pipeline, the server optimizer, evaluation, metrics, checkpoints -- with
:class:`~fedloom.deploy.transport.FlowerClients` as its client runtime. The ClientApp is
:mod:`fedloom.deploy.clientapp`. Both are components of the Flower App that ``fedloom deploy`` submits.

Run config keys (``flwr run ... --run-config``, set by :mod:`fedloom.deploy.local`): ``fedloom-config`` (the
resolved config as YAML text), ``fedloom-out`` (run directory, server side), ``fedloom-timeout`` (seconds to
wait for replies), ``fedloom-wait`` (seconds to wait for the nodes to connect). Node config keys:
``partition-id`` (the fedloom client id) and ``num-partitions`` (must equal ``data.num_clients``).
"""

from __future__ import annotations

import logging
import time
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
    nodes = discover(grid, cfg.data.num_clients, float(context.run_config.get("fedloom-wait", 60.0)))
    missing = sorted(set(range(cfg.data.num_clients)) - set(nodes))
    log.info("fedloom: %d of %d partitions have a SuperNode%s", len(nodes), cfg.data.num_clients,
             f" (none for {missing})" if missing else "")
    sim = Simulation(cfg)
    sim.client_runtime = FlowerClients(grid, nodes, timeout, cfg.data.num_clients)
    sim.attach_output(out)
    t0 = time.perf_counter()
    recs = sim.run()
    make_report([out], metric=sim.headline)
    head = sim.headline
    last = next((r[head] for r in reversed(recs) if r.get(head) is not None), None)
    log.info("fedloom: deployed run finished: %d rounds in %.1f s, final %s %s", len(recs),
             time.perf_counter() - t0, head, last)
