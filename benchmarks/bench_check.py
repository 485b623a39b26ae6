"""``check`` against badkeys, as whole processes, plus our per-key costs.

Times ``python -m devicedefender_audit check --checks DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``
(ROCA and Debian CVE-2008-0166) and ``badkeys -c roca`` (badkeys' ROCA check only: its Debian
check needs a blocklist download) over 10,000 RSA-2048 public-key PEM files and over one file;
then ``check`` as it runs by default, with the factorable check's per-key tests too (close
primes, small factors or a prime modulus, insecure parameters), against ``badkeys -c
roca,fermat,smallfactors,rsainvalid`` (its nearest set; it has no prime-modulus test, our one
modexp a key) over ``--all-checks-keys`` files and one; then our per-key lookup, ROCA and
list-verification costs and badkeys' ROCA cost in the same process.

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python benchmarks/bench_check.py``.
Keys are written once to ``--workdir`` and reused; our modules are compiled to bytecode first, as
an installed package is. Each figure is the fastest of ``--runs`` interleaved runs (the least
disturbed by other load), wall clock and CPU time (user + system, steadier on a loaded machine);
the median is printed beside it.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

import gmpy2
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REPO = Path(__file__).resolve().parent.parent
ROCA_VECTOR = REPO / "tests" / "data" / "roca" / "pubkey03.pem"


def prime_pool(count: int, rng: random.Random) -> list[int]:
    """``count`` random 1024-bit primes with the top two bits set, so any product has 2048 bits."""
    return [int(gmpy2.next_prime(rng.getrandbits(1024) | 3 << 1022)) for _ in range(count)]


def write_keys(directory: Path, count: int, seed: int = 2048) -> list[Path]:
    """``count - 1`` RSA-2048 public keys plus the ROCA test vector (so both tools must flag
    exactly one file). Distinct moduli come from pairs of a pool of ~sqrt(2 * count) primes:
    real two-prime moduli in seconds rather than the minutes 20,000 prime searches take. The
    checks timed look at each modulus alone, so the shared factors change nothing."""
    paths = sorted(directory.glob("key-*.pem"))
    if len(paths) == count:
        return paths
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = random.Random(seed)
    size = 2
    while size * (size - 1) // 2 < count - 1:
        size += 1
    primes = prime_pool(size, rng)
    pairs = [(p, q) for i, p in enumerate(primes) for q in primes[i + 1 :]][: count - 1]
    for index, (p, q) in enumerate(pairs):
        pem = rsa.RSAPublicNumbers(65537, p * q).public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        (directory / f"key-{index:05d}.pem").write_bytes(pem)
    shutil.copy(ROCA_VECTOR, directory / f"key-{count - 1:05d}.pem")
    return sorted(directory.glob("key-*.pem"))


#: Exit codes of a run that checked every file: "all clean" or "found a weak key".
OURS_OK, BADKEYS_OK = (0, 3), (0, 4)


#: ``check``'s options and badkeys' checks of each comparison: the two CVEs against badkeys'
#: ROCA check, and everything ``check`` runs by default against badkeys' nearest set.
QUALITY = (["--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"], "roca")
EVERY = ([], "roca,fermat,smallfactors,rsainvalid")


def ours(files: Sequence[Path], options: list[str]) -> list[str]:
    return [sys.executable, "-m", "devicedefender_audit", "check", *map(str, files), *options]


def badkeys(files: Sequence[Path], checks: str) -> list[str]:
    executable = shutil.which("badkeys", path=str(Path(sys.executable).parent)) or shutil.which("badkeys")
    if executable is None:
        raise SystemExit("badkeys is not installed: pip install -e '.[bench]'")
    return [executable, "-c", checks, *map(str, files)]


def run(argv: list[str], ok: tuple[int, ...], capture: bool) -> str:
    """stdout of the command (when ``capture``); a failed run must not pass for a fast one."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    done = subprocess.run(argv, check=False, stdout=out, stderr=subprocess.PIPE, text=True, cwd=REPO)
    if done.returncode not in ok:
        raise SystemExit(f"{argv[0]} ... exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout or ""


def timed(argv: list[str], ok: tuple[int, ...]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run. On a loaded machine the CPU time is
    the steadier figure: waiting for a core counts in the wall time only."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    run(argv, ok, capture=False)
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare_processes(files: Sequence[Path], runs: int, checks: tuple[list[str], str]) -> None:
    options, theirs_checks = checks
    cases = {
        f"{len(files)} files": files,
        "1 file": files[:1],
    }
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(runs):
        for label, chosen in cases.items():
            for tool, argv, ok in (("ours", ours(chosen, options), OURS_OK),
                                   ("badkeys", badkeys(chosen, theirs_checks), BADKEYS_OK)):
                times.setdefault((label, tool), []).append(timed(argv, ok))
    print(f"check {' '.join(options) or '(default: every check)'} vs badkeys -c {theirs_checks}:")
    for label in cases:
        for measure, index in (("wall", 0), ("CPU", 1)):
            mine = [t[index] for t in times[(label, "ours")]]
            theirs = [t[index] for t in times[(label, "badkeys")]]
            print(f"{label:>12} {measure:>4}: check {min(mine):7.3f} s (median {statistics.median(mine):.3f}), "
                  f"badkeys {min(theirs):7.3f} s (median {statistics.median(theirs):.3f}); "
                  f"badkeys/ours {min(theirs) / min(mine):5.2f}x (medians {statistics.median(theirs) / statistics.median(mine):5.2f}x)")


def compile_bytecode() -> None:
    """Our modules as bytecode, as pip leaves an installed package (badkeys' is): a checkout run
    with PYTHONDONTWRITEBYTECODE set would otherwise compile every module from source at every
    start, about 18 ms of CPU that no installed ``check`` pays."""
    compileall.compile_dir(REPO / "devicedefender_audit", quiet=1)


def per_call(function: Callable[[], object], number: int = 2000, repeat: int = 30) -> float:
    """Seconds per call: the fastest of ``repeat`` batches."""
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def per_key_figures() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from devicedefender_audit.debian_weak.blocklist_file import BlocklistTable
    from devicedefender_audit.debian_weak.fingerprint import vulnkey_lookup_key
    from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
    from devicedefender_audit.detectors.roca import RocaDetector, has_roca_fingerprint
    from devicedefender_audit.key_material import public_key_from_spki, public_keys_from_pem

    rng = random.Random(7)
    clean = rng.getrandbits(2048) | 1 << 2047 | 1
    roca_key = public_keys_from_pem(ROCA_VECTOR.read_bytes())[0]
    detector = DebianWeakDetector(REPO / "blocklists")
    table = detector.tables[2048]
    table.verify()
    # As check and the audit read it: from SubjectPublicKeyInfo DER (the modulus's bytes kept).
    info = public_key_from_spki(rsa.RSAPublicNumbers(65537, clean).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    roca_detector = RocaDetector()
    has_roca_fingerprint(roca_key.modulus)  # builds the ROCA tables
    print(f"lookup RSA-2048 ({len(table)} entries), fingerprint included: "
          f"{per_call(lambda: table.find(*vulnkey_lookup_key(clean, info.modulus_bytes))) * 1e6:5.2f} us/key "
          f"from the DER's bytes, {per_call(lambda: table.find(*vulnkey_lookup_key(clean))) * 1e6:5.2f} from the int")
    print(f"Debian detector check, RSA-2048 clean key: {per_call(lambda: detector.check(info)) * 1e6:5.2f} us/key")
    print(f"ROCA test RSA-2048: clean {per_call(lambda: has_roca_fingerprint(clean)) * 1e6:5.2f} us/key, "
          f"ROCA key {per_call(lambda: has_roca_fingerprint(roca_key.modulus)) * 1e6:5.2f} us/key; "
          f"detector check {per_call(lambda: roca_detector.check(info)) * 1e6:5.2f} us/key")
    try:
        from badkeys.rsakeys import roca
    except ImportError:
        print("badkeys not installed: no in-process comparison")
    else:
        print(f"badkeys ROCA test RSA-2048: clean {per_call(lambda: roca(clean), 200, 10) * 1e6:7.2f} us/key, "
              f"ROCA key {per_call(lambda: roca(roca_key.modulus), 200, 10) * 1e6:7.2f} us/key")
    for bits in sorted(detector.tables):
        opened = min(timeit.repeat(lambda b=bits: BlocklistTable.open(REPO / "blocklists", b), number=1, repeat=10))
        verified = min(timeit.repeat(lambda b=bits: BlocklistTable.open(REPO / "blocklists", b).verify(),
                                     number=1, repeat=10))
        size = os.path.getsize(REPO / "blocklists" / f"rsa-{bits}.ddwk") / 1e6
        print(f"list RSA-{bits} ({size:.1f} MB): open {opened * 1e3:.2f} ms, "
              f"open + sha256 + index {verified * 1e3:.2f} ms (on first lookup of that size)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of each process")
    parser.add_argument("--all-checks-keys", type=int, default=1_000,
                        help="files for the every-check comparison (ours costs ~1.4 ms an RSA key there)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dda-bench-check"))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    began = time.perf_counter()
    files = write_keys(args.workdir, args.keys)
    compile_bytecode()
    print(f"{len(files)} PEM files in {args.workdir} ({time.perf_counter() - began:.1f} s to prepare)")
    flagged_ours = run(ours(files, QUALITY[0]), OURS_OK, capture=True).count("roca: VULNERABLE")
    flagged_badkeys = run(badkeys(files, QUALITY[1]), BADKEYS_OK, capture=True).count("roca vulnerability")
    print(f"flagged as ROCA: check {flagged_ours}, badkeys {flagged_badkeys} (expected 1)")
    compare_processes(files, args.runs, QUALITY)
    compare_processes(files[-args.all_checks_keys:], args.runs, EVERY)
    per_key_figures()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
