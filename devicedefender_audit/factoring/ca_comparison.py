"""CA keys compared with each other and with the device fleet (``CA_CERTIFICATE_KEY_FACTORABLE_CHECK``).

A prime a CA key shares with any other key breaks the CA: whoever holds the other certificate's
public key factors both with one gcd, and then signs device certificates the account trusts.
An account has few CA certificates, so no fleet-wide batch GCD is needed, nor a second pass over
the fleet: the device fleet comparison (:mod:`.fleet_audit`, incremental between audits) takes
the CA keys as known values, and the device keys it matches with them are the only candidates.
Those that share something with a CA key (one gcd each against the product of the CA moduli)
join the CA keys in an exact batch GCD that names the partners. The device fleet's own findings
are the device check's business, not this one's.

CA keys are named ``ca:<certificate id>`` in the evidence, so a finding says which partners are
CA certificates (and a certificate registered both as a CA and as a device is two keys).
"""

from __future__ import annotations

from collections.abc import Iterable

import gmpy2
from gmpy2 import mpz

from devicedefender_audit.detectors.base import DetectorResult
from devicedefender_audit.factoring.fleet_detector import evidence, fleet_results
from devicedefender_audit.factoring.known import KnownValues, match_known
from devicedefender_audit.factoring.sharing import Key, index_keys, scan_fleet
from devicedefender_audit.factoring.trees import product

CA_PREFIX = "ca:"


def compare_ca_keys(
    ca_keys: list[Key], device_keys: Iterable[Key], known: KnownValues | None = None
) -> dict[str, tuple[list[DetectorResult], dict[str, str]]]:
    """Results and evidence, by CA certificate id, for the CA keys that share a prime with (or
    equal) another CA key, a device key or a known entry. ``device_keys`` must hold every device
    key that shares a factor with a CA key; others among them are only filtered out."""
    if not ca_keys:
        return {}
    tagged = [(CA_PREFIX + certificate_id, modulus) for certificate_id, modulus in ca_keys]
    ca_product = product(list(index_keys(tagged)))
    partners = [(key_id, modulus) for key_id, modulus in device_keys if gmpy2.gcd(mpz(modulus), ca_product) != 1]
    scan = scan_fleet(tagged + partners)
    matches = match_known(tagged, known) if known else {}
    return {
        key_id[len(CA_PREFIX):]: (fleet_results(scan.findings.get(key_id), matches.get(key_id)),
                                  evidence(scan.findings.get(key_id), matches.get(key_id)))
        for key_id in scan.findings.keys() | matches.keys()
        if key_id.startswith(CA_PREFIX)
    }
