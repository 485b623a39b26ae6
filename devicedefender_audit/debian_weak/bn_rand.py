"""OpenSSL 0.9.8's random big numbers (``crypto/bn/bn_rand.c``) drawn from the Debian PRNG."""

from __future__ import annotations

from gmpy2 import mpz

from devicedefender_audit.debian_weak.md_rand import DebianMdRand


def bnrand(rng: DebianMdRand, bits: int, top: int, bottom: int) -> mpz:
    """``bnrand``: ``RAND_add(&time, sizeof time)`` then ``bits`` rounded up to bytes.

    ``top`` = 1 sets the two top bits (so a product of two such numbers has exactly twice the
    bits), 0 sets only the top bit, -1 leaves it; ``bottom`` makes the number odd.
    ``BN_rand`` and ``BN_pseudo_rand`` differ only in their error handling, so one function
    serves both.
    """
    if bits == 0:
        return mpz(0)
    nbytes = (bits + 7) // 8
    bit = (bits - 1) % 8
    rng.add(rng.platform.time_size, 0.0)
    buf = bytearray(rng.bytes(nbytes))
    if top != -1:
        if top:
            if bit == 0:
                buf[0] = 1
                buf[1] |= 0x80
            else:
                buf[0] |= 3 << (bit - 1)
        else:
            buf[0] |= 1 << bit
    buf[0] &= 0xFF >> (7 - bit)
    if bottom:
        buf[-1] |= 1
    return mpz(int.from_bytes(buf, "big"))


def pseudo_rand_range(rng: DebianMdRand, upper: mpz) -> mpz:
    """``BN_pseudo_rand_range``: uniform in ``[0, upper)`` by rejection, as ``bn_rand_range``."""
    n = upper.bit_length()
    if n == 1:
        return mpz(0)
    if not upper.bit_test(n - 2) and not upper.bit_test(n - 3):
        # upper = 100..._2: draw one bit more and fold r, r - upper, r - 2*upper.
        while True:
            r = bnrand(rng, n + 1, -1, 0)
            if r >= upper:
                r -= upper
                if r >= upper:
                    r -= upper
            if r < upper:
                return r
    while True:
        r = bnrand(rng, n, -1, 0)
        if r < upper:
            return r
