"""Paillier homomorphic secure aggregation (papers.md section 6) on gmpy2.

* :mod:`~fedloom.crypto.paillier` -- keys, encryption (g = n + 1), CRT decryption, homomorphic add / scalar
  multiply, fixed-size (2|n|-bit) serialization;
* :mod:`~fedloom.crypto.randomness` -- where r^n comes from: fresh (default), precomputed pool, DJN short
  exponent (opt-in);
* :mod:`~fedloom.crypto.parallel` -- multi-core encryption with worker processes;
* :mod:`~fedloom.crypto.packing` -- BatchCrypt-style clip / quantize / pack with headroom, and its error bound;
* :mod:`~fedloom.crypto.protocol` -- Client, Aggregator (no secret key), KeyAuthority, and the threat model;
* :mod:`~fedloom.crypto.secagg` -- the round loop's secure-aggregation branch (FedAvg under encryption).

This package imports neither torch nor the rest of fedloom except :mod:`fedloom.crypto.secagg`, so worker
processes start quickly.
"""

from fedloom.crypto.packing import Packer, PackingSpec
from fedloom.crypto.paillier import CryptoError, InvalidCiphertext, PrivateKey, PublicKey, generate_keypair
from fedloom.crypto.parallel import ParallelEncryptor
from fedloom.crypto.protocol import Aggregator, BadMessage, Client, EncryptedSum, KeyAuthority
from fedloom.crypto.randomness import (
                                       DJNRandomness,
                                       FreshRandomness,
                                       PrecomputedPool,
                                       RandomnessSpec,
                                       build_randomness,
                                       encrypt_many,
)

__all__ = [
    "Aggregator", "BadMessage", "Client", "CryptoError", "DJNRandomness", "EncryptedSum", "FreshRandomness",
    "InvalidCiphertext", "KeyAuthority", "Packer", "PackingSpec", "ParallelEncryptor", "PrecomputedPool",
    "PrivateKey", "PublicKey", "RandomnessSpec", "build_randomness", "encrypt_many", "generate_keypair",
]
