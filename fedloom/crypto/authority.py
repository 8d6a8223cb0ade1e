"""The key authority as a process of its own: ``python -m fedloom.crypto.authority --port P --key-bits B``.

In the simulator the three parties of :mod:`fedloom.crypto.protocol` are objects in one process. Deployed
(``fedloom deploy``), the key authority is a separate process -- on its own machine if one wants -- so the
server's process never holds the secret key:

* the **authority** generates the key pair at start and serves two requests over HTTP(S) (stdlib only):
  ``GET /v1/public-key`` (anyone: the nodes fetch the public key from here, not from the server, so a server
  cannot hand them a key of its own) and ``POST /v1/decrypt-sum`` (the server: one aggregate -- the product of
  the accepted ciphertexts, with its contributor list and total weight -- decrypted into the weighted mean, or
  refused with 403 when it has fewer than ``--min-contributors`` contributors). With ``--token-file`` the
  decryption request must carry that bearer token. Every decryption (and refusal) is appended to ``--log`` as a
  JSON line: who contributed, how many, their total weight. With ``--certfile``/``--keyfile`` it serves HTTPS.
* :class:`RemoteAuthority` is what the server and the nodes hold instead of a
  :class:`~fedloom.crypto.protocol.KeyAuthority`: the public key fetched from the authority (its fingerprint
  checked) and a ``decrypt_sum`` that sends the aggregate there. It never holds a secret key.

The trust model is :mod:`fedloom.crypto.protocol`'s: the authority decrypts whatever aggregate the server hands
it (``min_contributors`` limits the *claimed* count), so the server and the authority must not collude; run the
authority where the server's operator cannot read its memory. The key lives only in the authority's memory: if
the process ends, the run cannot decrypt any more (start a new run).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from gmpy2 import mpz

from fedloom.crypto.packing import PackingSpec
from fedloom.crypto.paillier import CryptoError, PublicKey
from fedloom.crypto.protocol import DecryptedAggregate, EncryptedSum, KeyAuthority

TOKEN_ENV = "FEDLOOM_AUTHORITY_TOKEN"  # the server's bearer token for decryption requests (never in the config)
MAX_BODY = 1 << 30


class AuthorityUnavailable(RuntimeError):
    """The key authority could not be reached (not a refusal: that is a :class:`CryptoError`)."""


# -- the authority's process ---------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _AuthorityServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        pass  # requests are audited in the JSON log instead

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/v1/public-key":
            return self._reply(404, {"error": f"no such resource {self.path}"})
        ka = self.server.authority
        pk = ka.public_key
        self._reply(200, {"n": format(int(pk.n), "x"), "fingerprint": pk.fingerprint, "key_bits": pk.n_bits,
                          "min_contributors": ka.min_contributors, "pid": os.getpid()})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/decrypt-sum":
            return self._reply(404, {"error": f"no such resource {self.path}"})
        token = self.server.token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            return self._reply(401, {"error": "decryption requests need the server's bearer token"})
        try:
            size = int(self.headers.get("Content-Length", "0"))
            if not 0 < size <= MAX_BODY:
                raise ValueError(f"body of {size} bytes")
            req = json.loads(self.rfile.read(size))
            spec = PackingSpec(**req["spec"])
            agg = EncryptedSum.from_bytes(base64.b64decode(req["aggregate"]), self.server.authority.public_key)
        except (ValueError, KeyError, TypeError, CryptoError) as e:
            return self._reply(400, {"error": f"malformed request: {e}"})
        entry = {"time": time.time(), "key": agg.key, "count": agg.count, "contributors": agg.contributors,
                 "total_weight": agg.total_weight}
        try:
            with self.server.lock:  # one decryption at a time (its worker processes are the authority's own)
                res = self.server.authority.decrypt_sum(agg, spec)
        except CryptoError as e:
            self.server.audit({**entry, "refused": str(e)})
            return self._reply(403, {"error": str(e)})
        self.server.audit({**entry, "decrypted": True, "clipped": res.clipped})
        self._reply(200, {"mean": base64.b64encode(res.mean.astype("<f8").tobytes()).decode(),
                          "total_weight": res.total_weight, "count": res.count, "clipped": res.clipped})


class _AuthorityServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], authority: KeyAuthority, token: str | None, log: Path | None):
        super().__init__(address, _Handler)
        self.authority, self.token, self.log_path = authority, token, log
        self.lock = threading.Lock()

    def audit(self, entry: dict[str, Any]) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")


def serve(host: str, port: int, key_bits: int, *, min_contributors: int = 1, workers: int = 1,
          token_file: str | None = None, log: str | None = None, certfile: str | None = None,
          keyfile: str | None = None) -> None:
    """Generate a key pair and serve it until SIGTERM / SIGINT."""
    token = Path(token_file).read_text().strip() if token_file else None
    authority = KeyAuthority(key_bits, min_contributors=min_contributors, workers=workers)
    srv = _AuthorityServer((host, port), authority, token, Path(log) if log else None)
    scheme = "http"
    if certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        scheme = "https"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fedloom key authority (pid {os.getpid()}): {key_bits}-bit key {authority.public_key.fingerprint}, "
          f"min_contributors={min_contributors}, serving {scheme}://{host}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fedloom.crypto.authority",
                                 description="a Paillier key authority for deployed secure aggregation")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8800)
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--min-contributors", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="decryption processes")
    ap.add_argument("--token-file", help="decryption requests must carry this bearer token (the server's)")
    ap.add_argument("--log", help="append one JSON line per decryption request")
    ap.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--keyfile", help="the certificate's private key (PEM)")
    a = ap.parse_args(argv)
    serve(a.host, a.port, a.key_bits, min_contributors=a.min_contributors, workers=a.workers,
          token_file=a.token_file, log=a.log, certfile=a.certfile, keyfile=a.keyfile)


# -- the server's and the nodes' side ------------------------------------------------------------------------------
class RemoteAuthority:
    """A key authority in another process, reached at ``url``: the public key (fetched and checked once) and
    :meth:`decrypt_sum`. Holds no secret key. ``ca``: the CA certificate that signed an ``https`` authority's
    certificate; ``token``: the bearer token for decryption (default: the ``FEDLOOM_AUTHORITY_TOKEN``
    environment variable, set only where the server runs)."""

    def __init__(self, url: str, ca: str | None = None, token: str | None = None, *, timeout: float = 300.0,
                 connect_wait: float = 15.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca) if self.url.startswith("https://") else None
        self._token = token if token is not None else os.environ.get(TOKEN_ENV)
        info = self._request("/v1/public-key", None, wait=connect_wait)
        self.public_key = PublicKey(mpz(int(info["n"], 16)))
        if self.public_key.fingerprint != info.get("fingerprint"):
            raise CryptoError(f"key authority at {self.url}: the public key does not match its fingerprint")
        self.min_contributors = int(info.get("min_contributors", 1))
        self.pid = info.get("pid")

    def __repr__(self) -> str:
        return f"RemoteAuthority({self.url!r}, key {self.public_key.fingerprint})"

    def _request(self, path: str, body: dict[str, Any] | None, wait: float = 0.0) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if data is not None and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        deadline = time.monotonic() + wait
        while True:
            req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method="POST" if data is not None else "GET")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as r:
                    return dict(json.loads(r.read()))
            except urllib.error.HTTPError as e:
                try:
                    why = json.loads(e.read()).get("error", e.reason)
                except ValueError:
                    why = e.reason
                if e.code == 403:  # a refusal (e.g. too few contributors): the protocol's own error
                    raise CryptoError(str(why)) from None
                raise AuthorityUnavailable(f"key authority at {self.url}: HTTP {e.code}: {why}") from None
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() >= deadline:
                    raise AuthorityUnavailable(f"key authority at {self.url} unreachable: {e}") from None
                time.sleep(0.2)

    def decrypt_sum(self, agg: EncryptedSum | bytes, spec: PackingSpec, *, count: int | None = None,
                    total_weight: int | None = None) -> DecryptedAggregate:
        """Have the authority decrypt ``agg`` into the weighted mean; it counts the aggregate's own contributors
        and total weight (``count`` / ``total_weight`` other than those are not sent: refused here)."""
        if isinstance(agg, EncryptedSum):
            if (count is not None and count != agg.count) or (total_weight is not None and total_weight != agg.total_weight):
                raise CryptoError("a remote authority decodes with the aggregate's own count and total weight")
            agg = agg.to_bytes(self.public_key)
        elif count is not None or total_weight is not None:
            raise CryptoError("a remote authority decodes with the aggregate's own count and total weight")
        res = self._request("/v1/decrypt-sum", {"spec": spec.to_dict(), "aggregate": base64.b64encode(bytes(agg)).decode()})
        mean = np.frombuffer(base64.b64decode(res["mean"]), dtype="<f8").astype(np.float64)
        return DecryptedAggregate(mean, int(res["total_weight"]), int(res["count"]), int(res["clipped"]))


if __name__ == "__main__":
    main()
