"""Device Defender's audit operations over moto: configuration, tasks, findings, suppressions.

Every response goes through ``service_helpers.call``, which validates it against botocore's
output shape; the lifecycle test calls every implemented operation at least once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3
import pytest
from conftest import DATA, REGION, register
from service_helpers import CALLED, call

from devicedefender_audit.check_names import AUDIT_CHECKS
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.mitigation import Mitigator
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import (
    OPERATIONS,
    InvalidRequest,
    ResourceAlreadyExists,
    ResourceNotFound,
    TaskAlreadyExists,
)
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.shapes import iot_model, output_problems
from devicedefender_audit.store import open_store

ROLE = "arn:aws:iam::123456789012:role/audit"
TOPIC = "arn:aws:sns:us-east-1:123456789012:audits"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def account(iot):
    """Two ROCA certificates (one on a thing) in moto."""
    weak = [register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter-1"),
            register(iot, (DATA / "roca" / "cert05.pem").read_text())]
    return {"iot": iot, "weak": [c["certificateId"] for c in weak]}


@pytest.fixture
def ctx(account, tmp_path):
    store = open_store(tmp_path / "audits.sqlite3")
    sns = boto3.client("sns", region_name=REGION)
    sns.create_topic(Name="audits")
    context = ServiceContext(store=store, iot_client=lambda: account["iot"], detectors=lambda: [RocaDetector()],
                             clock=Clock(), sns_client=lambda: sns)
    yield context
    store.close()


def enable(ctx: ServiceContext) -> None:
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE,
         auditCheckConfigurations={CHECK_NAME: {"enabled": True}})


def resource(certificate_id: str) -> dict:
    return {"deviceCertificateId": certificate_id}


def test_lifecycle_calls_every_operation_with_model_shaped_responses(ctx, account):
    CALLED.clear()
    assert call(ctx, "DescribeAccountAuditConfiguration")["auditCheckConfigurations"] == {
        name: {"enabled": False} for name in AUDIT_CHECKS}
    with pytest.raises(InvalidRequest, match="not enabled"):
        call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])
    enable(ctx)
    call(ctx, "UpdateAccountAuditConfiguration", auditNotificationTargetConfigurations={
        "SNS": {"targetArn": TOPIC, "roleArn": ROLE, "enabled": True}})
    config = call(ctx, "DescribeAccountAuditConfiguration")
    assert config["roleArn"] == ROLE and config["auditCheckConfigurations"][CHECK_NAME]["enabled"]
    assert config["auditNotificationTargetConfigurations"]["SNS"]["enabled"] is True

    first = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    task = call(ctx, "DescribeAuditTask", taskId=first)
    assert task["taskStatus"] == "COMPLETED" and task["taskType"] == "ON_DEMAND_AUDIT_TASK"
    details = task["auditDetails"][CHECK_NAME]
    assert details["checkRunStatus"] == "COMPLETED_NON_COMPLIANT"
    assert details["nonCompliantResourcesCount"] == 2 and details["suppressedNonCompliantResourcesCount"] == 0
    extended = call(ctx, "DescribeAuditTask", taskId=first, extensions=True)
    assert extended["devicedefenderAuditExtensions"]["auditDetails"][CHECK_NAME]["notCoveredResourcesCount"] == 0

    findings = call(ctx, "ListAuditFindings", taskId=first)["findings"]
    assert {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in findings} == set(
        account["weak"])
    assert all(f["severity"] == "CRITICAL" and not f["isSuppressed"] for f in findings)
    on_thing = next(f for f in findings if f.get("relatedResources"))
    assert call(ctx, "DescribeAuditFinding", findingId=on_thing["findingId"])["finding"] == on_thing
    related = call(ctx, "ListRelatedResourcesForAuditFinding", findingId=on_thing["findingId"])
    assert related["relatedResources"] == [{"resourceType": "CLIENT_ID", "resourceIdentifier": {"clientId": "meter-1"},
                                            "additionalInfo": {"thingName": "meter-1"}}]

    suppressed = resource(account["weak"][0])
    call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=suppressed,
         suppressIndefinitely=True, description="replacement scheduled", clientRequestToken="t1")
    call(ctx, "UpdateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=suppressed,
         description="replacement shipped in May")
    described = call(ctx, "DescribeAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=suppressed)
    assert described == {"checkName": CHECK_NAME, "resourceIdentifier": suppressed, "suppressIndefinitely": True,
                         "description": "replacement shipped in May"}
    assert call(ctx, "ListAuditSuppressions")["suppressions"] == [described]

    second = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    assert call(ctx, "DescribeAuditTask", taskId=second)["auditDetails"][CHECK_NAME][
        "suppressedNonCompliantResourcesCount"] == 1
    only_suppressed = call(ctx, "ListAuditFindings", taskId=second, listSuppressedFindings=True)["findings"]
    assert [f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in only_suppressed] == [
        account["weak"][0]]
    assert len(call(ctx, "ListAuditFindings", taskId=second, listSuppressedFindings=False)["findings"]) == 1

    window = {"startTime": ctx.now() - timedelta(hours=1), "endTime": ctx.now() + timedelta(hours=1)}
    listed = call(ctx, "ListAuditTasks", **window)["tasks"]
    assert {t["taskId"] for t in listed} == {first, second}
    with pytest.raises(InvalidRequest, match="COMPLETED"):
        call(ctx, "CancelAuditTask", taskId=second)
    assert start_and_cancel(ctx)["taskStatus"] == "CANCELED"

    arn = call(ctx, "CreateScheduledAudit", scheduledAuditName="weekly", frequency="WEEKLY", dayOfWeek="MON",
               targetCheckNames=[CHECK_NAME])["scheduledAuditArn"]
    assert arn == "arn:aws:iot:us-east-1:123456789012:scheduledaudit/weekly"
    call(ctx, "UpdateScheduledAudit", scheduledAuditName="weekly", frequency="MONTHLY", dayOfMonth="LAST")
    assert call(ctx, "DescribeScheduledAudit", scheduledAuditName="weekly") == {
        "frequency": "MONTHLY", "dayOfMonth": "LAST", "targetCheckNames": [CHECK_NAME],
        "scheduledAuditName": "weekly", "scheduledAuditArn": arn}
    assert call(ctx, "ListScheduledAudits") == {"scheduledAudits": [
        {"scheduledAuditName": "weekly", "scheduledAuditArn": arn, "frequency": "MONTHLY", "dayOfMonth": "LAST"}]}
    with pytest.raises(InvalidRequest, match="deleteScheduledAudits"):
        call(ctx, "DeleteAccountAuditConfiguration")
    call(ctx, "DeleteScheduledAudit", scheduledAuditName="weekly")
    call(ctx, "DeleteAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=suppressed)
    assert call(ctx, "ListAuditSuppressions") == {"suppressions": []}
    call(ctx, "DeleteAccountAuditConfiguration")
    assert call(ctx, "DescribeAccountAuditConfiguration") == {"auditCheckConfigurations": {
        name: {"enabled": False} for name in AUDIT_CHECKS}}
    mitigate_lifecycle(ctx, account, first, findings)
    assert set(OPERATIONS) <= CALLED, f"not validated: {set(OPERATIONS) - CALLED}"


def mitigate_lifecycle(ctx: ServiceContext, account: dict, audit_task_id: str, findings: list[dict]) -> None:
    """Mitigation actions and a task that deactivates the audit's two certificates."""
    deactivate = {"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}
    created = call(ctx, "CreateMitigationAction", actionName="deactivate", roleArn=ROLE, actionParams=deactivate)
    assert created["actionArn"] == "arn:aws:iot:us-east-1:123456789012:mitigationaction/deactivate"
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": TOPIC}})
    with pytest.raises(ResourceAlreadyExists):
        call(ctx, "CreateMitigationAction", actionName="deactivate", roleArn=ROLE, actionParams=deactivate)
    call(ctx, "UpdateMitigationAction", actionName="notify", actionParams={"publishFindingToSnsParams": {
        "topicArn": TOPIC + "-2"}})
    with pytest.raises(InvalidRequest, match="cannot change"):
        call(ctx, "UpdateMitigationAction", actionName="notify", actionParams=deactivate)
    described = call(ctx, "DescribeMitigationAction", actionName="deactivate")
    assert described["actionType"] == "UPDATE_DEVICE_CERTIFICATE" and described["actionId"] == created["actionId"]
    assert call(ctx, "DescribeMitigationAction", actionName="notify")["actionParams"] == {
        "publishFindingToSnsParams": {"topicArn": TOPIC + "-2"}}
    assert [a["actionName"] for a in call(ctx, "ListMitigationActions")["actionIdentifiers"]] == ["deactivate",
                                                                                                   "notify"]
    assert [a["actionName"] for a in call(ctx, "ListMitigationActions", actionType="PUBLISH_FINDING_TO_SNS")[
        "actionIdentifiers"]] == ["notify"]

    request = {"taskId": "quarantine-1", "target": {"auditTaskId": audit_task_id},
               "auditCheckToActionsMapping": {CHECK_NAME: ["deactivate"]}, "clientRequestToken": "token-1"}
    assert call(ctx, "StartAuditMitigationActionsTask", **request) == {"taskId": "quarantine-1"}
    assert call(ctx, "StartAuditMitigationActionsTask", **request) == {"taskId": "quarantine-1"}  # a retry
    with pytest.raises(TaskAlreadyExists):
        call(ctx, "StartAuditMitigationActionsTask", **{**request, "clientRequestToken": "token-2"})
    task = call(ctx, "DescribeAuditMitigationActionsTask", taskId="quarantine-1")
    assert task["taskStatus"] == "COMPLETED" and task["target"] == {"auditTaskId": audit_task_id}
    assert task["taskStatistics"] == {CHECK_NAME: {"totalFindingsCount": 2, "failedFindingsCount": 0,
                                                   "succeededFindingsCount": 2, "skippedFindingsCount": 0,
                                                   "canceledFindingsCount": 0}}
    assert task["actionsDefinition"] == [{"name": "deactivate", "id": created["actionId"], "roleArn": ROLE,
                                          "actionParams": deactivate}]
    for certificate_id in account["weak"]:
        status = account["iot"].describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"]
        assert status == "INACTIVE"
    window = {"startTime": ctx.now() - timedelta(hours=1), "endTime": ctx.now() + timedelta(hours=1)}
    listed = call(ctx, "ListAuditMitigationActionsTasks", auditTaskId=audit_task_id, **window)["tasks"]
    assert [(t["taskId"], t["taskStatus"]) for t in listed] == [("quarantine-1", "COMPLETED")]
    assert call(ctx, "ListAuditMitigationActionsTasks", taskStatus="CANCELED", **window) == {"tasks": []}
    executions = call(ctx, "ListAuditMitigationActionsExecutions", taskId="quarantine-1",
                      findingId=findings[0]["findingId"])["actionsExecutions"]
    assert [(e["actionName"], e["actionId"], e["status"]) for e in executions] == [
        ("deactivate", created["actionId"], "COMPLETED")]
    with pytest.raises(InvalidRequest, match="COMPLETED"):
        call(ctx, "CancelAuditMitigationActionsTask", taskId="quarantine-1")
    canceled = start_and_cancel_mitigation(ctx, [f["findingId"] for f in findings])
    assert canceled["taskStatus"] == "CANCELED"
    assert canceled["taskStatistics"][CHECK_NAME]["canceledFindingsCount"] == 1
    call(ctx, "DeleteMitigationAction", actionName="notify")
    assert [a["actionName"] for a in call(ctx, "ListMitigationActions")["actionIdentifiers"]] == ["deactivate"]


def start_and_cancel_mitigation(ctx: ServiceContext, finding_ids: list[str]) -> dict:
    """Start a mitigation task on two findings and cancel it (through the API) as its first action runs."""
    original = Mitigator.execute

    def cancel_first(self: Mitigator, finding, action, task_id: str):
        if not getattr(cancel_first, "done", False):
            cancel_first.done = True  # type: ignore[attr-defined]
            call(ctx, "CancelAuditMitigationActionsTask", taskId=task_id)
        return original(self, finding, action, task_id)

    Mitigator.execute = cancel_first  # type: ignore[method-assign]
    try:
        call(ctx, "StartAuditMitigationActionsTask", taskId="quarantine-2", target={"findingIds": finding_ids},
             auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]}, clientRequestToken="token-3")
    finally:
        Mitigator.execute = original  # type: ignore[method-assign]
    return call(ctx, "DescribeAuditMitigationActionsTask", taskId="quarantine-2")


def start_and_cancel(ctx: ServiceContext) -> dict:
    """Start an audit and cancel it (through the API) when the engine first polls for cancellation."""
    original = ctx.store.cancel_requested
    seen = []

    def cancel_on_first_poll(task_id: str) -> bool:
        if not seen:
            seen.append(task_id)
            call(ctx, "CancelAuditTask", taskId=task_id)
        return original(task_id)

    ctx.store.cancel_requested = cancel_on_first_poll  # type: ignore[method-assign]
    try:
        task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    finally:
        ctx.store.cancel_requested = original  # type: ignore[method-assign]
    return call(ctx, "DescribeAuditTask", taskId=task_id)


def test_cancel_stops_an_in_progress_task(ctx, account):
    enable(ctx)
    task = start_and_cancel(ctx)
    assert task["taskStatus"] == "CANCELED"
    assert task["auditDetails"][CHECK_NAME]["checkRunStatus"] == "CANCELED"
    assert task["auditDetails"][CHECK_NAME]["message"] == "canceled by CancelAuditTask"
    assert task["taskStatistics"]["canceledChecks"] == 1


def test_background_audit_returns_at_once_and_completes(account, tmp_path):
    path = tmp_path / "bg.sqlite3"
    store = open_store(path)
    ctx = ServiceContext(store=store, iot_client=lambda: account["iot"], detectors=lambda: [RocaDetector()],
                         background=True, open_worker_store=lambda: open_store(path))
    enable(ctx)
    task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    assert call(ctx, "DescribeAuditTask", taskId=task_id)["taskStatus"] in ("IN_PROGRESS", "COMPLETED")
    ctx.wait(60)
    assert call(ctx, "DescribeAuditTask", taskId=task_id)["taskStatus"] == "COMPLETED"
    store.close()


def test_pagination_filters_and_time_range(ctx, account):
    enable(ctx)
    ids = [call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"] for _ in range(3)]
    window = {"startTime": ctx.now() - timedelta(minutes=5), "endTime": ctx.now() + timedelta(minutes=5)}
    seen, token = [], None
    while True:
        page = call(ctx, "ListAuditTasks", maxResults=2, **window, **({"nextToken": token} if token else {}))
        seen += [t["taskId"] for t in page["tasks"]]
        token = page.get("nextToken")
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    assert call(ctx, "ListAuditTasks", taskStatus="FAILED", **window) == {"tasks": []}
    assert call(ctx, "ListAuditTasks", taskType="SCHEDULED_AUDIT_TASK", **window) == {"tasks": []}
    findings = call(ctx, "ListAuditFindings", maxResults=250, **window)["findings"]
    assert len(findings) == 6
    first = call(ctx, "ListAuditFindings", maxResults=1, **window)
    assert len(first["findings"]) == 1 and first["nextToken"]
    one = call(ctx, "ListAuditFindings", taskId=ids[0], checkName=CHECK_NAME,
               resourceIdentifier=resource(account["weak"][1]))["findings"]
    assert len(one) == 1 and one[0]["taskId"] == ids[0]
    future = {"startTime": ctx.now() + timedelta(days=1), "endTime": ctx.now() + timedelta(days=2)}
    assert call(ctx, "ListAuditFindings", **future) == {"findings": []}


def test_suppression_rules(ctx, account):
    enable(ctx)
    target = {"checkName": CHECK_NAME, "resourceIdentifier": resource(account["weak"][1])}
    soon = ctx.now() + timedelta(days=1)
    call(ctx, "CreateAuditSuppression", **target, expirationDate=soon, clientRequestToken="a")
    call(ctx, "CreateAuditSuppression", **target, expirationDate=soon, clientRequestToken="a")  # idempotent retry
    with pytest.raises(ResourceAlreadyExists):
        call(ctx, "CreateAuditSuppression", **target, suppressIndefinitely=True, clientRequestToken="b")
    with pytest.raises(InvalidRequest, match="future"):
        call(ctx, "UpdateAuditSuppression", **target, expirationDate=ctx.now() - timedelta(days=1))
    with pytest.raises(InvalidRequest, match="not both"):
        call(ctx, "UpdateAuditSuppression", **target, expirationDate=soon, suppressIndefinitely=True)
    assert call(ctx, "DescribeAuditSuppression", **target)["expirationDate"] == soon
    with pytest.raises(ResourceNotFound):
        call(ctx, "DescribeAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=resource("0" * 64))

    active = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    assert call(ctx, "DescribeAuditTask", taskId=active)["auditDetails"][CHECK_NAME][
        "suppressedNonCompliantResourcesCount"] == 1
    ctx.clock.now = soon + timedelta(seconds=1)  # expired: the next audit no longer applies it
    expired = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    assert call(ctx, "DescribeAuditTask", taskId=expired)["auditDetails"][CHECK_NAME][
        "suppressedNonCompliantResourcesCount"] == 0
    assert not any(f["isSuppressed"] for f in call(ctx, "ListAuditFindings", taskId=expired)["findings"])
    listed = call(ctx, "ListAuditSuppressions", resourceIdentifier=resource(account["weak"][1]))["suppressions"]
    assert [s["resourceIdentifier"] for s in listed] == [resource(account["weak"][1])]


def test_requests_are_checked_against_the_model(ctx):
    with pytest.raises(InvalidRequest, match="taskId"):
        call(ctx, "DescribeAuditTask")
    with pytest.raises(InvalidRequest, match="BOGUS"):
        call(ctx, "ListAuditTasks", startTime=ctx.now(), endTime=ctx.now(), taskStatus="BOGUS")
    with pytest.raises(InvalidRequest, match="roleArn"):
        call(ctx, "UpdateAccountAuditConfiguration", auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    with pytest.raises(InvalidRequest, match="unsupported"):
        call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE,
             auditCheckConfigurations={"LOGGING_DISABLED_CHECK": {"enabled": True}})
    with pytest.raises(InvalidRequest, match="taskId or both"):
        call(ctx, "ListAuditFindings")
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditSuppressions", nextToken="garbage")
    with pytest.raises(ResourceNotFound):
        call(ctx, "DescribeAuditTask", taskId="nope")
    with pytest.raises(ResourceNotFound):
        call(ctx, "DescribeAuditFinding", findingId="nope")


def test_validator_catches_what_the_model_forbids():
    shape = iot_model().operation_model("DescribeAuditTask").output_shape
    assert output_problems(shape, {"taskStatus": "DONE"}) == [
        "DescribeAuditTaskResponse.taskStatus: 'DONE' is not one of ['IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELED']"]
    assert output_problems(shape, {"taskStartTime": "2024-01-01"})[0].endswith("expected timestamp, got str")
    assert output_problems(shape, {"progress": {}}) == ["DescribeAuditTaskResponse: unknown member progress"]
    assert output_problems(shape, {"auditDetails": {"X": {"totalResourcesCount": True}}})[0].endswith(
        "expected long, got bool")
    suppressions = iot_model().operation_model("ListAuditSuppressions").output_shape
    assert output_problems(suppressions, {"suppressions": [{"checkName": CHECK_NAME}]}) == [
        "ListAuditSuppressionsResponse.suppressions[0]: missing required member resourceIdentifier"]



def test_factorable_check_is_switchable_and_runs_as_its_own_check(aws):
    """Our DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK is enabled and targeted like Device Defender's."""
    from devicedefender_audit.detectors import default_detectors
    from devicedefender_audit.store import open_store

    iot = boto3.client("iot", region_name="us-east-1")
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    ctx = ServiceContext(store=open_store(":memory:"), iot_client=lambda: iot, detectors=default_detectors,
                         region="us-east-1")
    factorable = "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"
    call(ctx, "UpdateAccountAuditConfiguration", roleArn="arn:aws:iam::123456789012:role/audit",
         auditCheckConfigurations={factorable: {"enabled": True}})
    task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[factorable])["taskId"]
    described = call(ctx, "DescribeAuditTask", taskId=task_id)
    assert set(described["auditDetails"]) == {factorable}
    assert described["auditDetails"][factorable]["checkRunStatus"] == "COMPLETED_COMPLIANT"
