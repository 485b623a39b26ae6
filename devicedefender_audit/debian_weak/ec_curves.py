"""The curves whose Debian weak EC keys we list, and how a public point is looked up.

Apart from the replay (:mod:`.ec_keygen`) so that checking an EC key imports neither the PRNG
replay nor, behind it, the RSA generator with gmpy2, numpy and the OpenSSL modexp.
"""

from __future__ import annotations

from hashlib import sha1
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec


def table_name(curve: str) -> str:
    """Blocklist stem (``ec-p256``) of a curve's list."""
    return f"ec-{curve}"


class Curve(NamedTuple):
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


def ec_point_fingerprint(point: bytes) -> bytes:
    """The 10-byte (80-bit) fingerprint the EC blocklists store: the last 80 bits of
    SHA-1 over the uncompressed X9.62 point, the analogue of ``openssl-vulnkey``'s RSA one.

    Compressed points must be expanded first so every encoding of a key gives one fingerprint.
    """
    if not point or point[0] != 4:
        raise ValueError("expected an uncompressed X9.62 point (04 || X || Y)")
    return sha1(point).digest()[-10:]
