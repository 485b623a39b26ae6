"""Where a scan's memory goes: moto's fleet, each audit, re-runs, SQLite, the allocator.

Run: ``.venv/bin/python benchmarks/bench_scan_memory.py [--fleets 2000 5000 10000] [--tracemalloc]
[--paged]``.

Each fleet size runs in a child process of its own, with in-process moto (``mock_aws``) as the
tests use it. The child seeds moto's IoT backend with N certificates (distinct ids, one key),
then runs the engine (:class:`~devicedefender_audit.audit.Audit`, key-quality check, SQLite
store) four times: a first audit (describes all N), a re-run over the same store (describes
none), and the same two into a fresh store. After each step, store still open, it prints the
resident set (``VmRSS`` from ``/proc/self/status``), glibc's live bytes (``mallinfo2``: every
arena and mmapped block) and the free bytes it keeps, SQLite's own heap
(``sqlite3_memory_used``), and with ``--tracemalloc`` the Python heap (tracing costs native
memory of its own: compare RSS only within one mode). Last, after closing the stores and
``malloc_trim(0)``. Then the per-certificate slope between the smallest and largest fleet.

Reading it: what seeding adds is moto's (its backend holds every certificate); growth of live
bytes or of the Python heap that a re-run or a second first audit repeats would be ours; RSS
growth with flat live bytes is the allocator keeping freed memory from a transient peak, and
moto answers ``ListCertificates`` with the whole fleet in one page, which ``--paged`` replaces
with pages of 250 and a marker, as AWS IoT answers, to tell the two apart.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r'''
import ctypes, gc, json, os, sys, tempfile, time, tracemalloc
from pathlib import Path

count, traced, paged = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
if traced:
    tracemalloc.start()
import _sqlite3
import boto3
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.iot.models import FakeCertificate, iot_backends
from moto.iot.responses import IoTResponse

from devicedefender_audit.audit import Audit
from devicedefender_audit.checks import key_quality_check
from devicedefender_audit.demo import issue_certificate
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.store import open_store

sys.path.insert(0, "benchmarks")  # the child runs in the repository root
from bench_scan import lift_moto_describe_scan  # moto scans every certificate per describe: indexed
from process_memory import rss_mib

libc = ctypes.CDLL("libc.so.6")
sqlite = ctypes.CDLL(_sqlite3.__file__)
sqlite.sqlite3_memory_used.restype = ctypes.c_int64

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2

def sample(step):
    """RSS; malloc's live bytes (every arena, mmapped blocks too) and the free bytes it keeps;
    SQLite's own heap; the traced Python heap. pymalloc's arenas are mmapped outside malloc."""
    gc.collect()
    info = libc.mallinfo2()
    row = {"step": step, "rss": rss_mib(), "malloc_live": (info.uordblks + info.hblkhd) / 2**20,
           "malloc_free": info.fordblks / 2**20, "sqlite": sqlite.sqlite3_memory_used() / 2**20}
    if traced:
        row["heap"] = tracemalloc.get_traced_memory()[0] / 2**20
    print("ROW " + json.dumps(row), flush=True)

def list_certificates(self):  # --paged: pages of pageSize with a marker, as AWS IoT answers
    size, start = self._get_int_param("pageSize") or 250, int(self._get_param("marker") or 0)
    certificates = list(self.iot_backend.certificates.values())
    page = {"certificates": [c.to_dict() for c in certificates[start : start + size]]}
    if start + size < len(certificates):
        page["nextMarker"] = str(start + size)
    return ActionResult(page)

lift_moto_describe_scan()
if paged:
    IoTResponse.list_certificates = list_certificates
detectors = default_detectors()
checks = [key_quality_check(detectors)]
with mock_aws(), tempfile.TemporaryDirectory() as scratch:
    iot = boto3.client("iot", region_name="us-east-1")
    iot.list_certificates()  # boto3, moto and the detectors loaded before the baseline
    sample("baseline (imports, moto, detectors)")
    backend = iot_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    good = issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "bench")
    for i in range(count):
        cert = FakeCertificate(f"# {i}\n{good}", "ACTIVE", DEFAULT_ACCOUNT_ID, "us-east-1")
        backend.certificates[cert.certificate_id] = cert
    sample("moto seeded with the fleet")
    for step, name in (("first audit", "a"), ("re-run", "a"), ("first audit, fresh store", "b"),
                       ("re-run, fresh store", "b")):
        store = open_store(Path(scratch) / f"{name}.sqlite3")
        began = time.perf_counter()
        task = Audit(iot, store, detectors, workers=8, checks=checks).run()
        elapsed = time.perf_counter() - began
        assert task.task_status.value == "COMPLETED", task
        print(f"TIME {step}: {elapsed:.1f} s, described {task.progress.described_certificates}", flush=True)
        sample(step + " (store open)")
        store.close()
    del task
    libc.malloc_trim(0)
    sample("stores closed, malloc_trim(0)")
'''


def run_size(count: int, traced: bool, paged: bool) -> list[dict]:
    import json

    proc = subprocess.run([sys.executable, "-c", CHILD, str(count), "1" if traced else "0", "1" if paged else "0"],
                          cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"child for {count} exited {proc.returncode}: {proc.stderr[-3000:]}")
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            rows.append(json.loads(line[4:]))
        elif line.startswith("TIME "):
            print(f"  {count}: {line[5:]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fleets", type=int, nargs="*", default=[2000, 5000, 10000])
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap (inflates RSS)")
    parser.add_argument("--paged", action="store_true",
                        help="moto lists in pages of pageSize (250), as AWS IoT does, instead of the whole fleet at once")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    results = {size: run_size(size, args.tracemalloc, args.paged) for size in args.fleets}
    heap = "  Python heap" if args.tracemalloc else ""
    print(f"\n{'fleet':>6}  {'step':<40} {'RSS':>7} {'malloc live':>11} {'malloc free':>11} {'SQLite':>7}{heap}"
          "   (MiB)")
    for size, rows in results.items():
        for row in rows:
            extra = f"  {row['heap']:11.1f}" if args.tracemalloc else ""
            print(f"{size:>6}  {row['step']:<40} {row['rss']:7.1f} {row['malloc_live']:11.1f} "
                  f"{row['malloc_free']:11.1f} {row['sqlite']:7.2f}{extra}")
    if len(results) > 1:
        (small, first), (large, last) = next(iter(results.items())), list(results.items())[-1]
        print(f"\nper certificate, slope {small} -> {large} certificates (KiB): step's own growth, and total above the"
              " baseline")
        keys = ["rss", "malloc_live", "malloc_free"] + (["heap"] if args.tracemalloc else [])
        def slope(key: str, index: int, since: int) -> float:
            grown = (last[index][key] - last[since][key]) - (first[index][key] - first[since][key])
            return grown * 1024 / (large - small)

        for index in range(1, len(last)):
            print(f"  {last[index]['step']:<40} " + ", ".join(
                f"{key} {slope(key, index, index - 1):+6.2f} / {slope(key, index, 0):+6.2f}" for key in keys))

if __name__ == "__main__":
    main()
