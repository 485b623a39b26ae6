"""Scanning IoT certificates and producing Device Defender-shaped findings (moto)."""

from __future__ import annotations

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from conftest import DATA, REGION, issue_certificate, load_private_key, register

from devicedefender_audit.audit import Auditor
from devicedefender_audit.aws_clients import AwsTarget
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import AuditFinding, AuditTask, AuditTaskStatus
from devicedefender_audit.scanner import CertificateScanner
from devicedefender_audit.store import AuditStore

ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
DEBIAN = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"


def roca_pem(n: int = 4) -> str:
    return (DATA / "roca" / f"cert0{n}.pem").read_text()


def debian_pem() -> str:
    return issue_certificate(load_private_key(DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"), "weak")


def test_status_filter_and_paging_over_many_certificates(iot, fresh_rsa_key):
    good = issue_certificate(fresh_rsa_key, "good")
    # moto hashes the PEM for the id, so vary it with a comment line per copy.
    for i in range(260):
        register(iot, f"# device {i}\n{good}")
    register(iot, roca_pem(4), status="INACTIVE")
    register(iot, roca_pem(5), status="REVOKED")
    register(iot, f"# pending\n{good}", status="PENDING_TRANSFER")
    in_scope = CertificateScanner(iot).list_in_scope()
    assert len(in_scope) == 261
    assert {c.status for c in in_scope} == {"ACTIVE", "PENDING_TRANSFER"}


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
        found = CertificateScanner(iot).list_in_scope()
        stub.assert_no_pending_responses()
    assert [c.certificate_id for c in found] == ["a" * 64, "b" * 64, "d" * 64]


def test_audit_findings_shape_and_statistics(iot, fresh_rsa_key, ec_certificate):
    register(iot, issue_certificate(fresh_rsa_key, "good"))
    roca = register(iot, roca_pem(4), thing="meter-7")
    weak = register(iot, debian_pem())
    register(iot, ec_certificate)
    broken = register(iot, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    result = Auditor(CertificateScanner(iot), default_detectors()).run()

    assert result.task.task_status is AuditTaskStatus.COMPLETED
    by_cert = {f.certificate_id: f for f in result.findings}
    assert by_cert[roca["certificateId"]].reason_for_non_compliance_code == ROCA
    assert by_cert[weak["certificateId"]].reason_for_non_compliance_code == DEBIAN
    assert "le32 rnd pid 1" in by_cert[weak["certificateId"]].reason_for_non_compliance
    assert by_cert[roca["certificateId"]].non_compliant_resource.additional_info["things"] == "meter-7"
    assert by_cert[weak["certificateId"]].non_compliant_resource.additional_info["things"] == ""
    assert len(result.findings) == 2
    assert [(e.certificate_id, e.error_code) for e in result.errors] == [
        (broken["certificateId"], "MALFORMED_CERTIFICATE")
    ]
    details = result.task.details
    assert (details.total_resources_count, details.non_compliant_resources_count,
            details.failed_resources_count, details.not_applicable_resources_count) == (5, 2, 1, 1)
    assert details.check_run_status == "COMPLETED_NON_COMPLIANT"
    assert result.task.task_statistics.non_compliant_checks == 1

    wire = by_cert[roca["certificateId"]].to_aws()
    assert wire["checkName"] == "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
    assert wire["severity"] == "CRITICAL"
    assert wire["taskId"] == result.task.task_id
    assert wire["nonCompliantResource"]["resourceType"] == "DEVICE_CERTIFICATE"
    assert wire["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] == roca["certificateId"]
    assert {"findingId", "taskStartTime", "findingTime", "reasonForNonCompliance",
            "reasonForNonComplianceCode"} <= set(wire)
    assert AuditFinding.model_validate(wire) == by_cert[roca["certificateId"]]


def test_certificate_deleted_mid_scan_is_reported(iot, fresh_rsa_key):
    kept = register(iot, roca_pem(4))
    gone = register(iot, issue_certificate(fresh_rsa_key, "gone"))
    scanner = CertificateScanner(iot)
    summaries = scanner.list_in_scope()
    iot.update_certificate(certificateId=gone["certificateId"], newStatus="INACTIVE")
    iot.delete_certificate(certificateId=gone["certificateId"])

    class Listed(CertificateScanner):
        def list_in_scope(self):
            return summaries

    result = Auditor(Listed(iot), [RocaDetector()]).run()
    assert [(e.certificate_id, e.error_code) for e in result.errors] == [(gone["certificateId"], "DELETED_DURING_SCAN")]
    assert [f.certificate_id for f in result.findings] == [kept["certificateId"]]


def test_certificate_deactivated_mid_scan_leaves_scope(iot):
    cert = register(iot, roca_pem(4))
    scanner = CertificateScanner(iot)
    summaries = scanner.list_in_scope()
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    assert list(scanner.scan(summaries)) == []


def _throttle_first(client, operation: str, times: int) -> list[int]:
    """Answer the first ``times`` HTTP attempts of ``operation`` with a 429 ThrottlingException."""
    attempts = []

    def handler(request, **_):
        attempts.append(1)
        if len(attempts) <= times:
            body = b'{"message": "Rate exceeded"}'
            return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "ThrottlingException"}, _Raw(body))
        return None

    client.meta.events.register(f"before-send.iot.{operation}", handler)
    return attempts


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_):
        yield self._body

    def read(self, *_):
        return self._body


def test_throttling_is_retried_by_adaptive_mode(aws):
    target = AwsTarget(region=REGION)
    iot = target.client("iot")
    assert iot.meta.config.retries["mode"] == "adaptive"
    cert = register(iot, roca_pem(4))
    attempts = _throttle_first(iot, "DescribeCertificate", times=3)
    result = Auditor(CertificateScanner(iot), [RocaDetector()]).run()
    assert len(attempts) == 4
    assert [f.certificate_id for f in result.findings] == [cert["certificateId"]]
    assert result.errors == []


def test_throttling_beyond_retries_is_a_resource_error_not_a_crash(aws):
    iot = boto3.client("iot", region_name=REGION,
                       config=Config(retries={"mode": "standard", "max_attempts": 2}))
    throttled = register(iot, roca_pem(4))
    _throttle_first(iot, "DescribeCertificate", times=10)
    result = Auditor(CertificateScanner(iot, workers=1), [RocaDetector()]).run()
    assert [(e.certificate_id, e.error_code) for e in result.errors] == [(throttled["certificateId"], "THROTTLED")]
    assert result.task.task_status is AuditTaskStatus.COMPLETED


def test_listing_failure_fails_the_task(aws):
    iot = boto3.client("iot", region_name=REGION)
    with Stubber(iot) as stub:
        stub.add_client_error("list_certificates", "AccessDeniedException", "not allowed")
        result = Auditor(CertificateScanner(iot), [RocaDetector()]).run()
    assert result.task.task_status is AuditTaskStatus.FAILED
    assert result.task.details.error_code == "AccessDeniedException"
    assert result.task.task_statistics.failed_checks == 1


def test_store_round_trip(tmp_path, iot, fresh_rsa_key):
    register(iot, roca_pem(5))
    register(iot, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    result = Auditor(CertificateScanner(iot), [RocaDetector()]).run()
    store = AuditStore(tmp_path / "audits.sqlite3")
    store.save_audit(result)
    store.close()

    reopened = AuditStore(tmp_path / "audits.sqlite3")
    tasks = reopened.list_tasks()
    assert [t.task_id for t in tasks] == [result.task.task_id]
    assert isinstance(tasks[0], AuditTask) and tasks[0] == result.task
    assert reopened.findings(result.task.task_id) == result.findings
    assert reopened.errors(result.task.task_id) == result.errors
    assert reopened.latest_task_id() == result.task.task_id


@pytest.mark.parametrize("workers", [1, 8])
def test_scan_result_is_independent_of_concurrency(iot, workers):
    ids = {register(iot, roca_pem(n))["certificateId"] for n in (4, 5)}
    result = Auditor(CertificateScanner(iot, workers=workers), [RocaDetector()]).run()
    assert {f.certificate_id for f in result.findings} == ids


def test_incomplete_describe_response_is_a_resource_error():
    iot = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    scanner = CertificateScanner(iot, workers=1)
    summary_id = "e" * 64
    with Stubber(iot) as stub:
        stub.add_response("list_certificates", {"certificates": [
            {"certificateId": summary_id, "certificateArn": f"arn:aws:iot:{REGION}:1:cert/{summary_id}",
             "status": "ACTIVE"}]})
        stub.add_response("describe_certificate", {}, {"certificateId": summary_id})
        result = Auditor(scanner, [RocaDetector()]).run()
    assert [(e.certificate_id, e.error_code) for e in result.errors] == [(summary_id, "MALFORMED_RESPONSE")]


def test_unlistable_things_do_not_fail_the_audit(iot):
    cert = register(iot, roca_pem(4), thing="meter-7")

    def deny(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListPrincipalThings")

    iot.meta.events.register("before-call.iot.ListPrincipalThings", deny)
    result = Auditor(CertificateScanner(iot), [RocaDetector()]).run()
    assert [f.certificate_id for f in result.findings] == [cert["certificateId"]]
    assert result.findings[0].non_compliant_resource.additional_info["things"] == "unknown (AccessDeniedException)"
