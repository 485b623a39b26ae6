"""OpenSSL 0.9.8's ``rsa_builtin_keygen`` (``crypto/rsa/rsa_gen.c``) on the Debian PRNG."""

from __future__ import annotations

import gmpy2
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_prime import generate_prime
from devicedefender_audit.debian_weak.md_rand import DebianMdRand


def generate_rsa_modulus(rng: DebianMdRand, bits: int, e: int = 65537) -> tuple[mpz, mpz]:
    """Return ``(p, q)`` with ``p > q`` exactly as ``RSA_generate_key_ex`` would draw them.

    p gets ``(bits + 1) // 2`` bits and q the rest; each is redrawn until ``gcd(prime - 1, e)``
    is 1, and q is also redrawn (up to 3 times) if it equals p. The pair is swapped so p > q.
    """
    bits_p = (bits + 1) // 2
    bits_q = bits - bits_p
    while True:
        p = generate_prime(rng, bits_p)
        if gmpy2.gcd(p - 1, e) == 1:
            break
    while True:
        for _ in range(3):
            q = generate_prime(rng, bits_q)
            if q != p:
                break
        else:
            raise ValueError(f"degenerate key size {bits}: q kept equal to p")
        if gmpy2.gcd(q - 1, e) == 1:
            break
    if p < q:
        p, q = q, p
    return p, q
