"""A SuperNode's long-lived fedloom worker: ``python -m fedloom.deploy.worker SOCKET``.

Serves the node's ClientApp processes (:mod:`fedloom.deploy.clientapp`) over a unix socket (mode 0600, on the
node's own machine), one request per connection, with torch imported and the run built once
(:class:`fedloom.deploy.node.NodeRuntime`; the run is built when the node is first asked which partition it holds,
so round 1 does not wait for it). It holds no client state between requests: the state comes with each
request from the node's Flower ``context.state`` and goes back with the reply. Ends on SIGTERM / SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback

from fedloom.deploy.frames import frame, recv_frame, send_frame, unframe


def serve(path: str) -> None:
    import torch
    import torch._dynamo  # noqa: F401  (torch.func imports it on the first grad: ~1 s that round 1 need not wait)

    from fedloom.deploy.node import NodeRuntime

    torch.set_num_threads(1)
    node = NodeRuntime()
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    srv.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fedloom node worker listening on {path}", flush=True)
    try:
        while True:
            conn, _ = srv.accept()
            with conn:
                try:
                    header, blobs = unframe(recv_frame(conn))
                    if header.get("op") == "prepare":  # build the run now (data, model, pipeline), before round 1
                        node.check_partition(node.run_for(blobs["config"].decode()), header["partition"],
                                             header["num_partitions"])
                        send_frame(conn, frame({}, {}))
                        continue
                    state = {k[len("state."):]: v for k, v in blobs.items() if k.startswith("state.")}
                    upload, new, times = node.train(blobs["config"].decode(), header["partition"],
                                                    header["num_partitions"], header["round"], header["client"],
                                                    blobs["shared"], blobs.get("personal"), state)
                    send_frame(conn, frame(times, {"upload": upload, **{f"state.{k}": v for k, v in new.items()}}))
                except Exception as e:  # report to the ClientApp (it raises, Flower replies with an error)
                    traceback.print_exc()
                    try:
                        send_frame(conn, frame({"error": f"{type(e).__name__}: {e}"}, {}))
                    except OSError:
                        pass
    finally:
        srv.close()
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1])
