"""The Debian PRNG replay regenerates real CVE-2008-0166 keys bit for bit."""

from __future__ import annotations

import random

import pytest
from conftest import DATA, debian_vectors, load_private_key, vector_params
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_prime import _sieve, small_primes
from devicedefender_audit.debian_weak.md_rand import DebianMdRand
from devicedefender_audit.debian_weak.platform import LE32, PLATFORMS
from devicedefender_audit.debian_weak.weak_tools import (
    VARIANTS,
    public_exponent,
    seeded_rng,
    weak_rsa_modulus,
)
from devicedefender_audit.key_material import public_keys_from_pem


@pytest.mark.parametrize("path", debian_vectors(), ids=lambda p: p.name)
def test_regenerates_real_weak_key(path):
    bits, platform, variant, pid = vector_params(path)
    numbers = load_private_key(path).public_key().public_numbers()
    assert numbers.e == public_exponent(variant)
    assert int(weak_rsa_modulus(PLATFORMS[platform], variant, pid, bits)) == numbers.n


def test_regenerates_weak_key_of_unknown_origin_from_the_origin_our_list_found():
    """The badkeys collection key had no recorded parameters; the RSA-2048 list says le32,
    nornd-new, pid 7624, and replaying exactly that gives its modulus."""
    key = public_keys_from_pem((DATA / "debian" / "rsa-unknown-params-from-badkeys-tests.key").read_bytes())[0]
    assert key.exponent == public_exponent("nornd-new")
    assert int(weak_rsa_modulus(LE32, "nornd-new", 7624, 2048)) == key.modulus


def test_vectors_cover_every_platform_and_variant_we_claim():
    seen = [vector_params(p) for p in debian_vectors()]
    assert {platform for _, platform, _, _ in seen} == set(PLATFORMS)
    assert {variant for _, _, variant, _ in seen} == set(VARIANTS)


def test_neighbouring_pid_gives_a_different_key():
    vector = next(p for p in debian_vectors() if "le32-pid1-rnd" in p.name)
    expected = load_private_key(vector).public_key().public_numbers().n
    assert int(weak_rsa_modulus(LE32, "rnd", 2, 1024)) != expected


def test_pid_only_enters_rand_bytes():
    """Seeding is identical for every pid; outputs differ from the first RAND_bytes on."""
    a, b = seeded_rng(LE32, "rnd", 10), seeded_rng(LE32, "rnd", 11)
    assert a.state == b.state and a.md == b.md
    assert a.bytes(16) != b.bytes(16)


def test_unseeded_pool_is_stirred_once():
    rng = DebianMdRand(LE32, 1)
    rng.bytes(1)
    assert rng.stirred_pool and rng.state_num == 1023


def test_sieve_delta_matches_openssl_loop():
    """The numpy sieve returns the delta of bn_prime.c's restart-on-failure loop."""
    primes = small_primes()[1:]
    rng = random.Random(2008)
    for bits in (512, 1024):
        sieve = _sieve(bits, 32)
        for _ in range(25):
            rnd = mpz(rng.getrandbits(bits) | 1 | (3 << (bits - 2)))
            delta = 0
            while any((rnd + delta) % p <= 1 for p in primes):
                delta += 2
            assert sieve.delta(rnd) == delta


def test_small_prime_table_matches_bn_prime_h():
    primes = small_primes()
    assert len(primes) == 2048 and primes[:5] == (2, 3, 5, 7, 11) and primes[-1] == 17863


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown openssl variant"):
        seeded_rng(LE32, "nornd-ancient", 1)
