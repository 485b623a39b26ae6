"""Key-quality detectors, one module per flaw."""

from __future__ import annotations

from pathlib import Path

from devicedefender_audit.detectors.base import Detector, DetectorResult, Verdict
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
from devicedefender_audit.detectors.roca import RocaDetector

__all__ = ["Detector", "DetectorResult", "Verdict", "default_detectors"]


def default_detectors(blocklist_dir: Path | None = None) -> list[Detector]:
    """All detectors of ``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``."""
    return [RocaDetector(), DebianWeakDetector(blocklist_dir)]
