"""Parsing untrusted key material: every failure is a per-file (or per-block) error, never a traceback.

Covers the formats ``check`` reads (PEM, OpenSSH, DER), the bounds on hostile input (size cap,
block cap, linear PEM scan, costly DSA/DH groups), per-file errors in ``check_files``, and
hypothesis fuzzing of the parsers with random, mutated-real and PEM-looking input.
"""

from __future__ import annotations

import base64
import io
import string
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import DATA, REPO, issue_certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicedefender_audit import key_material
from devicedefender_audit.detectors.base import Verdict
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.key_check import check_files
from devicedefender_audit.key_material import (
    MAX_BLOCKS,
    MAX_GROUP_BITS,
    MAX_INPUT_BYTES,
    MAX_PRIVATE_VALUE_BITS,
    InputTooLargeError,
    KeyMaterialError,
    KeyTooLargeError,
    ParsedKey,
    PublicKeyInfo,
    certificate_public_key,
    parse_key_material,
    public_key_from_spki,
    public_keys_from_pem,
)

SSH = DATA / "ssh"
WEAK_PEM = DATA / "debian" / "rsa1024-ssh-le64-pid1.key"


def weak_private_key():
    return serialization.load_pem_private_key(WEAK_PEM.read_bytes(), password=None)


def weak_modulus() -> int:
    return weak_private_key().public_key().public_numbers().n


def only_key(data: bytes | str) -> PublicKeyInfo:
    entries = parse_key_material(data)
    assert len(entries) == 1 and entries[0].error is None, entries
    return entries[0].key


def only_error(data: bytes | str) -> KeyMaterialError:
    entries = parse_key_material(data)
    assert len(entries) == 1 and entries[0].key is None, entries
    return entries[0].error


def pem(label: str, der: bytes) -> bytes:
    return f"-----BEGIN {label}-----\n".encode() + base64.encodebytes(der) + f"-----END {label}-----\n".encode()


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element, for building hostile structures cryptography would refuse to write."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def pkcs8_finite_field(oid_hex: str, p: int, x: int) -> bytes:
    """A PKCS#8 DSA/DH private key with the given group prime and private value."""
    parameters = tlv(0x30, integer(p) + integer((1 << 255) + 1) + integer(3))
    algorithm = tlv(0x30, tlv(0x06, bytes.fromhex(oid_hex)) + parameters)
    return tlv(0x30, integer(0) + algorithm + tlv(0x04, integer(x)))


DSA_OID = "2a8648ce380401"
DH_OID = "2a864886f70d010301"


def with_version(certificate_der: bytes, version: int) -> bytes:
    """The certificate with its X.509 version field (``[0] INTEGER 2`` for v3) set to ``version``."""
    marker = bytes.fromhex("a003020102")
    at = certificate_der.index(marker)
    return certificate_der[: at + 4] + bytes([version]) + certificate_der[at + 5 :]


def cert01_der() -> bytes:
    return x509.load_pem_x509_certificate((DATA / "good" / "cert01.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


# --- cryptography's exceptions on hostile input ------------------------------------------------


def test_invalid_x509_version_is_a_key_material_error():
    bad = pem("CERTIFICATE", with_version(cert01_der(), 7))
    with pytest.raises(KeyMaterialError, match="malformed CERTIFICATE: 7 is not a valid X509 version"):
        public_keys_from_pem(bad)
    with pytest.raises(KeyMaterialError, match="not a valid X509 version"):
        certificate_public_key(bad.decode())
    assert "not a valid X509 version" in str(only_error(with_version(cert01_der(), 7)))


def test_invalid_version_does_not_cost_the_other_files_their_results(tmp_path):
    (tmp_path / "a-bad-version.pem").write_bytes(pem("CERTIFICATE", with_version(cert01_der(), 7)))
    (tmp_path / "b-roca.pem").write_bytes((DATA / "roca" / "cert04.pem").read_bytes())
    checks = check_files(sorted(str(p) for p in tmp_path.iterdir()), [RocaDetector()])
    assert [Path(c.path).name for c in checks] == ["a-bad-version.pem", "b-roca.pem"]
    assert checks[0].error == "line 1: malformed CERTIFICATE: 7 is not a valid X509 version"
    assert checks[1].vulnerable


def test_one_bad_block_in_a_bundle_keeps_the_others():
    bundle = (DATA / "good" / "cert01.pem").read_bytes() + pem("CERTIFICATE", b"\x30\x03\x02\x01\x00") + (
        DATA / "roca" / "cert04.pem"
    ).read_bytes()
    entries = parse_key_material(bundle)
    assert [e.key is not None for e in entries] == [True, False, True]
    assert entries[1].location.startswith("line ") and "malformed CERTIFICATE" in str(entries[1].error)
    with pytest.raises(KeyMaterialError, match="malformed CERTIFICATE"):
        public_keys_from_pem(bundle)  # all or nothing, for a single certificatePem


def test_unsupported_curve_is_a_clear_error():
    spki = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secp192k1 = spki.replace(bytes.fromhex("06052b8104000a"), bytes.fromhex("06052b8104001f"))  # same length
    assert str(only_error(pem("PUBLIC KEY", secp192k1))) == (
        "unsupported key type in PUBLIC KEY: Curve 1.3.132.0.31 is not supported"
    )


def test_openssl_refusal_is_a_clear_error(monkeypatch):
    """cryptography reports some OpenSSL refusals as InternalError (a DH group over 10000 bits)."""
    monkeypatch.setattr(key_material, "MAX_GROUP_BITS", 1 << 20)  # let the key reach OpenSSL
    error = only_error(pem("PRIVATE KEY", pkcs8_finite_field(DH_OID, (1 << 16384) - 1, 12345)))  # would take 7 s
    assert str(error) == "malformed PRIVATE KEY: OpenSSL refused it (modulus too large)"


# --- bounded work on hostile input -------------------------------------------------------------


def timed(function, *args):
    start = time.perf_counter()
    try:
        result = function(*args)
    except KeyMaterialError as exc:
        result = exc
    return result, time.perf_counter() - start


HOSTILE = {
    # 1 MiB of BEGIN lines took 168 s with the old backtracking regex
    "begin-lines": "-----BEGIN CERTIFICATE-----\n" * (MAX_INPUT_BYTES // 28),
    "begin-lines-crlf": "-----BEGIN CERTIFICATE-----\r\n" * (MAX_INPUT_BYTES // 29),
    "begins-then-1MB-body": "-----BEGIN CERTIFICATE-----\n" * (MAX_BLOCKS - 1) + "A" * (MAX_INPUT_BYTES - 28 * MAX_BLOCKS),
    "unclosed-markers": "-----BEGIN " * (MAX_INPUT_BYTES // 11),
    "end-lines": "-----END CERTIFICATE-----\n" * (MAX_INPUT_BYTES // 26),
    "unclosed-quote-options": '"' + "a" * (MAX_INPUT_BYTES - 100) + " ssh-rsa AAAA",
    "many-ssh-types": "ssh-rsa " * (MAX_INPUT_BYTES // 8),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_megabyte_is_handled_in_linear_time(text):
    # Linear parsing takes ~0.02-0.3 s; the quadratic regex took 168 s on the 1 MiB file. The bound
    # is loose so a loaded CI machine cannot fail it, and tight enough to catch a quadratic scan.
    assert len(text) <= MAX_INPUT_BYTES
    for parse in (parse_key_material, public_keys_from_pem):
        result, seconds = timed(parse, text.encode())
        assert isinstance(result, (list, KeyMaterialError))
        assert seconds < 10.0, f"{parse.__name__}: {seconds:.2f} s"


def test_input_over_the_size_cap_is_refused():
    cert = (DATA / "good" / "cert01.pem").read_bytes()
    padded = cert + b"#" * (MAX_INPUT_BYTES - len(cert))
    assert len(parse_key_material(padded)) == 1  # exactly at the cap: read
    for parse in (parse_key_material, public_keys_from_pem):
        with pytest.raises(InputTooLargeError, match="1024 KiB limit"):
            parse(padded + b"#")


def test_too_many_blocks_are_refused():
    block = (DATA / "good" / "cert01.pem").read_text()
    assert len(parse_key_material(block * (MAX_BLOCKS // 10))) == MAX_BLOCKS // 10
    with pytest.raises(InputTooLargeError, match=f"more than {MAX_BLOCKS} PEM blocks"):
        parse_key_material("-----BEGIN X-----\n-----END X-----\n" * (MAX_BLOCKS + 1))
    line = (SSH / "ed25519.pub").read_text()
    with pytest.raises(InputTooLargeError, match=f"more than {MAX_BLOCKS} OpenSSH key lines"):
        parse_key_material(line * (MAX_BLOCKS + 1))


@pytest.mark.parametrize("oid", [DSA_OID, DH_OID], ids=["dsa", "dh"])
@pytest.mark.parametrize(
    "p_bits, x_bits",
    [(32768, 256), (MAX_GROUP_BITS, 200_000), (MAX_GROUP_BITS, MAX_PRIVATE_VALUE_BITS + 1)],
    ids=["huge-group", "huge-private-value", "private-value-over-limit"],
)
def test_costly_finite_field_private_key_is_refused_unloaded(oid, p_bits, x_bits):
    """Loading these would compute g^x mod p: 7 s for a 32768-bit DSA group, 0.7 s for a 200000-bit x."""
    der = pkcs8_finite_field(oid, (1 << p_bits) - 1, (1 << x_bits) - 12345)
    for data in (der, pem("PRIVATE KEY", der)):
        result, seconds = timed(only_error, data)
        assert isinstance(result, KeyTooLargeError), result
        assert str(result).endswith(f"exceeds the limits ({MAX_GROUP_BITS} and {MAX_PRIVATE_VALUE_BITS} bits); refused")
        assert seconds < 0.5


def test_a_megabyte_of_the_costliest_accepted_dsa_keys_is_bounded():
    p = (1 << MAX_GROUP_BITS) - 1
    block = pem("PRIVATE KEY", pkcs8_finite_field(DSA_OID, p, (1 << MAX_PRIVATE_VALUE_BITS) - 12345))
    entries, seconds = timed(parse_key_material, block * min(MAX_BLOCKS, MAX_INPUT_BYTES // len(block)))
    assert len(entries) == MAX_BLOCKS and all(e.key is not None and e.key.algorithm == "DSA" for e in entries)
    assert seconds < 10  # about 2.5 s; with 4096-bit private values (680 fit in 1 MiB) it was 16 s


def test_rsa_private_key_over_the_modulus_limit_is_refused(fresh_rsa_key):
    numbers = fresh_rsa_key.private_numbers()
    huge = (1 << (key_material.MAX_RSA_BITS + 8)) | 1
    # only the public half is read, so an inconsistent huge private key is refused by its modulus
    forged = pem("RSA PRIVATE KEY", tlv(0x30, b"".join(integer(v) for v in (
        0, huge, 65537, numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp))))
    assert isinstance(only_error(forged), KeyTooLargeError)


# --- PEM structure ------------------------------------------------------------------------------


def test_pem_structure_errors_name_the_line():
    cert = (DATA / "good" / "cert01.pem").read_text()
    truncated = cert[: len(cert) // 2]
    [entry] = parse_key_material("comment\n" + truncated)
    assert entry.location == "line 2"
    assert str(entry.error) == "CERTIFICATE has no END line before the end of the file: it looks truncated"
    mismatched = cert.replace("-----END CERTIFICATE-----", "-----END PUBLIC KEY-----")
    assert "BEGIN CERTIFICATE is closed by END PUBLIC KEY" in str(only_error(mismatched))
    entries = parse_key_material(truncated + "\n" + cert)
    assert "before the next BEGIN" in str(entries[0].error) and entries[1].key.source == "certificate"


def test_indented_crlf_pem_with_text_around_is_read():
    cert = (DATA / "good" / "cert01.pem").read_text()
    indented = "certificate: |\r\n" + "".join(f"  {line}\r\n" for line in cert.splitlines()) + "other: 1\r\n"
    assert only_key(indented).source == "certificate"


def test_ec_parameters_block_is_skipped():
    key = ec.generate_private_key(ec.SECP256R1())
    params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    assert only_key(params + private).algorithm == "EC secp256r1"
    with pytest.raises(KeyMaterialError, match="parameters only"):
        parse_key_material(params)


def test_x509_certificate_label_is_a_certificate():
    cert = (DATA / "good" / "cert01.pem").read_text().replace(" CERTIFICATE-----", " X509 CERTIFICATE-----")
    assert only_key(cert).source == "certificate"


def test_legacy_encrypted_pem_is_a_clear_error():
    encrypted = weak_private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert "cannot read an encrypted RSA PRIVATE KEY without its passphrase" in str(only_error(encrypted))


def test_non_ascii_pem_body_is_malformed():
    cert = (DATA / "good" / "cert01.pem").read_text()
    assert "not base64" in str(only_error(cert.replace("M", "\u00e9", 1).encode("utf-8")))


# --- OpenSSH -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian_detector() -> DebianWeakDetector:
    detector = DebianWeakDetector(REPO / "blocklists")
    if 1024 not in detector.tables:
        pytest.skip("no RSA-1024 blocklist in blocklists/")
    return detector


@pytest.mark.parametrize(
    "name, source",
    [
        ("debian-rsa1024-ssh-le64-pid1.pub", "ssh public key"),
        ("debian-rsa1024-ssh-le64-pid1.openssh", "ssh private key"),
        ("debian-rsa1024-ssh-le64-pid1-encrypted.openssh", "ssh private key (encrypted; public key read from its header)"),
    ],
)
def test_ssh_keygen_files_of_the_weak_key_are_flagged(name, source, debian_detector):
    """ssh-keygen's own output (the weak Debian key converted with ``ssh-keygen -y`` / ``-p``)."""
    key = only_key((SSH / name).read_bytes())
    assert key.source == source
    assert (key.algorithm, key.bits, key.modulus) == ("RSA", 1024, weak_modulus())
    result = debian_detector.check(key)
    assert result.verdict is Verdict.VULNERABLE and result.reason_code == "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"


def test_cryptography_openssh_encodings_of_the_weak_key_are_flagged(debian_detector):
    private = weak_private_key()
    public_line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    for data, source in ((public_line, "ssh public key"), (private_pem, "ssh private key")):
        key = only_key(data)
        assert key.source == source and key.modulus == weak_modulus()
        assert debian_detector.check(key).verdict is Verdict.VULNERABLE


def test_authorized_keys_with_options_and_every_key_type(debian_detector):
    entries = parse_key_material((SSH / "authorized_keys").read_bytes())
    assert all(e.error is None for e in entries), entries
    assert [(e.location, e.key.algorithm) for e in entries] == [
        ("line 2", "RSA"),  # command="echo 'hello world'",no-pty,from="10.0.0.1" ssh-rsa ...
        ("line 4", "Ed25519"),
        ("line 5", "EC secp256r1"),  # restrict ecdsa-sha2-nistp256 ...
        ("line 6", "EC secp384r1"),
        ("line 7", "EC secp521r1"),
    ]
    assert debian_detector.check(entries[0].key).verdict is Verdict.VULNERABLE


def test_known_hosts_and_escaped_quotes():
    line = (SSH / "ed25519.pub").read_text().split()[:2]
    text = (
        f"|1|c2FsdA==|aGFzaA== {line[0]} {line[1]}\n"
        f"@cert-authority *.example.com {line[0]} {line[1]}\n"
        f'command="echo \\"quoted spaces\\" here" {line[0]} {line[1]} me@host\n'
    )
    assert [e.key.algorithm for e in parse_key_material(text)] == ["Ed25519"] * 3


def test_ssh_certificate_and_private_key():
    cert = only_key((SSH / "ecdsa256-cert.pub").read_bytes())
    assert (cert.source, cert.algorithm) == ("ssh certificate", "EC secp256r1")
    private = only_key((SSH / "ed25519.openssh").read_bytes())
    assert (private.source, private.algorithm) == ("ssh private key", "Ed25519")
    assert private.spki == only_key((SSH / "ed25519.pub").read_bytes()).spki


def test_bad_ssh_lines_are_errors_beside_the_good_ones():
    good = (SSH / "ed25519.pub").read_text().strip()
    text = f"{good}\nssh-rsa AAAAnot-a-key\nthis line is no key\necdsa-sha2-nistp192 AAAAE2VjZHNh\n"
    entries = parse_key_material(text)
    assert entries[0].key.algorithm == "Ed25519"
    assert [e.location for e in entries[1:]] == ["line 2", "line 3", "line 4"]
    assert str(entries[1].error).startswith("malformed ssh-rsa key")
    assert str(entries[2].error).startswith("not an OpenSSH public key line")
    assert str(entries[3].error).startswith("unsupported key type in ecdsa-sha2-nistp192 key")


def test_mangled_openssh_private_key_is_malformed():
    text = (SSH / "ed25519.openssh").read_text()
    lines = text.splitlines()
    assert "malformed OPENSSH PRIVATE KEY" in str(only_error("\n".join(lines[:1] + lines[2:])))


# --- DER -----------------------------------------------------------------------------------------


def test_der_certificate_public_key_csr_and_private_keys(fresh_rsa_key):
    private = weak_private_key()
    der = serialization.Encoding.DER
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
        .sign(fresh_rsa_key, hashes.SHA256())
    )
    cases = {
        "certificate": cert01_der(),
        "certificate request": csr.public_bytes(der),
        "public key": private.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo),
        "private key": private.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
    for source, data in cases.items():
        assert only_key(data).source == source
    traditional = private.private_bytes(der, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    assert only_key(traditional).modulus == weak_modulus()
    pkcs1_public = private.public_key().public_bytes(der, serialization.PublicFormat.PKCS1)
    assert only_key(pkcs1_public).modulus == weak_modulus()


def test_der_errors_are_clear():
    encrypted = weak_private_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    assert "cannot read an encrypted private key without its passphrase" in str(only_error(encrypted))
    assert str(only_error(tlv(0x30, integer(5)))) == (
        "malformed DER input: not a certificate, certificate request, public key or private key"
    )
    with pytest.raises(KeyMaterialError, match="^binary data that is not one whole DER certificate"):
        parse_key_material(cert01_der()[:-1])  # not one whole DER element: not taken for DER


# --- check_files: one outcome per file ----------------------------------------------------------


def test_every_file_gets_its_own_outcome(tmp_path, fresh_rsa_key):
    good = tmp_path / "good.pem"
    good.write_text(issue_certificate(fresh_rsa_key))
    (tmp_path / "big.pem").write_bytes(b"#" * (MAX_INPUT_BYTES + 1))
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)))
    (tmp_path / "dir").mkdir()
    (tmp_path / "roca.der").write_bytes(
        x509.load_pem_x509_certificate((DATA / "roca" / "cert04.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    names = ["good.pem", "missing.pem", "big.pem", "garbage.bin", "dir", "roca.der"]
    checks = check_files([str(tmp_path / n) for n in names], [RocaDetector()])
    by_name = {Path(c.path).name: c for c in checks}
    assert list(by_name) == names and len(checks) == len(names)
    assert by_name["good.pem"].error is None and not by_name["good.pem"].vulnerable
    assert by_name["missing.pem"].error == "no such file"
    assert "1024 KiB limit" in by_name["big.pem"].error
    assert by_name["garbage.bin"].error.startswith("binary data that is not one whole DER certificate")
    assert by_name["dir"].error.startswith("is a directory")
    assert by_name["roca.der"].vulnerable and by_name["roca.der"].location == ""


def test_endless_input_is_refused_without_reading_it_all():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    [check] = check_files(["/dev/zero"], [RocaDetector()])
    assert "KiB limit" in check.error


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.pem"
    path.write_text("x")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("os.open", refuse)  # what check_files opens files with
    [check] = check_files([str(path)], [RocaDetector()])
    assert check.error == "permission denied: cannot read the file"


def test_dash_reads_standard_input(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO((SSH / "authorized_keys").read_bytes())))
    checks = check_files(["-"], [RocaDetector()])
    assert [c.location for c in checks] == ["line 2", "line 4", "line 5", "line 6", "line 7"]
    assert all(c.path == "-" and c.error is None for c in checks)


def test_errors_in_a_bundle_carry_their_line(tmp_path):
    path = tmp_path / "bundle.pem"
    path.write_bytes((DATA / "good" / "cert01.pem").read_bytes() + b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    ok, bad = check_files([str(path)], [RocaDetector()])
    assert ok.key is not None and ok.location == "line 1"
    assert bad.location != "" and bad.error.startswith(f"{bad.location}: CERTIFICATE has no END line")


# --- fuzzing ------------------------------------------------------------------------------------

#: Small counts and no example database: the fuzz tests take a few seconds and leave no files.
FUZZ = settings(max_examples=120, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])

REAL_FILES = sorted(
    p for folder in ("good", "roca", "debian", "ssh") for p in (DATA / folder).iterdir() if p.suffix != ".txt"
)
REAL = [p.read_bytes() for p in REAL_FILES]


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of the header-less PEM blocks in ``data``, to mutate below the base64 layer."""
    blocks: list[tuple[str, bytes]] = []
    label, body = None, []
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith("-----BEGIN "):
            label, body = line[11:-5], []
        elif line.startswith("-----END ") and label is not None:
            if ":" not in "".join(body):
                blocks.append((label, base64.b64decode("".join(body))))
            label = None
        elif label is not None:
            body.append(line.strip())
    return blocks


REAL_BLOCKS = [block for data in REAL for block in pem_blocks(data)]
LABELS = sorted({label for label, _ in REAL_BLOCKS} | set(key_material._PEM_LOADERS) | {
    "ENCRYPTED PRIVATE KEY", "EC PARAMETERS", "PGP MESSAGE", "X"})
#: Noise characters: printable ASCII and a few that upset decoders (a fixed alphabet also spares
#: hypothesis building its Unicode tables, seconds on a first run).
NOISE = string.printable + "\u00e9\ufffd\u2028\x00-"
SSH_TYPES = ["ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "ssh-rsa-cert-v01@openssh.com"]
SSH_BLOBS = [base64.b64decode(line.split()[1]) for data in REAL for line in data.decode().splitlines()
             if line.split()[:1] and line.split()[0] in SSH_TYPES[:6]]


def assert_keys_or_key_material_error(data: bytes | str) -> None:
    """The property: a list of keys and per-block KeyMaterialErrors, or one KeyMaterialError."""
    try:
        entries = parse_key_material(data)
    except KeyMaterialError:
        pass
    else:
        assert entries
        for entry in entries:
            assert isinstance(entry, ParsedKey)
            assert (entry.key is None) != (entry.error is None)
            assert isinstance(entry.key, PublicKeyInfo) or isinstance(entry.error, KeyMaterialError)
    try:
        keys = public_keys_from_pem(data)
    except KeyMaterialError:
        return
    assert keys and all(isinstance(k, PublicKeyInfo) for k in keys)


@st.composite
def mutated(draw, originals: list[bytes]) -> bytes:
    """An original with a few bit flips, truncations, deletions, insertions or duplications."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "truncate", "delete", "insert", "duplicate"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[at:]
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def pem_documents(draw) -> bytes:
    """PEM-looking text: blocks with real, mutated or random bodies, stray markers and noise lines."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["block", "block", "begin", "end", "noise"]))
        label = draw(st.sampled_from(LABELS))
        if kind == "block":
            body = draw(st.one_of(
                mutated([der for _, der in REAL_BLOCKS]),
                st.sampled_from([der for _, der in REAL_BLOCKS]),
                st.binary(max_size=200),
            ))
            end_label = draw(st.sampled_from([label, label, draw(st.sampled_from(LABELS))]))
            headers = draw(st.sampled_from(["", "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n"]))
            parts.append(f"-----BEGIN {label}-----\n{headers}{base64.encodebytes(body).decode()}"
                         f"-----END {end_label}-----")
        elif kind in ("begin", "end"):
            parts.append(f"-----{kind.upper()} {label}-----")
        else:
            parts.append(draw(st.text(NOISE, max_size=40)))
    return "\n".join(parts).encode("utf-8", "surrogatepass")


@st.composite
def ssh_lines(draw) -> bytes:
    """OpenSSH public key lines: options, real/mutated/structured/random blobs, comments."""
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        key_type = draw(st.sampled_from(SSH_TYPES))
        blob = draw(st.one_of(
            mutated(SSH_BLOBS),
            st.binary(max_size=120).map(lambda b, t=key_type: len(t).to_bytes(4, "big") + t.encode() + b),
            st.binary(max_size=120),
        ))
        options = draw(st.sampled_from(["", 'command="a b" ', "restrict ", '"unclosed ', "host1,host2 "]))
        comment = draw(st.sampled_from(["", " me@host", " #x"]))
        lines.append(f"{options}{key_type} {base64.b64encode(blob).decode()}{comment}")
    return "\n".join(lines).encode()


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    assert_keys_or_key_material_error(data)


@FUZZ
@given(mutated(REAL))
def test_fuzz_mutated_real_files(data):
    assert_keys_or_key_material_error(data)


@FUZZ
@given(st.sampled_from(REAL_BLOCKS).flatmap(lambda block: mutated([block[1]]).map(lambda der: (block[0], der))))
def test_fuzz_mutated_der_inside_real_pem_and_as_der(block):
    label, der = block
    assert_keys_or_key_material_error(pem(label, der))
    assert_keys_or_key_material_error(der)
    try:
        public_key_from_spki(der)
    except KeyMaterialError:
        pass


def der(tag: int, content: bytes, length: bytes | None = None) -> bytes:
    """A DER element; ``length`` overrides the (minimal) length octets to build non-canonical ones."""
    if length is None:
        size = len(content)
        length = bytes([size]) if size < 0x80 else bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes(
            (size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def der_integer(value: int, padding: bytes = b"") -> bytes:
    return der(0x02, padding + value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")


def rsa_spki(n: int, e: int, algorithm: bytes = RSA_ALGORITHM, unused_bits: bytes = b"\0",
             n_padding: bytes = b"", trailer: bytes = b"") -> bytes:
    inner = der(0x30, der_integer(n, n_padding) + der_integer(e))
    return der(0x30, algorithm + der(0x03, unused_bits + inner) + trailer)


def non_minimal(element: bytes) -> bytes:
    """``element`` (of 128-65535 content bytes) with its length in three octets where two would do."""
    content = element[2 + (element[1] & 0x7F):]
    return der(element[0], content, b"\x83" + len(content).to_bytes(3, "big"))


def via_cryptography(spki: bytes) -> PublicKeyInfo | None:
    try:
        return key_material._load(key_material._public_key, spki, "PUBLIC KEY")
    except KeyMaterialError:
        return None


def assert_fast_path_agrees(spki: bytes) -> PublicKeyInfo | None:
    """The property of the RSA SubjectPublicKeyInfo fast path: it gives what cryptography gives, or
    declines; a stored key (``public_key_from_spki``, which takes the fast path) is read the same."""
    fast = key_material._rsa_spki_key(spki)
    assert fast is None or fast == via_cryptography(spki), spki.hex()
    if fast is not None:  # what public_key_from_spki gave before it took the fast path
        through_cryptography = key_material._describe(serialization.load_der_public_key(spki), "certificate")
        assert key_material.public_key_from_spki(spki) == through_cryptography
    return fast


MODULUS = weak_modulus()
ODD_2048 = (1 << 2047) | 0x1234567 << 1000 | 1
RSA_SPKIS = [block for label, block in REAL_BLOCKS if label == "PUBLIC KEY" and RSA_ALGORITHM in block] + [
    rsa_spki(n, e) for n in (MODULUS, ODD_2048, (1 << key_material.MAX_RSA_BITS - 1) | 1) for e in (3, 65537)]


def test_rsa_public_keys_are_read_without_cryptography_exactly_as_with_it():
    for spki in RSA_SPKIS:
        assert assert_fast_path_agrees(spki) is not None
    assert only_key(pem("PUBLIC KEY", rsa_spki(MODULUS, 65537))) == via_cryptography(rsa_spki(MODULUS, 65537))


@pytest.mark.parametrize("spki", [
    rsa_spki(MODULUS, 1), rsa_spki(MODULUS, 4), rsa_spki(MODULUS, MODULUS), rsa_spki(MODULUS + 1, 3),
    rsa_spki(-MODULUS, 3), rsa_spki(MODULUS, -3), rsa_spki(MODULUS, 3, n_padding=b"\0"),
    rsa_spki((1 << key_material.MAX_RSA_BITS + 8) | 1, 65537),
    rsa_spki(MODULUS, 3, algorithm=bytes.fromhex("300b06092a864886f70d010101")),  # no NULL parameters
    rsa_spki(MODULUS, 3, unused_bits=b"\1"), rsa_spki(MODULUS, 3, trailer=der(0x05, b"")),
    non_minimal(rsa_spki(MODULUS, 3)),
    der(0x30, RSA_ALGORITHM + der(0x03, b"\0" + non_minimal(der(0x30, der_integer(MODULUS) + der_integer(3))))),
    rsa_spki(MODULUS, 3) + b"\0", rsa_spki(MODULUS, 3)[:-1], b"", b"\x30",
])
def test_rsa_fast_path_leaves_every_unusual_encoding_to_cryptography(spki):
    assert assert_fast_path_agrees(spki) is None


def test_rsa_fast_path_checks_modulus_and_exponent_of_a_key_shaped_like_one_read_before():
    """Keys with the same length and headers as one read before skip the element checks, not
    the checks of their own modulus and exponent."""
    good = rsa_spki(MODULUS, 65537)
    assert assert_fast_path_agrees(good) is not None
    n_start = len(good) - 5 - (MODULUS.bit_length() // 8 + 1)  # e = 65537 is the last 5 bytes
    negative = good[:n_start] + b"\x80" + good[n_start + 1 :]
    padded = good[:n_start] + b"\x00\x00" + good[n_start + 2 :]  # not minimal
    padded_e = good[:-5] + b"\x02\x03\x00\x01\x01"
    not_integer_e = good[:-5] + b"\x04\x03\x01\x00\x01"
    for spki in (negative, padded, padded_e, not_integer_e, rsa_spki(MODULUS, 65536), rsa_spki(MODULUS - 1, 65537)):
        assert len(spki) == len(good)
        assert assert_fast_path_agrees(spki) is None
    assert assert_fast_path_agrees(rsa_spki(MODULUS + 2, 65539)) == via_cryptography(rsa_spki(MODULUS + 2, 65539))


@FUZZ
@given(mutated(RSA_SPKIS))
def test_fuzz_rsa_fast_path_agrees_with_cryptography(spki):
    assert_fast_path_agrees(spki)


@FUZZ
@given(pem_documents())
def test_fuzz_pem_looking_documents(data):
    assert_keys_or_key_material_error(data)


@FUZZ
@given(ssh_lines())
def test_fuzz_openssh_lines(data):
    assert_keys_or_key_material_error(data)


def test_fuzz_corpus_is_real():
    """The fuzzers start from every kind of real input (else they would only test the error path)."""
    labels = {label for label, _ in REAL_BLOCKS}
    assert {"CERTIFICATE", "PUBLIC KEY", "RSA PRIVATE KEY", "OPENSSH PRIVATE KEY"} <= labels
    assert len(SSH_BLOBS) >= 5


# Inputs that hid a weak key behind another (found by an adversarial hunt) ---------------------


def _ssh_blob(public_key) -> bytes:
    return base64.b64decode(public_key.public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).split()[1])


def _good_public_pem() -> bytes:
    good = ec.generate_private_key(ec.SECP256R1()).public_key()
    return good.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


NOW = datetime.now(timezone.utc)


def test_a_der_certificate_is_read_as_der_even_with_pem_text_inside_it():
    """A PEM block in an extension's value is data of the certificate, not the key to check."""
    weak = weak_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(weak.public_key())
                   .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
                   .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                             b"\n" + _good_public_pem()), critical=False)
                   .sign(weak, hashes.SHA256()))
    assert only_key(certificate.public_bytes(serialization.Encoding.DER)).modulus == weak_modulus()


def test_pem_blocks_in_binary_data_are_refused_not_read_alone():
    """An archive holding a weak DER certificate and a good PEM one: reading the PEM block alone
    reported the archive clean."""
    certificate = x509.load_pem_x509_certificate(issue_certificate(weak_private_key()).encode())
    weak_der = certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(KeyMaterialError, match="PEM blocks in binary data"):
        parse_key_material(b"weak.der\0\0\0" + weak_der + b"\0" * 64 + b"subject=CN=good\n" + _good_public_pem())


def test_openssh_key_lines_beside_pem_blocks_are_read_too():
    line = weak_private_key().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH)
    for data in (_good_public_pem() + b"some text\n" + line + b" device\n", line + b"\n" + _good_public_pem()):
        entries = parse_key_material(data)
        assert all(e.error is None for e in entries) and len(entries) == 2  # the text line is ignored
        assert weak_modulus() in {e.key.modulus for e in entries}


def test_an_openssh_private_key_file_of_two_keys_is_refused():
    """OpenSSH writes one key a file; reading the first of two passed the second unchecked."""
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    good = ec.generate_private_key(ec.SECP256R1()).public_key()
    header = (b"openssh-key-v1\0" + string(b"aes256-ctr") + string(b"bcrypt") + string(string(b"\0" * 16) + b"\0\0\0\x10")
              + (2).to_bytes(4, "big") + string(_ssh_blob(good)) + string(_ssh_blob(weak_private_key().public_key()))
              + string(b"\0" * 64))
    pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(header) + b"-----END OPENSSH PRIVATE KEY-----\n"
    [entry] = parse_key_material(pem)
    assert entry.error is not None and "of 2 keys (OpenSSH writes one)" in str(entry.error)


def test_an_ssh_ecdsa_key_with_a_compressed_point_is_its_files_error_only(tmp_path):
    """cryptography raises NotImplementedError for it: that was a traceback losing every result."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    blob = b"".join(len(p).to_bytes(4, "big") + p for p in (b"ecdsa-sha2-nistp256", b"nistp256", point))
    (tmp_path / "a.pub").write_bytes(b"ecdsa-sha2-nistp256 " + base64.b64encode(blob) + b" device\n")
    (tmp_path / "b-roca.pem").write_bytes((DATA / "roca" / "cert04.pem").read_bytes())
    checks = check_files(sorted(str(p) for p in tmp_path.iterdir()), [RocaDetector()])
    assert "unsupported encoding" in checks[0].error and checks[1].vulnerable


def test_a_utf8_byte_order_mark_before_pem_is_ignored():
    assert only_key(b"\xef\xbb\xbf" + _good_public_pem()).algorithm == "EC secp256r1"


@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")  # pytest resets the module's filter
def test_a_dh_key_is_not_covered_and_read_without_a_warning(tmp_path):
    """Debian's OpenSSL drew DH private values from the broken PRNG too: NOT_COVERED, like DSA,
    not NOT_APPLICABLE; cryptography's FFDH deprecation notice is not printed into a report."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives.asymmetric import dh

    modp_1024 = int("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
                    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
                    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF", 16)  # RFC 2409
    public = dh.DHParameterNumbers(modp_1024, 2).parameters().generate_private_key().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key = only_key(pem)
    assert (key.algorithm, key.bits) == ("DH", 1024)
    result = DebianWeakDetector(REPO / "blocklists").check(key)
    assert result.verdict is Verdict.NOT_COVERED and result.detail == "DH keys from the Debian bug are not covered"
    (tmp_path / "dh.pem").write_bytes(pem)
    proc = subprocess.run([sys.executable, "-m", "devicedefender_audit", "check", str(tmp_path / "dh.pem")],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 4 and proc.stderr == ""


def test_key_agreement_keys_are_named_plainly():
    from cryptography.hazmat.primitives.asymmetric import x25519

    public = x25519.X25519PrivateKey.generate().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert only_key(pem).algorithm == "X25519"


@pytest.mark.parametrize("wrap", [
    lambda pem: pem + b"\x1a",  # DOS end-of-file, as `copy a.pem+b.pem` writes it
    lambda pem: pem + b"\0",  # a C buffer written with its terminating NUL (mbedTLS counts it)
    lambda pem: pem + b"\0" * 2000,  # a fixed-size buffer or flash dump
    lambda pem: b"\x1b[32mINFO\x1b[0m device cert:\n" + pem + b"\x1b[?2004l\x7f\n",  # a coloured terminal log
], ids=["ctrl-z", "nul", "nul-padding", "terminal-log"])
def test_text_padding_and_terminal_codes_around_pem_are_not_binary(wrap):
    assert only_key(wrap(_good_public_pem())).algorithm == "EC secp256r1"


def test_text_that_happens_to_start_like_der_is_read_as_text():
    """'0' is a SEQUENCE tag and 'a' a valid length: a known_hosts line for 0a.lan can be one
    whole DER element. It is not a DER key, so it is read as the text it is."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    body = b".lan " + line + b" "
    data = b"0a" + body + b"x" * (ord("a") - len(body))  # the host 0a.lan, the comment making 97 bytes
    assert key_material._is_der_sequence(data)
    assert only_key(data).algorithm == "Ed25519"


def test_a_der_file_ended_with_a_newline_is_read():
    der = x509.load_pem_x509_certificate((DATA / "roca" / "cert04.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER)
    assert only_key(der + b"\n").modulus == only_key(der).modulus


def test_an_unreadable_ssh_line_beside_pem_is_text_and_keys_come_in_line_order():
    """Beside PEM blocks, text is ignored: an example or truncated key line too (only key lines
    that are keys count), and the entries come in the order of their lines."""
    weak = weak_private_key().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH)
    data = (b"# runbook\n    ssh-rsa AAAAB3NzaC1yc2E...QC... you@laptop\n" + weak + b" device\n"
            + _good_public_pem())
    entries = parse_key_material(data)
    assert [e.location for e in entries] == ["line 3", "line 4"] and all(e.error is None for e in entries)
    assert entries[0].key.modulus == weak_modulus()


def test_certificate_stores_are_named_with_how_to_get_pem_out():
    from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

    private = weak_private_key()
    certificate = x509.load_pem_x509_certificate(issue_certificate(private).encode())
    stores = {
        "PKCS#12 store": pkcs12.serialize_key_and_certificates(b"device", private, certificate, None,
                                                               serialization.NoEncryption()),
        "PKCS#7 bundle": pkcs7.serialize_certificates([certificate], serialization.Encoding.DER),
        "Java keystore": b"\xfe\xed\xfe\xed\0\0\0\x02\0\0\0\x01" + bytes(range(64)),
    }
    for name, data in stores.items():
        entries = []
        try:
            entries = parse_key_material(data)
        except KeyMaterialError as exc:
            message = str(exc)
        else:
            [entry] = entries
            message = str(entry.error)
        assert f"(a {name}:" in message and "PEM" in message, message


def test_more_key_lines_than_the_limit_beside_pem_are_refused_not_cut():
    """Beside a PEM block the key lines past the limit were dropped in silence: a weak key on
    line 1007 went unchecked."""
    line = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(InputTooLargeError, match=f"more than {MAX_BLOCKS} OpenSSH key lines"):
        parse_key_material(_good_public_pem() + (line + b"\n") * (MAX_BLOCKS + 1))
