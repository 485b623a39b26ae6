"""Batch GCD at fleet scale: time and peak memory, the incremental path, and naive pairwise gcd.

Run: ``.venv/bin/python benchmarks/bench_batch_gcd.py [SIZE ...] [--workers N ...] [--engine SIZE ...]``
(default sizes 10000 100000, none when ``--engine`` is given alone; add 1000000 for the
million-key run, ~20-30 min and several GB). The engine's figures alone:
``bench_batch_gcd.py --engine 10000 50000 --naive 0``.

Every size runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own; with worker
processes the largest worker's peak is printed too (the parent's and workers' peaks add up at
worst). Each run prints the load average before and after: the figures are only comparable
under similar load.

The fleet: real RSA-2048 moduli cost ~60 ms of prime generation each here (1M keys: ~17 hours),
so the bulk of the fleet is filler: each modulus the product of 32 distinct consecutive 64-bit
primes just below 2^64, exactly 2048 bits, pairwise coprime by construction. GMP's multiply and
divide cost depends only on operand sizes, so batch GCD costs the same on these as on real
moduli. Planted among them, built from random 1024-bit primes: 10 pairs sharing a prime, 3
triples sharing one, 2 keys appearing twice. The run checks the scan reports exactly those.

Incremental: 1,000 new moduli (one sharing a prime with a planted pair, one repeating a filler)
checked against the stored product with :meth:`FleetState.add`, plus saving and loading the state.
Naive: all-pairs gcd on the first ``--naive`` moduli, stopped at ``--naive-budget`` seconds and
extrapolated from the pairs done (said so when it is).

Engine (``--engine SIZE ...``): the audit engine's fleet comparison (:func:`.compare_fleet`, what
``Audit._fleet_scan`` calls) over a real SQLite inventory of SIZE certificates whose stored keys
are the same synthetic moduli as RSA-2048 SubjectPublicKeyInfo DER, with the state in the
store's sidecar: the first audit (full), the second audit of the unchanged fleet (incremental)
against a full recomputation, then 1,000 certificates added and 1,000 gone, each incremental
against full. Listing and the per-key checks are the same either way and not included (see
``bench_scan.py`` for those). Every pair of runs must report the same findings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gmpy2
from gmpy2 import mpz
from process_memory import peak_rss_mib, rss_mib

from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.factoring.fleet_audit import FleetComparison, compare_fleet
from devicedefender_audit.factoring.fleet_state import FleetState
from devicedefender_audit.factoring.sharing import FleetFinding, Key
from devicedefender_audit.factoring.trees import MIN_MODULI_PER_WORKER
from devicedefender_audit.store.base import Description
from devicedefender_audit.store.sqlite import FLEET_STATE_SUFFIX, SqliteStore

FILLER_START = mpz(2) ** 64 - mpz(2) ** 58
FILLER_PRIMES = 32


class Fillers:
    """Pairwise coprime 2048-bit moduli: products of fresh consecutive 64-bit primes."""

    def __init__(self) -> None:
        self.prime = FILLER_START

    def modulus(self) -> mpz:
        factors = []
        for _ in range(FILLER_PRIMES):
            self.prime = gmpy2.next_prime(self.prime)
            factors.append(self.prime)
        while len(factors) > 1:
            factors = [factors[i] * factors[i + 1] for i in range(0, len(factors), 2)]
        return factors[0]


def rsa_prime(state: object) -> mpz:
    return gmpy2.next_prime(gmpy2.mpz_urandomb(state, 1024) | (mpz(3) << 1022))


def planted_keys(state: object) -> tuple[list[Key], dict[str, FleetFinding], dict[str, mpz]]:
    """Weak keys, what the scan must report for each, and their shared primes by group name."""
    keys: list[Key] = []
    groups: list[list[str]] = []
    shared: dict[str, mpz] = {}
    for name, size, count in (("pair", 2, 10), ("triple", 3, 3)):
        for g in range(count):
            p = rsa_prime(state)
            ids = [f"{name}{g}-{chr(97 + i)}" for i in range(size)]
            keys += [(key_id, int(p * rsa_prime(state))) for key_id in ids]
            groups.append(ids)
            shared[f"{name}{g}"] = p
    expected: dict[str, FleetFinding] = {}
    for ids in groups:
        for key_id in ids:
            others = tuple(x for x in ids if x != key_id)
            expected[key_id] = FleetFinding(others, len(others))
    for g in range(2):
        modulus = int(rsa_prime(state) * rsa_prime(state))
        keys += [(f"dup{g}-a", modulus), (f"dup{g}-b", modulus)]
        expected[f"dup{g}-a"] = FleetFinding((), 0, (f"dup{g}-b",), 1)
        expected[f"dup{g}-b"] = FleetFinding((), 0, (f"dup{g}-a",), 1)
    return keys, expected, shared


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run_size(size: int, workers: int, incremental: int) -> None:
    state = gmpy2.random_state(size)
    began = time.perf_counter()
    keys, expected, shared = planted_keys(state)
    fillers = Fillers()
    keys += [(f"f{i}", int(fillers.modulus())) for i in range(size - len(keys))]
    generated = time.perf_counter() - began
    print(f"\n== {size:,} RSA-2048 moduli, {workers} worker process(es); load before {load()}")
    print(f"generated in {generated:.1f} s; RSS holding the fleet: {rss_mib():,.0f} MB")

    began = time.perf_counter()
    fleet, findings = FleetState.build(keys, workers=workers)
    elapsed = time.perf_counter() - began
    verdict = "exactly the planted ones" if findings == expected else "MISMATCH against the planted keys"
    print(f"full batch GCD + findings: {elapsed:,.1f} s ({elapsed / 60:.2f} min); findings: {verdict}")
    workers_peak = f"; largest worker {peak_rss_mib(resource.RUSAGE_CHILDREN):,.0f} MB" if workers > 1 else ""
    print(f"peak RSS: this process {peak_rss_mib():,.0f} MB{workers_peak}")
    if incremental:
        run_incremental(fleet, keys, fillers, shared, incremental, elapsed)
    print(f"load after {load()}")
    if findings != expected:
        sys.exit(1)


def run_incremental(fleet: FleetState, keys: list[Key], fillers: Fillers, shared: dict[str, mpz], count: int,
                    full_seconds: float) -> None:  # fmt: skip
    new = [(f"new{i}", int(fillers.modulus())) for i in range(count - 2)]
    new += [("new-shared", int(shared["pair0"] * rsa_prime(gmpy2.random_state(1)))), ("new-dup", keys[-1][1])]
    began = time.perf_counter()
    changed = fleet.add(new, existing=iter(keys))
    elapsed = time.perf_counter() - began
    want = {"new-shared", "pair0-a", "pair0-b", "new-dup", keys[-1][0]}
    verdict = "as expected" if set(changed) == want else f"UNEXPECTED {sorted(changed)}"
    print(f"incremental: {count:,} new moduli against the stored product: {elapsed:.1f} s "
          f"(full recomputation {full_seconds:,.0f} s); changed findings {verdict}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.product"
        began = time.perf_counter()
        fleet.save(path)
        saved = time.perf_counter() - began
        began = time.perf_counter()
        FleetState.load(path)
        print(f"state file {path.stat().st_size / 2**20:,.0f} MB: save {saved:.1f} s, "
              f"load {time.perf_counter() - began:.1f} s")  # fmt: skip


#: rsaEncryption with NULL parameters, as every RSA SubjectPublicKeyInfo AWS IoT returns has it.
RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
#: The engine's batch and scope (``audit.CHECK_BATCH``, ``inventory.IN_SCOPE_STATUSES``).
ENGINE_BATCH = 500
IN_SCOPE = ("ACTIVE", "PENDING_TRANSFER")


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes(
        (size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_spki(modulus: int, exponent: int = 65537) -> bytes:
    """The SubjectPublicKeyInfo DER of an RSA public key, as the inventory stores it."""
    key = _tlv(0x30, _integer(modulus) + _integer(exponent))
    return _tlv(0x30, RSA_ALGORITHM + _tlv(0x03, b"\0" + key))


def certificate_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def store_keys(store: SqliteStore, keys: list[Key]) -> None:
    """Certificates listed ACTIVE and described, in batches as the inventory sync writes them."""
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        store.record_listing([ListedCertificate(certificate_id(k), f"arn:aws:iot:::cert/{certificate_id(k)}",
                                                "ACTIVE", None) for k, _ in chunk], 1.0)  # fmt: skip
        store.save_descriptions([Description(certificate_id(k), rsa_spki(n), "RSA", 2048) for k, n in chunk])


def timed_comparison(store: SqliteStore, full: bool) -> tuple[float, FleetComparison]:
    """One audit's fleet comparison; ``full`` deletes the saved state first (the old engine's cost)."""
    if full:
        Path(store.path + FLEET_STATE_SUFFIX).unlink(missing_ok=True)
    began = time.perf_counter()
    comparison = compare_fleet(store, lambda: store.in_scope(0.0, IN_SCOPE, ENGINE_BATCH))
    return time.perf_counter() - began, comparison


def run_engine(size: int) -> None:
    state = gmpy2.random_state(size)
    keys, _, shared = planted_keys(state)
    fillers = Fillers()
    keys += [(f"f{i}", int(fillers.modulus())) for i in range(size - len(keys))]
    print(f"\n== engine fleet comparison, {size:,} certificates in a SQLite inventory; load before {load()}")
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "audits.sqlite3")
        began = time.perf_counter()
        store_keys(store, keys)
        print(f"inventory written in {time.perf_counter() - began:.1f} s")

        def compare(what: str, reference: FleetComparison | None = None) -> FleetComparison:
            nonlocal failed
            incremental, result = timed_comparison(store, full=False)
            full, expected = timed_comparison(store, full=True)
            same = result.results == expected.results and (reference is None or reference.results == result.results)
            failed |= not same
            mode = "incremental" if result.incremental else f"FULL ({result.rebuilt_because})"
            print(f"{what}: {mode} {incremental:,.2f} s (+{result.added:,} -{result.removed:,}) vs full "
                  f"{full:,.2f} s ({full / incremental:,.0f}x); {len(result.results)} keys with a finding, "
                  f"{'same as full' if same else 'MISMATCH with full'}; peak RSS {peak_rss_mib():,.0f} MB")  # fmt: skip
            return result

        first_s, first = timed_comparison(store, full=False)
        sidecar = Path(store.path + FLEET_STATE_SUFFIX)
        print(f"first audit (no saved state): full {first_s:,.2f} s, {len(first.results)} keys with a finding; "
              f"state {sidecar.stat().st_size / 2**20:,.1f} MB")  # fmt: skip
        compare("second audit, fleet unchanged", first)
        new = [(f"new{i}", int(fillers.modulus())) for i in range(998)]
        new += [("new-shared", int(shared["pair0"] * rsa_prime(state))), ("new-dup", keys[-1][1])]
        store_keys(store, new)
        compare("1,000 certificates added")
        store.set_gone([certificate_id(f"f{i}") for i in range(999)] + [certificate_id("pair1-a")], 2.0)
        compare("1,000 certificates gone")
        store.close()
    print(f"load after {load()}")
    if failed:
        sys.exit(1)


def run_naive(count: int, budget: float) -> None:
    fillers = Fillers()
    moduli = [fillers.modulus() for _ in range(count)]
    total = count * (count - 1) // 2
    print(f"\n== naive pairwise gcd on {count:,} moduli ({total:,} pairs), budget {budget:.0f} s; load {load()}")
    pairs, began = 0, time.perf_counter()
    for i, a in enumerate(moduli):
        for b in moduli[i + 1 :]:
            gmpy2.gcd(a, b)
        pairs += count - i - 1
        if time.perf_counter() - began > budget:
            break
    elapsed = time.perf_counter() - began
    if pairs == total:
        print(f"naive: all pairs in {elapsed:,.1f} s")
    else:
        print(f"naive: {pairs:,} pairs in {elapsed:,.1f} s ({elapsed / pairs * 1e6:.2f} us/pair); "
              f"all pairs EXTRAPOLATED: {elapsed * total / pairs:,.0f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, help="batch GCD fleet sizes (default 10000 100000)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1], help="worker processes to try")
    parser.add_argument("--incremental", type=int, default=1000, help="new moduli for the incremental run (0: skip)")
    parser.add_argument("--naive", type=int, default=10_000, help="moduli for naive pairwise gcd (0: skip)")
    parser.add_argument("--naive-budget", type=float, default=120.0, help="seconds before extrapolating")
    parser.add_argument("--engine", nargs="+", type=int, default=[], metavar="SIZE",
                        help="also time the engine's fleet comparison, full vs incremental, at these sizes")
    parser.add_argument("--engine-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_size(args.one, args.workers[0], args.incremental)
    if args.engine_one:
        return run_engine(args.engine_one)
    if args.naive_only:
        return run_naive(args.naive, args.naive_budget)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")  # fmt: skip
    print(f"{os.cpu_count()} x {cpu}; {gmpy2.mp_version()}, gmpy2 {gmpy2.version()}, Python {sys.version.split()[0]}")
    script = [sys.executable, str(Path(__file__).resolve())]
    for size in args.sizes or ([] if args.engine else [10_000, 100_000]):
        for workers in sorted({max(1, min(w, size // MIN_MODULI_PER_WORKER)) for w in args.workers}):
            extra = ["--incremental", str(args.incremental), "--workers", str(workers)]
            subprocess.run([*script, "--one", str(size), *extra], check=True)
    for size in args.engine:
        subprocess.run([*script, "--engine-one", str(size)], check=True)
    if args.naive:
        subprocess.run([*script, "--naive-only", "--naive", str(args.naive), "--naive-budget", str(args.naive_budget)],
                       check=True)  # fmt: skip


if __name__ == "__main__":
    main()
