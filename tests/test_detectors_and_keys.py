"""ROCA detection on the shared vectors, and key parsing of good and bad input."""

from __future__ import annotations

import hashlib
import random

import pytest
from conftest import DATA, issue_certificate
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devicedefender_audit.debian_weak.fingerprint import vulnkey_fingerprint
from devicedefender_audit.detectors.base import Verdict
from devicedefender_audit.detectors.roca import RocaDetector, has_roca_fingerprint
from devicedefender_audit.key_check import check_files
from devicedefender_audit.key_material import (
    MAX_RSA_BITS,
    KeyMaterialError,
    KeyTooLargeError,
    PublicKeyInfo,
    certificate_public_key,
    public_keys_from_pem,
)


def keys_in(path):
    if path.suffix == ".txt":
        modulus = int(path.read_text().strip(), 16)
        return [PublicKeyInfo("RSA", modulus.bit_length(), modulus, 65537)]
    return public_keys_from_pem(path.read_bytes())


@pytest.mark.parametrize("path", sorted((DATA / "roca").iterdir()), ids=lambda p: p.name)
def test_roca_flags_every_roca_vector(path):
    for key in keys_in(path):
        result = RocaDetector().check(key)
        assert result.verdict is Verdict.VULNERABLE
        assert result.reason_code == "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"


@pytest.mark.parametrize("path", sorted((DATA / "good").iterdir()), ids=lambda p: p.name)
def test_roca_passes_every_good_key(path):
    for key in keys_in(path):
        assert RocaDetector().check(key).verdict in (Verdict.CLEAN, Verdict.NOT_APPLICABLE)


@pytest.mark.parametrize("path", sorted((DATA / "debian").iterdir()), ids=lambda p: p.name)
def test_roca_does_not_flag_debian_keys(path):
    """Weak for another reason, but not ROCA: the detectors must not blur."""
    for key in keys_in(path):
        assert RocaDetector().check(key).verdict is Verdict.CLEAN


def test_roca_rejects_a_fresh_key(fresh_rsa_key):
    assert not has_roca_fingerprint(fresh_rsa_key.public_key().public_numbers().n)


def test_ec_key_is_not_applicable():
    key = public_keys_from_pem((DATA / "good" / "bk-ec-p256-rfc-example.key").read_bytes())[0]
    assert key.algorithm == "EC secp256r1"
    assert RocaDetector().check(key).verdict is Verdict.NOT_APPLICABLE


def test_text_around_pem_is_ignored():
    key = public_keys_from_pem((DATA / "debian" / "rsa-unknown-params-from-badkeys-tests.key").read_text())[0]
    assert key.is_rsa and key.bits == 2048


@pytest.mark.parametrize(
    "pem, message",
    [
        ("", "no PEM block"),
        ("hello world", "no PEM block"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "malformed CERTIFICATE"),
        ("-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n", "malformed"),
        ("-----BEGIN PGP MESSAGE-----\nAAAA\n-----END PGP MESSAGE-----\n", "unsupported PEM block"),
    ],
)
def test_malformed_pem_gets_a_clear_error(pem, message):
    with pytest.raises(KeyMaterialError, match=message):
        public_keys_from_pem(pem)


def test_certificate_expected_not_a_key():
    pem = (DATA / "good" / "pubkey01.pem").read_text()
    with pytest.raises(KeyMaterialError, match="expected a certificate"):
        certificate_public_key(pem)


def test_absurd_key_size_is_refused():
    modulus = (1 << (MAX_RSA_BITS + 16)) | 0xFFFF_FFFF_FFFF_FFFF | 1
    public = rsa.RSAPublicNumbers(65537, modulus).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyTooLargeError, match="exceeds the 16384-bit limit"):
        public_keys_from_pem(pem)


def test_csr_and_private_key_are_checked(fresh_rsa_key, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
        .sign(fresh_rsa_key, hashes.SHA256())
    )
    (tmp_path / "dev.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "roca.pem").write_bytes((DATA / "roca" / "privkey05.pem").read_bytes())
    (tmp_path / "broken.pem").write_text("garbage")
    (tmp_path / "cert.pem").write_text(issue_certificate(fresh_rsa_key))
    checks = {c.path.rsplit("/", 1)[-1]: c for c in check_files(
        sorted(str(p) for p in tmp_path.iterdir()), [RocaDetector()])}
    assert checks["dev.csr"].key.source == "certificate request" and not checks["dev.csr"].vulnerable
    assert checks["roca.pem"].key.source == "private key" and checks["roca.pem"].vulnerable
    assert checks["broken.pem"].error.startswith("text with no PEM block (-----BEGIN ...) nor OpenSSH key line")
    assert not checks["cert.pem"].vulnerable


def test_encrypted_private_key_is_a_clear_error(fresh_rsa_key):
    pem = fresh_rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyMaterialError, match="ENCRYPTED PRIVATE KEY"):
        public_keys_from_pem(pem)


def test_fingerprint_is_openssl_vulnkeys_sha1_of_the_uppercase_hex_modulus():
    """The fast hex (bytes.hex, leading zeros stripped) gives ``%X`` exactly: every size, and a
    top byte below 0x10 (one hex digit) as well as above."""
    rng = random.Random(11)
    moduli = [rng.getrandbits(bits) | 1 << (bits - 1) for bits in (5, 8, 9, 1024, 1025, 1028, 2048, 3072, 4096)
              for _ in range(50)]
    for n in moduli + [1, 0xF, 0x10]:
        assert vulnkey_fingerprint(n) == hashlib.sha1(b"Modulus=%X\n" % n).digest()[-10:], n
