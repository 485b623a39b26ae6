"""The audit check ``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``: the detectors over the inventory's keys.

Checks need no AWS call: the key is in the inventory. A stored verdict is reused while its
detector's version (code and data, e.g. a blocklist's digest) is unchanged, and recomputed from
the stored key otherwise, so a new blocklist re-checks the whole fleet without touching AWS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from devicedefender_audit.detectors import Detector, DetectorResult, Verdict, check_key, detector_version
from devicedefender_audit.key_material import (
    KeyMaterialError,
    PublicKeyInfo,
    certificate_public_key,
    public_key_from_spki,
)
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.store.base import Description, InventoryRecord, StoredVerdict

__all__ = ["CHECK_NAME", "KeyOutcome", "KeyQualityCheck"]


@dataclass
class KeyOutcome:
    """What the check concluded about one certificate."""

    results: list[DetectorResult] = field(default_factory=list)
    #: Verdicts computed now (to store); empty when every verdict came from the store.
    fresh: list[StoredVerdict] = field(default_factory=list)
    #: A key that could not be read: (error code, message).
    error: tuple[str, str] | None = None
    #: A stored unparsable PEM that the current parser can read: the new description.
    reparsed: Description | None = None

    @property
    def vulnerable(self) -> list[DetectorResult]:
        return [r for r in self.results if r.verdict is Verdict.VULNERABLE]

    @property
    def not_applicable(self) -> bool:
        return bool(self.results) and all(r.verdict is Verdict.NOT_APPLICABLE for r in self.results)

    @property
    def not_covered(self) -> list[DetectorResult]:
        return [r for r in self.results if r.verdict is Verdict.NOT_COVERED]


class KeyQualityCheck:
    name = CHECK_NAME

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = list(detectors)
        self.versions = {d.name: detector_version(d) for d in self.detectors}

    def evaluate(self, record: InventoryRecord, stored: Sequence[StoredVerdict] = ()) -> KeyOutcome:
        """The verdicts on ``record``'s key, from the store when still valid."""
        description = record.description
        if description is None:
            return KeyOutcome(error=("NOT_DESCRIBED", "the certificate's key is not in the inventory yet"))
        by_detector = {v.detector: v for v in stored}
        if description.spki is not None and all(
            d.name in by_detector and by_detector[d.name].version == self.versions[d.name] for d in self.detectors
        ):
            return KeyOutcome(results=[_result(by_detector[d.name]) for d in self.detectors])
        outcome = KeyOutcome()
        try:
            if description.spki is not None:
                key = public_key_from_spki(description.spki)
            else:
                key = self._reparse(description, outcome)
            outcome.results = check_key(key, self.detectors)
        except KeyMaterialError as exc:
            outcome.error = (exc.error_code, str(exc))
            return outcome
        except Exception as exc:  # noqa: BLE001 - a detector bug must not end the audit; it is reported
            outcome.error = ("CHECK_FAILED", f"{type(exc).__name__}: {exc}")
            return outcome
        outcome.fresh = [
            StoredVerdict(record.certificate_id, r.detector, self.versions[r.detector], r.verdict.value,
                          r.reason_code, r.detail)
            for r in outcome.results
        ]
        return outcome

    @staticmethod
    def _reparse(description: Description, outcome: KeyOutcome) -> PublicKeyInfo:
        """Try today's parser on a PEM an older one could not read; raises if it still cannot."""
        if description.unparsed_pem is None:
            raise KeyMaterialError(description.error_message or "no key stored")
        key = certificate_public_key(description.unparsed_pem)
        outcome.reparsed = Description(description.certificate_id, spki=key.spki, key_algorithm=key.algorithm,
                                       key_bits=key.bits)
        return key


def _result(verdict: StoredVerdict) -> DetectorResult:
    return DetectorResult(verdict.detector, Verdict(verdict.verdict), verdict.reason_code, verdict.detail)
