"""The one small interface every key-quality detector implements."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple, Protocol

from devicedefender_audit.key_material import PublicKeyInfo


class Verdict(str, Enum):
    VULNERABLE = "VULNERABLE"
    CLEAN = "CLEAN"
    #: The flaw cannot apply to this kind of key (e.g. an EC key for an RSA flaw).
    NOT_APPLICABLE = "NOT_APPLICABLE"
    #: The flaw could apply but this detector has no data for it (e.g. a key size with no
    #: shipped blocklist). Reported, never silently counted as clean.
    NOT_COVERED = "NOT_COVERED"


class DetectorResult(NamedTuple):
    """One detector's verdict on one key. A NamedTuple rather than a frozen dataclass: as
    immutable and comparable, made faster per key, and ``check`` starts without importing
    dataclasses (with inspect behind it, a few ms)."""

    detector: str
    verdict: Verdict
    reason_code: str | None = None
    detail: str = ""


class Detector(Protocol):
    """Checks one public key for one known key-generation flaw."""

    name: str
    reason_code: str

    def check(self, key: PublicKeyInfo) -> DetectorResult: ...
