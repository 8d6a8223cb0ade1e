"""Secure aggregation with Paillier: clients encrypt, the aggregator multiplies, a key authority decrypts the sum.

Roles (papers.md section 6, python-paillier's federated example -- without its bug of adding client 0 twice):

* :class:`KeyAuthority` generates the key pair, publishes the public key, and has exactly one decryption entry
  point, :meth:`KeyAuthority.decrypt_sum`, which takes an aggregate together with the number of contributors
  and their total weight (so dropouts -- fewer messages than the cohort -- decode correctly) and refuses
  aggregates of fewer than ``min_contributors`` clients. It can be a separate party or a designated client.
* :class:`Client` clips, quantizes, packs (:mod:`fedloom.crypto.packing`) and encrypts its weighted update with
  the public key, and sends one message tagged with its id and the key's fingerprint.
* :class:`Aggregator` (the server) holds only the public key: it validates each message and multiplies the
  ciphertexts slot-wise (homomorphic addition). It never sees a secret key (a test walks its object graph).

Message (client -> aggregator), length-prefixed like :mod:`fedloom.wire`::

    b"FLPC" | uint32 LE header length | UTF-8 JSON header | count fixed-size ciphertexts of 2|n| bits each

The header carries the client id, the key fingerprint, the packing spec, the vector length, the count of
ciphertexts, the client's integer weight, how many values it clipped, and plaintext metadata (``num_samples``,
``train_loss`` -- the same scalars the plaintext round loop sends). A message that is malformed, has the wrong
length, carries another key's fingerprint or spec, holds a ciphertext outside Z*_{n^2}, or repeats a client,
is rejected with :class:`BadMessage` naming the client; the aggregation goes on with the others.

Threat model
------------
* **Honest-but-curious server.** The aggregator follows the protocol but would like to learn individual
  updates. Under the decisional composite residuosity assumption (plus DJN's short-exponent assumption when
  that opt-in randomness is used) it learns nothing from ciphertexts. It must not collude with the key
  authority: the key authority sees whatever the server hands it, so a server that forwards one client's
  ciphertexts as a "sum" (or lies about the count) learns that client's update. ``min_contributors`` only
  limits the *claimed* count. Threshold Paillier or Bonawitz et al.-style masking removes this trust.
* **No integrity.** Paillier is malleable: anyone with the public key can add to or scale a ciphertext, and a
  malicious client can put out-of-range values in its slots and corrupt others' sums (the decoder only
  catches sums that exceed the packing capacity). Messages are not authenticated; the transport must be.
  Nothing here defends against Byzantine clients.
* **What leaks.** The key authority (and whoever receives the decoded model) learns the aggregate: the
  weighted mean of the quantized, clipped updates, the number of contributors and their total weight. The
  server learns who sent a message, its size (fixed by the model), and the plaintext header fields: the
  client's weight (``num_samples``), ``train_loss`` and its clipped-value count.
* **Randomness** is from the OS CSPRNG. Quantization (stochastic rounding) uses the run's seeded generator:
  it only decides rounding, and its noise is not a privacy mechanism (add DP noise before encoding for that).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gmpy2 import mpz

from fedloom.crypto.packing import Packer, PackingSpec
from fedloom.crypto.paillier import CryptoError, PrivateKey, PublicKey, generate_keypair
from fedloom.crypto.parallel import decrypt_parallel
from fedloom.crypto.randomness import Randomness, RandomnessSpec, build_randomness

MAGIC = b"FLPC"
SUM_MAGIC = b"FLPS"


class BadMessage(CryptoError):
    """A client's encrypted message was rejected; ``client`` names the sender."""

    def __init__(self, client: Any, reason: str):
        self.client = client
        self.reason = reason
        super().__init__(f"client {client}: {reason}")


def _frame(magic: bytes, header: dict, blob: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([magic, struct.pack("<I", len(h)), h, blob])


def _unframe(magic: bytes, data: Any) -> tuple[dict, bytes]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError(f"message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8 or data[:4] != magic:
        raise CryptoError(f"bad magic: not a fedloom encrypted message ({magic!r})")
    (hlen,) = struct.unpack("<I", data[4:8])
    if 8 + hlen > len(data):
        raise CryptoError("truncated header")
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as e:
        raise CryptoError(f"malformed header: {e}") from None
    if not isinstance(header, dict):
        raise CryptoError("malformed header: not a JSON object")
    return header, data[8 + hlen :]


def _field(header: dict, name: str, kind: type) -> Any:
    v = header.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise CryptoError(f"header field {name!r} missing or not {kind.__name__}")
    return v


# -- client ----------------------------------------------------------------------------------------
class Client:
    """Packs and encrypts one party's weighted update under the key authority's public key."""

    def __init__(self, client_id: int, public_key: PublicKey, spec: PackingSpec,
                 randomness: Randomness | RandomnessSpec | str = "fresh", encryptor: Any = None):
        if spec.key_bits != public_key.n_bits:
            raise CryptoError(f"packing spec is for a {spec.key_bits}-bit key, the public key has {public_key.n_bits}")
        self.client_id = client_id
        self.public_key = public_key
        self.packer = Packer(spec)
        self.randomness = randomness if not isinstance(randomness, (str, RandomnessSpec)) else build_randomness(
            public_key, randomness)
        self.encryptor = encryptor  # optional ParallelEncryptor (multi-core)

    def encrypt(self, update: np.ndarray, weight: int = 1, *, rng: np.random.Generator | None = None,
                meta: Mapping[str, Any] | None = None) -> bytes:
        """One message: ``weight`` * quantized(update), packed and encrypted (``rng`` for stochastic rounding)."""
        packed = self.packer.encode(update, weight, rng)
        if self.encryptor is not None:
            cts = self.encryptor.encrypt(packed.plaintexts)
        else:
            pk, rnd = self.public_key, self.randomness
            cts = [pk.raw_encrypt(m, r) for m, r in zip(packed.plaintexts, rnd.obfuscators(len(packed.plaintexts)))]
        header = {"v": 1, "client": self.client_id, "key": self.public_key.fingerprint,
                  "spec": self.packer.spec.to_dict(), "length": packed.length, "count": len(cts),
                  "weight": packed.weight, "clipped": packed.clipped, "meta": dict(meta or {})}
        return _frame(MAGIC, header, self.public_key.serialize(cts))


# -- aggregate -------------------------------------------------------------------------------------
@dataclass
class EncryptedSum:
    """The server's product of ciphertexts and what the key authority must be told to decode it."""

    key: str  # public-key fingerprint
    length: int
    ciphertexts: list[mpz]
    contributors: list[Any] = field(default_factory=list)
    total_weight: int = 0
    clipped: int = 0

    @property
    def count(self) -> int:
        return len(self.contributors)

    def to_bytes(self, public_key: PublicKey) -> bytes:
        header = {"v": 1, "key": self.key, "length": self.length, "count": len(self.ciphertexts),
                  "contributors": list(self.contributors), "total_weight": self.total_weight, "clipped": self.clipped}
        return _frame(SUM_MAGIC, header, public_key.serialize(self.ciphertexts))

    @classmethod
    def from_bytes(cls, data: bytes, public_key: PublicKey) -> EncryptedSum:
        header, blob = _unframe(SUM_MAGIC, data)
        if header.get("key") != public_key.fingerprint:
            raise CryptoError("aggregate was made under a different public key")
        cts = public_key.deserialize(blob, _field(header, "count", int))
        return cls(header["key"], _field(header, "length", int), cts, list(_field(header, "contributors", list)),
                   _field(header, "total_weight", int), _field(header, "clipped", int))


class Aggregator:
    """The server: validates messages and multiplies ciphertexts. Holds the public key only."""

    def __init__(self, public_key: PublicKey, spec: PackingSpec, length: int):
        self.public_key = public_key
        self.spec = spec
        self.length = int(length)
        self.count = spec.num_plaintexts(self.length)
        self.reset()

    def reset(self) -> None:
        self._acc: list[mpz] | None = None
        self._contributors: list[Any] = []
        self._weight = 0
        self._clipped = 0
        self.metas: dict[Any, dict] = {}

    def parse(self, client: Any, msg: bytes) -> tuple[list[mpz], dict]:
        """Validate one message from ``client``; returns (ciphertexts, header). Raises :class:`BadMessage`."""
        try:
            header, blob = _unframe(MAGIC, msg)
            if header.get("client") != client:
                raise CryptoError(f"message claims to be from client {header.get('client')!r}")
            if header.get("key") != self.public_key.fingerprint:
                raise CryptoError(f"encrypted under another public key (fingerprint {str(header.get('key'))[:16]}..., "
                                  f"expected {self.public_key.fingerprint[:16]}...)")
            if header.get("spec") != self.spec.to_dict():
                raise CryptoError(f"packing spec {header.get('spec')} != the round's {self.spec.to_dict()}")
            if _field(header, "length", int) != self.length:
                raise CryptoError(f"vector length {header['length']} != expected {self.length}")
            count = _field(header, "count", int)
            if count != self.count:
                raise CryptoError(f"{count} ciphertexts declared, expected {self.count}")
            weight = _field(header, "weight", int)
            if not 1 <= weight <= self.spec.capacity:
                raise CryptoError(f"weight {weight} outside [1, {self.spec.capacity}]")
            _field(header, "clipped", int)
            cts = self.public_key.deserialize(blob, count)
        except CryptoError as e:
            raise BadMessage(client, str(e)) from None
        return cts, header

    def receive(self, client: Any, msg: bytes) -> dict:
        """Validate and add one client's message to the running product; returns its plaintext metadata."""
        if client in self._contributors:
            raise BadMessage(client, "a second message in the same aggregation (each client counts once)")
        cts, header = self.parse(client, msg)
        return self.add(client, cts, header)

    def add(self, client: Any, cts: list[mpz], header: dict) -> dict:
        """Add one parsed message (:meth:`parse`) to the running product; returns its plaintext metadata."""
        if client in self._contributors:
            raise BadMessage(client, "a second message in the same aggregation (each client counts once)")
        if self._weight + header["weight"] > self.spec.capacity:
            raise BadMessage(client, f"total weight would exceed the packing capacity {self.spec.capacity}")
        n2 = self.public_key.n2
        if self._acc is None:
            self._acc = cts
        else:
            self._acc = [(a * c) % n2 for a, c in zip(self._acc, cts)]
        self._contributors.append(client)
        self._weight += header["weight"]
        self._clipped += header["clipped"]
        meta = dict(header.get("meta") or {})
        self.metas[client] = meta
        return meta

    def aggregate(self, messages: Mapping[Any, bytes] | Sequence[tuple[Any, bytes]]
                  ) -> tuple[EncryptedSum | None, list[dict]]:
        """Receive every message, skipping bad ones; returns (the sum or None if none was valid, rejections)."""
        self.reset()
        items = messages.items() if isinstance(messages, Mapping) else messages
        rejected = []
        for client, msg in items:
            try:
                self.receive(client, msg)
            except BadMessage as e:
                rejected.append({"client": client, "reason": e.reason})
        return self.result(), rejected

    def result(self) -> EncryptedSum | None:
        if self._acc is None:
            return None
        return EncryptedSum(self.public_key.fingerprint, self.length, list(self._acc), list(self._contributors),
                            self._weight, self._clipped)


# -- key authority ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecryptedAggregate:
    mean: np.ndarray  # sum_k w_k x_k / W (float64)
    total_weight: int
    count: int
    clipped: int


class KeyAuthority:
    """Holds the secret key; decrypts only aggregates (with their contributor count and total weight)."""

    def __init__(self, key_bits: int = 2048, *, private_key: PrivateKey | None = None, min_contributors: int = 1,
                 workers: int = 1):
        self._sk = private_key if private_key is not None else generate_keypair(key_bits)[1]
        self.min_contributors = min_contributors
        self.workers = workers  # decryption processes (the authority's own; they receive the factors)

    @property
    def public_key(self) -> PublicKey:
        return self._sk.public_key

    def decrypt_sum(self, agg: EncryptedSum | bytes, spec: PackingSpec, *, count: int | None = None,
                    total_weight: int | None = None) -> DecryptedAggregate:
        """Decrypt and unpack an aggregate into the weighted mean. ``count``/``total_weight`` default to the
        aggregate's own (the server tells them); fewer than ``min_contributors`` is refused."""
        pk = self.public_key
        if isinstance(agg, (bytes, bytearray, memoryview)):
            agg = EncryptedSum.from_bytes(bytes(agg), pk)
        if agg.key != pk.fingerprint:
            raise CryptoError("aggregate was made under a different public key")
        count = agg.count if count is None else count
        W = agg.total_weight if total_weight is None else total_weight
        if count < self.min_contributors:
            raise CryptoError(f"refusing to decrypt an aggregate of {count} contributors "
                              f"(min_contributors={self.min_contributors})")
        if spec.key_bits != pk.n_bits or len(agg.ciphertexts) != spec.num_plaintexts(agg.length):
            raise CryptoError("aggregate does not match the packing spec")
        for i, c in enumerate(agg.ciphertexts):
            if not pk.is_valid(c):
                raise CryptoError(f"aggregate ciphertext #{i} is not in Z*_(n^2)")
        plain = decrypt_parallel(self._sk, agg.ciphertexts, self.workers)
        mean = Packer(spec).decode_sum(plain, agg.length, W)
        return DecryptedAggregate(mean, W, count, agg.clipped)
