"""CVE-2008-0166: RSA and EC keys made by Debian's OpenSSL with the predictable PRNG.

Looks the modulus's ``openssl-vulnkey`` fingerprint up in the shipped blocklists. Only key sizes
that have a list are covered; others get ``NOT_COVERED`` rather than a false all-clear, and a
partial list (see its manifest) says so in the result. EC keys are looked up by their public
point in the ``ec-<curve>`` lists (:mod:`.debian_weak_ec`); DSA keys are ``NOT_COVERED``.

A blocklist directory that is missing or holds no lists, and a list that is missing, truncated or
does not match its manifest, raise :class:`BlocklistError`: a mistyped ``--blocklists`` or a
damaged file must fail the command, never turn into "not covered" or "clean". The cheap checks
run when the detector is made; each list's sha256 is checked on its first lookup, so checking one
key hashes only the list it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from devicedefender_audit.debian_weak.blocklist_file import (
    BlocklistError,
    BlocklistTable,
    available_sizes,
    open_ec_tables,
)
from devicedefender_audit.debian_weak.fingerprint import OPENSSL_VARIANTS, Origin, vulnkey_lookup_key
from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.key_material import PublicKeyInfo

if TYPE_CHECKING:
    from devicedefender_audit.detectors.debian_weak_ec import DebianWeakEcLists

REASON_CODE = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"
ENV_VAR = "DDA_BLOCKLISTS"


def default_blocklist_dir() -> Path:
    """``$DDA_BLOCKLISTS``, else the checkout's ``blocklists/``, else the installed copy."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    checkout = Path(__file__).resolve().parents[2] / "blocklists"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "devicedefender-audit" / "blocklists"


#: A manifest's ``pid_ranges``: platform -> variant -> [[first, last], ...].
PidRanges = dict[str, dict[str, list[list[int]]]]


def _pid_ranges_text(pid_ranges: PidRanges) -> str:
    """``pid_ranges`` of a manifest, grouped by identical ranges so a partial list reads in a line:
    ``0-2559 (be32 rnd, le32 rnd, ...); 0-3071 (le64 rnd)``."""
    groups: dict[str, list[str]] = {}
    for platform, variants in sorted(pid_ranges.items()):
        for variant, ranges in variants.items():
            spans = ", ".join(f"{start}-{stop}" for start, stop in ranges)
            groups.setdefault(spans, []).append(f"{platform} {variant}")
    return "; ".join(f"{spans} ({', '.join(names)})" for spans, names in groups.items()) or "none"


def _ssh_keygen_ranges(pid_ranges: PidRanges) -> PidRanges:
    """The ssh-keygen part of a manifest's ``pid_ranges`` (platform -> variant -> ranges)."""
    return {platform: {"ssh-keygen": variants["ssh-keygen"]}
            for platform, variants in pid_ranges.items() if "ssh-keygen" in variants}


class DebianWeakDetector:
    name = "debian_weak"
    reason_code = REASON_CODE

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_blocklist_dir()
        if not self.directory.is_dir():
            raise BlocklistError(
                f"blocklist directory {self.directory} does not exist (check --blocklists or ${ENV_VAR})"
            )
        self.tables: dict[int, BlocklistTable] = {
            bits: BlocklistTable.open(self.directory, bits) for bits in available_sizes(self.directory)
        }
        #: The EC lists' tables, opened and checked now (a damaged one fails an RSA-only run too).
        self._ec_tables = open_ec_tables(self.directory)
        if not self.tables and not any(self.directory.glob("ec-*.json")):
            raise BlocklistError(
                f"no blocklists in {self.directory} (check --blocklists or ${ENV_VAR})"
            )
        #: Sizes whose list holds every weak key of every tool, so a key not in it is CLEAN. A list
        #: whole for openssl genrsa/req but not for ssh-keygen, or an imported one (which vouches
        #: for nothing it lacks), leaves a key it lacks NOT_COVERED: never a false all-clear.
        self._complete = {bits for bits, table in self.tables.items() if table.manifest.get("complete")}
        #: Results are immutable: one CLEAN result serves every clean key (saves ~0.5 us a key).
        self._clean = DetectorResult(self.name, Verdict.CLEAN)

    @cached_property
    def version(self) -> str:
        """This detector's code version and a digest of every shipped list's sha256: stored
        verdicts are recomputed (from the stored key, no AWS call) once any list changes. The code
        version rises when a rule changes (2: only a list complete for both tools gives CLEAN)."""
        digests = sorted(
            f"{path.name}:{json.loads(path.read_text()).get('sha256', '')}" for path in self.directory.glob("*.json")
        )
        return "2-" + hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]

    @cached_property
    def ec(self) -> DebianWeakEcLists:
        """The EC lookups, made on first use: their module imports the EC curve code, which
        checking RSA keys does not need."""
        from devicedefender_audit.detectors.debian_weak_ec import DebianWeakEcLists

        return DebianWeakEcLists(self._ec_tables)

    def coverage(self) -> dict[int, str]:
        """Covered key sizes and how completely, for reports and ``blocklist info``. Verifies
        every list's sha256 and opens the EC lists, so ``info`` reports any damaged list."""
        for ec_table in self.ec.tables.values():
            ec_table.verify()
        out = {}
        for bits, table in sorted(self.tables.items()):
            table.verify()
            manifest = table.manifest
            if manifest.get("complete"):
                state = "complete"
            elif self._covers_openssl_space(table):
                state = "complete for openssl genrsa/req"
            else:
                state = "partial"
            done = ", ".join(manifest.get("complete_variants", [])) or "none"
            out[bits] = (f"{state}: {len(table)} keys; variants complete for every platform "
                         f"and pid: {done}")
            ranges = manifest.get("pid_ranges", {})
            if state == "partial":
                out[bits] += f"; pids generated: {_pid_ranges_text(ranges)}"
            elif state != "complete":  # openssl's space is whole: say how far ssh-keygen's is
                out[bits] += f"; ssh-keygen pids generated: {_pid_ranges_text(_ssh_keygen_ranges(ranges))}"
            if manifest.get("imported"):
                files = ", ".join(f"{i['file']} (+{i['added']})" for i in manifest["imported"])
                out[bits] += f"; imported (adds keys, vouches for none it lacks): {files}"
        return out

    def check(self, key: PublicKeyInfo) -> DetectorResult:
        if key.algorithm == "RSA" and key.modulus is not None:  # the common case, tested first
            return self._check_rsa(key)
        if key.algorithm.startswith("EC "):
            return self.ec.check(key, self.name, self.reason_code)
        if key.algorithm in ("DSA", "DH"):  # Debian's OpenSSL drew their private values from the same PRNG
            return DetectorResult(
                self.name, Verdict.NOT_COVERED, detail=f"{key.algorithm} keys from the Debian bug are not covered"
            )
        return DetectorResult(self.name, Verdict.NOT_APPLICABLE, detail=f"{key.algorithm} key")

    def _check_rsa(self, key: PublicKeyInfo) -> DetectorResult:
        table = self.tables.get(key.bits)
        if table is None:
            return DetectorResult(
                self.name,
                Verdict.NOT_COVERED,
                detail=f"no CVE-2008-0166 blocklist for RSA-{key.bits} "
                f"(covered sizes: {sorted(self.tables) or 'none'})",
            )
        origins = table.find(*vulnkey_lookup_key(key.modulus, key.modulus_bytes))
        if origins:
            made_by = [str(o) for o in map(Origin.unpack, origins) if o is not None]
            how = f" (generated by {', '.join(made_by)})" if made_by else ""
            return DetectorResult(
                self.name,
                Verdict.VULNERABLE,
                self.reason_code,
                f"RSA-{key.bits} key is one of the predictable Debian OpenSSL keys{how}",
            )
        if key.bits not in self._complete:
            return DetectorResult(self.name, Verdict.NOT_COVERED, detail=self._not_covered(key.bits, table))
        return self._clean

    def _not_covered(self, bits: int, table: BlocklistTable) -> str:
        """Why a key missing from a list that is not complete is not clean: what the list lacks."""
        if self._covers_openssl_space(table):
            ranges = _ssh_keygen_ranges(table.manifest.get("pid_ranges", {}))
            ssh = f"are generated only for pids {_pid_ranges_text(ranges)}" if ranges else "are not generated yet"
            return (f"not among the RSA-{bits} keys of openssl genrsa/req (all generated), but ssh-keygen's "
                    f"RSA-{bits} keys {ssh}")
        complete = ", ".join(table.manifest.get("complete_variants", [])) or "none"
        return (f"not in the RSA-{bits} blocklist, but that list is partial "
                f"({len(table)} keys; variants complete: {complete})")

    @staticmethod
    def _covers_openssl_space(table: BlocklistTable) -> bool:
        """Every openssl genrsa/req key of this size was generated into the list (what remains is
        ssh-keygen's range, which ``coverage`` and the NOT_COVERED detail then name)."""
        return set(OPENSSL_VARIANTS) <= set(table.manifest.get("complete_variants", []))
