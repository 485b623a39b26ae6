"""The audit engine against moto: inventory, incremental describes, findings, honest outcomes."""

from __future__ import annotations

import os
from typing import ClassVar

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from botocore.stub import Stubber
from conftest import DATA, REGION, RawBody, issue_certificate, load_private_key, register, run_audit

from devicedefender_audit.audit import recover_interrupted
from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.iot_certificates import list_certificate_pages
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.inventory import CONNECTION_LOSS_LIMIT, certificate_id_matches
from devicedefender_audit.liveness import this_process
from devicedefender_audit.models import AuditFinding, AuditTask, AuditTaskStatus
from devicedefender_audit.store import open_store
from devicedefender_audit.store.base import TaskOwner

ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
DEBIAN = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"
CORRUPT = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def roca_pem(n: int = 4) -> str:
    return (DATA / "roca" / f"cert0{n}.pem").read_text()


def debian_pem() -> str:
    return issue_certificate(load_private_key(DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"), "weak")


def count_calls(client, operation: str) -> list[int]:
    """Count the API calls (not HTTP attempts) of ``operation`` made through ``client``."""
    calls: list[int] = []
    client.meta.events.register(f"before-call.iot.{operation}", lambda **_: calls.append(1))
    return calls


def test_status_filter_over_many_certificates(iot, fresh_rsa_key):
    good = issue_certificate(fresh_rsa_key, "good")
    # moto hashes the PEM for the id, so vary it with a comment line per copy.
    for i in range(260):
        register(iot, f"# device {i}\n{good}")
    register(iot, roca_pem(4), status="INACTIVE")
    register(iot, roca_pem(5), status="REVOKED")
    register(iot, f"# pending\n{good}", status="PENDING_TRANSFER")
    audited = run_audit(iot, [RocaDetector()])
    details = audited.task.details
    assert details.total_resources_count == 261
    assert audited.findings == [] and details.check_run_status == "COMPLETED_COMPLIANT"
    assert audited.task.progress.listed_certificates == 263
    assert audited.task.progress.checked_certificates == 261


def test_paginator_requests_250_and_follows_markers():
    iot = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")

    def page(ids: list[str], status: str = "ACTIVE") -> list[dict]:
        return [{"certificateId": i * 64, "certificateArn": f"arn:aws:iot:{REGION}:1:cert/{i * 64}",
                 "status": status} for i in ids]

    with Stubber(iot) as stub:
        stub.add_response("list_certificates", {"certificates": page(["a", "b"]), "nextMarker": "m1"},
                          {"pageSize": 250})
        stub.add_response("list_certificates", {"certificates": page(["c"], "REVOKED"), "nextMarker": "m2"},
                          {"pageSize": 250, "marker": "m1"})
        stub.add_response("list_certificates", {"certificates": page(["d"], "PENDING_TRANSFER")},
                          {"pageSize": 250, "marker": "m2"})
        pages = list(list_certificate_pages(iot))
        stub.assert_no_pending_responses()
    assert [[c.certificate_id[0] for c in p] for p in pages] == [["a", "b"], ["c"], ["d"]]


def test_audit_findings_shape_and_statistics(iot, fresh_rsa_key, ec_certificate):
    register(iot, issue_certificate(fresh_rsa_key, "good"))
    roca = register(iot, roca_pem(4), thing="meter-7")
    weak = register(iot, debian_pem())
    register(iot, ec_certificate)
    broken = register(iot, CORRUPT)
    audited = run_audit(iot, default_detectors())

    assert audited.task.task_status is AuditTaskStatus.COMPLETED
    by_cert = {f.certificate_id: f for f in audited.findings}
    assert by_cert[roca["certificateId"]].reason_for_non_compliance_code == ROCA
    assert by_cert[weak["certificateId"]].reason_for_non_compliance_code == DEBIAN
    assert "le32 rnd pid 1" in by_cert[weak["certificateId"]].reason_for_non_compliance
    assert by_cert[roca["certificateId"]].non_compliant_resource.additional_info["things"] == "meter-7"
    assert by_cert[weak["certificateId"]].non_compliant_resource.additional_info["things"] == ""
    assert len(audited.findings) == 2
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [
        (broken["certificateId"], "MALFORMED_CERTIFICATE")
    ]
    details = audited.task.details
    assert (details.total_resources_count, details.non_compliant_resources_count,
            details.failed_resources_count) == (5, 2, 1)
    assert details.check_run_status == "COMPLETED_NON_COMPLIANT" and details.check_compliant is False
    assert "1 could not be checked" in details.message
    assert audited.task.task_statistics.non_compliant_checks == 1

    wire = by_cert[roca["certificateId"]].to_aws()
    assert wire["checkName"] == "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
    assert wire["severity"] == "CRITICAL"
    assert wire["taskId"] == audited.task.task_id
    assert wire["nonCompliantResource"]["resourceType"] == "DEVICE_CERTIFICATE"
    assert wire["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] == roca["certificateId"]
    assert {"findingId", "taskStartTime", "findingTime", "reasonForNonCompliance",
            "reasonForNonComplianceCode"} <= set(wire)
    assert AuditFinding.model_validate(wire) == by_cert[roca["certificateId"]]


def test_second_audit_of_unchanged_fleet_describes_nothing(iot, fresh_rsa_key):
    good = issue_certificate(fresh_rsa_key, "good")
    for i in range(30):
        register(iot, f"# device {i}\n{good}")
    roca = register(iot, roca_pem(4))
    describes = count_calls(iot, "DescribeCertificate")
    store = open_store(":memory:")
    first = run_audit(iot, [RocaDetector()], store)
    assert len(describes) == 31
    second = run_audit(iot, [RocaDetector()], store)
    assert len(describes) == 31  # none more
    assert [f.certificate_id for f in second.findings] == [roca["certificateId"]]
    assert second.task.details == first.task.details

    for i in range(5):
        register(iot, f"# new device {i}\n{good}")
    third = run_audit(iot, [RocaDetector()], store)
    assert len(describes) == 36  # exactly the 5 new ones
    assert third.task.details.total_resources_count == 36


def test_new_detector_version_rechecks_stored_keys_without_aws(iot):
    roca = register(iot, roca_pem(4))
    store = open_store(":memory:")
    run_audit(iot, [RocaDetector()], store)

    class Newer(RocaDetector):
        version = "2-test"
        checked: ClassVar[list[int]] = []

        def check(self, key):
            self.checked.append(1)
            return super().check(key)

    describes = count_calls(iot, "DescribeCertificate")
    again = run_audit(iot, [Newer()], store)
    assert describes == [] and len(Newer.checked) == 1
    assert [f.certificate_id for f in again.findings] == [roca["certificateId"]]
    run_audit(iot, [Newer()], store)
    assert len(Newer.checked) == 1  # the stored verdict of the same version is reused


def test_malformed_certificate_is_described_once_and_reported_every_time(iot):
    broken = register(iot, CORRUPT)
    describes = count_calls(iot, "DescribeCertificate")
    store = open_store(":memory:")
    for _ in range(2):
        audited = run_audit(iot, [RocaDetector()], store)
        assert [(e.certificate_id, e.error_code) for e in audited.errors] == [
            (broken["certificateId"], "MALFORMED_CERTIFICATE")]
        assert audited.task.details.check_run_status == "FAILED"
        assert audited.task.details.error_code == "RESOURCES_NOT_CHECKED"
    assert len(describes) == 1


def test_disappeared_certificates_are_marked_gone(iot):
    cert = register(iot, roca_pem(4))
    store = open_store(":memory:")
    run_audit(iot, [RocaDetector()], store)
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    iot.delete_certificate(certificateId=cert["certificateId"])
    audited = run_audit(iot, [RocaDetector()], store)
    assert audited.task.details.total_resources_count == 0
    record = store.inventory_record(cert["certificateId"])
    assert record is not None and record.gone_since is not None and record.description is not None


def test_certificate_deleted_mid_scan_leaves_scope(iot, fresh_rsa_key):
    kept = register(iot, roca_pem(4))
    gone = register(iot, issue_certificate(fresh_rsa_key, "gone"))
    admin = boto3.client("iot", region_name=REGION)

    def delete_after_listing(**_):
        admin.update_certificate(certificateId=gone["certificateId"], newStatus="INACTIVE")
        admin.delete_certificate(certificateId=gone["certificateId"])

    iot.meta.events.register("after-call.iot.ListCertificates", delete_after_listing)
    audited = run_audit(iot, [RocaDetector()])
    assert [(e.certificate_id, e.error_code, e.left_scope) for e in audited.errors] == [
        (gone["certificateId"], "DELETED_DURING_SCAN", True)]
    assert [f.certificate_id for f in audited.findings] == [kept["certificateId"]]
    assert audited.task.details.total_resources_count == 1
    assert audited.task.details.failed_resources_count == 0


def test_certificate_deactivated_mid_scan_leaves_scope(iot):
    cert = register(iot, roca_pem(4))
    admin = boto3.client("iot", region_name=REGION)
    iot.meta.events.register(
        "after-call.iot.ListCertificates",
        lambda **_: admin.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE"))
    audited = run_audit(iot, [RocaDetector()])
    assert audited.findings == [] and audited.task.details.total_resources_count == 0


def _throttle_first(client, operation: str, times: int) -> list[int]:
    """Answer the first ``times`` HTTP attempts of ``operation`` with a 429 ThrottlingException."""
    attempts = []

    def handler(request, **_):
        attempts.append(1)
        if len(attempts) <= times:
            body = b'{"message": "Rate exceeded"}'
            return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "ThrottlingException"}, RawBody(body))
        return None

    client.meta.events.register(f"before-send.iot.{operation}", handler)
    return attempts


def test_throttling_is_retried_and_every_attempt_is_paced(aws):
    target = AwsTarget(region=REGION, rates={"iot.DescribeCertificate": 1000.0})
    iot = target.client("iot")
    assert iot.meta.config.retries["mode"] == "adaptive"
    cert = register(iot, roca_pem(4))
    bucket = target.pacer.bucket("iot", "DescribeCertificate")
    taken = []
    real = bucket.acquire
    bucket.acquire = lambda: taken.append(1) or real()
    attempts = _throttle_first(iot, "DescribeCertificate", times=3)
    audited = run_audit(iot, [RocaDetector()])
    assert len(attempts) == 4 and len(taken) == 4  # the pacer saw every HTTP attempt
    assert [f.certificate_id for f in audited.findings] == [cert["certificateId"]]
    assert audited.errors == []


def test_throttling_beyond_retries_is_unchecked_then_caught_up(aws):
    iot = boto3.client("iot", region_name=REGION, config=Config(retries={"mode": "standard", "max_attempts": 2}))
    throttled = register(iot, roca_pem(4))
    store = open_store(":memory:")
    _throttle_first(iot, "DescribeCertificate", times=10)
    audited = run_audit(iot, [RocaDetector()], store, workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [(throttled["certificateId"], "THROTTLED")]
    assert audited.task.task_status is AuditTaskStatus.COMPLETED
    assert (audited.task.details.check_run_status, audited.task.details.check_compliant) == ("FAILED", False)
    fresh = boto3.client("iot", region_name=REGION)
    later = run_audit(fresh, [RocaDetector()], store)
    assert [f.certificate_id for f in later.findings] == [throttled["certificateId"]]


def test_dropped_connections_are_per_resource_errors_then_abort(aws, fresh_rsa_key):
    iot = boto3.client("iot", region_name=REGION, config=Config(retries={"mode": "standard", "max_attempts": 1}))
    good = issue_certificate(fresh_rsa_key, "good")
    for i in range(CONNECTION_LOSS_LIMIT + 5):
        register(iot, f"# device {i}\n{good}")

    def drop(request, **_):
        raise ConnectionClosedError(endpoint_url=request.url)

    iot.meta.events.register("before-send.iot.DescribeCertificate", drop)
    audited = run_audit(iot, [RocaDetector()], workers=1)
    assert audited.task.task_status is AuditTaskStatus.FAILED
    assert audited.task.details.error_code == "CONNECTION_ERROR"
    assert "lost the connection" in audited.task.details.message
    assert {e.error_code for e in audited.errors} == {"CONNECTION_ERROR"}


def test_listing_failure_fails_the_task(aws):
    iot = boto3.client("iot", region_name=REGION)
    with Stubber(iot) as stub:
        stub.add_client_error("list_certificates", "AccessDeniedException", "not allowed")
        audited = run_audit(iot, [RocaDetector()])
    assert audited.task.task_status is AuditTaskStatus.FAILED
    assert audited.task.details.error_code == "AccessDeniedException"
    assert audited.task.task_statistics.failed_checks == 1


def test_uncovered_keys_are_never_compliant(iot):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1536)  # no CVE-2008-0166 list
    register(iot, issue_certificate(key, "odd-size"))
    audited = run_audit(iot, default_detectors())
    details = audited.task.details
    assert audited.findings == [] and details.not_covered_resources_count == 1
    assert (details.check_run_status, details.check_compliant, details.error_code) == (
        "FAILED", False, "RESOURCES_NOT_COVERED")


def test_store_round_trip(tmp_path, iot):
    register(iot, roca_pem(5))
    register(iot, CORRUPT)
    store = open_store(tmp_path / "audits.sqlite3")
    audited = run_audit(iot, [RocaDetector()], store)
    store.close()

    reopened = open_store(tmp_path / "audits.sqlite3")
    tasks = reopened.list_tasks()
    assert [t.task_id for t in tasks] == [audited.task.task_id]
    assert isinstance(tasks[0], AuditTask) and tasks[0] == audited.task
    assert list(reopened.findings(audited.task.task_id)) == audited.findings
    assert list(reopened.errors(audited.task.task_id)) == audited.errors
    assert reopened.latest_task_id() == audited.task.task_id
    assert os.stat(tmp_path / "audits.sqlite3").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("workers", [1, 8])
def test_scan_result_is_independent_of_concurrency(iot, workers):
    ids = {register(iot, roca_pem(n))["certificateId"] for n in (4, 5)}
    audited = run_audit(iot, [RocaDetector()], workers=workers)
    assert {f.certificate_id for f in audited.findings} == ids


def _stubbed_single_certificate(iot, stub: Stubber, cid: str, describe: dict) -> None:
    stub.add_response("list_certificates", {"certificates": [
        {"certificateId": cid, "certificateArn": f"arn:aws:iot:{REGION}:1:cert/{cid}", "status": "ACTIVE"}]})
    stub.add_response("describe_certificate", describe, {"certificateId": cid})


def test_incomplete_describe_response_is_a_resource_error():
    iot = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(iot) as stub:
        _stubbed_single_certificate(iot, stub, "e" * 64, {})
        audited = run_audit(iot, [RocaDetector()], workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [("e" * 64, "MALFORMED_RESPONSE")]


def test_pem_that_does_not_hash_to_the_id_is_reported():
    iot = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    pem = roca_pem(4)
    with Stubber(iot) as stub:
        _stubbed_single_certificate(iot, stub, "f" * 64, {"certificateDescription": {
            "certificatePem": pem, "status": "ACTIVE"}})
        audited = run_audit(iot, [RocaDetector()], workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [("f" * 64, "CERTIFICATE_ID_MISMATCH")]
    assert audited.findings == []


def test_certificate_id_is_the_sha256_of_the_der_or_of_moto_pem():
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = roca_pem(4)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    assert certificate_id_matches(hashlib.sha256(der).hexdigest(), pem)  # AWS IoT
    assert certificate_id_matches(hashlib.sha256(pem.encode()).hexdigest(), pem)  # moto
    assert not certificate_id_matches("0" * 64, pem)


def test_unlistable_things_do_not_fail_the_audit(iot):
    cert = register(iot, roca_pem(4), thing="meter-7")

    def deny(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListPrincipalThings")

    iot.meta.events.register("before-call.iot.ListPrincipalThings", deny)
    audited = run_audit(iot, [RocaDetector()])
    assert [f.certificate_id for f in audited.findings] == [cert["certificateId"]]
    assert audited.findings[0].non_compliant_resource.additional_info["things"] == "unknown (AccessDeniedException)"


def test_task_of_a_dead_process_is_marked_interrupted():
    store = open_store(":memory:")
    dead, alive, foreign = AuditTask(), AuditTask(), AuditTask()
    host = this_process()[0]
    store.save_task(dead, TaskOwner(host, 2**22 + 12345, 1e12))  # no such pid
    store.save_task(alive, TaskOwner(host, os.getppid(), 1e12))
    store.save_task(foreign, TaskOwner("elsewhere", 1, 1e12 - 3600))
    assert set(recover_interrupted(store, now=1e12)) == {dead.task_id, foreign.task_id}
    failed = store.get_task(dead.task_id)
    assert failed.task_status is AuditTaskStatus.FAILED and failed.details.error_code == "INTERRUPTED"
    assert store.get_task(alive.task_id).task_status is AuditTaskStatus.IN_PROGRESS


def test_debian_detector_version_follows_its_lists(tmp_path):
    import shutil

    from devicedefender_audit.detectors.debian_weak import DebianWeakDetector

    shipped = DATA.parent.parent / "blocklists"
    one, two, same = tmp_path / "one", tmp_path / "two", tmp_path / "same"
    for directory, sizes in ((one, [1024]), (two, [1024, 2048]), (same, [1024])):
        directory.mkdir()
        for bits in sizes:
            for suffix in (".ddwk", ".json"):
                shutil.copy(shipped / f"rsa-{bits}{suffix}", directory)
    versions = [DebianWeakDetector(d).version for d in (one, two, same)]
    assert versions[0] != versions[1] and versions[0] == versions[2]


def test_store_locked_by_another_writer_is_waited_for(tmp_path, iot):
    """sqlite3's default gives up after 5 s; the audit waits (up to 120 s) and loses nothing."""
    import sqlite3
    import threading

    roca = register(iot, roca_pem(4))
    path = tmp_path / "audits.sqlite3"
    store = open_store(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for 6 s
    release = threading.Timer(6.0, lambda: other.execute("COMMIT"))
    release.start()
    try:
        audited = run_audit(iot, [RocaDetector()], store)
    finally:
        release.join()
        other.close()
    assert [f.certificate_id for f in audited.findings] == [roca["certificateId"]]
    assert audited.task.task_status is AuditTaskStatus.COMPLETED
