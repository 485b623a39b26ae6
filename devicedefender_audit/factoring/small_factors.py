"""Moduli that are even, prime, a perfect power, or have a small prime factor.

A correct RSA modulus is the product of two large primes. An even modulus, one with any prime
factor up to ``SMALL_PRIME_BOUND``, a perfect power (p**3: an integer root factors it), or a
prime "modulus" (φ(N) = N - 1 is then public, and so is the private exponent) only comes from a
broken generator or corrupted key material, and is factored at once.

The bound is 65537, as in the badkeys project: one gcd with the product of the 6,543 primes
up to it (a 94,000-bit number) costs ~40 µs a key here; raising it to 2^20 would cost ~600 µs
for factors that a broken generator is no likelier to produce. The primality test dominates
the cost of this detector: one Fermat test to base 2 on OpenSSL's Montgomery code
(:mod:`~devicedefender_audit.debian_weak.modexp`) proves a real modulus composite in 1.36 ms
for RSA-2048 here, where ``gmpy2.is_prime``'s first Miller-Rabin round took 1.88 ms; only a
modulus that passes it (a prime, or a base-2 pseudoprime) goes on to ``gmpy2.is_prime``.

The finding says which rule caught the key, never the factor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import gmpy2

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.factoring.codes import SMALL_FACTOR
from devicedefender_audit.key_material import PublicKeyInfo

SMALL_PRIME_BOUND = 65537
_TWO = gmpy2.mpz(2)


@cache
def _small_primes_product() -> gmpy2.mpz:
    return gmpy2.primorial(SMALL_PRIME_BOUND)


@cache
def _powmod() -> Callable[[gmpy2.mpz, gmpy2.mpz, gmpy2.mpz], gmpy2.mpz]:
    """OpenSSL's modexp, loaded on the first RSA key tested: loading libcrypto (and its self-test)
    would otherwise be paid by every start of ``check``, EC keys and bad files included."""
    from devicedefender_audit.debian_weak.modexp import powmod

    return powmod


def small_factor_problem(modulus: int) -> str | None:
    """Why ``modulus`` is trivially factored, or None when none of these rules applies."""
    n = gmpy2.mpz(modulus)
    if n % 2 == 0:
        return "the modulus is even"
    if gmpy2.gcd(n, _small_primes_product()) != 1:
        return f"the modulus has a prime factor no larger than {SMALL_PRIME_BOUND}"
    if gmpy2.is_power(n):  # p**3 and the like (0.4 us); Fermat's test finds p**2 too, and says so
        return "the modulus is a perfect power (m**k), so an integer root factors it"
    if _powmod()(_TWO, n - 1, n) == 1 and gmpy2.is_prime(n):  # 2**(N-1) != 1 (mod N) proves N composite
        return "the modulus is prime, so the private exponent follows from N - 1"
    return None


class SmallFactorDetector:
    name = "small_factor"
    reason_code = SMALL_FACTOR
    #: A stored verdict is valid for this bound only (see ``detectors.detector_version``).
    version = f"primes<={SMALL_PRIME_BOUND};powers"

    def check(self, key: PublicKeyInfo) -> DetectorResult:
        if not key.is_rsa or key.modulus is None:
            return DetectorResult(self.name, Verdict.NOT_APPLICABLE, detail=f"{key.algorithm} key")
        problem = small_factor_problem(key.modulus)
        if problem is None:
            return DetectorResult(self.name, Verdict.CLEAN)
        return DetectorResult(self.name, Verdict.VULNERABLE, self.reason_code, f"RSA-{key.bits}: {problem}")
