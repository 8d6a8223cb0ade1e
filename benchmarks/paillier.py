"""Paillier secure aggregation: packed fedloom vs python-paillier (phe), against this machine's powmod limit.

Part 1 (``--part micro``, the issue's workload): 100,000 float32-range values x 10 clients, 2048-bit key.
For each randomness strategy (fresh r^n, DJN fixed-base): per-client pack + encrypt time, server aggregation
time (validate + multiply 10 messages), key-authority decrypt + unpack time, bytes per client, max abs error of
the decoded sum and mean against float64 sums of the clipped inputs. In the same run:

* **phe** (python-paillier with gmpy2), the usual one-float-per-ciphertext encryption, timed on a subset and
  scaled to 100,000 floats;
* **the limit**: the measured rate of r^n mod n^2 (gmpy2.powmod, 2048-bit exponent, 4096-bit modulus) on this
  machine, on 1 process and on ``--workers`` processes at once. Fresh-randomness encryption needs exactly one
  such exponentiation per ciphertext, so (ciphertexts/s) / (powmod/s) is its efficiency.

Part 2 (``--part e2e``): FedAvg on MNIST, plaintext vs secure aggregation, same seed and rounds.

    python benchmarks/paillier.py --part micro            # ~3-5 min on 2 free cores
    python benchmarks/paillier.py --part e2e              # ~5 min
Writes ``benchmarks/results/paillier_<part>.json`` and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import gmpy2
import numpy as np
from gmpy2 import mpz

from fedloom.crypto import (
    Aggregator,
    Client,
    KeyAuthority,
    PackingSpec,
    ParallelEncryptor,
    RandomnessSpec,
    build_randomness,
    generate_keypair,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _powmod_loop(n: int, count: int, clock=time.perf_counter) -> float:
    n, n2 = mpz(n), mpz(n) * mpz(n)
    rs = [mpz(secrets.randbelow(int(n))) for _ in range(count)]
    t = clock()
    for r in rs:
        gmpy2.powmod(r, n, n2)
    return clock() - t


def powmod_cpu_rate(n: int, count: int) -> float:
    """r^n mod n^2 per second of this process's CPU time (robust to other load on a shared machine)."""
    return count / _powmod_loop(n, count, time.process_time)


def powmod_rate(n: int, count: int, workers: int) -> float:
    """r^n mod n^2 per second: one process, or ``workers`` processes each doing ``count`` at once."""
    if workers == 1:
        return count / _powmod_loop(n, count)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        list(ex.map(_powmod_loop, [n] * workers, [2] * workers))  # start the processes
        t = time.perf_counter()
        list(ex.map(_powmod_loop, [n] * workers, [count] * workers))
        return workers * count / (time.perf_counter() - t)


def phe_encrypt_rate(n: int, xs: np.ndarray) -> tuple[float, int]:
    """phe floats/s (one EncryptedNumber per float) and its bytes per ciphertext."""
    import phe

    pub = phe.PaillierPublicKey(int(n))
    t = time.process_time()  # CPU time: phe is single-threaded
    enc = [pub.encrypt(float(x)) for x in xs]
    dt = time.process_time() - t
    nbytes = 2 * ((int(n).bit_length() + 7) // 8)
    assert all(e.ciphertext(be_secure=False) < pub.nsquare for e in enc)
    return len(xs) / dt, nbytes


def paired(pk, work, units: int, block: int) -> tuple[float, float]:
    """CPU seconds of ``work(i, j)`` (units i..j) and of one r^n mod n^2 per unit, interleaved block by block so
    that both see the same machine load; returns (work CPU-s, limit CPU-s)."""
    n, n2 = pk.n, pk.n2
    t_work = t_lim = 0.0
    for b, i in enumerate(range(0, units, block)):
        j = min(units, i + block)
        rs = [mpz(secrets.randbelow(int(n))) for _ in range(j - i)]
        for side in ((0, 1) if b % 2 == 0 else (1, 0)):  # alternate which goes first
            t = time.process_time()
            if side == 0:
                work(i, j)
                t_work += time.process_time() - t
            else:
                for r in rs:
                    gmpy2.powmod(r, n, n2)
                t_lim += time.process_time() - t
    return t_work, t_lim


def paired_efficiency(pk, spec, x: np.ndarray, phe_subset: int, ct_subset: int) -> dict:
    """Single-process efficiency against the limit, measured in interleaved blocks (robust to shared-machine
    drift): fedloom fresh encryption (+ its share of packing) and phe's per-float encryption."""
    import phe

    from fedloom.crypto.packing import Packer
    from fedloom.crypto.randomness import FreshRandomness, encrypt_many

    t = time.process_time()
    packed = Packer(spec).encode(x)
    pack_cpu = time.process_time() - t
    ms = packed.plaintexts[:ct_subset]
    fresh = FreshRandomness(pk)
    enc_cpu, lim_cpu = paired(pk, lambda i, j: encrypt_many(pk, ms[i:j], fresh), len(ms), 5)
    enc_cpu += pack_cpu * len(ms) / len(packed.plaintexts)
    pub = phe.PaillierPublicKey(int(pk.n))
    xs = [float(v) for v in x[:phe_subset]]
    phe_cpu, phe_lim = paired(pk, lambda i, j: [pub.encrypt(v) for v in xs[i:j]], len(xs), 5)
    eff, eff_phe = lim_cpu / enc_cpu, phe_lim / phe_cpu
    floats_per_ct = x.size / len(packed.plaintexts)
    return {"ciphertexts": len(ms), "pack_cpu_s_per_client": pack_cpu, "fresh_fraction_of_limit": eff,
            "phe_fraction_of_limit": eff_phe, "floats_per_ciphertext": floats_per_ct,
            "speedup_vs_phe_per_core": floats_per_ct * eff / eff_phe}


def micro(args) -> dict:
    t = time.perf_counter()
    pk, sk = generate_keypair(args.key_bits)
    keygen_s = time.perf_counter() - t
    authority = KeyAuthority(private_key=sk, workers=args.workers)
    spec = PackingSpec.for_contributors(args.key_bits, args.clients, value_bits=args.value_bits, clip=args.clip)
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, args.sigma, args.values).astype(np.float32).astype(np.float64) for _ in range(args.clients)]
    clipped_true = [np.clip(x, -args.clip, args.clip) for x in xs]
    true_sum = np.sum(clipped_true, axis=0)
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                 "key_bits": args.key_bits, "values": args.values, "clients": args.clients, "workers": args.workers,
                 "spec": spec.to_dict() | {"slots": spec.slots, "slot_bits": spec.slot_bits,
                                           "ciphertexts": spec.num_plaintexts(args.values),
                                           "error_bound_mean": spec.error_bound},
                 "keygen_s": keygen_s}
    print(f"keygen {args.key_bits} bits: {keygen_s:.2f}s; {spec.slots} slots of {spec.slot_bits} bits, "
          f"{spec.num_plaintexts(args.values)} ciphertexts per client", flush=True)

    out["powmod_per_cpu_s"] = powmod_cpu_rate(pk.n, args.powmod_count)
    out["powmod_per_s_1proc"] = powmod_rate(pk.n, args.powmod_count, 1)
    out[f"powmod_per_s_{args.workers}proc"] = powmod_rate(pk.n, args.powmod_count, args.workers)
    print(f"limit: {out['powmod_per_s_1proc']:.1f} powmod/s on 1 process, "
          f"{out[f'powmod_per_s_{args.workers}proc']:.1f}/s on {args.workers}", flush=True)

    phe_rate, phe_ct_bytes = phe_encrypt_rate(pk.n, xs[0][: args.phe_subset])
    out["phe"] = {"subset": args.phe_subset, "floats_per_s": phe_rate,
                  "encrypt_s_per_client_scaled": args.values / phe_rate,
                  "bytes_per_client_scaled": args.values * phe_ct_bytes}
    print(f"phe: {phe_rate:.1f} floats/CPU-s -> {args.values / phe_rate:.0f} CPU-s per client (scaled)", flush=True)

    out["paired_1proc"] = paired_efficiency(pk, spec, xs[0], args.phe_subset, args.paired_ciphertexts)
    print(f"paired, 1 process: {out['paired_1proc']}", flush=True)

    for strat in args.strategies:
        rspec = RandomnessSpec("djn", {"method": "table"}) if strat == "djn" else RandomnessSpec(strat)
        rnd = build_randomness(pk, rspec)
        res: dict = {}
        with ParallelEncryptor(pk, rnd, args.workers) as enc:
            enc.warm_up()
            msgs, times = {}, []
            for k in range(args.clients):
                t = time.perf_counter()
                msgs[k] = Client(k, pk, spec, rnd, enc).encrypt(xs[k])
                times.append(time.perf_counter() - t)
                print(f"  {strat}: client {k} encrypted in {times[-1]:.2f}s", flush=True)
        # one client on a single process, for the 1-core efficiency
        t, tc = time.perf_counter(), time.process_time()
        Client(99, pk, spec, rnd).encrypt(xs[0])
        single, single_cpu = time.perf_counter() - t, time.process_time() - tc
        agg = Aggregator(pk, spec, args.values)
        t = time.perf_counter()
        enc_sum, rejected = agg.aggregate(msgs)
        add_s = time.perf_counter() - t
        assert not rejected, rejected
        t = time.perf_counter()
        dec = authority.decrypt_sum(enc_sum, spec)
        dec_s = time.perf_counter() - t
        n_ct = spec.num_plaintexts(args.values)
        enc_s = statistics.median(times)
        # the limit again, right after this strategy ran (the machine is shared: rates drift)
        lim_w = (out[f"powmod_per_s_{args.workers}proc"] + powmod_rate(pk.n, args.powmod_count, args.workers)) / 2
        lim_1 = (out["powmod_per_s_1proc"] + powmod_rate(pk.n, args.powmod_count, 1)) / 2
        lim_cpu = (out["powmod_per_cpu_s"] + powmod_cpu_rate(pk.n, args.powmod_count)) / 2
        res.update(limit_powmod_per_s_1proc=lim_1, limit_powmod_per_s=lim_w, limit_powmod_per_cpu_s=lim_cpu,
                   encrypt_cpu_s_1proc=single_cpu, ciphertexts_per_cpu_s=n_ct / single_cpu,
                   fraction_of_limit_cpu=(n_ct / single_cpu) / lim_cpu,
                   speedup_vs_phe_cpu=(args.values / single_cpu) / phe_rate)
        res.update(
            encrypt_s_per_client_median=enc_s, encrypt_s_per_client_all=times, encrypt_s_1proc=single,
            floats_per_s=args.values / enc_s, ciphertexts_per_s=n_ct / enc_s, ciphertexts_per_s_1proc=n_ct / single,
            server_aggregate_s=add_s, decrypt_unpack_s=dec_s, bytes_per_client=len(msgs[0]),
            max_abs_err_mean=float(np.abs(dec.mean - true_sum / args.clients).max()),
            max_abs_err_sum=float(np.abs(dec.mean * args.clients - true_sum).max()),
            clipped=dec.clipped,
            speedup_vs_phe=(args.values / enc_s) / phe_rate,
            speedup_vs_phe_1proc=(args.values / single) / phe_rate,
            fraction_of_limit=(n_ct / enc_s) / lim_w,
            fraction_of_limit_1proc=(n_ct / single) / lim_1,
        )
        out[strat] = res
        print(f"{strat}: {json.dumps({k: v for k, v in res.items() if k != 'encrypt_s_per_client_all'})}", flush=True)
    return out


def e2e(args) -> dict:
    from fedloom.config import validate_config
    from fedloom.simulation import Simulation

    raw = {"name": "paillier-e2e", "seed": 0, "rounds": args.rounds, "cohort_size": 10, "progress": False,
           "engine": "vectorized", "eval_every": args.rounds,
           "data": {"dataset": "mnist", "partition": "iid", "num_clients": 100},
           "model": {"name": "mlp", "hidden": [args.hidden]}, "algorithm": "fedavg",
           "client": {"lr": 0.1, "epochs": 1, "batch_size": 10}}
    sec = {"key_bits": args.key_bits, "value_bits": args.value_bits, "clip": args.clip, "randomness": args.e2e_randomness,
           "workers": args.workers}
    out = {"config": raw, "secure_aggregation": sec}
    for name, kw in (("plaintext", {}), ("paillier", {"secure_aggregation": sec})):
        t = time.perf_counter()
        sim = Simulation(validate_config(raw), **kw)
        recs = sim.run()
        if sim.built.secagg is not None:
            sim.built.secagg.close()
        out[name] = {"test_accuracy": recs[-1]["test_accuracy"], "seconds": time.perf_counter() - t,
                     "bytes_up_per_round": recs[-1]["bytes_up"],
                     "clipped_total": sum(r.get("secagg_clipped", 0) for r in recs)}
        print(name, out[name], flush=True)
    out["accuracy_gap_points"] = 100 * (out["paillier"]["test_accuracy"] - out["plaintext"]["test_accuracy"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["micro", "e2e"], default="micro")
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--values", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--value-bits", type=int, default=16)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=0.1, help="std of the synthetic update values")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--strategies", nargs="+", default=["fresh", "djn"], choices=["fresh", "pool", "djn"])
    ap.add_argument("--phe-subset", type=int, default=200)
    ap.add_argument("--powmod-count", type=int, default=150)
    ap.add_argument("--paired-ciphertexts", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--e2e-randomness", default="djn", choices=["fresh", "pool", "djn"])
    args = ap.parse_args()
    res = micro(args) if args.part == "micro" else e2e(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"paillier_{args.part}.json"
    path.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
