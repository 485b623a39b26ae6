"""Prints the figures that matter for speed: weak-key generation, lookups, detection (scanning: bench_scan.py).

Run: ``.venv/bin/python benchmarks/bench.py [--keys N] [--repeats R] [--before REV]``. Figures are per process
(one core); generation parallelises across cores with ``blocklist generate``. Generation is timed
side by side with the replay as it was at ``--before`` (loaded from git), key by key in
alternating order, so the ratio holds even on a loaded machine; both must give the same moduli.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from devicedefender_audit.debian_weak.fingerprint import split_fingerprint, vulnkey_fingerprint, vulnkey_lookup_key
from devicedefender_audit.debian_weak.platform import LE32
from devicedefender_audit.debian_weak.weak_tools import weak_rsa_modulus
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.detectors.roca import has_roca_fingerprint

REPO = Path(__file__).resolve().parent.parent


#: The last commit with the straightforward prime search (one Miller-Rabin modexp per candidate),
#: whose figures the README quoted before the batched trial division.
BEFORE = "8680b075f7d2ae8bccec21fe799d539a4ad597e4"
#: Where the replay lives; every module of it at a revision is loaded (``weak_tools`` imports what
#: it needed then, e.g. ``modexp`` or ``fingerprint`` in later revisions).
REPLAY_PACKAGE = "devicedefender_audit/debian_weak"


def load_replay(rev: str, into: Path) -> ModuleType:
    """``weak_tools`` as it was at ``rev``, imported as the separate package ``before_debian_weak``."""
    package = into / "before_debian_weak"
    package.mkdir()
    (package / "__init__.py").write_text("")
    listing = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:{REPLAY_PACKAGE}"],
                             check=True, capture_output=True, text=True).stdout.split()
    for name in (entry for entry in listing if entry.endswith(".py") and entry != "__init__.py"):
        path = f"{rev}:{REPLAY_PACKAGE}/{name}"
        source = subprocess.run(["git", "-C", str(REPO), "show", path], check=True, capture_output=True, text=True)
        (package / name).write_text(source.stdout.replace("devicedefender_audit.debian_weak.", "before_debian_weak."))
    sys.path.insert(0, str(into))
    return importlib.import_module("before_debian_weak.weak_tools")


def bench_generation(bits: int, keys: int, before: ModuleType | None, first_pid: int = 1000) -> dict[str, float]:
    """Keys/s of the working tree (and of ``before``), wall clock and CPU time, same pids; returns
    the keys per CPU-second of each and their ratio (``speedup``)."""
    makers = {"now": (weak_rsa_modulus, LE32)}
    if before is not None:
        makers["before"] = (before.weak_rsa_modulus, sys.modules["before_debian_weak.platform"].LE32)
    wall = dict.fromkeys(makers, 0.0)
    cpu = dict.fromkeys(makers, 0.0)
    for pid in range(first_pid, first_pid + keys):
        moduli = set()
        for name in sorted(makers, reverse=pid % 2 == 1):  # alternate who goes first
            make, platform = makers[name]
            began, began_cpu = time.perf_counter(), time.process_time()
            moduli.add(int(make(platform, "rnd", pid, bits)))
            wall[name] += time.perf_counter() - began
            cpu[name] += time.process_time() - began_cpu
        assert len(moduli) == 1, f"RSA-{bits} pid {pid}: the replays disagree"
    full = 32768 * 9 * wall["now"] / keys
    line = (f"generate RSA-{bits}: {keys / wall['now']:6.2f} keys/s/core ({1000 * wall['now'] / keys:.1f} ms/key; "
            f"full 294,912-key space ~{full / 3600:.1f} core-hours)")
    if before is not None:
        line += (f"; before {keys / wall['before']:6.2f} keys/s: x{wall['before'] / wall['now']:.2f} wall, "
                 f"x{cpu['before'] / cpu['now']:.2f} CPU time (now {keys / cpu['now']:.2f}, "
                 f"before {keys / cpu['before']:.2f} keys/CPU-s)")
    print(line, flush=True)
    rates = {name: keys / seconds for name, seconds in cpu.items()}
    if before is not None:
        rates["speedup"] = cpu["before"] / cpu["now"]
    return rates


def bench_generation_repeated(bits: int, keys: int, before: ModuleType | None, repeats: int) -> None:
    """:func:`bench_generation` over ``repeats`` blocks of pids, then the medians: on a loaded
    machine one block can be disturbed, and key costs vary from pid to pid."""
    runs = [bench_generation(bits, keys, before, 1000 + keys * repeat) for repeat in range(repeats)]
    if repeats > 1:
        medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        line = f"generate RSA-{bits}, median of {repeats} x {keys} keys: {medians['now']:.2f} keys/CPU-s"
        if before is not None:
            line += f", before {medians['before']:.2f}: x{medians['speedup']:.2f}"
        print(line, flush=True)


def bench_lookup(samples: int, repeats: int = 25) -> None:
    """Per key: the search alone, and the whole lookup (the SHA-1 fingerprint of the modulus, then
    the search) from the modulus's bytes as a key read from DER carries them (the check path) and
    from the int alone. Each the fastest of ``repeats`` passes: the minimum is the figure least
    disturbed by other work on a loaded machine."""
    detector = DebianWeakDetector(REPO / "blocklists")
    rng = random.Random(1)
    for bits, table in sorted(detector.tables.items()):
        moduli = [rng.getrandbits(bits) | 1 << (bits - 1) for _ in range(samples)]
        keys = [(n, n.to_bytes((bits + 7) // 8, "big")) for n in moduli]
        fps = [split_fingerprint(vulnkey_fingerprint(n)) for n in moduli]
        search, der, ints = [], [], []
        for _ in range(repeats):
            began = time.perf_counter()
            for hi, lo in fps:
                table.find(hi, lo)
            search.append((time.perf_counter() - began) / samples)
            began = time.perf_counter()
            for n, magnitude in keys:
                table.find(*vulnkey_lookup_key(n, magnitude))
            der.append((time.perf_counter() - began) / samples)
            began = time.perf_counter()
            for n in moduli:
                table.find(*vulnkey_lookup_key(n))
            ints.append((time.perf_counter() - began) / samples)
        print(f"lookup RSA-{bits} ({len(table)} entries), us/key: {min(der) * 1e6:5.2f} from DER bytes, "
              f"{min(ints) * 1e6:5.2f} from the int, search alone {min(search) * 1e6:5.2f} "
              f"(fastest of {repeats} x {samples} keys)")


def bench_roca(samples: int) -> None:
    rng = random.Random(2)
    moduli = [rng.getrandbits(2048) | 1 << 2047 | 1 for _ in range(samples)]
    times = []
    for n in moduli:
        began = time.perf_counter()
        has_roca_fingerprint(n)
        times.append(time.perf_counter() - began)
    print(f"ROCA check RSA-2048: {statistics.median(times) * 1e6:6.1f} us/key (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=40, help="keys per generation figure")
    parser.add_argument("--repeats", type=int, default=1, help="generation figures per size (medians printed)")
    parser.add_argument("--no-lookups", action="store_true", help="time generation only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096],
                        help="RSA sizes to time generation for")
    parser.add_argument("--before", default=BEFORE,
                        help="git revision whose replay to time side by side ('' for none)")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        before = load_replay(args.before, Path(scratch)) if args.before else None
        for bits in args.sizes:
            bench_generation_repeated(bits, args.keys, before, args.repeats)
    if not args.no_lookups:
        bench_lookup(2000)
        bench_roca(2000)


if __name__ == "__main__":
    main()
