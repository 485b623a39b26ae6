"""The CA factorable check's device partners come from the device fleet comparison's known-value
matches (factoring/fleet_audit.py ``FleetComparison.known_partners``): a partner is found when the
CA's own label was dropped for a user's known entry of the same value, and the matched keys'
moduli are kept from the comparison's own pass, never read back from the store one by one."""

from __future__ import annotations

import random

from conftest import issue_certificate, register, run_audit
from test_ca_checks import register_ca
from test_factorable_audit import key, prime

from devicedefender_audit.check_names import (
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
)
from devicedefender_audit.checks import make_checks
from devicedefender_audit.factoring.codes import SHARED_PRIME
from devicedefender_audit.factoring.known import KnownValues
from devicedefender_audit.store import open_store


def test_a_ca_partner_is_found_when_a_known_entry_equals_the_ca_modulus(iot):
    """KnownValues.combined keeps the user's label for a value listed twice, so the fleet
    comparison names the CA's modulus after the known-moduli file: its partner still counts."""
    rng = random.Random(4096)
    shared = prime(rng)
    ca_key = key(shared, prime(rng))
    ca = register_ca(iot, issue_certificate(ca_key, "ca"))
    device = register(iot, issue_certificate(key(shared, prime(rng)), "device"))["certificateId"]
    register(iot, issue_certificate(key(prime(rng), prime(rng)), "good"))
    known = KnownValues.parse(f"{ca_key.public_key().public_numbers().n}\n", "known.txt")
    checks = make_checks([CA_CERTIFICATE_KEY_FACTORABLE_CHECK], [], known)
    audited = run_audit(iot, [], checks=checks)
    [finding] = [f for f in audited.findings if f.certificate_id == ca and f.reason_for_non_compliance_code == SHARED_PRIME]
    assert device in str(finding.non_compliant_resource.additional_info)


def test_matched_keys_are_not_read_back_from_the_store_one_by_one(iot, tmp_path, monkeypatch):
    """A known list that matches many keys (a vendor's repeated primes) would otherwise cost one
    store read per matched key each audit (a GetItem each on DynamoDB), with or without a CA check."""
    rng = random.Random(2048)
    leaked = prime(rng)
    for i in range(6):
        register(iot, issue_certificate(key(leaked, prime(rng)), f"weak-{i}"))
    known = KnownValues.parse(f"{leaked}\n", "known.txt")
    store = open_store(tmp_path / "audits.sqlite3")
    reads: list[str] = []
    real = store.inventory_record
    monkeypatch.setattr(store, "inventory_record", lambda cid: reads.append(cid) or real(cid))
    checks = make_checks([DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK], [], known)
    audited = run_audit(iot, [], store=store, checks=checks)
    assert len({f.certificate_id for f in audited.findings if f.reason_for_non_compliance_code == SHARED_PRIME}) == 6
    assert reads == []
    store.close()
