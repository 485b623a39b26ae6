"""Answers that are not what botocore's ``iot`` model describes (a broken proxy, an emulator, a
future status), met by the audit engine: each becomes a resource error or a failed listing, never
a traceback, never a certificate silently out of scope, never key material kept that should not be.

The answers are injected at the exact HTTP call (botocore's ``before-send``) inside ``mock_aws``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from conftest import DATA, REGION, RawBody, run_audit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.check_names import CA_CERTIFICATE_KEY_QUALITY_CHECK
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import AuditTaskStatus
from devicedefender_audit.store import open_store

ROCA_PEM = (DATA / "roca" / "cert04.pem").read_text()


def answer(iot, operation: str, body: Callable[[str], object] | object) -> None:
    """Answer every ``operation`` call of ``iot`` with HTTP 200 and ``body`` as JSON (or
    ``body(url)`` when it is callable)."""
    def send(request, **_):
        payload = body(request.url) if callable(body) else body
        return AWSResponse(request.url, 200, {}, RawBody(json.dumps(payload).encode()))

    iot.meta.events.register(f"before-send.iot.{operation}", send)


def row(pem: str = ROCA_PEM, **overrides: object) -> dict:
    """A ListCertificates row for ``pem`` (moto's id: the SHA-256 of the PEM text)."""
    cid = hashlib.sha256(pem.encode()).hexdigest()
    return {"certificateId": cid, "certificateArn": f"arn:aws:iot:{REGION}:123456789012:cert/{cid}",
            "status": "ACTIVE", **overrides}


def fleet_of_one(iot, pem: object, listed: dict | None = None, status: object = "ACTIVE") -> str:
    """One listed certificate whose DescribeCertificate answers ``pem`` and ``status``."""
    listed = listed or row(pem if isinstance(pem, str) else ROCA_PEM)
    answer(iot, "ListCertificates", {"certificates": [listed]})
    answer(iot, "DescribeCertificate", {"certificateDescription": {
        "certificateId": listed["certificateId"], "certificatePem": pem, "status": status}})
    return listed["certificateId"]


@pytest.fixture
def client(aws):
    return boto3.client("iot", region_name=REGION)


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_a_private_key_answered_as_certificate_pem_is_never_stored(client, tmp_path):
    secret = private_key_pem()
    cid = fleet_of_one(client, secret)
    path = tmp_path / "audits.sqlite3"
    store = open_store(path)
    audited = run_audit(client, [RocaDetector()], store, workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [(cid, "MALFORMED_CERTIFICATE")]
    assert "private key material" in audited.errors[0].message
    assert audited.task.details.check_run_status == "FAILED"
    record = store.inventory_record(cid)
    assert record.description is not None and record.description.unparsed_pem is None
    # not in the database, its WAL, or anywhere else beside it
    body = "".join(secret.splitlines()[1:4]).encode()
    assert not any(body in f.read_bytes() for f in tmp_path.iterdir() if f.is_file())
    # the next audit describes nothing and reports the certificate the same way, from the store
    again = run_audit(client, [RocaDetector()], store, workers=1)
    assert again.task.progress.described_certificates == 0
    assert [(e.certificate_id, e.error_code) for e in again.errors] == [(cid, "MALFORMED_CERTIFICATE")]
    store.close()


def test_an_oversized_certificate_pem_is_not_kept_and_a_dynamodb_store_survives_it(client):
    """A 1 MB answer (AWS IoT's certificatePem is at most 65,536 characters) was kept whole, and a
    DynamoDB item cannot exceed 400 KB: the write failed and the whole audit with it."""
    blob = "-----BEGIN CERTIFICATE-----\n" + "QUJD\n" * 200_000 + "-----END CERTIFICATE-----\n"
    cid = fleet_of_one(client, blob)
    store = open_store("dynamodb://dda-faults", AwsTarget(region=REGION))
    audited = run_audit(client, [RocaDetector()], store, workers=1)
    assert audited.task.task_status is AuditTaskStatus.COMPLETED
    assert [e.certificate_id for e in audited.errors] == [cid]
    assert "not stored" in audited.errors[0].message
    assert store.inventory_record(cid).description.unparsed_pem is None
    assert (audited.task.details.check_run_status, audited.task.details.failed_resources_count) == ("FAILED", 1)


@pytest.mark.parametrize("pem", [12345, ["-----BEGIN CERTIFICATE-----"], {"pem": "x"}, ""])
def test_a_certificate_pem_that_is_not_text_is_a_resource_error(client, pem):
    listed = row()
    fleet_of_one(client, pem, listed)
    store = open_store(":memory:")
    audited = run_audit(client, [RocaDetector()], store, workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [(listed["certificateId"],
                                                                          "MALFORMED_RESPONSE")]
    # The next audit reads the certificate from the store and reports it with the same code.
    again = run_audit(client, [RocaDetector()], store, workers=1)
    assert again.task.progress.described_certificates == 0
    assert [(e.certificate_id, e.error_code) for e in again.errors] == [(listed["certificateId"],
                                                                        "MALFORMED_RESPONSE")]
    assert audited.task.task_status is AuditTaskStatus.COMPLETED
    assert audited.task.details.check_run_status == "FAILED"


def test_an_unparsable_timestamp_in_a_description_is_a_resource_error(client):
    listed = row()
    answer(client, "ListCertificates", {"certificates": [listed]})
    answer(client, "DescribeCertificate", {"certificateDescription": {
        "certificatePem": ROCA_PEM, "status": "ACTIVE", "creationDate": "yesterday-ish"}})
    store = open_store(":memory:")
    audited = run_audit(client, [RocaDetector()], store, workers=1)
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [(listed["certificateId"],
                                                                          "MALFORMED_RESPONSE")]
    # The next audit reads the certificate from the store and reports it with the same code.
    again = run_audit(client, [RocaDetector()], store, workers=1)
    assert again.task.progress.described_certificates == 0
    assert [(e.certificate_id, e.error_code) for e in again.errors] == [(listed["certificateId"],
                                                                        "MALFORMED_RESPONSE")]
    assert "ValueError" in audited.errors[0].message


@pytest.mark.parametrize("status", ["ACTIVATED", "", None, 7])
def test_a_described_status_outside_the_model_does_not_take_the_certificate_out_of_scope(client, status):
    """DescribeCertificate's status only tells of a change since the listing; one the model does
    not know took a weak certificate out of scope and the check said COMPLETED_COMPLIANT."""
    cid = fleet_of_one(client, ROCA_PEM, status=status)
    audited = run_audit(client, [RocaDetector()], workers=1)
    assert [f.certificate_id for f in audited.findings] == [cid]
    assert audited.task.details.check_run_status == "COMPLETED_NON_COMPLIANT"
    assert audited.store.inventory_record(cid).status == "ACTIVE"


def test_an_inactive_answer_between_list_and_describe_still_leaves_scope(client):
    fleet_of_one(client, ROCA_PEM, status="INACTIVE")
    audited = run_audit(client, [RocaDetector()], workers=1)
    assert audited.findings == [] and audited.errors == []
    assert audited.task.details.total_resources_count == 0


@pytest.mark.parametrize("status", ["ACTIVATED", None])
def test_a_listed_status_outside_the_model_is_not_checked_rather_than_out_of_scope(client, status):
    listed = row()
    if status is None:
        del listed["status"]
    else:
        listed["status"] = status
    fleet_of_one(client, ROCA_PEM, listed)
    audited = run_audit(client, [RocaDetector()], workers=1)
    details = audited.task.details
    assert [(e.certificate_id, e.error_code) for e in audited.errors] == [(listed["certificateId"],
                                                                          "MALFORMED_RESPONSE")]
    assert (details.check_run_status, details.check_compliant, details.error_code) == (
        "FAILED", False, "RESOURCES_NOT_CHECKED")
    assert (details.total_resources_count, details.failed_resources_count) == (1, 1)


@pytest.mark.parametrize("page", [
    {"certificates": [{"certificateArn": "arn:aws:iot:us-east-1:1:cert/x", "status": "ACTIVE"}]},
    {"certificates": [row(creationDate="not a time")]},
    {"certificates": "all of them"},
    {"certificates": [row(), "x"]},
], ids=["no-id", "bad-timestamp", "not-a-list", "row-not-an-object"])
def test_a_listing_page_outside_the_model_fails_the_task(client, page):
    answer(client, "ListCertificates", page)
    audited = run_audit(client, [RocaDetector()], workers=1)
    details = audited.task.details
    assert audited.task.task_status is AuditTaskStatus.FAILED
    assert (details.check_run_status, details.error_code) == ("FAILED", "MALFORMED_RESPONSE")
    assert details.message.startswith("could not list certificates: ")


CA_ONLY = [CA_CERTIFICATE_KEY_QUALITY_CHECK]


def ca_row(**overrides: object) -> dict:
    cid = hashlib.sha256(ROCA_PEM.encode()).hexdigest()
    return {"certificateId": cid, "certificateArn": f"arn:aws:iot:{REGION}:123456789012:cacert/{cid}",
            "status": "ACTIVE", **overrides}


def test_a_ca_listed_with_a_status_outside_the_model_is_not_checked(client):
    answer(client, "ListCACertificates", {"certificates": [ca_row(status="REVOKED")]})
    audited = run_audit(client, [RocaDetector()], workers=1, checks=make_checks(CA_ONLY, [RocaDetector()]))
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert [(e.error_code, e.resource_type) for e in audited.errors] == [("MALFORMED_RESPONSE", "CA_CERTIFICATE")]
    assert (details.check_run_status, details.error_code, details.total_resources_count) == (
        "FAILED", "RESOURCES_NOT_CHECKED", 1)


def test_a_ca_listing_outside_the_model_fails_the_ca_check(client):
    answer(client, "ListCACertificates", {"certificates": [ca_row(creationDate="soon")]})
    audited = run_audit(client, [RocaDetector()], workers=1, checks=make_checks(CA_ONLY, [RocaDetector()]))
    details = audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (details.check_run_status, details.error_code) == ("FAILED", "MALFORMED_RESPONSE")


def test_a_ca_description_outside_the_model_is_a_resource_error(client):
    answer(client, "ListCACertificates", {"certificates": [ca_row()]})
    answer(client, "DescribeCACertificate", {"certificateDescription": {"certificatePem": 42}})
    audited = run_audit(client, [RocaDetector()], workers=1, checks=make_checks(CA_ONLY, [RocaDetector()]))
    assert [(e.error_code, e.resource_type) for e in audited.errors] == [("MALFORMED_RESPONSE", "CA_CERTIFICATE")]
    assert audited.task.audit_details[CA_CERTIFICATE_KEY_QUALITY_CHECK].check_run_status == "FAILED"


def _good_fleet_without_retries(key, size: int) -> Any:
    """``size`` good certificates registered in moto, and an IoT client that tries each call once."""
    from botocore.config import Config
    from conftest import issue_certificate, register

    good = issue_certificate(key, "good")
    for i in range(size):
        register(boto3.client("iot", region_name=REGION), f"# device {i}\n{good}")
    return boto3.client("iot", region_name=REGION, config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def _throttled(request: Any) -> AWSResponse:
    return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "ThrottlingException"},
                       RawBody(b'{"message": "Rate exceeded"}'))


def test_a_wall_of_throttling_ends_the_sync_and_the_next_run_goes_on(aws, fresh_rsa_key):
    """Throttled after all retries, call after call, the sync went through the whole fleet marking
    each certificate THROTTLED (51 certificates took 298 s under adaptive retries) and ended
    COMPLETED; it ends FAILED THROTTLED instead, as a lost connection does, keeping what it described."""
    from devicedefender_audit.inventory import CONNECTION_LOSS_LIMIT

    fleet = CONNECTION_LOSS_LIMIT + 30
    iot = _good_fleet_without_retries(fresh_rsa_key, fleet)
    answered = []

    def throttle_after_ten(request, **_):
        answered.append(1)
        return _throttled(request) if len(answered) > 10 else None

    iot.meta.events.register("before-send.iot.DescribeCertificate", throttle_after_ten)
    store = open_store(":memory:")
    audited = run_audit(iot, [RocaDetector()], store, workers=1)
    details = audited.task.details
    assert audited.task.task_status is AuditTaskStatus.FAILED
    assert (details.check_run_status, details.error_code) == ("FAILED", "THROTTLED")
    assert "throttled 20 DescribeCertificate calls in a row" in details.message
    # It stopped there: at most the calls already queued for its one worker (4 a worker) went on.
    assert 10 + CONNECTION_LOSS_LIMIT <= len(answered) <= 10 + CONNECTION_LOSS_LIMIT + 4 < fleet
    assert audited.task.progress.described_certificates == 10
    later = run_audit(boto3.client("iot", region_name=REGION), [RocaDetector()], store)
    assert later.task.progress.described_certificates == fleet - 10
    assert later.task.details.check_run_status == "COMPLETED_COMPLIANT"


def test_a_run_of_lost_connections_and_throttling_is_named_as_both(aws, fresh_rsa_key):
    """A run mixing the two endpoint failures ends the sync as either alone does, and its message
    counts both (it named the last one's kind: "throttled 20 calls in a row" when 10 were)."""
    from botocore.exceptions import EndpointConnectionError

    from devicedefender_audit.inventory import CONNECTION_LOSS_LIMIT

    iot = _good_fleet_without_retries(fresh_rsa_key, CONNECTION_LOSS_LIMIT + 5)
    calls = []

    def fail_alternately(request, **_):
        calls.append(1)
        if len(calls) % 2:
            raise EndpointConnectionError(endpoint_url=request.url)
        return _throttled(request)

    iot.meta.events.register("before-send.iot.DescribeCertificate", fail_alternately)
    details = run_audit(iot, [RocaDetector()], open_store(":memory:"), workers=1).task.details
    assert details.check_run_status == "FAILED"
    # Futures are drained in no set order (up to 4 in flight), so the 20 are not always 10 and 10.
    said = re.search(rf"failed {CONNECTION_LOSS_LIMIT} calls in a row: (\d+) got no response, (\d+) were still "
                     "throttled", details.message)
    assert said and sum(map(int, said.groups())) == CONNECTION_LOSS_LIMIT and min(map(int, said.groups())) > 0


def test_throttling_interleaved_with_answers_is_per_certificate(aws, fresh_rsa_key):
    from devicedefender_audit.inventory import CONNECTION_LOSS_LIMIT

    iot = _good_fleet_without_retries(fresh_rsa_key, CONNECTION_LOSS_LIMIT * 3)
    answered = []

    def throttle_every_other(request, **_):
        answered.append(1)
        return _throttled(request) if len(answered) % 2 else None

    iot.meta.events.register("before-send.iot.DescribeCertificate", throttle_every_other)
    audited = run_audit(iot, [RocaDetector()], workers=1)
    assert audited.task.task_status is AuditTaskStatus.COMPLETED
    assert {e.error_code for e in audited.errors} == {"THROTTLED"}
    assert audited.task.details.failed_resources_count == CONNECTION_LOSS_LIMIT * 3 // 2


def test_max_attempts_counts_every_attempt(aws):
    """``--max-attempts N`` says attempts per call; botocore's ``max_attempts`` counts retries, so
    N made N + 1."""
    from botocore.exceptions import ClientError

    iot = AwsTarget(region=REGION, max_attempts=2).client("iot")
    attempts = []

    def failing(request, **_):
        attempts.append(1)
        return AWSResponse(request.url, 500, {"x-amzn-ErrorType": "InternalFailure"}, RawBody(b'{"message": "x"}'))

    iot.meta.events.register("before-send.iot.ListCertificates", failing)
    with pytest.raises(ClientError):
        iot.list_certificates()
    assert len(attempts) == 2
