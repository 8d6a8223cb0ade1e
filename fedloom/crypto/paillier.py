"""The Paillier cryptosystem (Paillier, EUROCRYPT'99) on gmpy2.

* key generation: n = p*q with p, q random primes of exactly |n|/2 bits each (top two bits set, so n has
  exactly |n| bits), p != q, |p - q| large, gcd(n, (p-1)(q-1)) = 1;
* encryption with g = n + 1, so g^m = 1 + m*n (mod n^2) and Enc(m; r) = (1 + m*n) * r^n mod n^2
  (papers.md section 6; python-paillier's ``raw_encrypt``). The r^n factor comes from a randomness
  strategy (:mod:`fedloom.crypto.randomness`); the default draws a fresh r for every ciphertext;
* decryption with the Chinese remainder theorem (as python-paillier): m_p = L_p(c^(p-1) mod p^2) * h_p mod p,
  with L_p(x) = (x - 1) / p and h_p = L_p(g^(p-1) mod p^2)^-1 mod p, same for q, then CRT. Exponents that
  are secret (p - 1, q - 1) go through ``gmpy2.powmod_sec`` (constant-time in the exponent);
* homomorphic addition Enc(a) * Enc(b) = Enc(a + b mod n) and plaintext-scalar multiplication
  Enc(a)^k = Enc(k * a mod n);
* fixed-size serialization: every ciphertext is 2|n| bits (big-endian, zero-padded), so a message's length
  reveals only how many ciphertexts it holds.

Plaintexts are integers in [0, n). Example::

    >>> pk, sk = generate_keypair(1024)
    >>> c = pk.add(pk.encrypt(20), pk.mul_scalar(pk.encrypt(11), 2))
    >>> int(sk.decrypt(c))
    42
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

log = logging.getLogger("fedloom.crypto")

MIN_KEY_BITS = 512  # only for tests; anything below 2048 bits logs a warning
_MR_ROUNDS = 40  # extra Miller-Rabin rounds on top of GMP's next_prime


class CryptoError(ValueError):
    """An invalid key, ciphertext, plaintext or message."""


class InvalidCiphertext(CryptoError):
    """A ciphertext that is not an element of Z*_{n^2} for the expected key, or has the wrong encoding."""


def _random_below(n: mpz) -> mpz:
    return mpz(secrets.randbelow(int(n)))


def random_unit(n: mpz) -> mpz:
    """A uniformly random element of Z*_n (from the OS CSPRNG, never from a seeded generator)."""
    while True:
        r = _random_below(n)
        if r > 0 and gmpy2.gcd(r, n) == 1:
            return r


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A Paillier public key (n; g = n + 1). Holds nothing secret."""

    n: mpz
    n2: mpz = field(init=False, repr=False)
    n_bits: int = field(init=False)
    ciphertext_bytes: int = field(init=False, repr=False)

    def __post_init__(self):
        n = mpz(self.n)
        if n < 15 or n % 2 == 0:
            raise CryptoError("a Paillier modulus must be an odd composite >= 15")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "n2", n * n)
        object.__setattr__(self, "n_bits", int(n.bit_length()))
        object.__setattr__(self, "ciphertext_bytes", 2 * ((int(n.bit_length()) + 7) // 8))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(int(self.n))

    # -- identity / serialization -----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """A short identifier of this key (SHA-256 of n), carried by every encrypted message."""
        nb = (self.n_bits + 7) // 8
        return hashlib.sha256(b"fedloom-paillier-v1:" + int(self.n).to_bytes(nb, "big")).hexdigest()[:32]

    def to_bytes(self) -> bytes:
        return int(self.n).to_bytes((self.n_bits + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        return cls(mpz(int.from_bytes(data, "big")))

    # -- encryption --------------------------------------------------------------------------------
    def raw_encrypt(self, m: int, rn: int) -> mpz:
        """(1 + m*n) * rn mod n^2, where ``rn`` = r^n mod n^2 (or a DJN-style equivalent) supplied by the caller."""
        return ((1 + mpz(m) * self.n) * rn) % self.n2

    def check_plaintext(self, m: int) -> mpz:
        m = mpz(m)
        if not 0 <= m < self.n:
            raise CryptoError(f"plaintext must be in [0, n); got a {int(m).bit_length()}-bit value for a {self.n_bits}-bit n")
        return m

    def obfuscator(self) -> mpz:
        """A fresh r^n mod n^2 with r uniform in Z*_n (one full modular exponentiation)."""
        return gmpy2.powmod(random_unit(self.n), self.n, self.n2)

    def encrypt(self, m: int, rn: int | None = None) -> mpz:
        """Enc(m) with a fresh random r (or the given r^n mod n^2)."""
        m = self.check_plaintext(m)
        return self.raw_encrypt(m, self.obfuscator() if rn is None else rn)

    # -- homomorphic operations (public) ---------------------------------------------------------
    def add(self, c1: int, c2: int) -> mpz:
        """Enc(a) * Enc(b) = Enc(a + b mod n)."""
        return (mpz(c1) * mpz(c2)) % self.n2

    def add_plain(self, c: int, m: int) -> mpz:
        """Enc(a) * g^m = Enc(a + m mod n) (deterministic: re-randomize before sending if that matters)."""
        return (mpz(c) * (1 + (mpz(m) % self.n) * self.n)) % self.n2

    def mul_scalar(self, c: int, k: int) -> mpz:
        """Enc(a)^k = Enc(k*a mod n); ``k`` is public (negative k means multiplication by n + k)."""
        return gmpy2.powmod(mpz(c), mpz(k) % self.n, self.n2)

    def rerandomize(self, c: int) -> mpz:
        return (mpz(c) * self.obfuscator()) % self.n2

    def sum(self, cs: Iterable[int]) -> mpz:
        acc = mpz(1)  # Enc(0; r=1)
        for c in cs:
            acc = (acc * c) % self.n2
        return acc

    # -- validation / serialization of ciphertexts -------------------------------------------------
    def is_valid(self, c: int) -> bool:
        """Whether ``c`` is an element of Z*_{n^2} (every such element is the encryption of some m)."""
        c = mpz(c)
        return 0 < c < self.n2 and gmpy2.gcd(c, self.n) == 1

    def check_ciphertext(self, c: int) -> mpz:
        c = mpz(c)
        if not 0 < c < self.n2:
            raise InvalidCiphertext("ciphertext outside [1, n^2)")
        if gmpy2.gcd(c, self.n) != 1:
            raise InvalidCiphertext("ciphertext shares a factor with n (not in Z*_{n^2})")
        return c

    def serialize(self, cs: Sequence[int]) -> bytes:
        """Ciphertexts as concatenated fixed-size big-endian blocks of ``ciphertext_bytes`` (2|n| bits) each."""
        L = self.ciphertext_bytes
        return b"".join(int(c).to_bytes(L, "big") for c in cs)

    def deserialize(self, data: bytes, count: int | None = None, *, validate: bool = True) -> list[mpz]:
        """Inverse of :meth:`serialize`; checks the length (and ``count``) and, by default, that each block is
        in Z*_{n^2}. Raises :class:`InvalidCiphertext` naming the first bad block."""
        L = self.ciphertext_bytes
        if len(data) % L:
            raise InvalidCiphertext(f"ciphertext block of {len(data)} bytes is not a multiple of {L} bytes "
                                    f"(one {self.n_bits}-bit-key ciphertext)")
        k = len(data) // L
        if count is not None and k != count:
            raise InvalidCiphertext(f"expected {count} ciphertexts of {L} bytes, got {k}")
        mv = memoryview(data)
        out = [mpz(int.from_bytes(mv[i * L : (i + 1) * L], "big")) for i in range(k)]
        if validate:
            n, n2 = self.n, self.n2
            for i, c in enumerate(out):
                if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
                    raise InvalidCiphertext(f"ciphertext #{i} is not in Z*_(n^2)")
        return out


@dataclass(frozen=True, eq=False, repr=False)
class PrivateKey:
    """A Paillier private key: the factors of n and the CRT constants for decryption."""

    public_key: PublicKey
    p: mpz
    q: mpz

    def __post_init__(self):
        p, q = mpz(self.p), mpz(self.q)
        if p > q:
            p, q = q, p
        if p == q:
            raise CryptoError("p == q")
        if p * q != self.public_key.n:
            raise CryptoError("p * q != n")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        pp, qq = p * p, q * q
        g = self.public_key.n + 1
        object.__setattr__(self, "_pp", pp)
        object.__setattr__(self, "_qq", qq)
        object.__setattr__(self, "_hp", gmpy2.invert((gmpy2.powmod_sec(g, p - 1, pp) - 1) // p, p))
        object.__setattr__(self, "_hq", gmpy2.invert((gmpy2.powmod_sec(g, q - 1, qq) - 1) // q, q))
        object.__setattr__(self, "_p_inv_q", gmpy2.invert(p, q))

    def __repr__(self) -> str:  # never print the factors
        return f"PrivateKey(<{self.public_key.n_bits}-bit, fingerprint {self.public_key.fingerprint}>)"

    @classmethod
    def from_primes(cls, p: int, q: int) -> PrivateKey:
        return cls(PublicKey(mpz(p) * mpz(q)), mpz(p), mpz(q))

    def decrypt(self, c: int, *, validate: bool = True) -> mpz:
        """m = CRT(L_p(c^(p-1) mod p^2) h_p mod p, L_q(c^(q-1) mod q^2) h_q mod q)."""
        c = self.public_key.check_ciphertext(c) if validate else mpz(c)
        p, q = self.p, self.q
        mp = ((gmpy2.powmod_sec(c % self._pp, p - 1, self._pp) - 1) // p) * self._hp % p
        mq = ((gmpy2.powmod_sec(c % self._qq, q - 1, self._qq) - 1) // q) * self._hq % q
        return mp + p * (((mq - mp) * self._p_inv_q) % q)

    def decrypt_many(self, cs: Iterable[int], *, validate: bool = True) -> list[mpz]:
        return [self.decrypt(c, validate=validate) for c in cs]


def _random_prime(bits: int) -> mpz:
    """A random prime of exactly ``bits`` bits whose top two bits are set (so a product of two has 2*bits bits)."""
    while True:
        start = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 1
        p = gmpy2.next_prime(start)
        if p.bit_length() == bits and gmpy2.is_prime(p, _MR_ROUNDS):
            return p


def check_key(p: int, q: int, n_bits: int | None = None) -> None:
    """The checks key generation applies (raises :class:`CryptoError`): p, q probable primes of equal length,
    p != q, |p - q| >= 2^(|p| - 100) (no Fermat factoring), gcd(n, (p-1)(q-1)) = 1, n of ``n_bits`` bits."""
    p, q = mpz(p), mpz(q)
    if p == q:
        raise CryptoError("p == q")
    if p.bit_length() != q.bit_length():
        raise CryptoError(f"primes of unequal length: {p.bit_length()} and {q.bit_length()} bits")
    if not (gmpy2.is_prime(p, _MR_ROUNDS) and gmpy2.is_prime(q, _MR_ROUNDS)):
        raise CryptoError("p or q is not prime")
    if abs(p - q).bit_length() <= p.bit_length() - 100:
        raise CryptoError("|p - q| too small (n would be open to Fermat factoring)")
    n = p * q
    if gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
        raise CryptoError("gcd(n, (p-1)(q-1)) != 1")
    if n_bits is not None and n.bit_length() != n_bits:
        raise CryptoError(f"n has {n.bit_length()} bits, wanted {n_bits}")


def generate_keypair(n_bits: int = 2048) -> tuple[PublicKey, PrivateKey]:
    """A fresh key pair with an ``n_bits``-bit modulus (2048 or 3072 for real use; >= 512 for tests).

    Primes come from the OS CSPRNG (``secrets``) via ``gmpy2.next_prime`` plus 40 Miller-Rabin rounds, and must
    pass :func:`check_key`.
    """
    if n_bits < MIN_KEY_BITS or n_bits % 2:
        raise CryptoError(f"n_bits must be an even number >= {MIN_KEY_BITS}, got {n_bits}")
    if n_bits < 2048:
        log.warning("generating a %d-bit Paillier key: below 2048 bits, for tests only", n_bits)
    half = n_bits // 2
    while True:
        p, q = _random_prime(half), _random_prime(half)
        try:
            check_key(p, q, n_bits)
        except CryptoError:
            continue
        pk = PublicKey(p * q)
        return pk, PrivateKey(pk, p, q)
