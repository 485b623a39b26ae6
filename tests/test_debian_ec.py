"""CVE-2008-0166 EC keys: the replay regenerates real ones, the lists and the detector find them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO, load_private_key
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from devicedefender_audit.debian_weak import ec_generator
from devicedefender_audit.debian_weak.blocklist_file import BlocklistError, BlocklistTable, data_path
from devicedefender_audit.debian_weak.ec_curves import CURVES, P256, ec_point_fingerprint
from devicedefender_audit.debian_weak.ec_keygen import (
    public_point,
    weak_ec_point,
    weak_ec_private_key,
)
from devicedefender_audit.debian_weak.fingerprint import Origin, split_fingerprint
from devicedefender_audit.debian_weak.platform import LE64, PLATFORMS
from devicedefender_audit.debian_weak.weak_tools import OPENSSL_VARIANTS
from devicedefender_audit.detectors.base import Verdict
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.key_material import PublicKeyInfo, public_key_from_spki, public_keys_from_pem

SHIPPED = REPO / "blocklists"
EC_VECTOR = re.compile(r"ecp(?P<bits>\d+)-ssl-(?P<platform>\w+)-pid(?P<pid>\d+)-(?P<variant>[\w-]+)\.key")
EC_VECTORS = sorted((DATA / "debian-ec").glob("ecp*.key"))
REASON = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"


def ec_vector_params(path: Path) -> tuple[str, str, str, int]:
    """(curve, platform, variant, pid) from a vector's file name."""
    m = EC_VECTOR.fullmatch(path.name)
    assert m, path.name
    return f"p{m['bits']}", m["platform"], m["variant"], int(m["pid"])


def pem_key(path: Path) -> PublicKeyInfo:
    return public_keys_from_pem(path.read_bytes())[0]


# --- the replay ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EC_VECTORS, ids=lambda p: p.name)
def test_regenerates_real_weak_ec_key(path):
    curve, platform, variant, pid = ec_vector_params(path)
    private = load_private_key(path)
    assert private.curve.name == CURVES[curve].cryptography_name
    assert weak_ec_private_key(CURVES[curve], PLATFORMS[platform], variant, pid) == private.private_numbers().private_value
    expected = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert weak_ec_point(CURVES[curve], PLATFORMS[platform], variant, pid) == expected


def test_ec_vectors_cover_every_platform_and_openssl_variant():
    seen = [ec_vector_params(p) for p in EC_VECTORS]
    assert {platform for _, platform, _, _ in seen} == set(PLATFORMS)
    assert {variant for _, _, variant, _ in seen} == set(OPENSSL_VARIANTS)


def test_neighbouring_pid_gives_another_ec_key():
    assert weak_ec_point(P256, LE64, "rnd", 1) != weak_ec_point(P256, LE64, "rnd", 2)


@pytest.mark.parametrize("curve", CURVES.values(), ids=lambda c: c.name)
def test_curve_order_is_the_base_point_order(curve):
    """(n - 1) * G = -G holds only for the true order n: same x, y negated mod p."""
    g, minus_g = public_point(curve, 1), public_point(curve, curve.order - 1)
    size = (len(g) - 1) // 2
    assert g[1 : 1 + size] == minus_g[1 : 1 + size] and g[1 + size :] != minus_g[1 + size :]


def test_ec_fingerprint_is_sha1_tail_of_uncompressed_point():
    import hashlib

    point = public_point(P256, 12345)
    assert ec_point_fingerprint(point) == hashlib.sha1(point).digest()[-10:]
    with pytest.raises(ValueError, match="uncompressed"):
        ec_point_fingerprint(b"\x02" + point[1:33])


def test_compressed_ec_key_gets_the_uncompressed_point():
    key = ec.derive_private_key(12345, ec.SECP256R1()).public_key()
    compressed = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    )
    info = public_key_from_spki(compressed.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    assert info.point == public_point(P256, 12345)


# --- generating lists ----------------------------------------------------------------------


@pytest.fixture
def small_ec_list(tmp_path) -> Path:
    chunks = ec_generator.plan("p256", ["le64"], ["rnd"], 0, 4, chunk_pids=2)
    assert ec_generator.generate(tmp_path, chunks, workers=1, progress=False) == 2
    return tmp_path


def test_generate_build_and_find_ec_key(small_ec_list):
    manifest = ec_generator.build(small_ec_list, "p256")
    assert manifest["count"] == 4 and manifest["bits"] == 256 and manifest["complete"] is False
    assert manifest["pid_ranges"] == {"le64": {"rnd": [[0, 3]]}}
    table = BlocklistTable.open(small_ec_list, 256, verify=True, name="ec-p256")
    point = pem_key(DATA / "debian-ec" / "ecp256-ssl-le64-pid1-rnd.key").point
    assert [Origin.unpack(o) for o in table.find(*split_fingerprint(ec_point_fingerprint(point)))] == [
        Origin("openssl", "le64", "rnd", 1)
    ]
    assert ec_generator.generate(small_ec_list, ec_generator.plan("p256", ["le64"], ["rnd"], 0, 4, 2), 1, False) == 0


def test_partial_ec_list_flags_but_does_not_claim_clean(small_ec_list):
    ec_generator.build(small_ec_list, "p256")
    detector = DebianWeakDetector(small_ec_list)
    assert detector.check(pem_key(DATA / "debian-ec" / "ecp256-ssl-le64-pid1-rnd.key")).verdict is Verdict.VULNERABLE
    other = detector.check(pem_key(DATA / "debian-ec" / "ecp256-ssl-le32-pid100-nornd-old.key"))
    assert other.verdict is Verdict.NOT_COVERED and "EC P-256 blocklist, but that list is partial" in other.detail
    p384 = detector.check(pem_key(DATA / "debian-ec" / "ecp384-ssl-le64-pid4242-rnd.key"))
    assert p384.verdict is Verdict.NOT_COVERED
    assert p384.detail == "no CVE-2008-0166 blocklist for EC curve P-384 (covered curves: P-256)"


def test_corrupt_ec_list_is_reported_not_trusted(small_ec_list):
    ec_generator.build(small_ec_list, "p256")
    path = data_path(small_ec_list, 256, "ec-p256")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(BlocklistError, match="ec-p256.ddwk is .* bytes"):  # at start, not at the first EC key
        DebianWeakDetector(small_ec_list)


# --- the shipped lists ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> DebianWeakDetector:
    detector = DebianWeakDetector(SHIPPED)
    return detector


@pytest.mark.parametrize("path", EC_VECTORS, ids=lambda p: p.name)
def test_shipped_lists_flag_real_weak_ec_keys(shipped, path):
    curve, platform, variant, pid = ec_vector_params(path)
    result = shipped.check(pem_key(path))
    assert result.verdict is Verdict.VULNERABLE and result.reason_code == REASON
    assert result.detail == (
        f"EC {CURVES[curve].display} key is one of the predictable Debian OpenSSL keys (generated by "
        f"openssl ecparam -genkey / req -newkey ec on {platform}, variant {variant}, pid {pid})"
    )


@pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1, ec.SECP521R1], ids=lambda c: c.name)
def test_shipped_lists_pass_fresh_ec_keys(shipped, curve):
    key = ec.generate_private_key(curve()).public_key()
    info = public_key_from_spki(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    assert shipped.check(info).verdict is Verdict.CLEAN


def test_shipped_lists_pass_good_ec_key(shipped):
    assert shipped.check(pem_key(DATA / "good" / "bk-ec-p256-rfc-example.key")).verdict is Verdict.CLEAN


def test_curve_without_list_is_not_covered(shipped):
    key = ec.generate_private_key(ec.SECP256K1()).public_key()
    result = shipped.check(public_key_from_spki(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)))
    assert result.verdict is Verdict.NOT_COVERED
    assert result.detail == "no CVE-2008-0166 blocklist for EC curve secp256k1 (covered curves: P-256, P-384, P-521)"


def test_dsa_keys_are_not_covered(shipped):
    result = shipped.check(PublicKeyInfo("DSA", 1024))
    assert result.verdict is Verdict.NOT_COVERED
    assert result.detail == "DSA keys from the Debian bug are not covered"


def shipped_ec_samples() -> list[tuple[str, Origin]]:
    """Per shipped EC list and variant, the last pid its manifest claims on a rotating platform."""
    samples = []
    for i, curve in enumerate(sorted(CURVES)):
        path = SHIPPED / f"{ec_generator.table_name(curve)}.json"
        if not path.exists():
            continue
        pid_ranges = json.loads(path.read_text())["pid_ranges"]
        platforms = sorted(pid_ranges)
        for j, variant in enumerate(OPENSSL_VARIANTS):
            platform = platforms[(i + j) % len(platforms)]
            ranges = pid_ranges[platform].get(variant)
            if ranges:
                samples.append((curve, Origin("openssl", platform, variant, ranges[-1][1])))
    return samples


@pytest.mark.parametrize("curve, origin", shipped_ec_samples(), ids=str)
def test_shipped_ec_lists_agree_with_the_generator(curve, origin):
    spec = CURVES[curve]
    point = weak_ec_point(spec, PLATFORMS[origin.platform], origin.variant, origin.pid)
    table = BlocklistTable.open(SHIPPED, spec.bits, name=ec_generator.table_name(curve))
    assert origin.pack() in table.find(*split_fingerprint(ec_point_fingerprint(point)))


def test_shipped_ec_manifests_are_complete_and_intact():
    for curve, spec in CURVES.items():
        name = ec_generator.table_name(curve)
        manifest = json.loads((SHIPPED / f"{name}.json").read_text())
        table = BlocklistTable.open(SHIPPED, spec.bits, verify=True, name=name)
        assert manifest["complete"] and manifest["curve"] == spec.display
        assert len(table) == manifest["count"] == manifest["keys_generated"] == 32768 * 3 * 3
        assert bool(np.all(table.hi[1:] >= table.hi[:-1])), f"{name} is not sorted"
