"""The programs that made weak keys, and what each did to the PRNG before generating one.

``openssl genrsa`` / ``openssl req -newkey`` (e = 65537) come in three variants that differ only
in the ``RAND_add`` lengths made before the first draw (``apps/app_rand.c`` →
``RAND_load_file`` in ``crypto/rand/randfile.c``):

* ``rnd``: ``~/.rnd`` exists. ``RAND_load_file`` adds the ``struct stat`` and then the file's
  1024 bytes (as written by ``RAND_write_file``) with 1024 bytes of claimed entropy, so the
  pool counts as seeded and ``RAND_poll`` only runs on the first ``RAND_bytes``.
* ``nornd-old`` (0.9.8c, etch): no ``~/.rnd``. ``stat`` fails but ``RAND_load_file`` still adds
  the (garbage) ``struct stat`` ("put some crap in anyway"), then ``app_RAND_load_file`` asks
  ``RAND_status``, which runs ``RAND_poll``.
* ``nornd-new`` (0.9.8g, lenny): no ``~/.rnd``; ``RAND_load_file`` returns before adding
  anything, then ``RAND_status`` runs ``RAND_poll``.

OpenSSH's ``ssh-keygen`` (variant ``ssh-keygen``, e = 35): ``seed_rng`` asks ``RAND_status``
(which runs ``RAND_poll``), ``arc4random_stir`` draws a 20-byte RC4 seed with ``RAND_bytes``,
then ``RSA_generate_key(bits, 35)``.
"""

from __future__ import annotations

from gmpy2 import mpz

from devicedefender_audit.debian_weak.fingerprint import OPENSSL_VARIANTS
from devicedefender_audit.debian_weak.md_rand import DebianMdRand
from devicedefender_audit.debian_weak.platform import Platform
from devicedefender_audit.debian_weak.rsa_keygen import generate_rsa_modulus

SSH_KEYGEN = "ssh-keygen"
VARIANTS = (*OPENSSL_VARIANTS, SSH_KEYGEN)
RND_FILE_SIZE = 1024
ARC4RANDOM_SEED_SIZE = 20


def seeded_rng(platform: Platform, variant: str, pid: int) -> DebianMdRand:
    """The PRNG of a key-making process with ``pid`` just before ``RSA_generate_key_ex``."""
    rng = DebianMdRand(platform, pid)
    if variant == "rnd":
        rng.add(platform.stat_size, 0.0)
        rng.add(RND_FILE_SIZE, float(RND_FILE_SIZE))
    elif variant == "nornd-old":
        rng.add(platform.stat_size, 0.0)
        rng.status()
    elif variant == "nornd-new":
        rng.status()
    elif variant == SSH_KEYGEN:
        rng.status()
        rng.bytes(ARC4RANDOM_SEED_SIZE)
    else:
        raise ValueError(f"unknown openssl variant {variant!r}; expected one of {VARIANTS}")
    return rng


def public_exponent(variant: str) -> int:
    return 35 if variant == SSH_KEYGEN else 65537


def tool_of(variant: str) -> str:
    return "ssh" if variant == SSH_KEYGEN else "openssl"


def weak_rsa_modulus(platform: Platform, variant: str, pid: int, bits: int) -> mpz:
    """The modulus the tool of ``variant`` made as process ``pid`` on ``platform``."""
    p, q = generate_rsa_modulus(seeded_rng(platform, variant, pid), bits, public_exponent(variant))
    return p * q
