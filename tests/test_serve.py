"""``serve`` over HTTP, driven by the unmodified boto3 ``iot`` client, forwarding to a moto server.

The server runs in-process on port 0 with the credentials of ``aws_env``; the client signs with
the same ones, as a user of ``serve`` would. What the server does not implement (certificates)
goes on to moto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import DATA, REGION

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.cli import main
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.server import AuditServer, Router, make_server
from devicedefender_audit.service import OPERATIONS, ServiceContext
from devicedefender_audit.service.shapes import iot_model
from devicedefender_audit.store import open_store

ROLE = "arn:aws:iam::123456789012:role/audit"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def serve(target: AwsTarget, store_path: Path, **options: object) -> tuple[AuditServer, ServiceContext]:
    """A server on a free loopback port, serving in a thread; audits see only ROCA (fast)."""
    ctx = ServiceContext(store=open_store(store_path), iot_client=lambda: target.client("iot"),
                         detectors=lambda: [RocaDetector()], region=REGION, background=True,
                         open_worker_store=lambda: open_store(store_path))
    server = make_server(target, ctx, port=0, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ctx


@pytest.fixture
def served(moto_server, tmp_path) -> Iterator[dict]:
    """``serve`` in front of moto holding two ROCA certificates, and a boto3 client for it."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    moto = target.client("iot")
    weak = [moto.register_certificate_without_ca(certificatePem=(DATA / "roca" / name).read_text(),
                                                 status="ACTIVE")["certificateId"]
            for name in ("cert04.pem", "cert05.pem")]
    server, ctx = serve(target, tmp_path / "served.sqlite3")
    client = boto3.client("iot", region_name=REGION, endpoint_url=server.url, config=NO_RETRIES)
    yield {"client": client, "url": server.url, "weak": weak, "ctx": ctx}
    server.shutdown()
    server.server_close()
    ctx.wait(30)
    ctx.store.close()


def audit(client) -> str:
    """Start an on-demand audit through the API and wait until it is no longer in progress."""
    task_id = client.start_on_demand_audit_task(targetCheckNames=[CHECK_NAME])["taskId"]
    deadline = time.monotonic() + 60
    while client.describe_audit_task(taskId=task_id)["taskStatus"] == "IN_PROGRESS":
        assert time.monotonic() < deadline, "the audit did not finish"
        time.sleep(0.05)
    return task_id


def error_of(call, **request) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call(**request)
    return caught.value.response["ResponseMetadata"]["HTTPStatusCode"], caught.value.response["Error"]["Code"]


def test_audit_lifecycle_through_the_unmodified_boto3_client(served):
    iot, weak = served["client"], served["weak"]
    assert iot.describe_account_audit_configuration()["auditCheckConfigurations"] == {
        CHECK_NAME: {"enabled": False}, "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK": {"enabled": False}}
    assert error_of(iot.start_on_demand_audit_task, targetCheckNames=[CHECK_NAME]) == (400, "InvalidRequestException")
    iot.update_account_audit_configuration(roleArn=ROLE, auditCheckConfigurations={CHECK_NAME: {"enabled": True}})

    first = audit(iot)
    task = iot.describe_audit_task(taskId=first)  # GET /audit/tasks/{taskId}
    assert task["taskStatus"] == "COMPLETED" and task["taskType"] == "ON_DEMAND_AUDIT_TASK"
    assert isinstance(task["taskStartTime"], datetime)  # an epoch number on the wire, parsed by botocore
    assert abs(task["taskStartTime"] - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert task["auditDetails"][CHECK_NAME]["nonCompliantResourcesCount"] == 2

    page = iot.list_audit_findings(taskId=first, maxResults=1)
    assert len(page["findings"]) == 1 and page["nextToken"]
    pages = list(iot.get_paginator("list_audit_findings").paginate(taskId=first, PaginationConfig={"PageSize": 1}))
    findings = [f for p in pages for f in p["findings"]]
    assert len(pages) == 2 and {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]
                                for f in findings} == set(weak)
    assert iot.describe_audit_finding(findingId=findings[0]["findingId"])["finding"] == findings[0]

    window = {"startTime": datetime.now(timezone.utc) - timedelta(hours=1),
              "endTime": datetime.now(timezone.utc) + timedelta(hours=1)}  # query-string timestamps
    assert [t["taskId"] for t in iot.list_audit_tasks(**window, taskStatus="COMPLETED")["tasks"]] == [first]

    suppressed = {"deviceCertificateId": weak[0]}
    iot.create_audit_suppression(checkName=CHECK_NAME, resourceIdentifier=suppressed, suppressIndefinitely=True,
                                 description="replacement scheduled")  # clientRequestToken filled in by boto3
    assert error_of(iot.create_audit_suppression, checkName=CHECK_NAME, resourceIdentifier=suppressed,
                    suppressIndefinitely=True) == (409, "ResourceAlreadyExistsException")
    second = audit(iot)
    assert iot.describe_audit_task(taskId=second)["auditDetails"][CHECK_NAME][
        "suppressedNonCompliantResourcesCount"] == 1
    only = iot.list_audit_findings(taskId=second, listSuppressedFindings=True)["findings"]
    assert [f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in only] == [weak[0]]
    assert all(f["isSuppressed"] for f in only)
    iot.delete_audit_suppression(checkName=CHECK_NAME, resourceIdentifier=suppressed)
    assert iot.list_audit_suppressions()["suppressions"] == []

    assert error_of(iot.describe_audit_task, taskId="no-such-task") == (404, "ResourceNotFoundException")
    assert error_of(iot.cancel_audit_task, taskId=second) == (400, "InvalidRequestException")  # PUT .../cancel

    # Not Device Defender: forwarded to moto with the server's credentials.
    assert {c["certificateId"] for c in iot.list_certificates()["certificates"]} == set(weak)
    described = iot.describe_certificate(certificateId=weak[1])["certificateDescription"]
    assert described["certificateId"] == weak[1] and described["status"] == "ACTIVE"
    assert error_of(iot.describe_thing, thingName="nothing-here") == (404, "ResourceNotFoundException")


def test_requests_not_signed_with_the_servers_credentials_are_refused(served):
    def client(**options: object):
        return boto3.client("iot", region_name=REGION, endpoint_url=served["url"], **options)

    wrong_secret = client(aws_access_key_id="testing", aws_secret_access_key="not-it", aws_session_token="testing",
                          config=NO_RETRIES)
    assert error_of(wrong_secret.describe_account_audit_configuration) == (403, "InvalidSignatureException")
    # Refused before forwarding too: the server is no open proxy for its credentials.
    assert error_of(wrong_secret.list_certificates) == (403, "InvalidSignatureException")
    other_key = client(aws_access_key_id="someone-else", aws_secret_access_key="testing",
                       aws_session_token="testing", config=NO_RETRIES)
    assert error_of(other_key.list_audit_tasks, startTime=0, endTime=1) == (403, "UnrecognizedClientException")
    unsigned = client(config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1, "mode": "standard"}))
    assert error_of(unsigned.describe_account_audit_configuration) == (403, "MissingAuthenticationTokenException")
    other_region = boto3.client("iot", region_name="eu-west-1", endpoint_url=served["url"], config=NO_RETRIES)
    assert error_of(other_region.describe_account_audit_configuration) == (403, "InvalidSignatureException")


def test_routes_are_derived_from_the_model_for_every_iot_operation():
    """Each operation's requestUri, labels filled in, resolves to that operation and no other
    (so a served operation is never mistaken for a forwarded one, or the reverse)."""
    model = iot_model()
    router = Router(model)
    for name in model.operation_names:
        http = model.operation_model(name).http
        path = re.sub(r"\{\w+\}", "x-1", re.sub(r"\{\w+\+\}", "a/b", http["requestUri"]))
        resolved = router.resolve(http["method"], path, {})
        assert resolved is not None and resolved[0].name == name, (name, http)
    assert set(OPERATIONS) <= set(model.operation_names)


def test_an_unauthenticated_server_listens_on_loopback_only(moto_server, tmp_path):
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    store = open_store(tmp_path / "s.sqlite3")
    ctx = ServiceContext(store=store, iot_client=lambda: target.client("iot"), detectors=list)
    with pytest.raises(ValueError, match="without authentication"):
        make_server(target, ctx, host="0.0.0.0", port=0, authenticate=False)
    assert main(["serve", "--no-auth", "--host", "0.0.0.0", "--port", "0", "--region", REGION,
                 "--endpoint-url", moto_server, "--store", str(tmp_path / "cli.sqlite3")]) == 2
    store.close()


def aws_cli(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``aws iot ...`` (the AWS CLI from the ``awscli`` package) against ``serve``."""
    aws = Path(sys.executable).parent / "aws"
    command = [str(aws), "iot", *args, "--endpoint-url", url, "--region", REGION, "--output", "json"]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def aws_json(url: str, *args: str) -> dict:
    done = aws_cli(url, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


def test_audit_lifecycle_through_the_aws_cli(served):
    pytest.importorskip("awscli")
    url, weak = served["url"], served["weak"]
    aws_json(url, "update-account-audit-configuration", "--role-arn", ROLE,
             "--audit-check-configurations", json.dumps({CHECK_NAME: {"enabled": True}}))
    task_id = aws_json(url, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)["taskId"]
    served["ctx"].wait(60)  # the audit runs in the server's background thread
    assert aws_json(url, "describe-audit-task", "--task-id", task_id)["taskStatus"] == "COMPLETED"
    # The AWS CLI follows nextToken itself: two pages of one finding, printed as one list.
    findings = aws_json(url, "list-audit-findings", "--task-id", task_id, "--page-size", "1")["findings"]
    assert {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in findings} == set(weak)
    aws_json(url, "create-audit-suppression", "--check-name", CHECK_NAME, "--resource-identifier",
             json.dumps({"deviceCertificateId": weak[0]}), "--suppress-indefinitely")
    second = aws_json(url, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)["taskId"]
    served["ctx"].wait(60)
    assert aws_json(url, "describe-audit-task", "--task-id", second)["auditDetails"][CHECK_NAME][
        "suppressedNonCompliantResourcesCount"] == 1
    assert {c["certificateId"] for c in aws_json(url, "list-certificates")["certificates"]} == set(weak)
    refused = aws_cli(url, "describe-account-audit-configuration", env={"AWS_SECRET_ACCESS_KEY": "not-it"})
    assert refused.returncode != 0 and "(InvalidSignatureException)" in refused.stderr


def test_serve_demo_serves_the_embedded_account(tmp_path):
    """``serve --demo`` as a user starts it: a process, the demo credentials, the printed URL."""
    demo_env = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_SESSION_TOKEN": "demo"}
    process = subprocess.Popen([sys.executable, "-m", "devicedefender_audit", "serve", "--demo", "--port", "0",
                                "--store", str(tmp_path / "demo.sqlite3")],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **demo_env})
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
        assert url, banner
        iot = boto3.client("iot", region_name=REGION, endpoint_url=url[1], config=NO_RETRIES,
                           aws_access_key_id="demo", aws_secret_access_key="demo", aws_session_token="demo")
        assert iot.describe_account_audit_configuration()["auditCheckConfigurations"][CHECK_NAME] == {
            "enabled": False}
        assert len(iot.list_certificates()["certificates"]) == 16  # the demo fleet, from its moto server
    finally:
        process.terminate()
        process.wait(30)
