"""Factorable RSA keys: what ``DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK`` looks for.

Device Defender's key-quality check covers two known generator flaws. These modules find keys
anyone can factor from public data, by other routes:

* across the fleet -- batch GCD (:mod:`.trees`, :mod:`.sharing`), kept incremental by a stored
  product (:mod:`.fleet_state`) that the audit engine carries between audits
  (:mod:`.fleet_audit`), optionally against a list of known moduli or primes (:mod:`.known`);
  results via :mod:`.fleet_detector`;
* per key -- close primes (:mod:`.fermat`), small factors and prime or even moduli
  (:mod:`.small_factors`), insecure exponent or size (:mod:`.parameters`).

Reason codes and check names are in :mod:`.codes`. No result ever carries a factor.
"""

from __future__ import annotations

from devicedefender_audit.detectors.base import Detector
from devicedefender_audit.factoring.fermat import FermatDetector
from devicedefender_audit.factoring.parameters import InsecureParametersDetector
from devicedefender_audit.factoring.small_factors import SmallFactorDetector


def per_key_detectors() -> list[Detector]:
    """The detectors of the factorable-key check that look at one key at a time."""
    return [FermatDetector(), SmallFactorDetector(), InsecureParametersDetector()]
