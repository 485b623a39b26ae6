"""OpenSSL 0.9.8's prime generation (``crypto/bn/bn_prime.c``) on the Debian PRNG.

``BN_generate_prime_ex(ret, bits, safe=0, add=NULL, rem=NULL)`` loops: ``probable_prime`` draws
a random odd number with the two top bits set and walks ``delta`` upward by 2 until no prime of
the 2048-entry table (``bn_prime.h``, 2 excluded) divides ``rnd + delta`` or ``rnd + delta - 1``;
then ``BN_is_prime_fasttest_ex`` runs Miller-Rabin with witnesses drawn from the same PRNG. A
composite sends it back to a *fresh* random draw, so every draw must be replayed in order.

Almost all the time goes into the Miller-Rabin modexps that reject composite candidates. They run
on OpenSSL's Montgomery code where it loads (:mod:`.modexp`, 1.6x gmpy2's at these sizes). A second
sieve of ours (:class:`TrialDivision`) spares the modexp for candidates with a factor below 2**17
to 2**20 (by prime size), found for a batch of candidates at once, and still makes every draw
OpenSSL made.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property, lru_cache

import gmpy2
import numpy as np
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_rand import bnrand, pseudo_rand_range
from devicedefender_audit.debian_weak.md_rand import DebianMdRand
from devicedefender_audit.debian_weak.modexp import powmod

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

    Work is in steps ``t = delta / 2`` over windows of ``WINDOW`` steps. Primes 3..31 are
    applied through two wheel lookup tables, read as strided slices. For every other prime p
    the rejected steps are two arithmetic progressions ``t0 + k*p`` (solutions of ``2t = -m``
    and ``2t = 1 - m`` mod p, m the residue of rnd): one scatter marks every ``t0`` (a prime
    above the window marks at most that one step in it) and a second one the further terms of
    the primes below the window. ``t0`` comes from a float64 product of rnd's 32-bit limbs
    with a table of ``-2**(32*i) / 2 mod p``: each partial product is below 2**47 and each sum
    of 64 of them below 2**53, so the float arithmetic is exact; class 1 adds ``1/2 mod p``.
    The next window only shifts every ``t0`` down by the window modulo its prime.
    """

    WINDOW = 256  # steps per pass; the first survivor is ~106 steps in on average
    WHEELS = ((3, 5, 7, 11, 13, 17), (19, 23, 29, 31))

    def __init__(self, bits: int, word_bits: int) -> None:
        all_primes = np.array(small_primes()[1:], dtype=np.int64)
        self.wheels = [_wheel(list(w), 2 * self.WINDOW) for w in self.WHEELS]
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
        self.primes = primes
        self.halves = halves
        self.fprimes = primes.astype(np.float64)
        self.inverses = 1.0 / self.fprimes
        self.primes2 = np.concatenate([primes, primes])  # the prime of each entry of the steps
        # Terms t0 + k*p with k >= 1 and k*p < WINDOW: what the primes below the window add.
        counts = (self.WINDOW - 1) // self.primes2
        self.owners = np.repeat(np.arange(len(self.primes2)), counts)
        first = np.cumsum(counts) - counts
        self.multiples = (np.arange(len(self.owners)) - np.repeat(first, counts) + 1) * self.primes2[self.owners]
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
        steps = np.concatenate([class0, class0]).astype(np.int64)
        class1 = steps[len(class0) :]  # t = (1 - value) / 2
        class1 += self.halves
        class1 -= self.primes * (class1 >= self.primes)
        return steps

    def delta(self, rnd: mpz) -> int | None:
        """Smallest even delta as ``probable_prime`` finds it, or None past ``maxdelta``."""
        window = self.WINDOW
        steps = self.first_rejected_steps(rnd)
        for start in range(0, self.maxdelta + 1, 2 * window):
            bad = np.zeros(self.bad_size, dtype=bool)
            bad[steps] = True
            bad[steps[self.owners] + self.multiples] = True
            ok = ~bad[:window]
            for modulus, table in self.wheels:
                offset = int((rnd + start) % modulus)
                ok &= table[offset : offset + 2 * window : 2]
            hits = np.flatnonzero(ok)
            if len(hits):
                found = start + 2 * int(hits[0])
                return found if found <= self.maxdelta else None
            steps = (steps - window) % self.primes2
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


@dataclass(frozen=True)
class TrialDivision:
    """Our second sieve, which OpenSSL does not have: primes above the table up to ``bound``.

    Nearly every candidate that ``probable_prime`` returns is composite, and OpenSSL rejects it
    with one Miller-Rabin modexp on the first witness. When a candidate shares a factor ``g``
    with the primes here, ``check**(n-1) % g != 1`` already shows that ``check**(n-1) != 1``
    modulo n, so that witness rejects n without the modexp. Finding the factors one candidate
    at a time costs about as much as the modexps saved, so ``batch`` candidates are drawn ahead
    (each with its first witness, as if every one were rejected) and tested together.
    """

    bound: int
    batch: int

    @cached_property
    def product(self) -> mpz:
        """The product of the primes in (17863, bound]."""
        return gmpy2.primorial(self.bound) // gmpy2.primorial(small_primes()[-1])


#: The second sieve from each prime size up (RSA-2048 keys and larger), tuned by CPU time per
#: prime: the bigger the prime, the dearer the modexp it spares, so the higher the bound and the
#: batch that pay. For 512-bit primes a modexp (~0.03 ms) costs less than finding the factors
#: plus the candidates drawn ahead in vain, so RSA-1024 keys search plainly.
TRIAL_DIVISION: dict[int, TrialDivision] = {
    1024: TrialDivision(bound=1 << 17, batch=8),
    1536: TrialDivision(bound=1 << 19, batch=32),
    2048: TrialDivision(bound=1 << 20, batch=48),
}


def trial_division_for_size(bits: int) -> TrialDivision | None:
    """The second sieve for primes of ``bits``, or None where the plain search is faster."""
    usable = [size for size in TRIAL_DIVISION if size <= bits]
    return TRIAL_DIVISION[max(usable)] if usable else None


def shared_factors(values: list[mpz], product: mpz) -> list[mpz]:
    """``gcd(value, product)`` for every value, with one big reduction for the whole batch.

    ``product`` is reduced modulo the product of all values, then down the product tree of the
    values (Bernstein's batch trial division), which costs a small multiple of one reduction.
    """
    tree = [values]
    while len(tree[-1]) > 1:
        level = tree[-1]
        tree.append([level[i] * level[i + 1] for i in range(0, len(level) - 1, 2)] + level[len(level) & ~1 :])
    remainders = [product % tree[-1][0]]
    for level in reversed(tree[:-1]):
        remainders = [remainders[i // 2] % node for i, node in enumerate(level)]
    return [gmpy2.gcd(r, value) for r, value in zip(remainders, values)]


def _draw_check(rng: DebianMdRand, a: mpz) -> mpz:
    """One witness of ``BN_is_prime_fasttest_ex``: ``BN_pseudo_rand_range(A1) + 1``."""
    return pseudo_rand_range(rng, a - 1) + 1


def _witness(w: mpz, a: mpz) -> bool:
    """``witness``: True when ``w`` proves ``a`` composite."""
    a1 = a - 1
    k = gmpy2.bit_scan1(a1)
    w = powmod(w, a1 >> k, a)
    if w == 1 or w == a1:
        return False
    for _ in range(1, k):
        w = gmpy2.powmod(w, 2, a)
        if w == 1:
            return True
        if w == a1:
            return False
    return True


def _rejects(check: mpz, a: mpz, factor: mpz) -> bool:
    """Whether ``witness(check, a)`` is True, skipping the modexp when ``factor`` decides it.

    A strong liar (``witness`` False) has ``check**(a-1) == 1 (mod a)``, hence modulo every
    divisor of ``a``; so ``check**(a-1) != 1 (mod factor)`` for a divisor ``factor > 1`` means
    ``witness`` is True. Otherwise the real test runs: ``check`` is then a Fermat liar modulo
    ``factor``, one in about ``q / gcd(a-1, q-1)`` for a prime ``q`` of it, rare but possible.
    """
    if factor > 1 and gmpy2.powmod(check, a - 1, factor) != 1:
        return True
    return _witness(check, a)


def _draw_ahead(rng: DebianMdRand, bits: int, count: int) -> list[tuple[mpz, mpz, tuple]]:
    """``count`` candidates with their first witness and the PRNG right after that witness,
    drawn as ``BN_generate_prime_ex`` draws them while every candidate fails its first witness."""
    drawn = []
    for _ in range(count):
        candidate = probable_prime(rng, bits)
        drawn.append((candidate, _draw_check(rng, candidate), rng.snapshot()))
    return drawn


def generate_prime(rng: DebianMdRand, bits: int) -> mpz:
    """``BN_generate_prime_ex(ret, bits, 0, NULL, NULL, cb)``.

    Each round draws a batch ahead (one candidate without :func:`trial_division_for_size`) and
    takes the candidates in order; the first one its first witness does not reject is where
    OpenSSL's draws continue, so the PRNG goes back to that point for the remaining witnesses
    (``BN_is_prime_fasttest_ex``), and a later witness rejecting it starts a new round from there.
    Candidates are odd and far above 2, so that function's early returns never apply.
    """
    checks = prime_checks_for_size(bits)
    second_sieve = trial_division_for_size(bits)
    while True:
        drawn = _draw_ahead(rng, bits, second_sieve.batch if second_sieve else 1)
        candidates = [candidate for candidate, _, _ in drawn]
        factors = shared_factors(candidates, second_sieve.product) if second_sieve else [mpz(1)]
        for (candidate, check, after), factor in zip(drawn, factors):
            if _rejects(check, candidate, factor):
                continue
            rng.restore(after)
            if not any(_witness(_draw_check(rng, candidate), candidate) for _ in range(checks - 1)):
                return candidate
            break
