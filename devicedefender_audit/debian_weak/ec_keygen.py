"""OpenSSL 0.9.8's EC key generation (``EC_KEY_generate_key``) on the Debian PRNG.

``openssl ecparam -genkey -name <curve>`` and ``openssl req -newkey ec:<params>`` touch the PRNG
exactly as ``genrsa``/``req`` do before generating (``app_RAND_load_file`` of ``~/.rnd``, so the
three openssl variants of :mod:`.weak_tools` apply unchanged), then call ``EC_KEY_generate_key``
(``crypto/ec/ec_key.c``), which draws the private scalar with ``BN_rand_range(priv, order)`` and
redraws while it is zero. The public point ``priv * G`` (``EC_POINT_mul``) uses no randomness, so
one PRNG draw decides the key. Parsing the named curve or the parameter file draws nothing either.

``BN_rand_range`` and ``BN_pseudo_rand_range`` differ only in ``RAND_bytes`` versus
``RAND_pseudo_bytes``, which return the same bytes from a seeded Debian pool, so
:func:`~.bn_rand.pseudo_rand_range` replays both. For P-256, P-384 and P-521 the order's second
and third bits are set, so each draw is ``bnrand`` of exactly the order's bit length
(32, 48, 66 bytes) retried while ``>= order`` (odds below 2**-32).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_rand import pseudo_rand_range
from devicedefender_audit.debian_weak.ec_curves import Curve
from devicedefender_audit.debian_weak.md_rand import DebianMdRand
from devicedefender_audit.debian_weak.platform import Platform
from devicedefender_audit.debian_weak.weak_tools import seeded_rng


def generate_ec_private_key(rng: DebianMdRand, curve: Curve) -> int:
    """``EC_KEY_generate_key``'s scalar: ``BN_rand_range(order)`` until it is not zero."""
    order = mpz(curve.order)
    while True:
        scalar = pseudo_rand_range(rng, order)
        if scalar:
            return int(scalar)


def public_point(curve: Curve, scalar: int) -> bytes:
    """``scalar * G`` as an uncompressed X9.62 point (``04 || X || Y``)."""
    key = ec.derive_private_key(scalar, curve.curve_type()).public_key()
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def weak_ec_private_key(curve: Curve, platform: Platform, variant: str, pid: int) -> int:
    """The scalar ``openssl ecparam -genkey`` / ``req -newkey ec`` made as process ``pid``."""
    return generate_ec_private_key(seeded_rng(platform, variant, pid), curve)


def weak_ec_point(curve: Curve, platform: Platform, variant: str, pid: int) -> bytes:
    """The public point of :func:`weak_ec_private_key`, uncompressed X9.62."""
    return public_point(curve, weak_ec_private_key(curve, platform, variant, pid))
