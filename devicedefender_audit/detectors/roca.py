"""CVE-2017-15361 (ROCA): RSA keys from Infineon's RSALib 1.02.013.

RSALib built every prime as ``k * M + (65537**a mod M)`` with M a primorial, so the modulus
``N = p * q`` is congruent to a power of 65537 modulo every small prime dividing M. For each
prime r of the published fingerprint set, N mod r must therefore lie in the multiplicative
subgroup that 65537 generates modulo r. A random modulus passes all 38 tests with probability
far below 2**-100, so passing them all is the fingerprint (Nemec et al., CCS 2017).
"""

from __future__ import annotations

from functools import cache

import gmpy2

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.key_material import PublicKeyInfo

REASON_CODE = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
GENERATOR = 65537
#: The primes of the published ROCA detector.
FINGERPRINT_PRIMES = (
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
    73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
)  # fmt: skip


@cache
def _subgroup(prime: int) -> frozenset[int]:
    """The powers of 65537 modulo ``prime``."""
    element, powers = 1, set()
    while element not in powers:
        powers.add(element)
        element = element * GENERATOR % prime
    return frozenset(powers)


def has_roca_fingerprint(modulus: int) -> bool:
    """True when ``modulus`` has the RSALib structure."""
    n = gmpy2.mpz(modulus)
    return all(int(n % prime) in _subgroup(prime) for prime in FINGERPRINT_PRIMES)


class RocaDetector:
    name = "roca"
    reason_code = REASON_CODE

    def check(self, key: PublicKeyInfo) -> DetectorResult:
        if not key.is_rsa or key.modulus is None:
            return DetectorResult(self.name, Verdict.NOT_APPLICABLE, detail=f"{key.algorithm} key")
        if has_roca_fingerprint(key.modulus):
            return DetectorResult(
                self.name,
                Verdict.VULNERABLE,
                self.reason_code,
                f"RSA-{key.bits} modulus has the ROCA (Infineon RSALib) structure; "
                "its factors can be recovered",
            )
        return DetectorResult(self.name, Verdict.CLEAN)
