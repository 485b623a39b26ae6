"""A damaged or missing blocklist fails loudly: never NOT_COVERED by accident, never CLEAN."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO, load_private_key

from devicedefender_audit.cli import main
from devicedefender_audit.debian_weak.blocklist_file import (
    RECORD,
    BlocklistError,
    BlocklistTable,
    data_path,
    manifest_path,
    write_blocklist,
)
from devicedefender_audit.debian_weak.fingerprint import VARIANT_NAMES, Origin, split_fingerprint, vulnkey_fingerprint
from devicedefender_audit.detectors.base import Verdict
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.key_material import PublicKeyInfo, public_keys_from_pem

WEAK_1024 = DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"
WEAK_2048 = DATA / "debian" / "rsa2048-ssl-be32-pid1000-rnd.key"


def modulus_of(path: Path) -> int:
    return load_private_key(path).public_key().public_numbers().n


def rsa_info(modulus: int) -> PublicKeyInfo:
    return PublicKeyInfo("RSA", modulus.bit_length(), modulus, 65537)


def write_list(directory: Path, bits: int, weak: list[int], noise: int = 7) -> None:
    """A complete-looking list holding ``weak`` moduli and ``noise`` random fingerprints."""
    rng = random.Random(bits)
    rows = [(*split_fingerprint(vulnkey_fingerprint(n)), Origin("openssl", "le32", "rnd", i).pack())
            for i, n in enumerate(weak)]
    rows += [(rng.getrandbits(64), rng.getrandbits(16), 0) for _ in range(noise)]
    manifest = {"complete": True, "complete_variants": list(VARIANT_NAMES), "keys_generated": len(rows),
                "pid_ranges": {}}
    write_blocklist(directory, bits, np.array(rows, dtype=RECORD), manifest)


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    write_list(tmp_path, 1024, [modulus_of(WEAK_1024)])
    write_list(tmp_path, 2048, [modulus_of(WEAK_2048)])
    return tmp_path


def flip_bit_of_entry(directory: Path, bits: int, modulus: int) -> None:
    """Flip the lowest bit of ``modulus``'s fingerprint in the list, as a disk error would."""
    path = data_path(directory, bits)
    data = bytearray(path.read_bytes())
    offset = data.index(struct.pack("<Q", split_fingerprint(vulnkey_fingerprint(modulus))[0]))
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_lists_work_before_damage(lists):
    detector = DebianWeakDetector(lists)
    assert detector.check(rsa_info(modulus_of(WEAK_1024))).verdict is Verdict.VULNERABLE
    assert detector.check(rsa_info(modulus_of(WEAK_2048))).verdict is Verdict.VULNERABLE
    assert detector.check(rsa_info((1 << 1023) | 12345)).verdict is Verdict.CLEAN


def test_flipped_bit_is_an_error_not_clean(lists):
    weak = modulus_of(WEAK_1024)
    flip_bit_of_entry(lists, 1024, weak)
    detector = DebianWeakDetector(lists)
    for modulus in (weak, (1 << 1023) | 12345):
        with pytest.raises(BlocklistError, match="does not match the sha256"):
            detector.check(rsa_info(modulus))


def test_without_the_checksum_the_flipped_list_would_say_clean(lists):
    """What the sha256 check prevents: the damaged list, once its manifest is made to agree,
    no longer knows the weak key."""
    weak = modulus_of(WEAK_1024)
    flip_bit_of_entry(lists, 1024, weak)
    manifest = json.loads(manifest_path(lists, 1024).read_text())
    manifest["sha256"] = hashlib.sha256(data_path(lists, 1024).read_bytes()).hexdigest()
    manifest_path(lists, 1024).write_text(json.dumps(manifest))
    assert DebianWeakDetector(lists).check(rsa_info(weak)).verdict is Verdict.CLEAN


def test_checksum_is_checked_only_for_the_list_a_key_needs(lists):
    flip_bit_of_entry(lists, 2048, modulus_of(WEAK_2048))
    detector = DebianWeakDetector(lists)
    assert detector.check(rsa_info(modulus_of(WEAK_1024))).verdict is Verdict.VULNERABLE
    with pytest.raises(BlocklistError, match="rsa-2048.ddwk does not match"):
        detector.check(rsa_info(modulus_of(WEAK_2048)))
    with pytest.raises(BlocklistError, match="rsa-2048.ddwk does not match"):
        detector.coverage()  # what `blocklist info` shows


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: data_path(d, 1024).write_bytes(data_path(d, 1024).read_bytes()[:-14]), "truncated"),
        (lambda d: data_path(d, 1024).write_bytes(b""), "cannot read blocklist"),
        (lambda d: data_path(d, 1024).unlink(), "cannot read blocklist"),
        (lambda d: manifest_path(d, 1024).unlink(), "data without a manifest: rsa-1024"),
        (lambda d: manifest_path(d, 1024).write_text("{not json"), "cannot read blocklist manifest"),
        (lambda d: edit_manifest(d, count=6), "truncated or from another build"),
        (lambda d: edit_manifest(d, bits=2048), "says bits 2048, expected 1024"),
        (lambda d: edit_manifest(d, format_version=2), "says format_version 2"),
        (lambda d: edit_manifest(d, sha256=None), "lacks the entry count or sha256"),
        (lambda d: flip_header_byte(d, 0), "is not the version 1 rsa-1024 blocklist"),
        (lambda d: flip_header_byte(d, 12), "is not the version 1 rsa-1024 blocklist"),
    ],
    ids=["truncated", "empty", "data-missing", "manifest-missing", "manifest-garbled", "count-mismatch",
         "bits-mismatch", "version-mismatch", "no-sha256", "bad-magic", "header-bits"],
)
def test_damaged_list_fails_when_the_detector_is_made(lists, damage, message):
    damage(lists)
    with pytest.raises(BlocklistError, match=message):
        DebianWeakDetector(lists)


def edit_manifest(directory: Path, **changes) -> None:
    path = manifest_path(directory, 1024)
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))


def flip_header_byte(directory: Path, offset: int) -> None:
    path = data_path(directory, 1024)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(BlocklistError, match="does not exist"):
        DebianWeakDetector(tmp_path / "blocklits")


def test_directory_without_lists_is_an_error(tmp_path):
    (tmp_path / "README").write_text("not a list")
    with pytest.raises(BlocklistError, match="no blocklists in"):
        DebianWeakDetector(tmp_path)


def test_check_command_fails_on_a_mistyped_directory(tmp_path, capsys):
    assert main(["check", "--blocklists", str(tmp_path / "nope"), str(WEAK_1024)]) == 1
    assert "error: blocklist directory" in capsys.readouterr().err


def test_check_command_fails_on_a_flipped_bit(lists, capsys):
    flip_bit_of_entry(lists, 1024, modulus_of(WEAK_1024))
    assert main(["check", "--blocklists", str(lists), str(WEAK_1024)]) == 1
    assert "does not match the sha256" in capsys.readouterr().err


def test_find_returns_every_entry_of_a_fingerprint(tmp_path):
    """Equal high bits with other low bits, repeated fingerprints, and an odd count (so the
    origin column is not 4-byte aligned) all come back right."""
    rows = [(5, 1, 10), (5, 2, 11), (5, 1, 12), (3, 1, 13), (2**64 - 1, 7, 14)]
    write_blocklist(tmp_path, 1024, np.array(rows, dtype=RECORD), {"complete": True})
    table = BlocklistTable.open(tmp_path, 1024)
    assert sorted(table.find(5, 1)) == [10, 12]
    assert table.find(5, 2) == [11] and table.find(2**64 - 1, 7) == [14]
    assert table.find(4, 1) == [] and table.find(5, 3) == [] and table.find(0, 0) == []
    assert table.records().tolist() == sorted(rows)


def test_rsa_lookup_does_not_import_numpy():
    """``check`` should not pay numpy's import (tens of ms): RSA lookups read the mapped file."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from devicedefender_audit.detectors.debian_weak import DebianWeakDetector\n"
        "from devicedefender_audit.key_material import PublicKeyInfo\n"
        "modulus = (1 << 2047) | 12345\n"
        "result = DebianWeakDetector(Path(sys.argv[1])).check(PublicKeyInfo('RSA', 2048, modulus, 65537))\n"
        "print(result.verdict.value, 'numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "blocklists")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["CLEAN", "False"]


def test_a_broken_ec_list_fails_when_the_detector_is_made(lists):
    """Its manifest unreadable, its data truncated or without a manifest: found at start, though
    the EC lists are opened only for the first EC key (an RSA-only run passed them before)."""
    manifest_path(lists, 256, "ec-p256").write_text("{}")
    with pytest.raises(BlocklistError, match="ec-p256.json says bits None"):
        DebianWeakDetector(lists)
    manifest_path(lists, 256, "ec-p256").unlink()
    data_path(lists, 256, "ec-p256").write_bytes((REPO / "blocklists" / "ec-p256.ddwk").read_bytes()[:1000])
    with pytest.raises(BlocklistError, match="without a manifest: ec-p256"):
        DebianWeakDetector(lists)
    manifest_path(lists, 256, "ec-p256").write_bytes((REPO / "blocklists" / "ec-p256.json").read_bytes())
    with pytest.raises(BlocklistError, match="ec-p256.ddwk is 1000 bytes"):
        DebianWeakDetector(lists)


def test_a_corrupt_ec_list_fails_ec_lookups_only(lists):
    """A flipped bit keeps the size: the sha256 finds it at the first EC key, as for RSA."""
    for path in (data_path(lists, 256, "ec-p256"), manifest_path(lists, 256, "ec-p256")):
        path.write_bytes((REPO / "blocklists" / path.name).read_bytes())
    with data_path(lists, 256, "ec-p256").open("r+b") as data:
        data.seek(5000)
        byte = data.read(1)
        data.seek(5000)
        data.write(bytes([byte[0] ^ 1]))
    detector = DebianWeakDetector(lists)
    assert detector.check(rsa_info(modulus_of(WEAK_1024))).verdict is Verdict.VULNERABLE
    ec_key = public_keys_from_pem((DATA / "good" / "bk-ec-p256-rfc-example.key").read_bytes())[0]
    with pytest.raises(BlocklistError, match="ec-p256"):
        detector.check(ec_key)


def test_an_audit_with_a_damaged_list_is_never_compliant(lists, iot):
    """`run` goes on past a damaged list (ROCA and the other sizes still run), but the
    certificates whose key needs it are unchecked, named with the reason, and the check is
    not compliant: a flipped bit never turns a weak key into an all-clear."""
    from conftest import issue_certificate, register, run_audit

    from devicedefender_audit.detectors.roca import RocaDetector

    flip_bit_of_entry(lists, 1024, modulus_of(WEAK_1024))
    weak_1024 = register(iot, issue_certificate(load_private_key(WEAK_1024), "weak-1024"))["certificateId"]
    weak_2048 = register(iot, issue_certificate(load_private_key(WEAK_2048), "weak-2048"))["certificateId"]
    audited = run_audit(iot, [DebianWeakDetector(lists), RocaDetector()])
    [error] = audited.errors
    assert (error.certificate_id, error.error_code) == (weak_1024, "CHECK_FAILED")
    assert "does not match the sha256" in error.message
    assert [f.certificate_id for f in audited.findings] == [weak_2048]
    details = audited.task.audit_details["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]
    assert details.check_compliant is False and details.check_run_status != "COMPLETED_COMPLIANT"


def test_a_list_whole_for_openssl_but_not_ssh_keygen_claims_no_key_clean(tmp_path):
    """ssh-keygen's weak keys are not in an openssl-complete list: a key the list lacks may be
    one of them, so it is NOT_COVERED naming the ssh-keygen range, never CLEAN."""
    weak = modulus_of(WEAK_1024)
    rows = [(*split_fingerprint(vulnkey_fingerprint(weak)), Origin("openssl", "le32", "rnd", 1).pack())]
    manifest = {"complete": False, "complete_variants": ["rnd", "nornd-old", "nornd-new"], "keys_generated": 1,
                "pid_ranges": {"le32": {"rnd": [[0, 32767]], "ssh-keygen": [[0, 511]]}}}
    write_blocklist(tmp_path, 1024, np.array(rows, dtype=RECORD), manifest)
    detector = DebianWeakDetector(tmp_path)
    assert detector.check(rsa_info(weak)).verdict is Verdict.VULNERABLE
    result = detector.check(rsa_info((1 << 1023) | 12345))
    assert result.verdict is Verdict.NOT_COVERED
    assert "openssl genrsa/req (all generated)" in result.detail and "0-511 (le32 ssh-keygen)" in result.detail
    assert detector.coverage()[1024].startswith("complete for openssl genrsa/req: 1 keys")

    del manifest["pid_ranges"]["le32"]["ssh-keygen"]
    write_blocklist(tmp_path, 1024, np.array(rows, dtype=RECORD), manifest)
    result = DebianWeakDetector(tmp_path).check(rsa_info((1 << 1023) | 12345))
    assert result.verdict is Verdict.NOT_COVERED and result.detail.endswith("ssh-keygen's RSA-1024 keys are not "
                                                                            "generated yet")


def test_an_imported_list_vouches_for_no_key_it_lacks(tmp_path):
    """Importing a list (any list: a handful of lines will do) adds keys to flag; a key not in
    it stays NOT_COVERED, as before the import."""
    weak = modulus_of(WEAK_1024)
    listed = tmp_path / "blacklist.RSA-1024"
    listed.write_text(vulnkey_fingerprint(weak).hex() + "\n")
    lists = tmp_path / "lists"
    lists.mkdir()
    assert main(["blocklist", "import", str(listed), "--bits", "1024", "--blocklists", str(lists)]) == 0
    detector = DebianWeakDetector(lists)
    assert detector.check(rsa_info(weak)).verdict is Verdict.VULNERABLE
    assert detector.check(rsa_info((1 << 1023) | 12345)).verdict is Verdict.NOT_COVERED
    assert "imported (adds keys, vouches for none it lacks): blacklist.RSA-1024 (+1)" in detector.coverage()[1024]
