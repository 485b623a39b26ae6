"""CVE-2017-15361 (ROCA): RSA keys from Infineon's RSALib 1.02.013.

RSALib built every prime as ``k * M + (65537**a mod M)`` with M a primorial, and the product of
the primes up to 167 divides every M it used. So a modulus ``N = p * q`` is
``65537**c (mod M)`` for the single exponent ``c = a + b``: N mod M lies in the cyclic subgroup
that 65537 generates in (Z/MZ)*. That membership is the fingerprint of the published detector
(Nemec et al., CCS 2017; roca-detect's discrete-log test). A random modulus has it with
probability below 2**-154.

Testing each prime r of M on its own (is N mod r *some* power of 65537 mod r?) is weaker: the
exponents ``c_r`` it finds need not come from one c. A random odd modulus passes all those
per-prime tests with probability about 2**-30 (the product of ord_r / r), and moduli crafted to
pass them are not ROCA keys (roca-detect's test suite ships ten). So we test the exact property:
the congruences ``c = c_r (mod ord_r)`` must have a common solution.

How that stays fast (about 0.6 us for a clean RSA-2048 key and 2 us for a ROCA one, see
``benchmarks/bench_check.py``): the orders' lcm is
L = 2^4 * 3^4 * 5^2 * 7 * 11 * 13 * 17 * 23 * 29 * 37 * 41 * 53 * 83. By the CRT, c mod L is its
residues modulo each prime power q^e of L, and prime r only fixes c modulo ``gcd(ord_r, q^e)``.
So each residue N mod r maps to a bit mask with, per q^e, a field of q^e bits holding the values
of c mod q^e it allows (zero when N mod r is no power of 65537). The exponents are consistent
exactly when the AND of the masks leaves no field empty. Pairs of primes share one table indexed
by N mod (r * s), halving the Python-level steps per key.
"""

from __future__ import annotations

import math
from functools import cache

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.key_material import PublicKeyInfo

REASON_CODE = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
GENERATOR = 65537
#: The primes of M, as in roca-detect's discrete-log test.
FINGERPRINT_PRIMES = (
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
    73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
)  # fmt: skip
_PRIMORIAL = math.prod(FINGERPRINT_PRIMES)


def generator_order(prime: int) -> int:
    """Multiplicative order of 65537 modulo ``prime``."""
    element, order = GENERATOR % prime, 1
    while element != 1:
        element, order = element * GENERATOR % prime, order + 1
    return order


def _prime_powers(n: int) -> list[tuple[int, int]]:
    """``(q, q**e)`` for each prime power exactly dividing ``n`` (trial division; n is small)."""
    powers, q = [], 2
    while n > 1:
        if n % q == 0:
            power = 1
            while n % q == 0:
                n, power = n // q, power * q
            powers.append((q, power))
        q += 1
    return powers


def _field_layout() -> list[tuple[int, int]]:
    """``(offset, width)`` of each q**e field of L, ``width`` = q**e bits followed by one guard
    bit that stays zero in every mask (see :func:`_fields_all_nonempty`). A q that divides only
    one prime's order can never conflict, so it gets no field: 8 fields, 201 bits."""
    orders = [generator_order(r) for r in FINGERPRINT_PRIMES]
    layout, offset = [], 0
    for q, width in _prime_powers(math.lcm(*orders)):
        if sum(order % q == 0 for order in orders) > 1:
            layout.append((offset, width))
            offset += width + 1
    return layout


_FIELDS = _field_layout()
#: Every value allowed in every field; also the carry constant of :func:`_fields_all_nonempty`.
_ALL = sum(((1 << width) - 1) << offset for offset, width in _FIELDS)
_GUARDS = sum(1 << (offset + width) for offset, width in _FIELDS)


def _fields_all_nonempty(mask: int) -> bool:
    """Adding ``2**w - 1`` to a w-bit field carries into its guard bit exactly when the field is
    non-zero, and never further, so one addition tests every field at once."""
    return (mask + _ALL) & _GUARDS == _GUARDS


def _prime_masks(prime: int) -> list[int]:
    """For each residue x mod ``prime``: the values of c mod q**e (per field) with
    ``65537**c = x (mod prime)``; 0 when x is no power of 65537."""
    order = generator_order(prime)
    combs = []
    for offset, width in _FIELDS:
        period = math.gcd(order, width)
        combs.append((offset, period, sum(1 << j for j in range(0, width, period))))
    masks, element = [0] * prime, 1
    for c in range(order):
        masks[element] = sum(comb << (offset + c % period) for offset, period, comb in combs)
        element = element * GENERATOR % prime
    return masks


def _prime_groups() -> list[tuple[int, ...]]:
    """The primes paired smallest with largest (small tables: about 57,000 entries in all), most
    selective pair first: a random residue passes a pair with probability
    ``ord_r / r * ord_s / s``."""
    primes = sorted(FINGERPRINT_PRIMES)
    half = len(primes) // 2
    groups = [(primes[i], primes[-1 - i]) for i in range(half)] + [(primes[half],)] * (len(primes) % 2)
    return sorted(groups, key=lambda group: math.prod(generator_order(r) / r for r in group))


_GROUPS = _prime_groups()


def _group_table(group: tuple[int, ...]) -> tuple[int, list[int]]:
    """``(product, masks by residue mod product)`` of one group of primes."""
    if len(group) == 1:
        return group[0], _prime_masks(group[0])
    a, b = group
    return a * b, [u & v for u, v in zip(_prime_masks(a) * b, _prime_masks(b) * a, strict=True)]


@cache
def _first_table() -> tuple[int, list[int]]:
    """The most selective pair's table: it alone rejects about 96% of clean keys."""
    return _group_table(_GROUPS[0])


@cache
def _other_tables() -> tuple[tuple[int, list[int]], ...]:
    """Built when a key first passes the first table (about 4% of clean keys, every ROCA key):
    some ms that checking a single clean key usually never pays."""
    return tuple(map(_group_table, _GROUPS[1:]))


def has_roca_fingerprint(modulus: int) -> bool:
    """True when ``modulus`` is congruent to a power of 65537 modulo M (the RSALib structure).

    Plain ints, not gmpy2: the first table needs only ``modulus`` modulo a 15-bit number, which
    Python computes about as fast as gmpy2 converts the modulus (~0.5 us for RSA-2048), and the
    residue modulo M (~1 us) only for the 4% of keys it does not reject; importing gmpy2 would
    add 10-20 ms to every ``check`` start-up.
    """
    product, masks = _first_table()
    candidates = masks[modulus % product]
    if not candidates:
        return False
    residue = int(modulus % _PRIMORIAL)
    for product, masks in _other_tables():
        candidates &= masks[residue % product]
        if not candidates:
            return False
    return _fields_all_nonempty(candidates)


class RocaDetector:
    name = "roca"
    reason_code = REASON_CODE
    #: 2: the exact (common discrete log) test; version 1 verdicts came from per-prime tests,
    #: which flag crafted moduli, so they are recomputed.
    version = "2"

    def __init__(self) -> None:
        #: Results are immutable: one CLEAN result serves every clean key (saves ~0.5 us a key).
        self._clean = DetectorResult(self.name, Verdict.CLEAN)

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
        return self._clean
