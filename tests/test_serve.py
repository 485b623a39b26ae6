"""``serve`` over HTTP, driven by the unmodified boto3 ``iot`` client, forwarding to a moto server.

The server runs in-process on port 0 with the credentials of ``aws_env``; the client signs with
the same ones, as a user of ``serve`` would. What the server does not implement (certificates)
goes on to moto. It acts as the configured roles (moto's STS), runs its scheduler every 0.05 s
against a clock the test moves, and ``moto_calls`` records every call that reaches moto's IoT and
SNS backends (and can hold ``ListCertificates`` so that an audit is still running when canceled).
"""

from __future__ import annotations

import inspect
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
MITIGATION_ROLE = "arn:aws:iam::123456789012:role/mitigation"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
DRY_RUN_HEADER = "x-devicedefender-audit-dry-run"


class ShiftedClock:
    """The service's clock: real time, moved forward by the test (the scheduler reads it)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


def serve(target: AwsTarget, store_path: Path, clock=None, **options: object) -> tuple[AuditServer, ServiceContext]:
    """A server on a free loopback port, serving in a thread, acting as the configured roles;
    audits see only ROCA (fast)."""
    ctx = ServiceContext(store=open_store(store_path), iot_client=lambda: target.client("iot"),
                         detectors=lambda: [RocaDetector()], region=REGION, background=True,
                         open_worker_store=lambda: open_store(store_path), clock=clock or ShiftedClock(),
                         sns_client=lambda: target.client("sns"), role_client=target.client)
    server = make_server(target, ctx, port=0, **{"schedule_interval": 0.05, **options})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ctx


@pytest.fixture
def moto_calls(monkeypatch) -> Iterator[dict]:
    """Every call that reaches moto's IoT or SNS backend, by method name; ``hold`` set makes
    ``list_certificates`` wait (reporting ``held``) until ``release`` is set."""
    from moto.iot.models import IoTBackend
    from moto.sns.models import SNSBackend

    record: dict = {"calls": [], "hold": threading.Event(), "held": threading.Event(), "release": threading.Event()}

    def recording(name, method):
        def wrapper(self, *args, **kwargs):
            record["calls"].append(name)
            if name == "list_certificates" and record["hold"].is_set():
                record["held"].set()
                record["release"].wait(60)
            return method(self, *args, **kwargs)
        return wrapper

    for backend in (IoTBackend, SNSBackend):
        for name, method in list(vars(backend).items()):
            if not name.startswith("_") and inspect.isfunction(method):
                monkeypatch.setattr(backend, name, recording(name, method))
    yield record
    record["release"].set()


@pytest.fixture
def served(moto_server, moto_calls, tmp_path) -> Iterator[dict]:
    """``serve`` in front of moto holding two ROCA certificates, and a boto3 client for it."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    moto = target.client("iot")
    weak = [moto.register_certificate_without_ca(certificatePem=(DATA / "roca" / name).read_text(),
                                                 status="ACTIVE")["certificateId"]
            for name in ("cert04.pem", "cert05.pem")]
    clock = ShiftedClock()
    server, ctx = serve(target, tmp_path / "served.sqlite3", clock=clock)
    client = boto3.client("iot", region_name=REGION, endpoint_url=server.url, config=NO_RETRIES)
    yield {"client": client, "url": server.url, "weak": weak, "ctx": ctx, "clock": clock, "moto": moto_calls,
           "server": server}
    moto_calls["release"].set()
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


def until(condition, what: str, timeout: float = 60):
    """Poll ``condition`` (a call over HTTP) until it returns something true."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return result


def mitigation_done(client, task_id: str) -> dict:
    return until(lambda: (t := client.describe_audit_mitigation_actions_task(taskId=task_id))["taskStatus"] !=
                 "IN_PROGRESS" and t, f"mitigation actions task {task_id} did not finish")


def held_audit(served, start) -> str:
    """An audit started by ``start()`` and held in its first ListCertificates, so it is running."""
    moto = served["moto"]
    moto["held"].clear()
    moto["release"].clear()
    moto["hold"].set()
    task_id = start()
    assert moto["held"].wait(30), "the audit never listed certificates"
    moto["hold"].clear()
    return task_id


def scheduled_tasks(client, clock: ShiftedClock) -> list[dict]:
    window = {"startTime": clock() - timedelta(hours=1), "endTime": clock() + timedelta(hours=1)}
    return client.list_audit_tasks(taskType="SCHEDULED_AUDIT_TASK", **window)["tasks"]


def assumed_sessions() -> set[tuple[str, str]]:
    from moto.sts.models import sts_backends

    return {(r.role_arn, r.session_name) for r in sts_backends["123456789012"]["aws"].assumed_roles}


def error_of(call, **request) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call(**request)
    return caught.value.response["ResponseMetadata"]["HTTPStatusCode"], caught.value.response["Error"]["Code"]


def test_audit_lifecycle_through_the_unmodified_boto3_client(served):
    iot, weak = served["client"], served["weak"]
    checks = iot.describe_account_audit_configuration()["auditCheckConfigurations"]
    assert checks[CHECK_NAME] == {"enabled": False} and not any(c["enabled"] for c in checks.values())
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

    # A mitigation action deactivating weak[1]'s certificate: first a dry run, asked for with our
    # extension header (signed, as boto3 adds it before signing), which makes no mutating call.
    iot.create_mitigation_action(actionName="deactivate", roleArn=MITIGATION_ROLE,
                                 actionParams={"updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    [target] = [f["findingId"] for f in findings
                if f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] == weak[1]]
    request = {"target": {"findingIds": [target]}, "auditCheckToActionsMapping": {CHECK_NAME: ["deactivate"]}}
    dry = boto3.client("iot", region_name=REGION, endpoint_url=served["url"], config=NO_RETRIES)
    dry.meta.events.register("before-sign.iot.StartAuditMitigationActionsTask",
                             lambda request, **_: request.headers.__setitem__(DRY_RUN_HEADER, "true"))
    served["moto"]["calls"].clear()
    dry.start_audit_mitigation_actions_task(taskId="dry", clientRequestToken="dry", **request)
    assert mitigation_done(iot, "dry")["taskStatistics"][CHECK_NAME]["skippedFindingsCount"] == 1
    reached = served["moto"]["calls"]
    assert "describe_certificate" in reached, reached  # it read the certificate's state ...
    assert all(name.startswith(("describe_", "list_", "get_")) for name in reached), reached  # ... changed nothing
    [execution] = iot.list_audit_mitigation_actions_executions(taskId="dry", findingId=target)["actionsExecutions"]
    assert execution["status"] == "SKIPPED" and execution["message"].startswith("dry run, nothing changed: would")
    assert iot.describe_certificate(certificateId=weak[1])["certificateDescription"]["status"] == "ACTIVE"

    iot.start_audit_mitigation_actions_task(taskId="real", clientRequestToken="real", **request)
    assert mitigation_done(iot, "real")["taskStatistics"][CHECK_NAME]["succeededFindingsCount"] == 1
    assert "update_certificate" in served["moto"]["calls"]
    assert iot.describe_certificate(certificateId=weak[1])["certificateDescription"]["status"] == "INACTIVE"
    [execution] = iot.list_audit_mitigation_actions_executions(taskId="real", findingId=target)["actionsExecutions"]
    assert execution["status"] == "COMPLETED"
    assert {(ROLE, "devicedefender-audit-audit"), (MITIGATION_ROLE, "devicedefender-audit-mitigation")} <= \
        assumed_sessions()  # the audit and the action acted as their roles

    # CancelAuditTask on a running audit (held in ListCertificates until the cancel is in).
    running = held_audit(served, lambda: iot.start_on_demand_audit_task(targetCheckNames=[CHECK_NAME])["taskId"])
    assert iot.describe_audit_task(taskId=running)["taskStatus"] == "IN_PROGRESS"
    iot.cancel_audit_task(taskId=running)
    served["moto"]["release"].set()
    until(lambda: iot.describe_audit_task(taskId=running)["taskStatus"] == "CANCELED", "the audit was not canceled")

    # A scheduled audit, started by the server's scheduler once the clock reaches its day.
    iot.create_scheduled_audit(scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    assert scheduled_tasks(iot, served["clock"]) == []
    served["clock"].offset += timedelta(days=2)  # two slots passed: one audit
    [scheduled] = until(lambda: scheduled_tasks(iot, served["clock"]), "the scheduler started no audit")
    described = until(lambda: (t := iot.describe_audit_task(taskId=scheduled["taskId"]))["taskStatus"] !=
                      "IN_PROGRESS" and t, "the scheduled audit did not finish")
    assert described["taskType"] == "SCHEDULED_AUDIT_TASK" and described["scheduledAuditName"] == "daily"
    assert described["taskStatus"] == "COMPLETED"
    assert served["server"].scheduler.check_now()["startedTasks"] == []  # its slot ran once
    assert len(scheduled_tasks(iot, served["clock"])) == 1

    wrong = boto3.client("iot", region_name=REGION, endpoint_url=served["url"], config=NO_RETRIES,
                         aws_access_key_id="testing", aws_secret_access_key="not-it", aws_session_token="testing")
    assert error_of(wrong.describe_audit_task, taskId=first) == (403, "InvalidSignatureException")


def test_the_dry_run_header_is_checked(served):
    iot = served["client"]
    request = {"taskId": "t", "clientRequestToken": "t", "target": {"findingIds": ["f"]},
               "auditCheckToActionsMapping": {CHECK_NAME: ["a"]}}

    def with_header(operation: str, value: str):
        client = boto3.client("iot", region_name=REGION, endpoint_url=served["url"], config=NO_RETRIES)
        client.meta.events.register(f"before-sign.iot.{operation}",
                                    lambda request, **_: request.headers.__setitem__(DRY_RUN_HEADER, value))
        return client

    assert error_of(with_header("StartAuditMitigationActionsTask", "yes").start_audit_mitigation_actions_task,
                    **request) == (400, "InvalidRequestException")
    assert error_of(with_header("DeleteScheduledAudit", "true").delete_scheduled_audit,
                    scheduledAuditName="s") == (400, "InvalidRequestException")
    assert iot.list_audit_mitigation_actions_tasks(startTime=0, endTime=datetime.now(timezone.utc))["tasks"] == []


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

    # A mitigation action whose task deactivates weak[1]'s certificate. (The AWS CLI has no way to
    # add our dry-run header; the boto3 test covers the dry run.)
    aws_json(url, "create-mitigation-action", "--action-name", "deactivate", "--role-arn", MITIGATION_ROLE,
             "--action-params", json.dumps({"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}))
    [target] = [f["findingId"] for f in findings
                if f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] == weak[1]]
    aws_json(url, "start-audit-mitigation-actions-task", "--task-id", "cli", "--client-request-token", "cli",
             "--target", json.dumps({"findingIds": [target]}),
             "--audit-check-to-actions-mapping", json.dumps({CHECK_NAME: ["deactivate"]}))
    served["ctx"].wait(60)
    assert aws_json(url, "describe-certificate", "--certificate-id", weak[1])["certificateDescription"][
        "status"] == "INACTIVE"

    # CancelAuditTask on a running audit.
    running = held_audit(served, lambda: aws_json(url, "start-on-demand-audit-task", "--target-check-names",
                                                  CHECK_NAME)["taskId"])
    aws_json(url, "cancel-audit-task", "--task-id", running)
    served["moto"]["release"].set()
    served["ctx"].wait(60)
    assert aws_json(url, "describe-audit-task", "--task-id", running)["taskStatus"] == "CANCELED"

    # A scheduled audit that the server's scheduler starts once the clock reaches its day.
    aws_json(url, "create-scheduled-audit", "--scheduled-audit-name", "weekly", "--frequency", "WEEKLY",
             "--day-of-week", "MON", "--target-check-names", CHECK_NAME)
    served["clock"].offset += timedelta(days=8)  # a Monday has passed
    until(lambda: scheduled_tasks(served["client"], served["clock"]), "the scheduler started no audit")
    served["ctx"].wait(60)
    moment = served["clock"]()
    tasks = aws_json(url, "list-audit-tasks", "--task-type", "SCHEDULED_AUDIT_TASK",
                     "--start-time", (moment - timedelta(days=8)).isoformat(),
                     "--end-time", (moment + timedelta(hours=1)).isoformat())["tasks"]
    assert [t["taskStatus"] for t in tasks] == ["COMPLETED"]
    assert aws_json(url, "describe-audit-task", "--task-id", tasks[0]["taskId"])["scheduledAuditName"] == "weekly"


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
