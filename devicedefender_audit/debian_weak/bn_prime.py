"""OpenSSL 0.9.8's prime generation (``crypto/bn/bn_prime.c``) on the Debian PRNG.

``BN_generate_prime_ex(ret, bits, safe=0, add=NULL, rem=NULL)`` loops: ``probable_prime`` draws
a random odd number with the two top bits set and walks ``delta`` upward by 2 until no prime of
the 2048-entry table (``bn_prime.h``, 2 excluded) divides ``rnd + delta`` or ``rnd + delta - 1``;
then ``BN_is_prime_fasttest_ex`` runs Miller-Rabin with witnesses drawn from the same PRNG. A
composite sends it back to a *fresh* random draw, so every draw must be replayed in order.
"""

from __future__ import annotations

from functools import cache, lru_cache

import gmpy2
import numpy as np
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_rand import bnrand, pseudo_rand_range
from devicedefender_audit.debian_weak.md_rand import DebianMdRand

NUMPRIMES = 2048


@lru_cache(maxsize=1)
def small_primes() -> tuple[int, ...]:
    """The first 2048 primes, 2 .. 17863, as ``bn_prime.h`` lists them."""
    primes = [2]
    while len(primes) < NUMPRIMES:
        primes.append(int(gmpy2.next_prime(primes[-1])))
    return tuple(primes)


def prime_checks_for_size(bits: int) -> int:
    """``BN_prime_checks_for_size``: Miller-Rabin rounds for an error below 2**-80."""
    for threshold, checks in (
        (1300, 2), (850, 3), (650, 4), (550, 5), (450, 6),
        (400, 7), (350, 8), (300, 9), (250, 12), (200, 15), (150, 18),
    ):  # fmt: skip
        if bits >= threshold:
            return checks
    return 27


def _wheel(primes: list[int], span: int) -> tuple[int, np.ndarray]:
    """A lookup table saying, for x = rnd mod M (M the product of ``primes``) plus an offset
    below ``span``, whether x is neither 0 nor 1 modulo every prime of the wheel."""
    modulus = 1
    for prime in primes:
        modulus *= prime
    x = np.arange(modulus + span, dtype=np.int64)
    ok = np.ones(len(x), dtype=bool)
    for prime in primes:
        ok &= x % prime > 1
    return modulus, ok


class _Sieve:
    """Finds ``probable_prime``'s delta with numpy instead of a 2047-way loop per step.

    The result is the smallest even delta such that ``rnd + delta`` is neither 0 nor 1 modulo
    any odd prime of the table, which is what OpenSSL's restart-on-failure loop reaches.

    Work is in steps ``t = delta / 2`` over a window. Primes 3..31 are applied through two
    wheel lookup tables. For every other prime p the rejected steps are two arithmetic
    progressions ``t0 + k*p`` (solutions of ``2t = -m`` and ``2t = 1 - m`` mod p, m the residue
    of rnd), so one scatter marks them all. ``t0`` comes from a float64 product of rnd's
    32-bit limbs with a table of ``-2**(32*i) / 2 mod p``: each partial product is below 2**47
    and each sum of 64 of them below 2**53, so the float arithmetic is exact.
    """

    WINDOW = 1024  # steps per pass; the first survivor is ~115 steps in on average
    WHEELS = ((3, 5, 7, 11, 13, 17), (19, 23, 29, 31))

    def __init__(self, bits: int, word_bits: int) -> None:
        all_primes = np.array(small_primes()[1:], dtype=np.int64)
        span = 2 * self.WINDOW
        self.wheels = [_wheel(list(w), span) for w in self.WHEELS]
        primes = all_primes[sum(len(w) for w in self.WHEELS) :]
        self.limbs = (bits + 31) // 32
        # Row i holds -2**(32*i) / 2 mod p, so limbs @ table = -rnd / 2 (mod p): the first
        # rejected step of class 0, up to one reduction.
        halves = (primes + 1) // 2  # the inverse of 2 modulo each prime
        table = np.empty((self.limbs, len(primes)), dtype=np.float64)
        acc = np.ones(len(primes), dtype=np.int64)
        for i in range(self.limbs):
            table[i] = (primes - acc * halves % primes) % primes
            acc = (acc << 32) % primes
        self.table = table
        self.fprimes = primes.astype(np.float64)
        self.inverses = 1.0 / self.fprimes
        self.halves = halves.astype(np.float64)
        # Progression k*p for every prime, k*p < WINDOW: the marks one residue class makes.
        counts = (self.WINDOW - 1) // primes + 1
        owner = np.repeat(np.arange(len(primes)), counts)
        first = np.cumsum(counts) - counts
        offsets = (np.arange(len(owner)) - np.repeat(first, counts)) * primes[owner]
        self.owner2 = np.concatenate([owner, owner + len(primes)])
        self.offsets2 = np.concatenate([offsets, offsets])
        self.bad_size = self.WINDOW + int(primes[-1])
        self.maxdelta = (1 << word_bits) - 1 - int(all_primes[-1])

    def _mod(self, x: np.ndarray) -> np.ndarray:
        """Exact ``x mod p`` (in [0, p)) for float integers of magnitude below 2**52.

        The quotient is rounded from ``(x + 0.5) / p``, whose fraction stays at least 0.5/p
        away from an integer, so float rounding cannot push it across one.
        """
        return x - np.floor((x + 0.5) * self.inverses) * self.fprimes

    def first_rejected_steps(self, value: mpz) -> np.ndarray:
        """For class c in {0, 1} and each prime: the least t >= 0 with value + 2t = c (mod p),
        class 0 for all primes first, then class 1."""
        raw = int(value).to_bytes(self.limbs * 4, "little")
        limbs = np.frombuffer(raw, dtype="<u4").astype(np.float64)
        # t = -value / 2 mod p. A sum of at most 64 products stays below 2**53.
        class0 = self._mod(limbs[:64] @ self.table[:64])
        for i in range(64, self.limbs, 64):
            class0 = self._mod(class0 + self._mod(limbs[i : i + 64] @ self.table[i : i + 64]))
        class1 = class0 + self.halves  # t = (1 - value) / 2
        class1 -= self.fprimes * (class1 >= self.fprimes)
        return np.concatenate([class0, class1]).astype(np.int64)

    def delta(self, rnd: mpz) -> int | None:
        """Smallest even delta as ``probable_prime`` finds it, or None past ``maxdelta``."""
        steps = np.arange(self.WINDOW, dtype=np.int64)
        start = 0
        while start <= self.maxdelta:
            base_value = rnd + start
            ok = np.ones(self.WINDOW, dtype=bool)
            for modulus, table in self.wheels:
                ok &= table[int(base_value % modulus) + 2 * steps]
            bad = np.zeros(self.bad_size, dtype=bool)
            bad[self.first_rejected_steps(base_value)[self.owner2] + self.offsets2] = True
            ok &= ~bad[: self.WINDOW]
            hits = np.flatnonzero(ok)
            if len(hits):
                found = start + 2 * int(hits[0])
                return found if found <= self.maxdelta else None
            start += 2 * self.WINDOW
        return None


@cache
def _sieve(bits: int, word_bits: int) -> _Sieve:
    return _Sieve(bits, word_bits)


def probable_prime(rng: DebianMdRand, bits: int) -> mpz:
    """``probable_prime``: a random candidate with no small factor in it or in it minus one."""
    sieve = _sieve(bits, rng.platform.word_bits)
    while True:
        rnd = bnrand(rng, bits, 1, 1)
        delta = sieve.delta(rnd)
        if delta is not None:
            return rnd + delta


def _witness(w: mpz, a: mpz, a1: mpz, a1_odd: mpz, k: int) -> bool:
    """``witness``: True when ``w`` proves ``a`` composite."""
    w = gmpy2.powmod(w, a1_odd, a)
    if w == 1 or w == a1:
        return False
    for _ in range(1, k):
        w = gmpy2.powmod(w, 2, a)
        if w == 1:
            return True
        if w == a1:
            return False
    return True


def is_prime_fasttest(rng: DebianMdRand, a: mpz, checks: int) -> bool:
    """``BN_is_prime_fasttest_ex(a, checks, ctx, do_trial_division=0)``."""
    if a <= 1:
        return False
    if not a.is_odd():
        return a == 2
    a1 = a - 1
    k = gmpy2.bit_scan1(a1)
    a1_odd = a1 >> k
    for _ in range(checks):
        check = pseudo_rand_range(rng, a1) + 1
        if _witness(check, a, a1, a1_odd, k):
            return False
    return True


def generate_prime(rng: DebianMdRand, bits: int) -> mpz:
    """``BN_generate_prime_ex(ret, bits, 0, NULL, NULL, cb)``."""
    checks = prime_checks_for_size(bits)
    while True:
        candidate = probable_prime(rng, bits)
        if is_prime_fasttest(rng, candidate, checks):
            return candidate
