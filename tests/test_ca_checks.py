"""``CA_CERTIFICATE_KEY_QUALITY_CHECK`` and ``CA_CERTIFICATE_KEY_FACTORABLE_CHECK`` against moto (with
``ListCACertificates`` added, see :mod:`devicedefender_audit.moto_ca_listing`): real weak CA keys
are found, good and inactive ones are not, keys are described once, and ``UPDATE_CA_CERTIFICATE``
deactivates the CA (and changes nothing in a dry run)."""

from __future__ import annotations

import random

import botocore.session
import pytest
from conftest import DATA, issue_certificate, load_private_key, register, run_audit
from test_factorable_audit import key, prime

from devicedefender_audit.check_names import (
    CA_CERTIFICATE,
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.factoring.codes import SHARED_PRIME
from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import MitigationActionType, MitigationStatus
from devicedefender_audit.service.findings import finding_shape
from devicedefender_audit.service.shapes import operation, output_problems

DEBIAN_CVE = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"
ROCA_CVE = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"


def register_ca(iot, pem: str, active: bool = True) -> str:
    return iot.register_ca_certificate(caCertificate=pem, setAsActive=active)["certificateId"]


@pytest.fixture
def cas(iot, fresh_rsa_key) -> dict[str, str]:
    """A Debian weak P-256 CA, a ROCA CA, a good CA, and an inactive Debian weak CA."""
    return {
        "debian": register_ca(iot, issue_certificate(load_private_key(DATA / "debian-ec" / "ecp256-ssl-le64-pid1-rnd.key"),
                                                     "weak-ca")),
        "roca": register_ca(iot, (DATA / "roca" / "cert04.pem").read_text()),
        "good": register_ca(iot, issue_certificate(fresh_rsa_key, "good-ca")),
        "inactive": register_ca(iot, issue_certificate(load_private_key(DATA / "debian" / "rsa2048-ssl-be32-pid1000-rnd.key"),
                                                       "retired-ca"), active=False),
    }


def test_weak_ca_keys_are_found_and_others_are_not(iot, cas):
    audited = run_audit(iot, default_detectors(), checks=make_checks([CA_CERTIFICATE_KEY_QUALITY_CHECK],
                                                                     default_detectors()))
    found = {f.certificate_id: f.reason_for_non_compliance_code for f in audited.findings}
    assert found == {cas["debian"]: DEBIAN_CVE, cas["roca"]: ROCA_CVE}
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (details.total_resources_count, details.non_compliant_resources_count) == (3, 2)
    assert details.check_run_status == "COMPLETED_NON_COMPLIANT"
    for finding in audited.findings:
        shape = finding.to_aws()
        assert shape["nonCompliantResource"]["resourceType"] == CA_CERTIFICATE
        assert shape["nonCompliantResource"]["resourceIdentifier"] == {"caCertificateId": finding.certificate_id}
        assert finding.certificate_arn == iot.describe_ca_certificate(certificateId=finding.certificate_id)[
            "certificateDescription"]["certificateArn"]
        assert "things" not in shape["nonCompliantResource"]["additionalInfo"]
        assert output_problems(operation("DescribeAuditFinding").output_shape, {"finding": finding_shape(finding)}) == []
    # The device check alone does not list CA certificates, and the CA check does not sync devices.
    assert audited.task.progress.listed_certificates == 0


def test_ca_keys_are_described_once(iot, cas):
    calls = []
    iot.meta.events.register("before-call.iot.DescribeCACertificate", lambda **kw: calls.append(kw))
    checks = make_checks([CA_CERTIFICATE_KEY_QUALITY_CHECK], default_detectors())
    first = run_audit(iot, [], checks=checks)
    assert len(calls) == 3  # the inactive CA is out of scope
    second = run_audit(iot, [], store=first.store, checks=checks)
    assert len(calls) == 3 and len(second.findings) == 2


def test_a_failed_ca_listing_fails_the_ca_checks_only(iot, cas, ec_certificate):
    register(iot, (DATA / "roca" / "cert05.pem").read_text())

    def refuse(**kwargs):
        raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                              "ListCACertificates")

    iot.meta.events.register("before-call.iot.ListCACertificates", refuse)
    audited = run_audit(iot, [], checks=make_checks([DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
                                                     CA_CERTIFICATE_KEY_QUALITY_CHECK], default_detectors()))
    ca = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (ca.check_run_status, ca.error_code) == ("FAILED", "AccessDeniedException")
    assert "could not list CA certificates" in (ca.message or "")
    device = audited.task.audit_details[DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]
    assert device.check_run_status == "COMPLETED_NON_COMPLIANT"
    assert audited.task.task_status.value == "COMPLETED"


def test_ca_key_sharing_a_prime_with_a_device_key_is_found(iot):
    rng = random.Random(1024)
    shared = prime(rng)
    ca = register_ca(iot, issue_certificate(key(shared, prime(rng)), "shared-ca"))
    register_ca(iot, issue_certificate(key(prime(rng), prime(rng)), "other-ca"))
    device = register(iot, issue_certificate(key(shared, prime(rng)), "device"))["certificateId"]
    for i in range(5):
        register(iot, issue_certificate(key(prime(rng), prime(rng)), f"good-{i}"))
    checks = make_checks([DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK], [])
    store = None
    for _ in range(2):  # the second audit compares the device fleet incrementally
        audited = run_audit(iot, [], store=store, checks=checks)
        store = audited.store
        shared_prime = {f.certificate_id: f for f in audited.findings if f.reason_for_non_compliance_code == SHARED_PRIME}
        assert set(shared_prime) == {ca, device}
        ca_info = shared_prime[ca].non_compliant_resource.additional_info
        assert device in str(ca_info) and str(shared) not in str(ca_info)  # the partner by id, never the prime
        assert f"CA certificate {ca}" in shared_prime[device].reason_for_non_compliance
        assert str(shared) not in shared_prime[device].reason_for_non_compliance
        assert audited.task.audit_details[CA_CERTIFICATE_KEY_FACTORABLE_CHECK].total_resources_count == 2


@pytest.mark.parametrize("dry_run", [True, False])
def test_update_ca_certificate_deactivates_the_ca(iot, cas, dry_run):
    audited = run_audit(iot, [], checks=make_checks([CA_CERTIFICATE_KEY_QUALITY_CHECK], default_detectors()))
    mutating = []
    iot.meta.events.register("before-call.iot.UpdateCACertificate", lambda **kw: mutating.append(kw))
    actions = [ActionDefinition.for_type(t) for t in (MitigationActionType.UPDATE_CA_CERTIFICATE,
                                                      MitigationActionType.UPDATE_DEVICE_CERTIFICATE)]
    executions = Mitigator(iot, None, audited.store, dry_run=dry_run).apply(audited.findings, actions, "t1")
    # UPDATE_DEVICE_CERTIFICATE does not act on CA findings: one execution per finding.
    assert [e.action_type for e in executions] == [MitigationActionType.UPDATE_CA_CERTIFICATE] * 2
    statuses = {iot.describe_ca_certificate(certificateId=cas[name])["certificateDescription"]["status"]
                for name in ("debian", "roca")}
    if dry_run:
        assert mutating == [] and statuses == {"ACTIVE"}
        assert all(e.status is MitigationStatus.SKIPPED for e in executions)
    else:
        assert len(mutating) == 2 and statuses == {"INACTIVE"}
        assert all(e.status is MitigationStatus.COMPLETED for e in executions)
    assert iot.describe_ca_certificate(certificateId=cas["good"])["certificateDescription"]["status"] == "ACTIVE"
