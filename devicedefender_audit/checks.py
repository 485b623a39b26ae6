"""Audit checks over the inventory's keys: ``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK`` (the two CVEs)
and our ``DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK`` (shared primes across the fleet, close primes,
small factors, insecure parameters), and their twins over CA certificates,
``CA_CERTIFICATE_KEY_QUALITY_CHECK`` and ``CA_CERTIFICATE_KEY_FACTORABLE_CHECK``.

A check is a name and detectors. Checks need no AWS call: the key is in the inventory. A stored verdict is reused while its
detector's version (code and data, e.g. a blocklist's digest) is unchanged, and recomputed from
the stored key otherwise, so a new blocklist re-checks the whole fleet without touching AWS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devicedefender_audit.check_names import CA_CERTIFICATE, DEVICE_CERTIFICATE
from devicedefender_audit.check_names import CA_CERTIFICATE_KEY_QUALITY_CHECK as CA_CHECK_NAME
from devicedefender_audit.detectors import Detector, DetectorResult, Verdict, check_key, detector_version
from devicedefender_audit.factoring.codes import (
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    INSECURE_PARAMETERS,
)
from devicedefender_audit.key_material import (
    KeyMaterialError,
    PublicKeyInfo,
    certificate_public_key,
    public_key_from_spki,
)
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.store.base import Description, InventoryRecord, StoredVerdict

if TYPE_CHECKING:
    from devicedefender_audit.factoring.known import KnownValues

__all__ = [
    "CA_CERTIFICATE",
    "CA_CERTIFICATE_KEY_FACTORABLE_CHECK",
    "CA_CHECK_NAME",
    "CHECK_NAME",
    "DEVICE_CERTIFICATE",
    "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK",
    "KeyCheck",
    "KeyOutcome",
    "ca_factorable_check",
    "ca_key_quality_check",
    "factorable_check",
    "key_quality_check",
    "make_checks",
    "severity_of",
]


def severity_of(reason_code: str) -> str:
    """``CRITICAL`` for keys anyone can break; ``HIGH`` for insecure parameters, which make a key
    weak (a 1024-bit modulus is beyond all but well-funded attackers) without handing it over."""
    return "HIGH" if reason_code == INSECURE_PARAMETERS else "CRITICAL"


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


class KeyCheck:
    """One audit check: per-key detectors over one resource type (device or CA certificates),
    and for the factorable checks the fleet's shared-prime results (which depend on the whole
    fleet, so they are handed in, never stored per key)."""

    def __init__(self, name: str, detectors: Sequence[Detector], fleet: bool = False,
                 known: KnownValues | None = None, resource_type: str = DEVICE_CERTIFICATE) -> None:
        self.name = name
        self.detectors = list(detectors)
        self.fleet = fleet
        self.resource_type = resource_type
        #: Known moduli or primes the fleet is also compared with (``run --known-moduli``).
        self.known = known
        self.versions = {d.name: detector_version(d) for d in self.detectors}

    def evaluate(self, record: InventoryRecord, stored: Sequence[StoredVerdict] = (),
                 fleet_results: Sequence[DetectorResult] = ()) -> KeyOutcome:
        """The verdicts on ``record``'s key, from the store when still valid, plus ``fleet_results``."""
        outcome = self._evaluate(record, stored)
        if not outcome.error:
            outcome.results += fleet_results
        return outcome

    def _evaluate(self, record: InventoryRecord, stored: Sequence[StoredVerdict]) -> KeyOutcome:
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
        if description.unparsed_pem is None:  # not kept (a private key, an oversized answer): as first reported
            raise KeyMaterialError(description.error_message or "no key stored", description.error_code)
        key = certificate_public_key(description.unparsed_pem)
        outcome.reparsed = Description(description.certificate_id, spki=key.spki, key_algorithm=key.algorithm,
                                       key_bits=key.bits)
        return key


def _result(verdict: StoredVerdict) -> DetectorResult:
    return DetectorResult(verdict.detector, Verdict(verdict.verdict), verdict.reason_code, verdict.detail)


def key_quality_check(detectors: Sequence[Detector]) -> KeyCheck:
    """``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``: Device Defender's check, CVE-2008-0166 and ROCA."""
    return KeyCheck(CHECK_NAME, detectors)


def factorable_check(known: KnownValues | None = None) -> KeyCheck:
    """``DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK``: what Device Defender does not check."""
    from devicedefender_audit.factoring import per_key_detectors

    return KeyCheck(DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK, per_key_detectors(), fleet=True, known=known)


def ca_key_quality_check(detectors: Sequence[Detector]) -> KeyCheck:
    """``CA_CERTIFICATE_KEY_QUALITY_CHECK``: Device Defender's CA check, the same detectors."""
    return KeyCheck(CA_CHECK_NAME, detectors, resource_type=CA_CERTIFICATE)


def ca_factorable_check(known: KnownValues | None = None) -> KeyCheck:
    """``CA_CERTIFICATE_KEY_FACTORABLE_CHECK``: the CA keys compared with each other and with the
    device fleet (a prime shared with any key breaks both), plus the per-key factoring tests."""
    from devicedefender_audit.factoring import per_key_detectors

    return KeyCheck(CA_CERTIFICATE_KEY_FACTORABLE_CHECK, per_key_detectors(), fleet=True, known=known,
                    resource_type=CA_CERTIFICATE)


def make_checks(names: Iterable[str], detectors: Sequence[Detector], known: KnownValues | None = None) -> list[KeyCheck]:
    """The checks named (each once, in order): one place that maps a check name to its check."""
    makers = {
        CHECK_NAME: lambda: key_quality_check(detectors),
        DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK: lambda: factorable_check(known),
        CA_CHECK_NAME: lambda: ca_key_quality_check(detectors),
        CA_CERTIFICATE_KEY_FACTORABLE_CHECK: lambda: ca_factorable_check(known),
    }
    return [makers[name]() for name in dict.fromkeys(names)]
