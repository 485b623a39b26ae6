"""Fingerprints and provenance of weak keys.

The fingerprint is the one Debian's ``openssl-vulnkey`` used: the last 80 bits of
``SHA1("Modulus=" + uppercase hex modulus + "\\n")``. Keeping it lets us import and export the
``blacklist.RSA-NNNN`` format unchanged.

Provenance (which process made the key) packs into 32 bits so the blocklist can say *why* a key
is weak: pid in bits 0-15, platform in 16-19, variant in 20-23, tool in 24-27.
``UNKNOWN_ORIGIN`` marks entries imported from lists that do not record it.
"""

from __future__ import annotations

from binascii import hexlify
from hashlib import sha1
from typing import NamedTuple

PLATFORM_NAMES = ("le32", "le64", "be32")
VARIANT_NAMES = ("rnd", "nornd-old", "nornd-new", "ssh-keygen")
#: The variants of ``openssl genrsa/req`` (the rest are ``ssh-keygen``'s); defined here, not in
#: ``weak_tools``, so that lookups need not import the key generator.
OPENSSL_VARIANTS = VARIANT_NAMES[:3]
TOOL_NAMES = ("openssl", "ssh")
UNKNOWN_ORIGIN = 0xFFFFFFFF
_LOW_80_BITS = (1 << 80) - 1
#: SHA-1 state after ``Modulus=``, copied for each fingerprint.
_MODULUS_PREFIX = sha1(b"Modulus=")


def vulnkey_fingerprint(modulus: int) -> bytes:
    """The 10-byte (80-bit) ``openssl-vulnkey`` fingerprint of an RSA modulus."""
    return _vulnkey_digest(modulus.to_bytes((modulus.bit_length() + 7) // 8, "big"))[-10:]


def _vulnkey_digest(magnitude: bytes) -> bytes:
    """``SHA1("Modulus=" + uppercase hex + "\\n")`` of the modulus whose big-endian bytes, without
    a leading zero byte, are ``magnitude``.

    The hex digits are ``"%X" % modulus`` made through ``binascii.hexlify`` of its bytes: Python
    turns an int into hex four bits at a time, about 4 us for RSA-2048 and most of a lookup,
    against 0.7 us this way; staying in bytes (no str, no formatting) saves another ~0.5 us.
    The top byte is non-zero, so only its high nibble can give a leading zero to drop.
    """
    digits = hexlify(magnitude).upper()
    if digits[:1] == b"0":
        digits = digits[1:]
    digest = _MODULUS_PREFIX.copy()  # cheaper than a new hash and joining the prefix to the digits
    digest.update(digits or b"0")
    digest.update(b"\n")
    return digest.digest()


def split_fingerprint(fingerprint: bytes) -> tuple[int, int]:
    """Sortable high 64 bits and remaining 16 bits of an 80-bit fingerprint."""
    return int.from_bytes(fingerprint[:8], "big"), int.from_bytes(fingerprint[8:], "big")


def vulnkey_lookup_key(modulus: int, magnitude: bytes | None = None) -> tuple[int, int]:
    """``split_fingerprint(vulnkey_fingerprint(modulus))`` with one integer conversion instead of
    a slice and two: every checked key's lookup starts here. ``magnitude``, when the caller has
    it, is the modulus's big-endian bytes without a leading zero byte: a key read from DER holds
    them, and converting its int back would cost 0.25 us of a 2 us lookup."""
    digest = _vulnkey_digest(magnitude or modulus.to_bytes((modulus.bit_length() + 7) // 8, "big"))
    fingerprint = int.from_bytes(digest, "big") & _LOW_80_BITS
    return fingerprint >> 16, fingerprint & 0xFFFF


class Origin(NamedTuple):
    """Which weak process produced a key (a NamedTuple: lookups import no dataclasses)."""

    tool: str
    platform: str
    variant: str
    pid: int

    def pack(self) -> int:
        return (
            self.pid
            | PLATFORM_NAMES.index(self.platform) << 16
            | VARIANT_NAMES.index(self.variant) << 20
            | TOOL_NAMES.index(self.tool) << 24
        )

    @classmethod
    def unpack(cls, packed: int) -> Origin | None:
        if packed == UNKNOWN_ORIGIN:
            return None
        return cls(
            tool=TOOL_NAMES[packed >> 24 & 0xF],
            platform=PLATFORM_NAMES[packed >> 16 & 0xF],
            variant=VARIANT_NAMES[packed >> 20 & 0xF],
            pid=packed & 0xFFFF,
        )

    def __str__(self) -> str:
        return f"{self.tool} {self.platform} {self.variant} pid {self.pid}"
