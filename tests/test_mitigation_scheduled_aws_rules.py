"""Device Defender's documented rules for mitigation actions, mitigation actions tasks and
scheduled audits, as a script ported from AWS meets them.

Each test names its source: botocore's ``iot`` model (members, idempotency tokens, the errors an
operation declares) or AWS's documentation (quoted). Every response passes botocore's output
shape and every error is one the operation declares (``service_helpers.call``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import test_mitigation_tasks
from botocore.exceptions import ClientError
from service_helpers import call
from test_mitigation_tasks import ROLE, context, statuses, synthetic_audit

from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import InvalidRequest, TaskAlreadyExists, errors
from devicedefender_audit.service.mitigation_actions import ACTION_TYPE_OF_MEMBER, MAX_ACTIONS
from devicedefender_audit.service.mitigation_tasks import MAX_RUNNING_TASKS
from devicedefender_audit.service.scheduled import MAX_SCHEDULED_AUDITS
from devicedefender_audit.service.shapes import enum_values, iot_model
from devicedefender_audit.service.tasks import EXTENSIONS_MEMBER
from devicedefender_audit.store import open_store

TOPIC = "arn:aws:sns:us-east-1:123456789012:findings"
NOTIFY = {"publishFindingToSnsParams": {"topicArn": TOPIC}}
#: Two ROCA certificates on things in moto, audited, with an action of each type (the tasks' tests' fixture).
weak_account = test_mitigation_tasks.weak_account


def test_every_action_type_of_the_model_can_be_defined(tmp_path):
    """CreateMitigationAction: "Only certain types of mitigation actions can be applied to specific
    check names." An action is defined apart from any check: a setup script that also creates
    ENABLE_IOT_LOGGING and REPLACE_DEFAULT_POLICY_VERSION actions (for policy and logging checks)
    must run here; mapping one of them to a certificate check is what is refused."""
    assert set(ACTION_TYPE_OF_MEMBER) == set(iot_model().shape_for("MitigationActionParams").members)
    assert set(ACTION_TYPE_OF_MEMBER.values()) == set(enum_values("MitigationActionType"))
    audit_task_id, _ = synthetic_audit(tmp_path / "audits.sqlite3", 1)
    ctx = context(tmp_path / "audits.sqlite3")
    logging_params = {"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "ERROR"}}
    call(ctx, "CreateMitigationAction", actionName="logging", roleArn=ROLE, actionParams=logging_params)
    call(ctx, "CreateMitigationAction", actionName="blank-policy", roleArn=ROLE,
         actionParams={"replaceDefaultPolicyVersionParams": {"templateName": "BLANK_POLICY"}})
    described = call(ctx, "DescribeMitigationAction", actionName="logging")
    assert (described["actionType"], described["actionParams"]) == ("ENABLE_IOT_LOGGING", logging_params)
    listed = call(ctx, "ListMitigationActions", actionType="REPLACE_DEFAULT_POLICY_VERSION")["actionIdentifiers"]
    assert [a["actionName"] for a in listed] == ["blank-policy"]
    call(ctx, "UpdateMitigationAction", actionName="logging",
         actionParams={"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "DEBUG"}})
    assert call(ctx, "DescribeMitigationAction", actionName="logging")["actionParams"][
        "enableIoTLoggingParams"]["logLevel"] == "DEBUG"
    with pytest.raises(InvalidRequest, match="cannot change to PUBLISH_FINDING_TO_SNS"):
        call(ctx, "UpdateMitigationAction", actionName="logging", actionParams=NOTIFY)
    with pytest.raises(InvalidRequest, match=f"logging \\(ENABLE_IOT_LOGGING\\) does not apply to {CHECK_NAME}"):
        call(ctx, "StartAuditMitigationActionsTask", taskId="t", target={"auditTaskId": audit_task_id},
             auditCheckToActionsMapping={CHECK_NAME: ["logging"]}, clientRequestToken="t")
    assert call(ctx, "ListAuditMitigationActionsTasks", startTime=0, endTime=2**31)["tasks"] == []
    ctx.store.close()


def test_an_account_holds_at_most_100_mitigation_actions(tmp_path):
    """AWS IoT Device Defender quotas: "Mitigation actions: The maximum number of mitigation
    actions. 100. Adjustable: No"; CreateMitigationAction declares LimitExceededException."""
    ctx = context(tmp_path / "audits.sqlite3")
    for n in range(MAX_ACTIONS):
        call(ctx, "CreateMitigationAction", actionName=f"a{n}", roleArn=ROLE, actionParams=NOTIFY)
    with pytest.raises(errors.LimitExceeded, match="100 mitigation actions"):
        call(ctx, "CreateMitigationAction", actionName="one-more", roleArn=ROLE, actionParams=NOTIFY)
    with pytest.raises(errors.ResourceAlreadyExists):  # an existing name is still that error
        call(ctx, "CreateMitigationAction", actionName="a0", roleArn=ROLE, actionParams=NOTIFY)
    call(ctx, "DeleteMitigationAction", actionName="a0")
    call(ctx, "CreateMitigationAction", actionName="one-more", roleArn=ROLE, actionParams=NOTIFY)
    ctx.store.close()


def test_an_account_holds_at_most_5_scheduled_audits(tmp_path):
    """AWS IoT Device Defender quotas: "Scheduled audits: The maximum number of scheduled audits.
    5. Adjustable: No"; CreateScheduledAudit declares LimitExceededException."""
    ctx = context(tmp_path / "audits.sqlite3")
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE, auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    for n in range(MAX_SCHEDULED_AUDITS):
        call(ctx, "CreateScheduledAudit", scheduledAuditName=f"s{n}", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    with pytest.raises(errors.LimitExceeded, match="5 scheduled audits"):
        call(ctx, "CreateScheduledAudit", scheduledAuditName="sixth", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    with pytest.raises(errors.ResourceAlreadyExists):
        call(ctx, "CreateScheduledAudit", scheduledAuditName="s0", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    assert len(call(ctx, "ListScheduledAudits")["scheduledAudits"]) == MAX_SCHEDULED_AUDITS
    call(ctx, "DeleteScheduledAudit", scheduledAuditName="s0")
    call(ctx, "CreateScheduledAudit", scheduledAuditName="sixth", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    ctx.store.close()


def test_at_most_10_mitigation_actions_tasks_run_at_once(tmp_path, sns_queue):
    """AWS IoT Device Defender quotas: "Number of audit mitigation action tasks running at the same
    time: 10 tasks"; StartAuditMitigationActionsTask declares LimitExceededException. A retry of a
    running task is still answered with its id, and once tasks end a new one starts."""
    path = tmp_path / "audits.sqlite3"
    _, finding_ids = synthetic_audit(path, MAX_RUNNING_TASKS + 1)
    gate = threading.Event()
    sns = sns_queue["sns"]

    def hold(**_kwargs) -> None:  # each task waits here, in its first action, until the gate opens
        gate.wait(60)

    sns.meta.events.register("before-call.sns.Publish", hold)
    ctx = context(path, sns=sns, background=True, open_worker_store=lambda: open_store(path))
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": sns_queue["topic"]}})

    def start(n: int) -> dict:
        return call(ctx, "StartAuditMitigationActionsTask", taskId=f"t{n}", target={"findingIds": [finding_ids[n]]},
                    auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken=f"t{n}")

    try:
        for n in range(MAX_RUNNING_TASKS):
            start(n)
        with pytest.raises(errors.LimitExceeded, match="10 mitigation actions tasks are running"):
            start(MAX_RUNNING_TASKS)
        assert start(0) == {"taskId": "t0"}  # a retry of a running task
        with pytest.raises(errors.ResourceNotFound):  # the refused task was not kept
            call(ctx, "DescribeAuditMitigationActionsTask", taskId=f"t{MAX_RUNNING_TASKS}")
    finally:
        gate.set()
        ctx.wait(60)
    start(MAX_RUNNING_TASKS)  # the same id and token, now that the others have ended
    ctx.wait(60)
    assert len(sns_queue["drain"]()) == MAX_RUNNING_TASKS + 1
    ctx.store.close()


def test_a_start_without_a_client_request_token_gets_one(tmp_path):
    """The model marks clientRequestToken an idempotency token ("If you omit this value, a unique
    client request token is generated automatically"): boto3 and the AWS CLI send a fresh UUID, so
    a script written against them may leave it out; a second start of that id then has another
    token (TaskAlreadyExistsException), as on AWS."""
    path = tmp_path / "audits.sqlite3"
    audit_task_id, _ = synthetic_audit(path, 1)
    ctx = context(path)
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE, actionParams=NOTIFY)
    request = {"taskId": "no-token", "target": {"auditTaskId": audit_task_id},
               "auditCheckToActionsMapping": {CHECK_NAME: ["notify"]}}
    assert call(ctx, "StartAuditMitigationActionsTask", dry_run=True, **request) == {"taskId": "no-token"}
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="no-token")["taskStatus"] == "COMPLETED"
    with pytest.raises(TaskAlreadyExists):
        call(ctx, "StartAuditMitigationActionsTask", dry_run=True, **request)
    ctx.store.close()


#: A process that starts a mitigation actions task and is killed before its first action.
DOOMED = """
import os, signal, sys
import boto3
from moto import mock_aws
from devicedefender_audit.service import OPERATIONS
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.store import open_store

with mock_aws():
    sns = boto3.client("sns", region_name="us-east-1")
    sns.meta.events.register("before-call.sns.Publish", lambda **_: os.kill(os.getpid(), signal.SIGKILL))
    ctx = ServiceContext(store=open_store(sys.argv[1]), iot_client=lambda: None, detectors=lambda: [],
                         sns_client=lambda: sns)
    OPERATIONS["StartAuditMitigationActionsTask"](ctx, taskId="doomed", target={"auditTaskId": sys.argv[2]},
                                                  auditCheckToActionsMapping=json_mapping, clientRequestToken="doomed")
"""


def test_a_task_whose_process_died_ends_failed(tmp_path, aws_env):
    """A task on AWS always ends (COMPLETED, FAILED or CANCELED): a script that polls
    DescribeAuditMitigationActionsTask until it is no longer IN_PROGRESS must not wait forever
    for a task whose process was killed, and that task must not count against the limit of 10."""
    path = tmp_path / "audits.sqlite3"
    audit_task_id, _ = synthetic_audit(path, 2)
    ctx = context(path)
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE, actionParams=NOTIFY)
    script = DOOMED.replace("json_mapping", json.dumps({CHECK_NAME: ["notify"]}))
    done = subprocess.run([sys.executable, "-c", script, str(path), audit_task_id], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == -9, done.stderr

    task = call(ctx, "DescribeAuditMitigationActionsTask", taskId="doomed", extensions=True)
    assert task["taskStatus"] == "FAILED" and task["endTime"] >= task["startTime"]
    assert "ended without finishing the task" in task[EXTENSIONS_MEMBER]["failure"]
    window = {"startTime": 0, "endTime": 2**31}
    assert call(ctx, "ListAuditMitigationActionsTasks", **window, taskStatus="IN_PROGRESS")["tasks"] == []
    assert [t["taskId"] for t in call(ctx, "ListAuditMitigationActionsTasks", **window, taskStatus="FAILED")[
        "tasks"]] == ["doomed"]
    with pytest.raises(InvalidRequest, match="FAILED"):
        call(ctx, "CancelAuditMitigationActionsTask", taskId="doomed")
    ctx.store.close()


def test_a_suppressed_finding_is_not_mitigated(weak_account):
    """Device Defender guide, Mitigation actions: "Mitigation actions won't be performed on
    suppressed audit findings." A certificate suppressed before the audit stays ACTIVE when a
    deactivating task runs over the whole audit, and when its finding is named."""
    a, ctx = weak_account, weak_account["ctx"]
    kept = a["certs"][0]["certificateId"]
    call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier={"deviceCertificateId": kept},
         suppressIndefinitely=True, clientRequestToken="known-test-device")
    audit_task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    findings = call(ctx, "ListAuditFindings", taskId=audit_task_id)["findings"]
    suppressed = [f["findingId"] for f in findings if f["isSuppressed"]]
    assert len(suppressed) == 1 and len(findings) == 2

    call(ctx, "StartAuditMitigationActionsTask", taskId="named", target={"findingIds": suppressed},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]}, clientRequestToken="named")
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="named")["taskStatistics"][CHECK_NAME][
        "totalFindingsCount"] == 0
    call(ctx, "StartAuditMitigationActionsTask", taskId="all", target={"auditTaskId": audit_task_id},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]}, clientRequestToken="all")
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="all")["taskStatistics"][CHECK_NAME][
        "succeededFindingsCount"] == 1
    assert statuses(a["iot"], a["certs"]) == ["ACTIVE", "INACTIVE"]
    assert call(ctx, "ListAuditMitigationActionsExecutions", taskId="all", findingId=suppressed[0]) == {
        "actionsExecutions": []}


def test_an_action_that_fails_skips_the_findings_later_actions_and_fails_the_task(weak_account):
    """Device Defender guide, Apply mitigation actions: "If you are applying multiple actions to a
    set of findings and one of those actions failed, the subsequent actions are skipped for that
    finding (but are still applied to other findings). ... The taskStatus is set to failed if one
    or more of the actions failed when applied to the findings. Actions are applied in the order
    in which they are specified." """
    a, ctx = weak_account, weak_account["ctx"]
    refused = [a["certs"][0]["certificateId"]]

    def refuse(params, **_kwargs):  # params: the serialised request, the certificate id ends its path
        if params["url_path"].rsplit("/", 1)[-1] in refused:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "UpdateCertificate")

    a["iot"].meta.events.register("before-call.iot.UpdateCertificate", refuse)
    call(ctx, "StartAuditMitigationActionsTask", taskId="ordered", target={"auditTaskId": a["audit"]},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate", "notify"]}, clientRequestToken="ordered")
    task = call(ctx, "DescribeAuditMitigationActionsTask", taskId="ordered")
    assert task["taskStatus"] == "FAILED"
    assert {k: task["taskStatistics"][CHECK_NAME][k] for k in ("failedFindingsCount", "succeededFindingsCount")} == {
        "failedFindingsCount": 1, "succeededFindingsCount": 1}
    assert statuses(a["iot"], a["certs"]) == ["ACTIVE", "INACTIVE"]
    by_certificate = {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]: f["findingId"]
                      for f in call(ctx, "ListAuditFindings", taskId=a["audit"])["findings"]}
    executions = call(ctx, "ListAuditMitigationActionsExecutions", taskId="ordered",
                      findingId=by_certificate[refused[0]])["actionsExecutions"]
    assert [(e["actionName"], e["status"]) for e in executions] == [("deactivate", "FAILED"), ("notify", "SKIPPED")]
    assert executions[0]["errorCode"] == "AccessDeniedException"
    assert executions[1]["message"] == "skipped: action deactivate failed for this finding"
    assert [json.loads(body)["findingId"] for body in a["drain"]()] == [by_certificate[a["certs"][1]["certificateId"]]]
    # A task whose actions all succeed (or had nothing to do) is COMPLETED.
    refused.clear()
    call(ctx, "StartAuditMitigationActionsTask", taskId="again", target={"auditTaskId": a["audit"]},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]}, clientRequestToken="again")
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="again")["taskStatus"] == "COMPLETED"
    assert statuses(a["iot"], a["certs"]) == ["INACTIVE", "INACTIVE"]


def test_an_iot_logging_action_cannot_disable_logging(tmp_path):
    """Device Defender guide, mitigation action types: ENABLE_IOT_LOGGING "You cannot specify a
    logging level of DISABLED"."""
    ctx = context(tmp_path / "audits.sqlite3")
    disabled = {"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "DISABLED"}}
    with pytest.raises(InvalidRequest, match="DISABLED"):
        call(ctx, "CreateMitigationAction", actionName="logging", roleArn=ROLE, actionParams=disabled)
    call(ctx, "CreateMitigationAction", actionName="logging", roleArn=ROLE,
         actionParams={"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "WARN"}})
    with pytest.raises(InvalidRequest, match="DISABLED"):
        call(ctx, "UpdateMitigationAction", actionName="logging", actionParams=disabled)
    ctx.store.close()


def test_a_task_this_process_runs_is_left_to_it_however_slow(tmp_path, aws_env):
    """A task of this process silent for more than 15 minutes was failed by a Describe, then
    written back IN_PROGRESS by its own thread at its next finding; it is left to that thread,
    as an audit of this process is."""
    import time

    from devicedefender_audit.liveness import STALE_AFTER_S, this_process
    from devicedefender_audit.service.mitigation_tasks import TASK_KIND

    path = tmp_path / "audits.sqlite3"
    audit_task_id, _ = synthetic_audit(path, 1)
    ctx = context(path)
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE, actionParams=NOTIFY)
    call(ctx, "StartAuditMitigationActionsTask", taskId="slow", target={"auditTaskId": audit_task_id},
         auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken="slow", dry_run=True)
    body = ctx.store.get_record(TASK_KIND, "slow")
    host, pid = this_process()
    silent = {"host": host, "pid": pid, "heartbeat": time.time() - STALE_AFTER_S - 60}
    ctx.store.put_record(TASK_KIND, "slow", {**body, "taskStatus": "IN_PROGRESS", "owner": silent})
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="slow")["taskStatus"] == "IN_PROGRESS"
    ctx.store.put_record(TASK_KIND, "slow", {**body, "taskStatus": "IN_PROGRESS", "owner": {**silent, "host": "other"}})
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="slow")["taskStatus"] == "FAILED"
    ctx.store.close()
