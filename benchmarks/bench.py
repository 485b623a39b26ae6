"""Prints the figures that matter for speed: weak-key generation, lookups, detection, scanning.

Run: ``.venv/bin/python benchmarks/bench.py [--keys N]``. Figures are per process (one core);
generation parallelises across cores with ``blocklist generate``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from devicedefender_audit.debian_weak.fingerprint import split_fingerprint, vulnkey_fingerprint
from devicedefender_audit.debian_weak.platform import LE32
from devicedefender_audit.debian_weak.weak_tools import weak_rsa_modulus
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.detectors.roca import has_roca_fingerprint

REPO = Path(__file__).resolve().parent.parent


def bench_generation(bits: int, keys: int) -> None:
    began = time.perf_counter()
    for pid in range(1000, 1000 + keys):
        weak_rsa_modulus(LE32, "rnd", pid, bits)
    elapsed = time.perf_counter() - began
    full = 32768 * 9 * elapsed / keys
    print(f"generate RSA-{bits}: {keys / elapsed:7.1f} keys/s/core "
          f"({1000 * elapsed / keys:.1f} ms/key; full 294,912-key space ~{full / 3600:.1f} core-hours)")


def bench_lookup(samples: int) -> None:
    detector = DebianWeakDetector(REPO / "blocklists")
    rng = random.Random(1)
    for bits, table in sorted(detector.tables.items()):
        fps = [split_fingerprint(vulnkey_fingerprint(rng.getrandbits(bits) | 1 << (bits - 1))) for _ in range(samples)]
        began = time.perf_counter()
        for hi, lo in fps:
            table.find(hi, lo)
        per = (time.perf_counter() - began) / samples
        print(f"lookup RSA-{bits} ({len(table)} entries): {per * 1e6:6.1f} us/key (fingerprint excluded)")


def bench_roca(samples: int) -> None:
    rng = random.Random(2)
    moduli = [rng.getrandbits(2048) | 1 << 2047 | 1 for _ in range(samples)]
    times = []
    for n in moduli:
        began = time.perf_counter()
        has_roca_fingerprint(n)
        times.append(time.perf_counter() - began)
    print(f"ROCA check RSA-2048: {statistics.median(times) * 1e6:6.1f} us/key (median)")


def bench_scan(certs: int) -> None:
    import os

    import boto3
    from cryptography.hazmat.primitives.asymmetric import rsa
    from moto import mock_aws

    from devicedefender_audit.audit import Auditor
    from devicedefender_audit.demo import issue_certificate
    from devicedefender_audit.detectors import default_detectors
    from devicedefender_audit.scanner import CertificateScanner

    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    pem = issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "bench")
    with mock_aws():
        iot = boto3.client("iot")
        for i in range(certs):
            iot.register_certificate_without_ca(certificatePem=f"# {i}\n{pem}", status="ACTIVE")
        began = time.perf_counter()
        result = Auditor(CertificateScanner(iot), default_detectors()).run()
        elapsed = time.perf_counter() - began
    print(f"audit (in-process moto, {certs} certs): {certs / elapsed:7.1f} certs/s "
          f"({len(result.errors)} errors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=40, help="keys per generation figure")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096],
                        help="RSA sizes to time generation for")
    parser.add_argument("--certs", type=int, default=500)
    args = parser.parse_args()
    for bits in args.sizes:
        bench_generation(bits, args.keys)
    bench_lookup(2000)
    bench_roca(2000)
    bench_scan(args.certs)


if __name__ == "__main__":
    main()
