"""Where the r^n factor of a Paillier ciphertext comes from: three strategies behind one interface.

Enc(m) = (1 + m*n) * R mod n^2 and all the cost is in R. A strategy hands out R values, each used once:

* :class:`FreshRandomness` (default, ``"fresh"``): R = r^n mod n^2 for a fresh uniform r in Z*_n -- one full
  |n|-bit-exponent modular exponentiation mod n^2 per ciphertext. This is the textbook scheme and *the cost
  limit* the benchmark compares against.
* :class:`PrecomputedPool` (``"pool"``): the same fresh values, computed ahead of time (``fill``: between rounds,
  while the model trains, or in worker processes) and popped one by one, so encryption on the critical path
  is one multiplication. A value is never handed out twice; when the pool runs dry it computes fresh values
  (or raises :class:`PoolExhausted` with ``on_empty="error"``).
* :class:`DJNRandomness` (``"djn"``, opt-in): Damgard, Jurik and Nielsen's short-exponent variant
  (DJN 2010, "A generalization of Paillier's public-key system with applications to electronic voting",
  Int. J. Inf. Secur. 9(6), sec. 4): fix h = -x^2 mod n for a random x in Z*_n and h_s = h^n mod n^2, then
  R = h_s^a mod n^2 with a uniform in [1, 2^ceil(|n|/2)]. **Assumption:** security no longer rests on DCR
  alone; it also needs that h^a for such a short random a is indistinguishable from a uniform element of the
  subgroup <h> of Z*_n (the "small exponent" assumption of DJN; the same trick is used by HEU and other
  industrial Paillier libraries). Two ways to compute h_s^a:
  ``method="table"`` (default: the fixed-base windowed table of DJN's speed-up, ceil(|a|/w) multiplications
  mod n^2, about 10x faster than a fresh r^n at 2048 bits; its look-ups are indexed by the secret a, so it is
  **not** constant-time: a co-located cache-timing attacker on the client could learn a, hence the
  randomness, hence m -- opt in only where that is outside the threat model) or ``method="powmod_sec"``
  (constant-time in a via ``gmpy2.powmod_sec``; measured no faster than a fresh r^n with gmpy2, because
  ``powmod_sec`` is slower than ``powmod``).

All randomness comes from the OS CSPRNG (``secrets``), never from the run seed: ciphertexts differ from run to
run, but decryptions -- and so every trained model -- do not.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

import gmpy2
from gmpy2 import mpz

from fedloom.crypto.paillier import CryptoError, PublicKey, random_unit


class PoolExhausted(CryptoError):
    """A :class:`PrecomputedPool` with ``on_empty="error"`` ran out of precomputed values."""


class Randomness(Protocol):
    """Hands out obfuscators R (r^n mod n^2 or equivalent), each to be used for exactly one ciphertext."""

    name: str
    public_key: PublicKey

    def obfuscators(self, count: int) -> list[mpz]: ...

    def spec(self) -> RandomnessSpec: ...


@dataclass(frozen=True)
class RandomnessSpec:
    """A picklable description of a strategy, to rebuild it in a worker process (see :func:`build_randomness`)."""

    name: str = "fresh"
    params: dict[str, Any] = field(default_factory=dict)


class FreshRandomness:
    """R = r^n mod n^2, r uniform in Z*_n, one full exponentiation per ciphertext (the default)."""

    name = "fresh"

    def __init__(self, public_key: PublicKey):
        self.public_key = public_key

    def obfuscators(self, count: int) -> list[mpz]:
        n, n2 = self.public_key.n, self.public_key.n2
        return [gmpy2.powmod(random_unit(n), n, n2) for _ in range(count)]

    def spec(self) -> RandomnessSpec:
        return RandomnessSpec("fresh")


class PrecomputedPool:
    """Fresh r^n values computed ahead of time by :meth:`fill`; :meth:`obfuscators` pops them (never reused)."""

    name = "pool"

    def __init__(self, public_key: PublicKey, size: int = 0, *, on_empty: str = "fresh"):
        if on_empty not in ("fresh", "error"):
            raise ValueError(f"on_empty must be 'fresh' or 'error', got {on_empty!r}")
        self.public_key = public_key
        self.on_empty = on_empty
        self._fresh = FreshRandomness(public_key)
        self._values: list[mpz] = []
        self.computed_on_demand = 0  # how many values the critical path had to compute itself
        if size:
            self.fill(size)

    def __len__(self) -> int:
        return len(self._values)

    def fill(self, count: int, values: list[mpz] | None = None) -> None:
        """Add ``count`` fresh values (or the given precomputed ``values``, e.g. from worker processes)."""
        self._values.extend(values if values is not None else self._fresh.obfuscators(count))

    def obfuscators(self, count: int) -> list[mpz]:
        take = min(count, len(self._values))
        if take < count and self.on_empty == "error":
            raise PoolExhausted(f"pool holds {len(self._values)} precomputed values, {count} needed")
        out = self._values[len(self._values) - take :]
        del self._values[len(self._values) - take :]  # popped: a value is never handed out twice
        if take < count:
            self.computed_on_demand += count - take
            out += self._fresh.obfuscators(count - take)
        return out

    def spec(self) -> RandomnessSpec:
        # A worker process cannot share this pool's values; it computes fresh ones (same distribution).
        return RandomnessSpec("fresh")


class DJNRandomness:
    """R = h_s^a mod n^2, h_s = (-x^2)^n mod n^2 fixed, a uniform with ceil(|n|/2) bits (DJN 2010; opt-in).

    ``hs`` may be published by the key authority; by default the strategy draws its own x.
    """

    name = "djn"

    def __init__(self, public_key: PublicKey, hs: int | None = None, *, method: str = "table",
                 exponent_bits: int | None = None, window: int = 8):
        if method not in ("powmod_sec", "table"):
            raise ValueError(f"method must be 'powmod_sec' or 'table', got {method!r}")
        self.public_key = public_key
        n2 = public_key.n2
        self.hs = mpz(hs) if hs is not None else self.generate_base(public_key)
        if not public_key.is_valid(self.hs):
            raise CryptoError("DJN base h_s is not in Z*_(n^2)")
        self.method = method
        self.exponent_bits = exponent_bits or (public_key.n_bits + 1) // 2
        self.window = window
        self._table: list[list[mpz]] | None = None
        if method == "table":
            rows = -(-(self.exponent_bits + 1) // window)  # exponents up to 2^bits inclusive
            table, base = [], self.hs
            for _ in range(rows):
                row = [mpz(1), base]
                for _ in range(2, 1 << window):
                    row.append((row[-1] * base) % n2)
                table.append(row)
                base = (row[-1] * base) % n2  # base^(2^w)
            self._table = table

    @staticmethod
    def generate_base(public_key: PublicKey) -> mpz:
        """h_s = h^n mod n^2 with h = -x^2 mod n, x uniform in Z*_n."""
        n = public_key.n
        x = random_unit(n)
        h = (-(x * x)) % n
        return gmpy2.powmod(h, n, public_key.n2)

    def power(self, a: int) -> mpz:
        """h_s^a mod n^2 by this strategy's method (``a`` >= 1)."""
        n2 = self.public_key.n2
        if self._table is None:
            return gmpy2.powmod_sec(self.hs, mpz(a), n2)
        w, mask, table = self.window, (1 << self.window) - 1, self._table
        if a >> (w * len(table)):
            raise ValueError("exponent longer than the precomputed table")
        acc, i = mpz(1), 0
        while a:
            d = a & mask
            if d:
                acc = (acc * table[i][d]) % n2
            a >>= w
            i += 1
        return acc

    def obfuscators(self, count: int) -> list[mpz]:
        # a + 1 is uniform in [1, 2^bits] (powmod_sec needs a positive exponent; same entropy as a)
        bits = self.exponent_bits
        return [self.power(secrets.randbits(bits) + 1) for _ in range(count)]

    def spec(self) -> RandomnessSpec:
        return RandomnessSpec("djn", {"hs": int(self.hs), "method": self.method,
                                      "exponent_bits": self.exponent_bits, "window": self.window})


STRATEGIES = {"fresh": FreshRandomness, "pool": PrecomputedPool, "djn": DJNRandomness}


def build_randomness(public_key: PublicKey, spec: RandomnessSpec | str = "fresh") -> Randomness:
    """A strategy from its name or :class:`RandomnessSpec` (``fresh``, ``pool``, ``djn``)."""
    if isinstance(spec, str):
        spec = RandomnessSpec(spec)
    if spec.name not in STRATEGIES:
        raise ValueError(f"unknown randomness strategy {spec.name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[spec.name](public_key, **spec.params)


def encrypt_many(public_key: PublicKey, plaintexts: list[int], randomness: Randomness | None = None) -> list[mpz]:
    """Encrypt each plaintext (in [0, n)) with one obfuscator from ``randomness`` (default: fresh)."""
    rnd = randomness or FreshRandomness(public_key)
    if rnd.public_key != public_key:
        raise CryptoError("randomness strategy belongs to a different public key")
    ms = [public_key.check_plaintext(m) for m in plaintexts]
    return [public_key.raw_encrypt(m, r) for m, r in zip(ms, rnd.obfuscators(len(ms)))]
