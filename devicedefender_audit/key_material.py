"""Turning PEM text (certificates, public/private keys, CSRs) into the public key we check.

Everything that can go wrong with untrusted PEM ends here as a :class:`KeyMaterialError` with a
message a user can act on, so callers record it against the resource and move on.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

#: Moduli above this are refused: no real device key is larger, and the arithmetic on an
#: attacker-supplied huge modulus would only cost time.
MAX_RSA_BITS = 16384

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


class KeyMaterialError(ValueError):
    """PEM that cannot be turned into a checkable public key."""

    error_code = "MALFORMED_CERTIFICATE"


class KeyTooLargeError(KeyMaterialError):
    """An RSA modulus beyond :data:`MAX_RSA_BITS`."""

    error_code = "KEY_TOO_LARGE"


@dataclass(frozen=True)
class PublicKeyInfo:
    """The facts about a public key that the detectors need."""

    algorithm: str  # "RSA", "EC", "Ed25519", ...
    bits: int
    modulus: int | None = None  # RSA only
    exponent: int | None = None  # RSA only
    source: str = ""  # what the key came from ("certificate", "public key", "CSR", ...)
    #: SubjectPublicKeyInfo DER: what the inventory stores, so keys are re-checked without AWS.
    spki: bytes = b""
    #: EC only: the public point, uncompressed X9.62 (04 || X || Y) whatever the input encoding,
    #: so blocklists keyed by the point match compressed and uncompressed keys alike.
    point: bytes | None = None

    @property
    def is_rsa(self) -> bool:
        return self.algorithm == "RSA"


def _spki(key: object) -> bytes:
    try:
        return key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (AttributeError, ValueError, TypeError):
        return b""


def _describe(key: object, source: str) -> PublicKeyInfo:
    info = _describe_numbers(key, source)
    return dataclasses.replace(info, spki=_spki(key))


def _describe_numbers(key: object, source: str) -> PublicKeyInfo:
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        bits = numbers.n.bit_length()
        if bits > MAX_RSA_BITS:
            raise KeyTooLargeError(
                f"RSA modulus of {bits} bits exceeds the {MAX_RSA_BITS}-bit limit; refused"
            )
        return PublicKeyInfo("RSA", bits, numbers.n, numbers.e, source)
    if isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return PublicKeyInfo(f"EC {key.curve.name}", key.curve.key_size, source=source, point=point)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKeyInfo("Ed25519", 256, source=source)
    if isinstance(key, ed448.Ed448PublicKey):
        return PublicKeyInfo("Ed448", 456, source=source)
    if isinstance(key, dsa.DSAPublicKey):
        return PublicKeyInfo("DSA", key.key_size, source=source)
    return PublicKeyInfo(type(key).__name__, 0, source=source)


def _load_block(label: str, pem: bytes) -> PublicKeyInfo:
    if label == "CERTIFICATE":
        return _describe(x509.load_pem_x509_certificate(pem).public_key(), "certificate")
    if label in ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"):
        return _describe(x509.load_pem_x509_csr(pem).public_key(), "certificate request")
    if label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        return _describe(serialization.load_pem_public_key(pem), "public key")
    if label.endswith("PRIVATE KEY") and "ENCRYPTED" not in label:
        private = serialization.load_pem_private_key(pem, password=None)
        return _describe(private.public_key(), "private key")
    raise KeyMaterialError(f"unsupported PEM block {label!r}")


def public_keys_from_pem(text: str | bytes) -> list[PublicKeyInfo]:
    """Every key found in a PEM document (comments around the blocks are ignored)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    if not blocks:
        raise KeyMaterialError("no PEM block found")
    keys = []
    for label, block in blocks:
        try:
            keys.append(_load_block(label, block.encode("ascii")))
        except KeyMaterialError:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.UnsupportedGeneralNameType) as exc:
            raise KeyMaterialError(f"malformed {label}: {exc}") from exc
    return keys


def certificate_public_key(certificate_pem: str) -> PublicKeyInfo:
    """The public key of one PEM certificate, as ``DescribeCertificate`` returns it."""
    key = public_keys_from_pem(certificate_pem)[0]
    if key.source != "certificate":
        raise KeyMaterialError(f"expected a certificate, found a {key.source}")
    return key


def public_key_from_spki(der: bytes, source: str = "certificate") -> PublicKeyInfo:
    """The key the inventory stored (SubjectPublicKeyInfo DER), ready for the detectors again."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"stored public key is unreadable: {exc}") from exc
    return _describe(key, source)
