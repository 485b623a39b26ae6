"""``CA_CERTIFICATE_KEY_QUALITY_CHECK`` and ``CA_CERTIFICATE_KEY_FACTORABLE_CHECK`` against moto (with
``ListCACertificates`` added, see :mod:`devicedefender_audit.moto_ca_listing`): real weak CA keys
are found, good and inactive ones are not, keys are described once, and ``UPDATE_CA_CERTIFICATE``
deactivates the CA (and changes nothing in a dry run)."""

from __future__ import annotations

import base64
import json
import random
from datetime import datetime, timedelta, timezone

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from conftest import DATA, issue_certificate, load_private_key, register, run_audit
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from test_factorable_audit import key, prime

from devicedefender_audit.audit import Audit, recover_interrupted
from devicedefender_audit.aws.iot_ca_certificates import list_ca_certificate_pages
from devicedefender_audit.ca_inventory import CA_KEY_KIND
from devicedefender_audit.check_names import (
    CA_CERTIFICATE,
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.factoring.codes import DUPLICATE_KEY, SHARED_PRIME
from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import MitigationActionType, MitigationStatus
from devicedefender_audit.service.findings import finding_shape
from devicedefender_audit.service.shapes import operation, output_problems
from devicedefender_audit.store import open_store
from devicedefender_audit.store.base import TaskOwner

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


@pytest.mark.parametrize("device_check", [True, False], ids=["with-device-check", "ca-check-alone"])
def test_ca_partners_are_found_incrementally_across_audits(iot, device_check):
    """The CA side comes from the device fleet comparison's matches (no second pass over the
    fleet): partners that are CA keys, a device key equal to a CA's, and a device key registered
    between audits are all found, also when the device factorable check is not run."""
    rng = random.Random(3072)
    p, q = prime(rng), prime(rng)
    first_ca = register_ca(iot, issue_certificate(key(p, prime(rng)), "ca-1"))
    second_ca = register_ca(iot, issue_certificate(key(p, prime(rng)), "ca-2"))  # shares p with ca-1
    copied = key(q, prime(rng))
    third_ca = register_ca(iot, issue_certificate(copied, "ca-3"))
    copy = register(iot, issue_certificate(copied, "device-copy"))["certificateId"]  # the same key
    for i in range(4):
        register(iot, issue_certificate(key(prime(rng), prime(rng)), f"good-{i}"))
    names = [CA_CERTIFICATE_KEY_FACTORABLE_CHECK] + ([DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK] if device_check else [])
    checks = make_checks(names, [])

    def ca_findings(audited) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for finding in audited.findings:
            if finding.check_name == CA_CERTIFICATE_KEY_FACTORABLE_CHECK:
                found.setdefault(finding.certificate_id, set()).add(finding.reason_for_non_compliance_code)
        return found

    first = run_audit(iot, [], checks=checks)
    expected = {first_ca: {SHARED_PRIME}, second_ca: {SHARED_PRIME}, third_ca: {DUPLICATE_KEY}}
    assert ca_findings(first) == expected
    assert copy in str(next(f for f in first.findings if f.certificate_id == third_ca).non_compliant_resource)
    again = run_audit(iot, [], store=first.store, checks=checks)
    assert ca_findings(again) == expected
    late = register(iot, issue_certificate(key(q, prime(rng)), "late-device"))["certificateId"]
    third = run_audit(iot, [], store=first.store, checks=checks)
    assert ca_findings(third) == {**expected, third_ca: {SHARED_PRIME, DUPLICATE_KEY}}
    evidence = [f.non_compliant_resource.additional_info for f in third.findings if f.certificate_id == third_ca]
    assert any(late in str(info) for info in evidence)
    assert third.task.audit_details[CA_CERTIFICATE_KEY_FACTORABLE_CHECK].check_run_status == "COMPLETED_NON_COMPLIANT"


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


# hostile input ---------------------------------------------------------------------------------

CA_QUALITY = make_checks([CA_CERTIFICATE_KEY_QUALITY_CHECK], default_detectors())


def described_id(params: dict) -> str:
    """The certificate id of a DescribeCACertificate request (``before-call`` sees the HTTP
    request: ``GET /cacertificate/{caCertificateId}``)."""
    return params["url_path"].rsplit("/", 1)[-1]


def answer(iot, operation: str, respond) -> None:
    """Answer ``operation`` with ``respond(request)`` (a parsed response) instead of moto."""
    iot.meta.events.register(f"before-call.iot.{operation}",
                             lambda params, **kwargs: (AWSResponse("https://iot.test", 200, {}, None), respond(params)))


def client_error(code: str, operation: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} said AWS"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def ed25519_certificate(name: str) -> str:
    private = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(private, None))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_corrupt_ca_pem_is_unchecked_never_compliant(iot, fresh_rsa_key):
    corrupt = register_ca(iot, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    register_ca(iot, issue_certificate(fresh_rsa_key, "good-ca"))
    store = open_store(":memory:")
    for _ in range(2):  # the second audit reads the unparsed PEM kept in the store
        audited = run_audit(iot, [], store=store, checks=CA_QUALITY)
        details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
        assert (details.check_run_status, details.error_code) == ("FAILED", "RESOURCES_NOT_CHECKED")
        assert (details.total_resources_count, details.failed_resources_count) == (2, 1)
        assert [(e.certificate_id, e.resource_type) for e in audited.errors] == [(corrupt, CA_CERTIFICATE)]
        assert audited.findings == []


def test_ec_and_ed25519_cas_are_checked_not_failed(iot):
    ec_ca = register_ca(iot, issue_certificate(ec.generate_private_key(ec.SECP384R1()), "ec-ca"))
    ed_ca = register_ca(iot, ed25519_certificate("ed-ca"))
    audited = run_audit(iot, default_detectors(), checks=make_checks(
        [CA_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK], default_detectors()))
    assert audited.findings == [] and audited.errors == []
    for name in (CA_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK):
        details = audited.task.audit_details[name]
        assert details.total_resources_count == 2 and details.failed_resources_count == 0, name
        assert details.check_run_status in ("COMPLETED_COMPLIANT", "FAILED"), name
        if details.check_run_status == "FAILED":  # only for want of detector data, said so
            assert details.error_code == "RESOURCES_NOT_COVERED"
    stored = {cid: audited.store.get_record(CA_KEY_KIND, cid) for cid in (ec_ca, ed_ca)}
    assert stored[ec_ca]["keyAlgorithm"].startswith("EC") and "25519" in stored[ed_ca]["keyAlgorithm"]


def test_a_ca_deleted_between_list_and_describe_left_scope(iot, fresh_rsa_key):
    gone = register_ca(iot, issue_certificate(fresh_rsa_key, "gone-ca"))
    register_ca(iot, (DATA / "roca" / "cert04.pem").read_text())

    def delete_first(params, **kwargs):
        if described_id(params) == gone:
            iot.meta.events.unregister("before-call.iot.DescribeCACertificate", delete_first)
            iot.update_ca_certificate(certificateId=gone, newStatus="INACTIVE")
            iot.delete_ca_certificate(certificateId=gone)

    iot.meta.events.register("before-call.iot.DescribeCACertificate", delete_first)
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert [(e.certificate_id, e.error_code, e.left_scope) for e in audited.errors] == [
        (gone, "DELETED_DURING_SCAN", True)]
    assert (details.check_run_status, details.total_resources_count, details.failed_resources_count) == (
        "COMPLETED_NON_COMPLIANT", 1, 0)
    assert details.message is None  # a CA that left scope is not an unchecked one


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalFailureException", "AccessDeniedException"])
def test_a_failing_describe_ca_certificate_leaves_that_ca_unchecked(iot, cas, code):
    def refuse(params, **kwargs):
        if described_id(params) == cas["good"]:
            raise client_error(code, "DescribeCACertificate", 429 if code.startswith("Throttl") else 500)

    iot.meta.events.register("before-call.iot.DescribeCACertificate", refuse)
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert audited.task.task_status.value == "COMPLETED"
    assert (details.check_run_status, details.total_resources_count, details.failed_resources_count) == (
        "COMPLETED_NON_COMPLIANT", 3, 1)
    assert "1 could not be checked" in (details.message or "")
    [error] = audited.errors
    expected = "THROTTLED" if code == "ThrottlingException" else code
    assert (error.certificate_id, error.error_code, error.resource_type) == (cas["good"], expected, CA_CERTIFICATE)
    # The failed CA was not kept: the next audit describes it again and checks it.
    iot.meta.events.unregister("before-call.iot.DescribeCACertificate", refuse)
    again = run_audit(iot, default_detectors(), store=audited.store, checks=CA_QUALITY)
    assert again.errors == [] and again.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK].failed_resources_count == 0


def test_a_ca_pem_that_does_not_hash_to_its_id_is_not_trusted(iot, cas):
    other = (DATA / "roca" / "cert05.pem").read_text()

    def substitute(params):
        return {"certificateDescription": {"certificateId": described_id(params), "status": "ACTIVE",
                                           "certificatePem": other}}

    answer(iot, "DescribeCACertificate", substitute)
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert {e.error_code for e in audited.errors} == {"CERTIFICATE_ID_MISMATCH"} and len(audited.errors) == 3
    assert audited.findings == [] and details.check_run_status == "FAILED"
    assert [name for name, _ in audited.store.records(CA_KEY_KIND)] == []


def test_a_describe_response_without_a_pem_is_malformed_not_a_crash(iot, cas):
    answer(iot, "DescribeCACertificate", lambda params: {"certificateDescription": {"status": "ACTIVE"}})
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    assert {e.error_code for e in audited.errors} == {"MALFORMED_RESPONSE"}
    assert audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK].check_run_status == "FAILED"


def test_many_ca_certificates_are_listed_page_by_page(iot):
    signer = ec.generate_private_key(ec.SECP256R1())
    ids = [register_ca(iot, issue_certificate(signer, f"ca-{i}")) for i in range(60)]
    pages = [len(page) for page in list_ca_certificate_pages(iot, page_size=25)]
    assert pages == [25, 25, 10]
    newest = iot.list_ca_certificates(pageSize=2, ascendingOrder=False)
    assert [c["certificateId"] for c in newest["certificates"]] == ids[:-3:-1] and newest["nextMarker"]
    listings = []

    def smaller_pages(params, **kwargs):  # AWS allows 250 a page: the audit's paging, at 25
        params["pageSize"] = 25
        listings.append(params.get("marker"))

    iot.meta.events.register("before-parameter-build.iot.ListCACertificates", smaller_pages)
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    assert listings == [None, "25", "50"]
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert details.total_resources_count == len(ids) and audited.errors == []
    assert sorted(name for name, _ in audited.store.records(CA_KEY_KIND)) == sorted(ids)


@pytest.mark.parametrize("damage", ["not base64", "not a key", "wrong types", "not an object", "not json"])
def test_a_damaged_stored_ca_key_is_described_again(iot, cas, damage):
    first = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    store = first.store
    bodies = {
        "not base64": {"spki": "%%% not base64 %%%", "keyAlgorithm": "RSA", "keyBits": 2048},
        "not a key": {"spki": base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), "keyAlgorithm": "RSA"},
        "wrong types": {"spki": 12, "keyAlgorithm": ["RSA"], "keyBits": "many"},
        "not an object": ["spki"],
    }
    for cid in cas.values():
        if damage == "not json":
            store._db.execute("UPDATE api_records SET body = '{not json' WHERE kind = ? AND key = ?",
                              (CA_KEY_KIND, cid))
        else:
            store._db.execute("UPDATE api_records SET body = ? WHERE kind = ? AND key = ?",
                              (json.dumps(bodies[damage]), CA_KEY_KIND, cid))
    describes = []
    iot.meta.events.register("before-call.iot.DescribeCACertificate", lambda params, **kw: describes.append(params))
    again = run_audit(iot, default_detectors(), store=store, checks=CA_QUALITY)
    assert again.task.task_status.value == "COMPLETED"
    assert {f.certificate_id for f in again.findings} == {cas["debian"], cas["roca"]}
    assert again.errors == [] and len(describes) == 3  # the in-scope CAs, described afresh
    assert store.get_record(CA_KEY_KIND, cas["roca"])["keyAlgorithm"] == "RSA"


def test_cancel_during_the_ca_phase_ends_the_task_canceled(iot, cas):
    register(iot, (DATA / "roca" / "cert05.pem").read_text())
    store = open_store(":memory:")
    audit = None

    def phase(label, total):
        if label == "Listing CA certificates":
            store.request_cancel(audit.task.task_id)

    audit = Audit(iot, store, default_detectors(), on_phase=phase,
                  checks=make_checks([DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_QUALITY_CHECK],
                                     default_detectors()))
    task = audit.run()
    assert task.task_status.value == "CANCELED"
    assert {d.check_run_status for d in task.audit_details.values()} == {"CANCELED"}
    assert task.task_statistics.canceled_checks == 2
    assert [f for f in store.findings(task.task_id) if f.resource_type == CA_CERTIFICATE] == []


def test_an_interrupted_audit_fails_every_check_it_ran(iot, cas):
    """A task whose process died is FAILED with each of its checks, the CA ones included, not
    left IN_PROGRESS beside a FAILED device check."""
    store = open_store(":memory:")
    checks = make_checks([DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_QUALITY_CHECK], default_detectors())
    audit = Audit(iot, store, default_detectors(), checks=checks)
    store.save_task(audit.task, TaskOwner("elsewhere", 1, 0.0))  # no sign of life for ever
    assert recover_interrupted(store) == [audit.task.task_id]
    task = store.get_task(audit.task.task_id)
    assert task.task_status.value == "FAILED"
    assert {name: d.check_run_status for name, d in task.audit_details.items()} == {
        DEVICE_CERTIFICATE_KEY_QUALITY_CHECK: "FAILED", CA_CERTIFICATE_KEY_QUALITY_CHECK: "FAILED"}
    assert {d.error_code for d in task.audit_details.values()} == {"INTERRUPTED"}
    stats = task.task_statistics
    assert (stats.failed_checks, stats.in_progress_checks, stats.total_checks) == (2, 0, 2)


def listed(iot, certificate_id: str) -> dict:
    description = iot.describe_ca_certificate(certificateId=certificate_id)["certificateDescription"]
    return {key: description[key] for key in ("certificateId", "certificateArn", "status", "creationDate")}


def test_a_ca_listed_on_two_pages_is_one_ca(iot, cas):
    rows = [listed(iot, cas[name]) for name in ("debian", "roca", "good")]
    pages = iter([{"certificates": rows[:2], "nextMarker": "2"}, {"certificates": rows[1:]}])
    answer(iot, "ListCACertificates", lambda params: next(pages))
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (details.total_resources_count, details.non_compliant_resources_count) == (3, 2)
    assert sorted(f.certificate_id for f in audited.findings) == sorted([cas["debian"], cas["roca"]])


@pytest.mark.parametrize("second_page", ["throttled", "malformed"])
def test_a_listing_that_fails_on_a_later_page_fails_the_ca_checks(iot, cas, second_page):
    """A partial listing would be a false all-clear for the CAs it left out."""
    rows = [listed(iot, cas["good"])]

    def pages(params):
        if "marker=" not in params["url"]:
            return {"certificates": rows, "nextMarker": "1"}
        if second_page == "throttled":
            raise client_error("ThrottlingException", "ListCACertificates", 429)
        return {"certificates": [{"status": "ACTIVE"}]}

    answer(iot, "ListCACertificates", pages)
    audited = run_audit(iot, default_detectors(), checks=CA_QUALITY)
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    expected = "ThrottlingException" if second_page == "throttled" else "MALFORMED_RESPONSE"
    assert (details.check_run_status, details.error_code) == ("FAILED", expected)
    assert audited.task.task_status.value == "COMPLETED" and audited.findings == []


@pytest.mark.parametrize("gone", ["deleted", "already inactive"])
def test_update_ca_certificate_skips_a_ca_that_is_gone_or_inactive(iot, cas, gone):
    audited = run_audit(iot, [], checks=CA_QUALITY)
    iot.update_ca_certificate(certificateId=cas["roca"], newStatus="INACTIVE")
    if gone == "deleted":
        iot.delete_ca_certificate(certificateId=cas["roca"])
    mutating = []
    iot.meta.events.register("before-call.iot.UpdateCACertificate", lambda **kw: mutating.append(kw))
    roca = [f for f in audited.findings if f.certificate_id == cas["roca"]]
    [execution] = Mitigator(iot, None, audited.store, dry_run=False).apply(
        roca, [ActionDefinition.for_type(MitigationActionType.UPDATE_CA_CERTIFICATE)], "t1")
    assert execution.status is MitigationStatus.SKIPPED and mutating == []
    assert ("no longer exists" if gone == "deleted" else "already INACTIVE") in execution.message


def test_ca_keys_not_compared_with_unreadable_device_keys_are_not_compliant(iot):
    """A device certificate that could not be described may share a prime with a CA: the CA
    factorable check says it could not compare, never COMPLETED_COMPLIANT."""
    rng = random.Random(7)
    register_ca(iot, issue_certificate(key(prime(rng), prime(rng)), "good-ca"))
    register(iot, issue_certificate(key(prime(rng), prime(rng)), "device"))

    def refuse(**kwargs):
        raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                              "DescribeCertificate")

    iot.meta.events.register("before-call.iot.DescribeCertificate", refuse)
    audited = run_audit(iot, [], checks=make_checks([CA_CERTIFICATE_KEY_FACTORABLE_CHECK], []))
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_FACTORABLE_CHECK]
    assert (details.check_run_status, details.error_code) == ("FAILED", "RESOURCES_NOT_CHECKED")
    assert "not compared with 1 device certificates" in (details.message or "")
