"""The fleet checks as detector results: shared primes, and duplicate keys apart from them.

Per-key detectors see one key; these need the whole fleet, so they take ``(id, modulus)`` pairs
and answer for every id with two results, one per detector name:

* ``shared_prime`` -- VULNERABLE with ``CERTIFICATE_KEY_SHARED_PRIME`` when the modulus shares a
  prime with another certificate's (or a known entry): both keys are factored by one gcd.
* ``duplicate_key`` -- VULNERABLE with ``CERTIFICATE_KEY_DUPLICATE`` when another certificate
  (or a known entry) has the very same modulus. Not factorable, so never under the shared-prime
  code, but one private key in several places is a finding of its own.

Evidence names the other certificates by id (at most ``MAX_LISTED``, with the total count) and
known entries by ``file:line``; never a factor.
"""

from __future__ import annotations

from collections.abc import Iterable

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.factoring.codes import DUPLICATE_KEY, SHARED_PRIME
from devicedefender_audit.factoring.known import KnownMatch, KnownValues, match_known
from devicedefender_audit.factoring.sharing import FleetFinding, Key, scan_fleet

SHARED_PRIME_DETECTOR = "shared_prime"
DUPLICATE_KEY_DETECTOR = "duplicate_key"

_NONE = FleetFinding()
_NO_MATCH = KnownMatch()


def _certificates(ids: tuple[str, ...], count: int) -> str:
    more = f" and {count - len(ids)} more" if count > len(ids) else ""
    return f"{count} other certificate(s): {', '.join(ids)}{more}"


def _result(detector: str, reason_code: str, facts: list[str], consequence: str) -> DetectorResult:
    if not facts:
        return DetectorResult(detector, Verdict.CLEAN)
    return DetectorResult(
        detector, Verdict.VULNERABLE, reason_code, f"RSA modulus {'; and '.join(facts)}: {consequence}"
    )


def fleet_results(finding: FleetFinding | None, known: KnownMatch | None = None) -> list[DetectorResult]:
    """The shared-prime and duplicate-key results of one key, from its fleet finding and known
    match (None: nothing found). What :meth:`.FleetState.add` returns converts with this too."""
    finding, known = finding or _NONE, known or _NO_MATCH
    shared, same = [], []
    if finding.shared_prime_count:
        listed = _certificates(finding.shared_prime_with, finding.shared_prime_count)
        shared.append(f"shares a prime factor with {listed}")
    if known.shares_prime_with:
        shared.append(f"shares a prime factor with known entries {', '.join(known.shares_prime_with)}")
    if finding.same_modulus_count:
        listed = _certificates(finding.same_modulus_as, finding.same_modulus_count)
        same.append(f"is identical to the modulus of {listed}")
    if known.equal_to:
        same.append(f"is identical to known moduli {', '.join(known.equal_to)}")
    return [
        _result(SHARED_PRIME_DETECTOR, SHARED_PRIME, shared, "one gcd factors it"),
        _result(DUPLICATE_KEY_DETECTOR, DUPLICATE_KEY, same, "one private key serves them all"),
    ]


def evidence(finding: FleetFinding | None, known: KnownMatch | None = None) -> dict[str, str]:
    """The finding as string pairs for an audit finding's ``additionalInfo``; empty if none."""
    finding, known = finding or _NONE, known or _NO_MATCH
    info = {
        "sharedPrimeWith": ",".join(finding.shared_prime_with),
        "sharedPrimeCount": str(finding.shared_prime_count) if finding.shared_prime_count else "",
        "sameModulusAs": ",".join(finding.same_modulus_as),
        "sameModulusCount": str(finding.same_modulus_count) if finding.same_modulus_count else "",
        "knownSharedPrime": ",".join(known.shares_prime_with),
        "knownSameModulus": ",".join(known.equal_to),
    }
    return {name: value for name, value in info.items() if value}


class FleetKeyDetector:
    """Batch GCD over a fleet's RSA moduli, optionally also against a list of known values."""

    def __init__(self, known: KnownValues | None = None, workers: int = 1) -> None:
        self.known = known
        self.workers = workers

    def check_fleet(self, keys: Iterable[Key]) -> dict[str, list[DetectorResult]]:
        """Both results for every id in ``keys``."""
        keys = list(keys)
        scan = scan_fleet(keys, self.workers)
        known = match_known(keys, self.known, scan.product) if self.known else {}
        return {key_id: fleet_results(scan.findings.get(key_id), known.get(key_id)) for key_id, _ in keys}
