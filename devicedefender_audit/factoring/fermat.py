"""Moduli whose two primes are close enough for Fermat's method.

Fermat writes N = a² - b² = (a - b)(a + b) and tries a = ⌈√N⌉, ⌈√N⌉ + 1, ... until a² - N is a
square. The answer is a = (p + q) / 2, and (p + q) / 2 - √N ≤ (p - q)² / (8√N), so the method
needs at most ``MAX_STEPS`` steps past ⌈√N⌉ whenever

    |p - q| ≤ √(8 · MAX_STEPS) · N^¼        (RSA-2048: |p - q| ≤ ~2^516.8).

Independently generated 1024-bit primes differ in their top bits with overwhelming probability
(|p - q| ~ 2^1023), so only a broken generator -- e.g. q = next_prime(p + small), seen in the wild
by Böck ("Fermat Factorization in the Wild", 2023) -- lands inside the bound. 100 steps is the
badkeys project's choice; each step is one perfect-square test (~0.15 µs here), so the check
costs ~20 µs a key.

Nothing but a yes/no leaves this module: the step count or a would give p and q away.
"""

from __future__ import annotations

import math

import gmpy2

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.factoring.codes import FERMAT_FACTORABLE
from devicedefender_audit.key_material import PublicKeyInfo

MAX_STEPS = 100


def fermat_bound_bits(modulus: int, steps: int = MAX_STEPS) -> float:
    """log2 of √(8·steps)·N^¼: moduli with primes closer than this are always caught."""
    return math.log2(8 * steps) / 2 + math.log2(modulus) / 4


def is_fermat_factorable(modulus: int, steps: int = MAX_STEPS) -> bool:
    """True when Fermat's method splits ``modulus`` non-trivially within ``steps`` steps."""
    n = gmpy2.mpz(modulus)
    if n < 4 or n % 2 == 0:  # Fermat needs an odd N; even moduli are the small-factor check's
        return False
    a, exact = gmpy2.isqrt_rem(n)
    if exact == 0:
        return True  # p = q
    a += 1
    excess = a * a - n
    for _ in range(steps + 1):
        if gmpy2.is_square(excess):
            return a - gmpy2.isqrt(excess) > 1  # a - b = 1 would be the trivial 1 · N
        excess += 2 * a + 1
        a += 1
    return False


class FermatDetector:
    name = "fermat"
    reason_code = FERMAT_FACTORABLE
    #: A stored verdict is valid for this bound only (see ``detectors.detector_version``).
    version = f"steps={MAX_STEPS}"

    def check(self, key: PublicKeyInfo) -> DetectorResult:
        if not key.is_rsa or key.modulus is None:
            return DetectorResult(self.name, Verdict.NOT_APPLICABLE, detail=f"{key.algorithm} key")
        if not is_fermat_factorable(key.modulus):
            return DetectorResult(self.name, Verdict.CLEAN)
        return DetectorResult(
            self.name,
            Verdict.VULNERABLE,
            self.reason_code,
            f"RSA-{key.bits} modulus falls to Fermat's method within {MAX_STEPS} steps, which "
            f"factors every modulus whose primes differ by at most "
            f"2^{fermat_bound_bits(key.modulus):.1f}: its primes are far too close",
        )
