"""The Debian PRNG replay regenerates real CVE-2008-0166 keys bit for bit."""

from __future__ import annotations

import random

import gmpy2
import pytest
from conftest import DATA, REPO, debian_vectors, load_private_key, vector_params
from gmpy2 import mpz

from devicedefender_audit.debian_weak import bn_prime
from devicedefender_audit.debian_weak import modexp as modexp_module
from devicedefender_audit.debian_weak.blocklist_file import BlocklistTable
from devicedefender_audit.debian_weak.bn_prime import (
    TrialDivision,
    _rejects,
    _sieve,
    _witness,
    shared_factors,
    small_primes,
)
from devicedefender_audit.debian_weak.fingerprint import Origin, vulnkey_lookup_key
from devicedefender_audit.debian_weak.md_rand import DebianMdRand, _output_blocks, _output_stepwise
from devicedefender_audit.debian_weak.modexp import load_openssl_modexp
from devicedefender_audit.debian_weak.platform import LE32, PLATFORMS
from devicedefender_audit.debian_weak.rsa_keygen import generate_rsa_modulus
from devicedefender_audit.debian_weak.weak_tools import (
    OPENSSL_VARIANTS,
    VARIANTS,
    public_exponent,
    seeded_rng,
    tool_of,
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


# --- the second sieve: batched trial division before Miller-Rabin --------------------------

#: The second sieve on every prime size, with small batches so that the prime a search ends
#: on falls at every position of a batch (first, middle, last), and with the plain search.
EVERYWHERE = [{256: TrialDivision(bound=1 << 18, batch=batch)} for batch in (2, 5, 16)]
PLAIN: dict[int, TrialDivision] = {}


def replay(monkeypatch, table, platform, variant, pid, bits, modexps=None):
    """(p, q, the whole PRNG state afterwards) with ``table`` as the second-sieve policy; each
    full Miller-Rabin witness test is appended to ``modexps`` if given."""
    monkeypatch.setattr(bn_prime, "TRIAL_DIVISION", table)
    if modexps is not None:
        monkeypatch.setattr(bn_prime, "_witness", lambda *args: modexps.append(args) or _witness(*args))
    rng = seeded_rng(PLATFORMS[platform], variant, pid)
    p, q = generate_rsa_modulus(rng, bits, public_exponent(variant))
    monkeypatch.setattr(bn_prime, "_witness", _witness)
    return p, q, rng.snapshot()


@pytest.mark.parametrize("bits, keys", [(1024, 60), (2048, 4)])
def test_second_sieve_draws_exactly_what_the_plain_search_draws(monkeypatch, bits, keys):
    """Same primes and the same PRNG state after them: the batch's draws made ahead were taken
    back at the right point, and no witness was skipped, added or drawn a different number of
    times, for random platforms, variants (ssh-keygen's e = 35 included) and pids; while the
    known factors spared a fifth of the Miller-Rabin modexps (bound 2**18)."""
    rng = random.Random(bits)
    fast_tests, plain_tests = [], []
    for i in range(keys):
        origin = (rng.choice(sorted(PLATFORMS)), rng.choice(VARIANTS), rng.randrange(32768), bits)
        fast = replay(monkeypatch, EVERYWHERE[i % len(EVERYWHERE)], *origin, modexps=fast_tests)
        assert fast == replay(monkeypatch, PLAIN, *origin, modexps=plain_tests), origin
    assert len(fast_tests) < 0.85 * len(plain_tests)


def test_second_sieve_as_shipped_matches_the_plain_search_on_rsa_3072(monkeypatch):
    origin = ("be32", "nornd-old", random.Random(3072).randrange(32768), 3072)
    fast = replay(monkeypatch, bn_prime.TRIAL_DIVISION, *origin)
    assert fast == replay(monkeypatch, PLAIN, *origin)


@pytest.mark.parametrize("bits, variants, pids", [(1024, VARIANTS, 32768), (2048, OPENSSL_VARIANTS, 32768),
                                                  (4096, OPENSSL_VARIANTS, 3584)])
def test_fresh_keys_with_the_second_sieve_are_in_the_shipped_lists(monkeypatch, bits, variants, pids):
    """Keys made with the second sieve (as shipped; forced for RSA-1024, which ships without it)
    are found under their exact origin in the lists the plain search generated."""
    table = BlocklistTable.open(REPO / "blocklists", bits)
    rng = random.Random(bits + 1)
    policy = EVERYWHERE[1] if bits == 1024 else bn_prime.TRIAL_DIVISION
    for _ in range(1 if bits == 4096 else 3):
        platform, variant, pid = rng.choice(sorted(PLATFORMS)), rng.choice(variants), rng.randrange(pids)
        p, q, _ = replay(monkeypatch, policy, platform, variant, pid, bits)
        origin = Origin(tool_of(variant), platform, variant, pid)
        assert origin.pack() in table.find(*vulnkey_lookup_key(int(p * q))), origin


def test_known_factor_rejects_only_for_a_non_liar():
    """A divisor of n decides the witness only when check**(n-1) != 1 modulo it; the strong
    liars 1 and n-1 (and Fermat liars modulo the divisor) still get the real test."""
    factor = mpz(17881)  # the first prime above the 2048-prime table
    n = factor * mpz(random.Random(5).getrandbits(500) | 1)
    liar_mod_factor = mpz(1) + factor * 12345  # == 1 (mod factor), random modulo the rest
    for check in (mpz(1), n - 1, liar_mod_factor, mpz(2), n // 3):
        assert _rejects(check, n, factor) == _witness(check, n)
    assert not _rejects(mpz(1), n, factor) and not _rejects(n - 1, n, factor)


def test_shared_factors_are_the_gcds_with_the_product():
    rng = random.Random(7)
    product = TrialDivision(bound=1 << 16, batch=1).product
    values = [mpz(rng.getrandbits(512) | 1) for _ in range(13)]  # odd count: a node carried up
    values[4] *= 17881 * 65521
    assert shared_factors(values, product) == [mpz(gmpy2.gcd(v, product)) for v in values]
    assert shared_factors(values, product)[4] % (17881 * 65521) == 0


def test_pool_output_in_one_pass_matches_block_by_block():
    """The one-pass output loop agrees with OpenSSL's block-by-block loop wherever it is used:
    any start inside the pool, wrapping at its end or not, up to the whole pool."""
    rng = random.Random(8)
    for _ in range(200):
        pool = bytearray(rng.randbytes(1043))
        start, length = rng.randrange(1023), 10 * rng.randint(1, 102)
        first, counts = rng.randbytes(rng.choice((20, 24))), rng.randbytes(rng.choice((8, 16)))
        one_pass, stepwise = bytearray(pool), bytearray(pool)
        assert _output_blocks(one_pass, start, 1023, length, first, counts) == _output_stepwise(
            stepwise, start, 1023, length, first, counts
        )
        assert one_pass == stepwise


def test_openssl_modexp_agrees_with_gmpy2():
    """The Miller-Rabin modexp on OpenSSL's Montgomery code gives gmpy2's result for every
    size the generator uses (and at the edges: base 0 and 1, exponent 0, leading zero bytes)."""
    modexp = load_openssl_modexp()
    if modexp is None:
        pytest.skip("no libcrypto 1.1+ loads here: powmod is gmpy2.powmod itself")
    assert bn_prime.powmod is modexp_module.powmod
    rng = random.Random(9)
    for bits in (64, 512, 1024, 1536, 2048, 2049):
        for _ in range(5):
            modulus = mpz(rng.getrandbits(bits) | 1 | 1 << (bits - 1))
            for base, exponent in ((mpz(rng.randrange(modulus)), mpz(rng.getrandbits(bits))),
                                   (mpz(rng.getrandbits(8)), modulus - 1 >> 1), (mpz(0), mpz(5)),
                                   (mpz(1), mpz(rng.getrandbits(bits))), (mpz(rng.randrange(modulus)), mpz(0))):
                assert modexp(base, exponent, modulus) == gmpy2.powmod(base, exponent, modulus)
