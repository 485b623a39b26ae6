"""Turning key material (PEM, OpenSSH, DER) into the public key we check.

Everything that can go wrong with untrusted input ends here as a :class:`KeyMaterialError` with a
message a user can act on, so callers record it against the file or resource and move on. Work
is bounded on hostile input: inputs over :data:`MAX_INPUT_BYTES` or with more than
:data:`MAX_BLOCKS` keys are refused, PEM blocks are found in one linear pass, and key shapes that
would make loading expensive (huge DSA/DH groups) are refused before cryptography sees them.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

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

_PEM_LABEL = re.compile(r"[A-Z0-9 ]+")

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
    """Input that cannot be turned into a checkable public key."""

    error_code = "MALFORMED_CERTIFICATE"


class KeyTooLargeError(KeyMaterialError):
    """An RSA modulus beyond :data:`MAX_RSA_BITS`, or a DSA/DH private key beyond :data:`MAX_GROUP_BITS`."""

    error_code = "KEY_TOO_LARGE"


class InputTooLargeError(KeyMaterialError):
    """An input beyond :data:`MAX_INPUT_BYTES`, or with more than :data:`MAX_BLOCKS` keys in it."""

    error_code = "INPUT_TOO_LARGE"


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


@dataclass(frozen=True)
class ParsedKey:
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
    v1-v3, and InternalError when OpenSSL refuses a key it was handed (e.g. an oversized DH group).
    """
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
    return x509.load_der_x509_certificate(der).public_key(), "certificate"


def _certificate_request(der: bytes) -> tuple[object, str]:
    return x509.load_der_x509_csr(der).public_key(), "certificate request"


def _public_key(der: bytes) -> tuple[object, str]:
    return serialization.load_der_public_key(der), "public key"


def _private_key(der: bytes) -> tuple[object, str]:
    """The public half of a PKCS#8, PKCS#1, SEC1 or DSA private key.

    RSA key validation is skipped: it runs primality tests on p and q (seconds on a large key a
    hostile file may hold many of), and only the public half is checked here anyway.
    """
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
    if not blob.startswith(_OPENSSH_PRIVATE_MAGIC):
        raise ValueError("not an openssh-key-v1 private key")
    cipher, offset = _ssh_string(blob, len(_OPENSSH_PRIVATE_MAGIC))
    _, offset = _ssh_string(blob, offset)  # KDF name
    _, offset = _ssh_string(blob, offset)  # KDF options
    public, _ = _ssh_string(blob, offset + 4)  # the first key, after the key count
    if cipher != b"none":
        key_type, _ = _ssh_string(public, 0)
        key = serialization.load_ssh_public_key(key_type + b" " + base64.b64encode(public))
        return key, "ssh private key (encrypted; public key read from its header)"
    pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(blob) + b"-----END OPENSSH PRIVATE KEY-----\n"
    private = serialization.load_ssh_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    return private.public_key(), "ssh private key"


def _ssh_public_key(line: bytes) -> tuple[object, str]:
    identity = serialization.load_ssh_public_identity(line)
    if isinstance(identity, serialization.SSHCertificate):
        return identity.public_key(), "ssh certificate"
    return identity, "ssh public key"


def _der_key(der: bytes) -> tuple[object, str]:
    """The key of a DER file: a certificate, CSR, public key or private key, tried in that order.

    Once the container parses (a certificate, a CSR), errors about its key are that file's
    errors, not a reason to try the next format.
    """
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
        raise ValueError("not a certificate, certificate request, public key or private key") from exc


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


@dataclass
class _PemBlock:
    label: str
    line: int  # of the BEGIN line
    body: list[str] = field(default_factory=list)


def _pem_label(line: str, kind: str) -> str | None:
    """The label of a ``-----BEGIN LABEL-----`` line (``kind`` "BEGIN") or END line, else None."""
    prefix = f"-----{kind} "
    if line.startswith(prefix) and line.endswith("-----") and len(line) > len(prefix) + 5:
        label = line[len(prefix) : -5]
        if _PEM_LABEL.fullmatch(label):
            return label
    return None


def _pem_key(block: _PemBlock) -> PublicKeyInfo:
    label = block.label
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyMaterialError(_ENCRYPTED_HINT.format(what="an ENCRYPTED PRIVATE KEY"))
    if block.body and block.body[0].startswith("Proc-Type:") and "ENCRYPTED" in block.body[0]:
        raise KeyMaterialError(_ENCRYPTED_HINT.format(what=f"an encrypted {label}"))
    loader = _PEM_LOADERS.get(label)
    if loader is None:
        raise KeyMaterialError(
            f"unsupported PEM block {label!r}: expected a certificate, certificate request, public or private key"
        )
    try:
        der = base64.b64decode("".join(block.body), validate=True)
    except ValueError as exc:
        raise KeyMaterialError(f"malformed {label}: its body is not base64 ({exc})") from exc
    return _load(loader, der, label)


def _pem_entries(text: str) -> list[ParsedKey]:
    """Each PEM block's key or error, in order, from one forward pass over the lines.

    Linear in the input: a BEGIN line pairs with the next marker line (a backtracking regex took
    minutes on a 1 MiB file of BEGIN lines). Text around the blocks is ignored, so commented
    bundles and ``openssl x509 -text`` output read as they are; parameter blocks (``EC
    PARAMETERS`` before an ``openssl ecparam -genkey`` key) are skipped.
    """
    entries: list[ParsedKey] = []
    block: _PemBlock | None = None
    begins = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        label = _pem_label(line, "BEGIN")
        if label is not None:
            begins += 1
            if begins > MAX_BLOCKS:
                raise InputTooLargeError(f"more than {MAX_BLOCKS} PEM blocks; split the file")
            if block is not None:
                entries.append(_unterminated(block, f"before the next BEGIN at line {number}"))
            block = _PemBlock(label, number)
            continue
        if block is None:
            continue
        label = _pem_label(line, "END")
        if label is None:
            block.body.append(line)
            continue
        if label != block.label:
            error = KeyMaterialError(f"BEGIN {block.label} is closed by END {label} at line {number}")
            entries.append(ParsedKey(f"line {block.line}", error=error))
        elif not label.endswith(" PARAMETERS"):
            try:
                entries.append(ParsedKey(f"line {block.line}", key=_pem_key(block)))
            except KeyMaterialError as exc:
                entries.append(ParsedKey(f"line {block.line}", error=exc))
        block = None
    if block is not None:
        entries.append(_unterminated(block, "before the end of the file: it looks truncated"))
    if begins and not entries:
        raise KeyMaterialError("the PEM blocks hold parameters only, no key")
    return entries


def _unterminated(block: _PemBlock, where: str) -> ParsedKey:
    return ParsedKey(f"line {block.line}", error=KeyMaterialError(f"{block.label} has no END line {where}"))


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


def _ssh_entries(text: str) -> list[ParsedKey]:
    """One entry per line of OpenSSH public key text, or [] when no line is an OpenSSH key.

    Lines other than keys, blanks and ``#`` comments are errors, so a mangled key line is
    reported rather than skipped.
    """
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
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


def parse_key_material(data: bytes | str) -> list[ParsedKey]:
    """Every key in one input (a file's content), or why part of it holds none, in input order.

    Reads PEM (certificates, CSRs, SPKI and PKCS#1 public keys, PKCS#8/PKCS#1/SEC1/DSA and
    OpenSSH private keys), OpenSSH public key lines (``.pub``, ``authorized_keys``,
    ``known_hosts``, certificates) and DER (certificate, CSR, public or private key). Raises
    :class:`KeyMaterialError` when the input as a whole is unusable: too large, too many blocks,
    or nothing recognisable in it.
    """
    _refuse_oversized(data)
    text = _as_text(data)
    entries = _pem_entries(text) or _ssh_entries(text)
    if entries:
        return entries
    if isinstance(data, bytes) and _is_der_sequence(data):
        return [_entry("", _der_key, data, "DER input")]
    raise KeyMaterialError("no PEM block found")


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
    """The key the inventory stored (SubjectPublicKeyInfo DER), ready for the detectors again."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"stored public key is unreadable: {exc}") from exc
    return _describe(key, source)
