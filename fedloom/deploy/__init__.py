"""The deployment runtime: the same run on real networked clients, through Flower (SuperLink / SuperNodes).

* :mod:`fedloom.deploy.apps` -- the Flower ServerApp (fedloom's round loop; the server side) and ClientApp
  (fedloom's client side on each SuperNode, holding only its own partition and its own client state);
* :mod:`fedloom.deploy.transport` -- :class:`~fedloom.deploy.transport.FlowerClients`, the round loop's
  ``ClientRuntime`` over a Flower ``Grid``: each Flower message's payload is fedloom's own wire message, so
  codecs, Paillier and byte accounting carry over unchanged;
* :mod:`fedloom.deploy.local` -- ``fedloom deploy --local N``: a SuperLink and N SuperNodes as processes on
  127.0.0.1 (and the key authority, :mod:`fedloom.crypto.authority`, under secure aggregation), the run submitted
  with ``flwr run``, every process torn down afterwards; ``--secure``: TLS and SuperNode authentication with
  credentials made for the run (:mod:`fedloom.deploy.tls`).

Needs the ``deploy`` extra (``pip install 'fedloom[deploy]'``: Flower 1.42).
"""
