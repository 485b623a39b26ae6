"""Checking local PEM files (certificates, keys, CSRs) before they are registered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devicedefender_audit.audit import check_key
from devicedefender_audit.detectors import Detector, DetectorResult, Verdict
from devicedefender_audit.key_material import KeyMaterialError, PublicKeyInfo, public_keys_from_pem


@dataclass
class FileCheck:
    path: str
    key: PublicKeyInfo | None = None
    results: list[DetectorResult] = field(default_factory=list)
    error: str | None = None

    @property
    def vulnerable(self) -> bool:
        return any(r.verdict is Verdict.VULNERABLE for r in self.results)


def check_files(paths: Sequence[str], detectors: Sequence[Detector]) -> list[FileCheck]:
    """One :class:`FileCheck` per key found (a PEM bundle may hold several)."""
    checks = []
    for path in paths:
        try:
            keys = public_keys_from_pem(Path(path).read_bytes())
        except (OSError, KeyMaterialError) as exc:
            checks.append(FileCheck(path, error=str(exc)))
            continue
        for key in keys:
            checks.append(FileCheck(path, key, check_key(key, detectors)))
    return checks
