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

from dataclasses import dataclass
from hashlib import sha1

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from gmpy2 import mpz

from devicedefender_audit.debian_weak.bn_rand import pseudo_rand_range
from devicedefender_audit.debian_weak.md_rand import DebianMdRand
from devicedefender_audit.debian_weak.platform import Platform
from devicedefender_audit.debian_weak.weak_tools import seeded_rng


def table_name(curve: str) -> str:
    """Blocklist stem (``ec-p256``) of a curve's list."""
    return f"ec-{curve}"


@dataclass(frozen=True)
class Curve:
    """A named prime curve the broken ``openssl`` could make keys on."""

    name: str  # our short name: blocklist ``ec-<name>``, checkpoints ``ec-<name>``
    display: str  # "P-256"
    openssl_name: str  # the ``ecparam -name`` of OpenSSL 0.9.8
    order: int  # n, the order of the base point (SEC 2 / FIPS 186)
    curve_type: type[ec.EllipticCurve]

    @property
    def bits(self) -> int:
        """Key size as ``cryptography`` reports it (and the blocklist header stores it)."""
        return self.curve_type.key_size

    @property
    def cryptography_name(self) -> str:
        """The curve name :class:`~devicedefender_audit.key_material.PublicKeyInfo` carries."""
        return self.curve_type.name


P256 = Curve(
    "p256", "P-256", "prime256v1",
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ec.SECP256R1,
)
P384 = Curve(
    "p384", "P-384", "secp384r1",
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ec.SECP384R1,
)
P521 = Curve(
    "p521", "P-521", "secp521r1",
    0x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409,
    ec.SECP521R1,
)

CURVES: dict[str, Curve] = {c.name: c for c in (P256, P384, P521)}
_BY_CRYPTOGRAPHY_NAME: dict[str, Curve] = {c.cryptography_name: c for c in CURVES.values()}


def curve_by_cryptography_name(name: str) -> Curve | None:
    """Our :class:`Curve` for a ``cryptography`` curve name (``secp256r1``), if we replay it."""
    return _BY_CRYPTOGRAPHY_NAME.get(name)


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


def ec_point_fingerprint(point: bytes) -> bytes:
    """The 10-byte (80-bit) fingerprint the EC blocklists store: the last 80 bits of
    SHA-1 over the uncompressed X9.62 point, the analogue of ``openssl-vulnkey``'s RSA one.

    Compressed points must be expanded first so every encoding of a key gives one fingerprint.
    """
    if not point or point[0] != 4:
        raise ValueError("expected an uncompressed X9.62 point (04 || X || Y)")
    return sha1(point).digest()[-10:]
