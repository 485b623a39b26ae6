"""Key-quality detectors, one module per flaw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from devicedefender_audit.detectors.base import Detector, DetectorResult, Verdict
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.key_material import PublicKeyInfo

__all__ = ["Detector", "DetectorResult", "Verdict", "check_key", "default_detectors", "detector_version"]


def default_detectors(blocklist_dir: Path | None = None) -> list[Detector]:
    """All detectors of ``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``."""
    return [RocaDetector(), DebianWeakDetector(blocklist_dir)]


def check_key(key: PublicKeyInfo, detectors: Sequence[Detector]) -> list[DetectorResult]:
    """Run every detector on one key."""
    return [detector.check(key) for detector in detectors]


def detector_version(detector: Detector) -> str:
    """What a stored verdict is valid for: the detector's code and data version. A verdict made
    under another version is recomputed from the stored key, with no AWS call."""
    return str(getattr(detector, "version", "1"))
