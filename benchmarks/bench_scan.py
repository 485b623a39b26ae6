"""Scan figures: certificates/s, DescribeCertificate calls and peak RSS, first run against re-run.

Run: ``.venv/bin/python benchmarks/bench_scan.py [--fleets 1000 10000 50000] [--synthetic 1000000]``.

Part 1 runs ``python -m devicedefender_audit run`` as a child process (as a scheduler would)
against a moto server in this process, twice per fleet size: the first run describes every
certificate, the re-run of the unchanged fleet none. Pacing is lifted (``--rate ...=100000``):
moto is local, and at AWS's default 10 DescribeCertificate/s a first run of N certificates takes
N/10 seconds whatever the engine does. Two of moto's own costs are taken out so the figures are
the engine's: moto's ``DescribeCertificate`` scans every certificate (quadratic over a fleet), so
it is replaced by a dict lookup; and the fleet is put straight into moto's backend.

Part 2 measures memory at a size moto cannot hold: an inventory of N synthetic certificates
(real keys, every 1000th a real ROCA key) is audited through a stand-in IoT client that lists
them in pages of 250 from a generator. Peak RSS of that child process is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
UNPACED = ["--rate", "ListCertificates=100000", "--rate", "DescribeCertificate=100000",
           "--rate", "ListPrincipalThings=100000",
           # one certificate under many ids (moto hashes the PEM text): the key-quality check only
           "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]


#: ``python -m devicedefender_audit ARGS``, reporting its own peak RSS on stderr at exit.
CLI_WITH_RSS = (
    "import resource, runpy, sys\n"
    "sys.argv = ['devicedefender_audit', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('devicedefender_audit', run_name='__main__')\n"
    "finally:\n    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one ``python -m devicedefender_audit`` process."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI_WITH_RSS, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - began
    if proc.returncode not in (0, 3, 4):
        raise RuntimeError(f"exited {proc.returncode}: {proc.stderr[-2000:]}")
    peak = int(proc.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    return elapsed, peak / 1024, proc.stdout


def seed_moto(count: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iot.models import FakeCertificate, iot_backends

    from devicedefender_audit.demo import issue_certificate

    backend = iot_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.certificates.clear()
    good = issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "bench")
    roca = (REPO / "tests" / "data" / "roca" / "cert04.pem").read_text()
    for i in range(count):
        cert = FakeCertificate(f"# {i}\n{roca if i % 1000 == 0 else good}", "ACTIVE", DEFAULT_ACCOUNT_ID, REGION)
        backend.certificates[cert.certificate_id] = cert


def lift_moto_describe_scan() -> None:
    """moto's describe_certificate scans every certificate; index it (the engine is measured)."""
    from moto.iot.exceptions import ResourceNotFoundException
    from moto.iot.models import IoTBackend

    def describe_certificate(self, certificate_id: str):
        try:
            return self.certificates[certificate_id]
        except KeyError:
            raise ResourceNotFoundException() from None

    IoTBackend.describe_certificate = describe_certificate


def bench_fleets(sizes: list[int]) -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    lift_moto_describe_scan()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    print("fleet     run      seconds   certs/s   DescribeCertificate calls   findings   peak RSS MiB")
    try:
        for size in sizes:
            seed_moto(size)
            with tempfile.TemporaryDirectory() as scratch:
                argv = ["run", "--endpoint-url", endpoint,
                        "--region", REGION, "--no-progress", "--format", "json",
                        "--store", str(Path(scratch) / "bench.sqlite3"), *UNPACED]
                for label in ("first", "re-run"):
                    elapsed, peak, out = run_cli(argv, env)
                    task = json.loads(out)["auditTask"]
                    findings = len(json.loads(out)["findings"])
                    print(f"{size:>7}   {label:<7} {elapsed:8.1f}   {size / elapsed:7.0f}   "
                          f"{task['progress']['describedCertificates']:>25}   {findings:>8}   {peak:12.0f}",
                          flush=True)
    finally:
        server.stop()


SYNTHETIC_CHILD = r'''
import resource, sys, time
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
from devicedefender_audit.audit import Audit
from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.key_material import certificate_public_key
from devicedefender_audit.store import open_store
from devicedefender_audit.store.base import Description

count, store_path, phase = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ARN = "arn:aws:iot:us-east-1:123456789012:cert/"

def cid(i):
    return f"{i:064x}"

class Paginator:
    def __init__(self, name):
        self.name = name
    def paginate(self, **_):
        if self.name == "list_principal_things":
            yield {"things": []}
            return
        for start in range(0, count, 250):
            yield {"certificates": [{"certificateId": cid(i), "certificateArn": ARN + cid(i), "status": "ACTIVE"}
                                    for i in range(start, min(start + 250, count))]}

class FleetClient:
    """Lists the synthetic fleet; every key is already in the inventory, so nothing is described."""
    def get_paginator(self, name):
        return Paginator(name)
    def describe_certificate(self, **_):
        raise AssertionError("the inventory already holds every key")

store = open_store(store_path)
if phase == "seed":
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    roca = certificate_public_key(Path("tests/data/roca/cert04.pem").read_text()).spki
    for start in range(0, count, 10000):
        rows = [ListedCertificate(cid(i), ARN + cid(i), "ACTIVE", None) for i in range(start, min(start + 10000, count))]
        with store.batch():
            store.record_listing(rows, 0.0)
            store.save_descriptions([Description(r.certificate_id, spki=roca if int(r.certificate_id, 16) % 1000 == 0
                                     else good, key_algorithm="RSA", key_bits=2048) for r in rows])
    sys.exit(0)
began = time.perf_counter()
task = Audit(FleetClient(), store, default_detectors()).run()
elapsed = time.perf_counter() - began
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
d = task.details
print(f"{count:>9}   {phase:<6} {elapsed:8.1f} s  {count / elapsed:8.0f} certs/s   peak RSS {peak:6.0f} MiB   "
      f"non-compliant {d.non_compliant_resources_count}   {d.check_run_status}", flush=True)
'''


def bench_synthetic(count: int) -> None:
    print(f"\nsynthetic inventory (stand-in IoT client, no describes), {count} certificates:")
    with tempfile.TemporaryDirectory() as scratch:
        store = str(Path(scratch) / "synthetic.sqlite3")
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", SYNTHETIC_CHILD, str(count), store, "seed"], cwd=REPO, check=True)
        print(f"  (inventory of {count} written in {time.perf_counter() - began:.0f} s, "
              f"{os.path.getsize(store) / 2**20:.0f} MiB on disk)")
        for phase in ("first", "re-run"):  # first computes every verdict, the re-run reuses them
            subprocess.run([sys.executable, "-c", SYNTHETIC_CHILD, str(count), store, phase], cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fleets", type=int, nargs="*", default=[1000, 10000, 50000])
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="0 to skip")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    if args.fleets:
        bench_fleets(args.fleets)
    if args.synthetic:
        bench_synthetic(args.synthetic)


if __name__ == "__main__":
    main()
