"""Turning key material (PEM, OpenSSH, DER) into the public key we check.

Everything that can go wrong with untrusted input ends here as a :class:`KeyMaterialError` with a
message a user can act on, so callers record it against the file or resource and move on. Work
is bounded on hostile input: inputs over :data:`MAX_INPUT_BYTES` or with more than
:data:`MAX_BLOCKS` keys are refused, PEM blocks are found in one linear pass, and key shapes that
would make loading expensive (huge DSA/DH groups) are refused before cryptography sees them.

cryptography is imported on first use, not with this module: its x509 package is about half of
``check``'s start-up, and the commonest key file (one RSA SubjectPublicKeyInfo) is read without it
(:func:`_rsa_spki_key`).
"""

from __future__ import annotations

import base64
import re
import warnings
from collections.abc import Callable
from typing import NamedTuple

# A DH key is read to be reported (NOT_COVERED), not used: cryptography's notice that FFDH is
# deprecated, printed once per process, would only clutter a report.
warnings.filterwarnings("ignore", message="Diffie-Hellman over finite fields", module="devicedefender_audit")

#: Moduli above this are refused: no real device key is larger, and the arithmetic on an
#: attacker-supplied huge modulus would only cost time.
MAX_RSA_BITS = 16384

#: Inputs (one file, one ``certificatePem``) above this are refused before parsing. A device
#: certificate or key is 1-4 KB and a big CA bundle (Mozilla's ~150 roots) about 220 KB, so 1 MiB
#: leaves room for any real key file while bounding memory and time on a wrong or hostile one
#: (a log, an archive, an endless device).
MAX_INPUT_BYTES = 1024 * 1024

#: At most this many PEM blocks or OpenSSH key lines per input: several times a real bundle or
#: ``authorized_keys`` file, and a bound on the parsing work and on the errors one input yields.
MAX_BLOCKS = 1000

#: PKCS#8 DSA and DH private keys carry no public value, so loading one computes g^x mod p with
#: p and x of the author's choosing: a 32768-bit p takes 7 s, a 1 MiB one would take hours, and a
#: 4096-bit x costs 20 ms where a real one (at most 256 bits in FIPS 186 DSA, 2x the security
#: level in DH) costs 1-2 ms. Keys beyond these limits are refused unloaded, which bounds a file
#: of MAX_BLOCKS such keys to a few seconds.
MAX_GROUP_BITS = 4096
MAX_PRIVATE_VALUE_BITS = 512

#: The characters of a PEM label (RFC 7468 allows more, but no key or certificate label uses them).
_PEM_LABEL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
_MARKER_PREFIXES = {"BEGIN": "-----BEGIN ", "END": "-----END "}

#: The key type field of an OpenSSH public key line (``ssh-rsa``, ``ecdsa-sha2-nistp256``,
#: ``sk-ssh-ed25519@openssh.com``, ``ssh-ed25519-cert-v01@openssh.com``, ...).
_SSH_KEY_TYPE = re.compile(r"(?:ssh|ecdsa-sha2|sk-ssh|sk-ecdsa-sha2)-[A-Za-z0-9@.-]+")

_OPENSSH_PRIVATE_MAGIC = b"openssh-key-v1\0"

#: DER-encoded OIDs (tag and length included) of the PKCS#8 algorithms MAX_GROUP_BITS guards.
_FINITE_FIELD_OIDS = {
    bytes.fromhex("06072a8648ce380401"): "DSA",  # 1.2.840.10040.4.1
    bytes.fromhex("06092a864886f70d010301"): "DH",  # 1.2.840.113549.1.3.1 (PKCS#3)
    bytes.fromhex("06072a8648ce3e0201"): "DH",  # 1.2.840.10046.2.1 (X9.42)
}

_ENCRYPTED_HINT = (
    "cannot read {what} without its passphrase; check its certificate or public key instead "
    "(`openssl pkey -in FILE -pubout` writes it)"
)


class KeyMaterialError(ValueError):
    """Input that cannot be turned into a checkable public key. ``error_code`` is the class's
    unless given: an error reported earlier and stored (a key not kept) is raised again with
    the code it was first reported with."""

    error_code = "MALFORMED_CERTIFICATE"

    def __init__(self, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        if error_code:
            self.error_code = error_code


class KeyTooLargeError(KeyMaterialError):
    """An RSA modulus beyond :data:`MAX_RSA_BITS`, or a DSA/DH private key beyond :data:`MAX_GROUP_BITS`."""

    error_code = "KEY_TOO_LARGE"


class InputTooLargeError(KeyMaterialError):
    """An input beyond :data:`MAX_INPUT_BYTES`, or with more than :data:`MAX_BLOCKS` keys in it."""

    error_code = "INPUT_TOO_LARGE"


class PublicKeyInfo(NamedTuple):
    """The facts about a public key that the detectors need.

    A NamedTuple rather than a frozen dataclass: as immutable and comparable, about three times
    faster to make (one per key checked), and ``check`` starts without importing dataclasses.
    """

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
    #: RSA only: the modulus's big-endian bytes without a leading zero byte, as DER holds them, so
    #: the Debian lookup hashes them directly instead of converting the int back (0.3 us of ~2).
    modulus_bytes: bytes | None = None

    @property
    def is_rsa(self) -> bool:
        return self.algorithm == "RSA"

    @property
    def identity(self) -> tuple:
        """What makes two keys the same key, wherever they were read from: the algorithm (an EC
        key's names its curve) with the modulus and exponent, the point, or else the SPKI."""
        other = self.spki if self.modulus is None and self.point is None else b""
        return (self.algorithm, self.bits, self.modulus, self.exponent, self.point, other)


def _spki(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    try:
        return key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (AttributeError, ValueError, TypeError):
        return b""


def _describe(key: object, source: str) -> PublicKeyInfo:
    """The detectors' view of a cryptography public key, built in one go (dataclasses.replace on
    the frozen result would cost more than the detectors themselves)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    modulus = exponent = point = magnitude = None
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        bits = numbers.n.bit_length()
        if bits > MAX_RSA_BITS:
            raise KeyTooLargeError(
                f"RSA modulus of {bits} bits exceeds the {MAX_RSA_BITS}-bit limit; refused"
            )
        algorithm, modulus, exponent = "RSA", numbers.n, numbers.e
        magnitude = modulus.to_bytes((bits + 7) // 8, "big")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithm, bits = f"EC {key.curve.name}", key.curve.key_size
        point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm, bits = "Ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        algorithm, bits = "Ed448", 456
    elif isinstance(key, dsa.DSAPublicKey):
        algorithm, bits = "DSA", key.key_size
    elif type(key).__name__ == "DHPublicKey":  # naming cryptography's dh module warns that FFDH is deprecated
        algorithm, bits = "DH", key.key_size
    else:  # X25519, X448: key agreement keys, none from OpenSSL 0.9.8
        algorithm, bits = type(key).__name__.removesuffix("PublicKey"), 0
    return PublicKeyInfo(algorithm, bits, modulus, exponent, source, _spki(key), point, magnitude)


class ParsedKey(NamedTuple):
    """One key found in an input, or why a block or line that should hold one does not.

    Kept per block, so one bad certificate in a bundle does not hide the other keys' results.
    """

    #: Where in the input: ``"line 12"`` (a PEM block's BEGIN line, an OpenSSH key line), or
    #: ``""`` for an input that is one key (DER).
    location: str
    key: PublicKeyInfo | None = None
    error: KeyMaterialError | None = None


#: Loads one encoded key; returns the cryptography public key and what it came from.
_Loader = Callable[[bytes], tuple[object, str]]


def _load(loader: _Loader, data: bytes, what: str) -> PublicKeyInfo:
    """``loader``'s key, described; what cryptography raises on hostile input becomes a KeyMaterialError.

    cryptography raises ValueError for malformed encodings, UnsupportedAlgorithm for unknown key
    types and curves, ``x509.InvalidVersion`` (not a ValueError) for an X.509 version other than
    v1-v3, InternalError when OpenSSL refuses a key it was handed (e.g. an oversized DH group), and
    NotImplementedError for an encoding it does not read (an OpenSSH ECDSA key's compressed point).
    """
    from cryptography import x509
    from cryptography.exceptions import InternalError, UnsupportedAlgorithm

    try:
        key, source = loader(data)
    except KeyMaterialError:
        raise
    except UnsupportedAlgorithm as exc:
        raise KeyMaterialError(f"unsupported key type in {what}: {exc}") from exc
    except InternalError as exc:
        reasons = "; ".join(error.reason_text.decode("ascii", "replace") for error in exc.err_code)
        raise KeyMaterialError(f"malformed {what}: OpenSSL refused it ({reasons or 'no reason given'})") from exc
    except (ValueError, x509.InvalidVersion) as exc:
        raise KeyMaterialError(f"malformed {what}: {exc}") from exc
    except NotImplementedError as exc:  # e.g. an OpenSSH ECDSA key with a compressed point
        raise KeyMaterialError(f"unsupported encoding in {what}: {exc}") from exc
    return _describe(key, source)


def _entry(location: str, loader: _Loader, data: bytes, what: str) -> ParsedKey:
    try:
        return ParsedKey(location, key=_load(loader, data, what))
    except KeyMaterialError as exc:
        return ParsedKey(location, error=exc)


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``offset``; ValueError if malformed."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length, start = data[offset], data[offset + 1], offset + 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or start + size > len(data):
            raise ValueError("bad DER length")
        length, start = int.from_bytes(data[start : start + size], "big"), start + size
    if start + length > len(data):
        raise ValueError("truncated DER")
    return tag, start, start + length


def _refuse_costly_group(der: bytes) -> None:
    """Refuse a PKCS#8 DSA/DH private key beyond :data:`MAX_GROUP_BITS` or :data:`MAX_PRIVATE_VALUE_BITS`.

    Anything that is not such a key passes untouched: cryptography judges it.
    """
    try:
        _, info, _ = _der_element(der, 0)  # PrivateKeyInfo
        _, _, after_version = _der_element(der, info)
        _, algorithm, after_algorithm = _der_element(der, after_version)  # AlgorithmIdentifier
        _, _, after_oid = _der_element(der, algorithm)
        name = _FINITE_FIELD_OIDS.get(der[algorithm:after_oid])
        if name is None:
            return
        _, parameters, _ = _der_element(der, after_oid)  # Dss-Parms / DHParameter: p comes first
        _, p_start, p_end = _der_element(der, parameters)
        _, octets, _ = _der_element(der, after_algorithm)  # privateKey OCTET STRING holding INTEGER x
        _, x_start, x_end = _der_element(der, octets)
    except ValueError:
        return
    p_bits = int.from_bytes(der[p_start:p_end], "big").bit_length()
    x_bits = int.from_bytes(der[x_start:x_end], "big").bit_length()
    if p_bits > MAX_GROUP_BITS or x_bits > MAX_PRIVATE_VALUE_BITS:
        raise KeyTooLargeError(
            f"{name} private key with a {p_bits}-bit group and a {x_bits}-bit private value exceeds the "
            f"limits ({MAX_GROUP_BITS} and {MAX_PRIVATE_VALUE_BITS} bits); refused"
        )


def _certificate(der: bytes) -> tuple[object, str]:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).public_key(), "certificate"


def _certificate_request(der: bytes) -> tuple[object, str]:
    from cryptography import x509

    return x509.load_der_x509_csr(der).public_key(), "certificate request"


def _public_key(der: bytes) -> tuple[object, str]:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_public_key(der), "public key"


def _private_key(der: bytes) -> tuple[object, str]:
    """The public half of a PKCS#8, PKCS#1, SEC1 or DSA private key.

    RSA key validation is skipped: it runs primality tests on p and q (seconds on a large key a
    hostile file may hold many of), and only the public half is checked here anyway.
    """
    from cryptography.hazmat.primitives import serialization

    _refuse_costly_group(der)
    try:
        private = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:  # cryptography's way of saying the key needs a password
        raise KeyMaterialError(_ENCRYPTED_HINT.format(what="an encrypted private key")) from exc
    return private.public_key(), "private key"


def _ssh_string(data: bytes, offset: int) -> tuple[bytes, int]:
    """The SSH wire-format string at ``offset``, and the offset after it."""
    end = offset + 4 + int.from_bytes(data[offset : offset + 4], "big")
    if offset + 4 > len(data) or end > len(data):
        raise ValueError("truncated OpenSSH key")
    return data[offset + 4 : end], end


def _openssh_private_key(blob: bytes) -> tuple[object, str]:
    """The public key of an ``openssh-key-v1`` private key.

    An encrypted one keeps its public key in clear in the header (``ssh-keygen -l`` reads it
    there without the passphrase), so it is checked rather than refused.
    """
    from cryptography.hazmat.primitives import serialization

    if not blob.startswith(_OPENSSH_PRIVATE_MAGIC):
        raise ValueError("not an openssh-key-v1 private key")
    cipher, offset = _ssh_string(blob, len(_OPENSSH_PRIVATE_MAGIC))
    _, offset = _ssh_string(blob, offset)  # KDF name
    _, offset = _ssh_string(blob, offset)  # KDF options
    keys = int.from_bytes(blob[offset : offset + 4], "big")
    if keys != 1:  # OpenSSH writes one; reading only the first of more would pass the others unchecked
        raise ValueError(f"an openssh-key-v1 file of {keys} keys (OpenSSH writes one): not read")
    public, _ = _ssh_string(blob, offset + 4)
    if cipher != b"none":
        key_type, _ = _ssh_string(public, 0)
        key = serialization.load_ssh_public_key(key_type + b" " + base64.b64encode(public))
        return key, "ssh private key (encrypted; public key read from its header)"
    pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(blob) + b"-----END OPENSSH PRIVATE KEY-----\n"
    private = serialization.load_ssh_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    return private.public_key(), "ssh private key"


def _ssh_public_key(line: bytes) -> tuple[object, str]:
    from cryptography.hazmat.primitives import serialization

    if line.lstrip().startswith(b"ssh-dss "):
        # load_ssh_public_identity refuses DSA (there are no DSA certificates); the key loader reads
        # it, warning that SSH DSA is deprecated: reading one to report it is what we want.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # CryptographyDeprecationWarning is one
            return serialization.load_ssh_public_key(line), "ssh public key"
    identity = serialization.load_ssh_public_identity(line)
    if isinstance(identity, serialization.SSHCertificate):
        return identity.public_key(), "ssh certificate"
    return identity, "ssh public key"


def _der_key(der: bytes) -> tuple[object, str]:
    """The key of a DER file: a certificate, CSR, public key or private key, tried in that order.

    Once the container parses (a certificate, a CSR), errors about its key are that file's
    errors, not a reason to try the next format.
    """
    from cryptography import x509

    for parse, source in ((x509.load_der_x509_certificate, "certificate"),
                          (x509.load_der_x509_csr, "certificate request")):
        try:
            container = parse(der)
        except ValueError:
            continue
        return container.public_key(), source
    try:
        return _public_key(der)
    except ValueError:
        pass
    try:
        return _private_key(der)
    except KeyMaterialError:
        raise
    except ValueError as exc:
        raise ValueError("not a certificate, certificate request, public key or private key"
                         + _container_hint(der)) from exc


#: DER content-type OIDs (tag and length included) of the stores certificates travel in.
_PKCS7_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
_PKCS7_DATA = bytes.fromhex("06092a864886f70d010701")


def _container_hint(data: bytes) -> str:
    """What store an input that holds no key in a form read here looks like, and how to get the
    certificates out of it: PKCS#12 (.p12/.pfx), PKCS#7 (.p7b) or a Java keystore."""
    head = data[:64]
    if head.startswith(b"\xfe\xed\xfe\xed"):
        return " (a Java keystore: keytool -exportcert -rfc -alias ALIAS -keystore FILE gives PEM)"
    if _PKCS7_SIGNED_DATA in head:
        return " (a PKCS#7 bundle: openssl pkcs7 -print_certs -in FILE -inform DER gives PEM)"
    if _PKCS7_DATA in head and b"\x02\x01\x03" in head[:8]:
        return " (a PKCS#12 store: openssl pkcs12 -in FILE -nokeys gives its certificates as PEM)"
    return ""


#: PEM labels we read, and how (from the block's DER).
_PEM_LOADERS: dict[str, _Loader] = {
    "CERTIFICATE": _certificate,
    "X509 CERTIFICATE": _certificate,
    "CERTIFICATE REQUEST": _certificate_request,
    "NEW CERTIFICATE REQUEST": _certificate_request,
    "PUBLIC KEY": _public_key,
    "RSA PUBLIC KEY": _public_key,
    "PRIVATE KEY": _private_key,
    "RSA PRIVATE KEY": _private_key,
    "EC PRIVATE KEY": _private_key,
    "DSA PRIVATE KEY": _private_key,
    "OPENSSH PRIVATE KEY": _openssh_private_key,
}


def _pem_label(line: str, kind: str) -> str | None:
    """The label of a ``-----BEGIN LABEL-----`` line (``kind`` "BEGIN") or END line, else None."""
    prefix = _MARKER_PREFIXES[kind]
    if line.startswith(prefix) and line.endswith("-----") and len(line) > len(prefix) + 5:
        label = line[len(prefix) : -5]
        if not label.strip(_PEM_LABEL_CHARS):  # only label characters (a third of a regex's time)
            return label
    return None


#: rsaEncryption with NULL parameters: the AlgorithmIdentifier of every RSA SubjectPublicKeyInfo
#: cryptography (and OpenSSL) writes.
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")


def _canonical_element(der: bytes, offset: int, tag: int) -> tuple[int, int] | None:
    """(content start, end) of the ``tag`` element at ``offset`` if its length is in minimal DER
    form and fits ``der``, else None."""
    if offset + 2 > len(der) or der[offset] != tag:
        return None
    length, start = der[offset + 1], offset + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[start : start + size], "big")
        start += size
        if not 0 < size <= 4 or length < 0x80 or length >> (8 * size - 8) == 0:
            return None  # indefinite, oversized or not minimal
    end = start + length
    return (start, end) if end <= len(der) else None


def _canonical_positive_integer(der: bytes, offset: int) -> tuple[int, int] | None:
    """(value, end) of the minimally encoded positive INTEGER at ``offset``, else None."""
    element = _canonical_element(der, offset, 0x02)
    if element is None:
        return None
    value = _positive_content(der, *element)
    return None if value is None else (value, element[1])


def _positive_content(der: bytes, start: int, end: int) -> int | None:
    """The value of INTEGER content ``der[start:end]`` if it is positive and minimally encoded."""
    if start == end or der[start] & 0x80 or (der[start] == 0 and (end - start == 1 or der[start + 1] < 0x80)):
        return None
    return int.from_bytes(der[start:end], "big")


#: Per length of RSA SubjectPublicKeyInfo DER read so far: its bytes before the modulus's content,
#: and where that content ends. Keys of one size and exponent length share them, so for a later
#: key that starts with the same bytes (same total and element lengths) every element boundary is
#: already checked and only the modulus's content and the exponent remain: half the work per key.
_RSA_SPKI_LAYOUTS: dict[int, tuple[bytes, int]] = {}


def _rsa_spki_key(der: bytes) -> PublicKeyInfo | None:
    """The key of an RSA SubjectPublicKeyInfo in canonical DER with ordinary values, read without
    cryptography; None for anything else, which goes to cryptography (errors included).

    Why: one RSA public key per file is the commonest input of ``check``, and importing and
    calling cryptography for it was most of the command's start-up and a good part of its time
    per file. The shapes accepted are exactly those cryptography writes back byte for byte, with
    values it loads (odd n, odd 3 <= e < n, n within :data:`MAX_RSA_BITS`), so the result is
    the one :func:`_load` gives (``tests/test_parsing.py`` compares the two on fuzzed input).
    """
    layout = _RSA_SPKI_LAYOUTS.get(len(der))
    if layout is not None and der.startswith(layout[0]):
        modulus_start, modulus_end = len(layout[0]), layout[1]
        n = _positive_content(der, modulus_start, modulus_end)
    else:
        layout = None
        outer = _canonical_element(der, 0, 0x30)
        if outer is None or outer[1] != len(der) or not der.startswith(_RSA_ALGORITHM, outer[0]):
            return None
        bit_string = _canonical_element(der, outer[0] + len(_RSA_ALGORITHM), 0x03)
        if bit_string is None or bit_string[1] != len(der) or der[bit_string[0] : bit_string[0] + 1] != b"\0":
            return None
        sequence = _canonical_element(der, bit_string[0] + 1, 0x30)
        modulus = None if sequence is None or sequence[1] != len(der) else _canonical_element(der, sequence[0], 0x02)
        if modulus is None:
            return None
        modulus_start, modulus_end = modulus
        n = _positive_content(der, modulus_start, modulus_end)
    exponent = None if n is None else _canonical_positive_integer(der, modulus_end)
    if n is None or exponent is None or exponent[1] != len(der):
        return None
    e = exponent[0]
    bits = n.bit_length()
    if not (n & 1 and e & 1 and 3 <= e < n and bits <= MAX_RSA_BITS):
        return None
    if layout is None:
        _RSA_SPKI_LAYOUTS[len(der)] = (der[:modulus_start], modulus_end)
    magnitude = der[modulus_start + 1 if der[modulus_start] == 0 else modulus_start : modulus_end]
    return PublicKeyInfo("RSA", bits, n, e, "public key", der, None, magnitude)


def _pem_key(label: str, body: list[str]) -> PublicKeyInfo:
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyMaterialError(_ENCRYPTED_HINT.format(what="an ENCRYPTED PRIVATE KEY"))
    if body and body[0].startswith("Proc-Type:") and "ENCRYPTED" in body[0]:
        raise KeyMaterialError(_ENCRYPTED_HINT.format(what=f"an encrypted {label}"))
    loader = _PEM_LOADERS.get(label)
    if loader is None:
        raise KeyMaterialError(
            f"unsupported PEM block {label!r}: expected a certificate, certificate request, public or private key"
        )
    try:
        der = base64.b64decode("".join(body), validate=True)
    except ValueError as exc:
        raise KeyMaterialError(f"malformed {label}: its body is not base64 ({exc})") from exc
    if label == "PUBLIC KEY":
        key = _rsa_spki_key(der)
        if key is not None:
            return key
    return _load(loader, der, label)


def _single_block(text: str) -> list[ParsedKey] | None:
    """The entry of a text that starts with a BEGIN line and holds no other PEM marker than its
    END line (the commonest key file: one key or certificate), or None for any other text.

    What :func:`_pem_entries`' pass gives such a text, without its per-line work (about 1 us of the
    ~20 us ``check`` spends on such a file): with exactly four runs of five dashes, the BEGIN and
    END lines hold them all, so every line between is body and every line after is ignored text.
    """
    if not text.startswith("-----BEGIN ") or text.count("-----") != 4:
        return None
    lines = text.splitlines()
    label = _pem_label(lines[0].strip(), "BEGIN")
    last = len(lines) - 1
    while "-----" not in lines[last]:
        last -= 1
    if label is None or last == 0 or label.endswith(" PARAMETERS") or _pem_label(lines[last].strip(), "END") != label:
        return None
    try:
        return [ParsedKey("line 1", key=_pem_key(label, [line.strip() for line in lines[1:last]]))]
    except KeyMaterialError as exc:
        return [ParsedKey("line 1", error=exc)]


def _pem_entries(text: str) -> list[ParsedKey]:
    """Each PEM block's key or error, in order, from one forward pass over the lines.

    Linear in the input: a BEGIN line pairs with the next marker line (a backtracking regex took
    minutes on a 1 MiB file of BEGIN lines). Text around the blocks is ignored, so commented
    bundles and ``openssl x509 -text`` output read as they are; parameter blocks (``EC
    PARAMETERS`` before an ``openssl ecparam -genkey`` key) are skipped. Lines that do not start
    with ``-----`` (body lines, the bulk of the input) cost one test each.
    """
    single = _single_block(text)
    if single is not None:
        return single
    entries: list[ParsedKey] = []
    label: str | None = None  # of the open block
    start = 0  # its BEGIN line
    body: list[str] = []
    begins = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith("-----"):
            if label is not None:
                body.append(line)
            continue
        begin = _pem_label(line, "BEGIN")
        if begin is not None:
            begins += 1
            if begins > MAX_BLOCKS:
                raise InputTooLargeError(f"more than {MAX_BLOCKS} PEM blocks; split the file")
            if label is not None:
                entries.append(_unterminated(label, start, f"before the next BEGIN at line {number}"))
            label, start, body = begin, number, []
            continue
        if label is None:
            continue
        end = _pem_label(line, "END")
        if end is None:
            body.append(line)
            continue
        if end != label:
            error = KeyMaterialError(f"BEGIN {label} is closed by END {end} at line {number}")
            entries.append(ParsedKey(f"line {start}", error=error))
        elif not end.endswith(" PARAMETERS"):
            try:
                entries.append(ParsedKey(f"line {start}", key=_pem_key(label, body)))
            except KeyMaterialError as exc:
                entries.append(ParsedKey(f"line {start}", error=exc))
        label = None
    if label is not None:
        entries.append(_unterminated(label, start, "before the end of the file: it looks truncated"))
    if begins and not entries:
        raise KeyMaterialError("the PEM blocks hold parameters only, no key")
    return entries


def _unterminated(label: str, start: int, where: str) -> ParsedKey:
    return ParsedKey(f"line {start}", error=KeyMaterialError(f"{label} has no END line {where}"))


def _skip_field(text: str) -> str:
    """``text`` after its first field; whitespace inside double quotes does not end a field
    (``authorized_keys`` options such as ``command="echo a b"``, with ``\\"`` escapes)."""
    quoted, i = False, 0
    while i < len(text):
        char = text[i]
        if quoted and char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char.isspace():
            return text[i:].lstrip()
        i += 1
    return ""


def _ssh_key_fields(line: str) -> tuple[str, str] | None:
    """(key type, base64 key) of an OpenSSH public key line, else None.

    Reads ``TYPE KEY [comment]`` (``.pub``), ``OPTIONS TYPE KEY [comment]`` (``authorized_keys``)
    and ``[@marker] HOSTS TYPE KEY`` (``known_hosts``): the key is the first key type field that
    is followed by a base64 field starting ``AAAA`` (the length prefix of the type name).
    """
    rest = line
    for _ in range(3):
        fields = rest.split(None, 2)
        if len(fields) < 2:
            return None
        if _SSH_KEY_TYPE.fullmatch(fields[0]) and fields[1].startswith("AAAA"):
            return fields[0], fields[1]
        rest = _skip_field(rest)
    return None


def _ssh_entries(text: str, others_are_errors: bool = True) -> list[ParsedKey]:
    """One entry per line of OpenSSH public key text, or [] when no line is an OpenSSH key.

    Lines other than keys, blanks and ``#`` comments are errors, so a mangled key line is
    reported rather than skipped; unless not ``others_are_errors``: key lines among PEM blocks,
    whose text around them is ignored.
    """
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not others_are_errors:  # keys only: a line that is none (an example, a truncated one) is text
        found = [(number, fields) for number, line in lines if (fields := _ssh_key_fields(line))]
        if len(found) > MAX_BLOCKS:  # refused whole, as without PEM blocks: never checked in part
            raise InputTooLargeError(f"more than {MAX_BLOCKS} OpenSSH key lines; split the file")
        keys = [_entry(f"line {number}", _ssh_public_key, " ".join(fields).encode("ascii", "replace"),
                       f"{fields[0]} key") for number, fields in found]
        return [entry for entry in keys if entry.error is None]
    if not any(_ssh_key_fields(line) for _, line in lines):
        return []
    if len(lines) > MAX_BLOCKS:
        raise InputTooLargeError(f"more than {MAX_BLOCKS} OpenSSH key lines; split the file")
    entries = []
    for number, line in lines:
        fields = _ssh_key_fields(line)
        if fields is None:
            error = KeyMaterialError("not an OpenSSH public key line (expected [options] TYPE BASE64 [comment])")
            entries.append(ParsedKey(f"line {number}", error=error))
        else:
            key_type, blob = fields
            data = f"{key_type} {blob}".encode("ascii", "replace")
            entries.append(_entry(f"line {number}", _ssh_public_key, data, f"{key_type} key"))
    return entries


def _is_der_sequence(data: bytes) -> bool:
    """Whether ``data`` is exactly one DER SEQUENCE, the shape of every DER key and certificate."""
    try:
        tag, _, end = _der_element(data, 0)
    except ValueError:
        return False
    return tag == 0x30 and end == len(data)


def _refuse_oversized(data: bytes | str) -> None:
    if len(data) > MAX_INPUT_BYTES:
        raise InputTooLargeError(
            f"larger than the {MAX_INPUT_BYTES // 1024} KiB limit for key material (a certificate or key "
            "is a few KB): pass the key file itself, or split a larger bundle"
        )


def _as_text(data: bytes | str) -> str:
    return data.decode("ascii", errors="replace") if isinstance(data, bytes) else data


#: What :func:`parse_key_material` reads, said when an input holds none of it.
_EXPECTED = "expected a certificate, key or CSR (PEM, DER or an OpenSSH public key)"

#: A number written out as text, as a test vector or ``openssl rsa -modulus`` has it: hex (with
#: or without ``0x`` or ``Modulus=``, or colon-separated bytes) or decimal.
_BARE_NUMBER = re.compile(r"(?:modulus=)?(?:0x)?[0-9a-f][0-9a-f:\s]*", re.IGNORECASE)

#: Every byte but the control bytes of binary data: ``data.translate(None, _TEXT_BYTES)`` keeps only
#: those (0.4 us for a certificate, against 2 us for a regex search). ESC and DEL are text here:
#: a pasted terminal log has colour codes, and a DER encoding cannot avoid the low control bytes
#: (its tags and lengths).
_TEXT_BYTES = bytes(b for b in range(256) if b not in {*range(0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20)})
#: What an editor may write before a PEM file's first line, and what tools pad its end with: NULs
#: (a C buffer dumped whole; mbedTLS counts the PEM's terminating NUL) and DOS's end-of-file ^Z.
_UTF8_BOM = b"\xef\xbb\xbf"
_END_PADDING = b"\x00\x1a"


def _whole_der(data: bytes) -> bytes | None:
    """``data`` as one whole DER object (a SEQUENCE, 0x30: "0"), or as one that a tool ended with
    a newline (tried second: the object's own last byte may be 0x0a); None for anything else."""
    if data[:1] != b"0":
        return None
    if _is_der_sequence(data):
        return data
    stripped = data.rstrip(b"\r\n")
    return stripped if len(stripped) < len(data) and _is_der_sequence(stripped) else None


def _is_binary(data: bytes) -> bool:
    """Whether ``data`` holds control bytes no text file does (NUL or ^Z padding at its end aside)."""
    return bool(data.rstrip(_END_PADDING).translate(None, _TEXT_BYTES))


def _may_hold_ssh_key_lines(text: str) -> bool:
    """Whether a text can hold an OpenSSH key line (a field, whitespace, then base64 starting
    ``AAAA``): a cheap test, so PEM files do not pay the per-line scan."""
    at = text.find("AAAA")  # one scan; a PEM body line may hold AAAA too, never after a blank
    while at > 0:
        if text[at - 1] in " \t":
            return True
        at = text.find("AAAA", at + 1)
    return False


def _unrecognised(data: bytes | str) -> str:
    """Why an input holds no key, in one line: what it looks like, and what was expected. A bare
    "no PEM block found" left a user with an empty file or a hex modulus guessing what was wrong."""
    hint, binary = "", False
    if isinstance(data, bytes):
        hint, binary = _container_hint(data), _is_binary(data)
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            data, binary = "\x00", True
    else:
        binary = _is_binary(data.encode("utf-8", "replace"))
    if not data:
        return f"empty file; {_EXPECTED}"
    if binary:
        return ("binary data that is not one whole DER certificate, key or CSR (truncated?), nor PEM or OpenSSH "
                f"text{hint}")
    text = data.strip()
    if not text:
        return f"blank file (whitespace only); {_EXPECTED}"
    if _BARE_NUMBER.fullmatch(text):
        return f"a bare number (such as an RSA modulus in hex), not a key file; {_EXPECTED}"
    return f"text with no PEM block (-----BEGIN ...) nor OpenSSH key line; {_EXPECTED}"


def parse_key_material(data: bytes | str) -> list[ParsedKey]:
    """Every key in one input (a file's content), or why part of it holds none, in input order.

    Reads PEM (certificates, CSRs, SPKI and PKCS#1 public keys, PKCS#8/PKCS#1/SEC1/DSA and
    OpenSSH private keys), OpenSSH public key lines (``.pub``, ``authorized_keys``,
    ``known_hosts``, certificates) and DER (certificate, CSR, public or private key). Raises
    :class:`KeyMaterialError` when the input as a whole is unusable: too large, too many blocks,
    or nothing recognisable in it.
    """
    _refuse_oversized(data)
    der = None
    if isinstance(data, bytes):
        whole = _whole_der(data)
        if whole is not None:  # one whole DER object: its key, not PEM text inside it (an extension)
            der = _entry("", _der_key, whole, "DER input")
            if der.error is None or _is_binary(whole):
                return [der]
            # else text that happens to start like DER ("0a.lan ssh-ed25519 ..."): read as text below
        data = data.removeprefix(_UTF8_BOM)
    text = _as_text(data).removeprefix("\ufeff")
    entries = _pem_entries(text)
    if entries and isinstance(data, bytes) and _is_binary(data):
        raise KeyMaterialError(
            "PEM blocks in binary data (an archive, or a DER file with more after it?): a key in the binary "
            "part would go unchecked; pass the certificate and key files themselves")
    if not entries:
        entries = _ssh_entries(text)
    elif _may_hold_ssh_key_lines(text):  # OpenSSH keys beside PEM blocks count too, in line order
        entries = sorted(entries + _ssh_entries(text, others_are_errors=False), key=_line_number)
    if entries:
        return entries
    if der is not None:
        return [der]
    raise KeyMaterialError(_unrecognised(data))


def _line_number(entry: ParsedKey) -> int:
    return int(entry.location.removeprefix("line ") or 0)


def public_keys_from_pem(text: str | bytes) -> list[PublicKeyInfo]:
    """Every key in a PEM document (text around the blocks is ignored).

    All or nothing: the first bad block raises, since callers with one certificate (AWS's
    ``certificatePem``) want its key or its error.
    """
    _refuse_oversized(text)
    entries = _pem_entries(_as_text(text))
    if not entries:
        raise KeyMaterialError("no PEM block found")
    for entry in entries:
        if entry.error is not None:
            raise entry.error
    return [entry.key for entry in entries if entry.key is not None]


def certificate_public_key(certificate_pem: str) -> PublicKeyInfo:
    """The public key of one PEM certificate, as ``DescribeCertificate`` returns it."""
    key = public_keys_from_pem(certificate_pem)[0]
    if key.source != "certificate":
        raise KeyMaterialError(f"expected a certificate, found a {key.source}")
    return key


def public_key_from_spki(der: bytes, source: str = "certificate") -> PublicKeyInfo:
    """The key the inventory stored (SubjectPublicKeyInfo DER), ready for the detectors again: an
    ordinary RSA key read directly (:func:`_rsa_spki_key`), every other through cryptography."""
    fast = _rsa_spki_key(der)
    if fast is not None:
        return fast._replace(source=source)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"stored public key is unreadable: {exc}") from exc
    return _describe(key, source)
