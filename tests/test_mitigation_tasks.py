"""Mitigation actions tasks and audit notifications against moto SNS -> SQS: concurrency,
dry run, targets, and the notification Device Defender sends when an audit ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from conftest import DATA, REGION, register
from service_helpers import call

from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.liveness import STALE_AFTER_S
from devicedefender_audit.mitigation import CLAIM_KIND, ActionDefinition, Mitigator
from devicedefender_audit.mitigation_claims import abandoned, new_claim
from devicedefender_audit.models import (
    CHECK_NAME,
    AuditFinding,
    AuditTask,
    MitigationActionType,
    NonCompliantResource,
    ResourceIdentifier,
)
from devicedefender_audit.service import OPERATIONS, InvalidRequest, TaskAlreadyExists
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.mitigation_actions import definition_of, stored_action
from devicedefender_audit.service.tasks import EXTENSIONS_MEMBER
from devicedefender_audit.store import open_store

ROLE = "arn:aws:iam::123456789012:role/mitigation"


def context(path, iot=None, sns=None, **extra) -> ServiceContext:
    return ServiceContext(store=open_store(path), iot_client=lambda: iot, detectors=lambda: [RocaDetector()],
                          sns_client=lambda: sns, **extra)


def synthetic_audit(path, count: int) -> tuple[str, list[str]]:
    """An audit task with ``count`` findings, straight into the store (SNS actions need no certificate)."""
    store = open_store(path)
    task = AuditTask()
    store.save_task(task)
    findings = [
        AuditFinding(task_id=task.task_id, task_start_time=task.task_start_time,
                     non_compliant_resource=NonCompliantResource(
                         resource_identifier=ResourceIdentifier(device_certificate_id=f"{i:064x}")),
                     reason_for_non_compliance="weak key", reason_for_non_compliance_code="ROCA")
        for i in range(count)
    ]
    store.add_findings(findings)
    store.close()
    return task.task_id, [f.finding_id for f in findings]


def test_two_concurrent_tasks_publish_each_finding_once(tmp_path, sns_queue):
    path = tmp_path / "audits.sqlite3"
    audit_task_id, finding_ids = synthetic_audit(path, 5)
    setup = context(path)
    call(setup, "CreateMitigationAction", actionName="notify", roleArn=ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": sns_queue["topic"]}})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(task_id: str) -> None:
        ctx = context(path, sns=boto3.client("sns", region_name=REGION))
        try:
            barrier.wait()
            OPERATIONS["StartAuditMitigationActionsTask"](
                ctx, taskId=task_id, target={"auditTaskId": audit_task_id},
                auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken=task_id)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            ctx.store.close()

    threads = [threading.Thread(target=run, args=(f"task-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    published = sorted(json.loads(body)["findingId"] for body in sns_queue["drain"]())
    assert published == sorted(finding_ids)  # exactly 5 messages for 5 findings
    stats = [call(setup, "DescribeAuditMitigationActionsTask", taskId=f"task-{n}")["taskStatistics"][CHECK_NAME]
             for n in (1, 2)]
    assert sum(s["succeededFindingsCount"] for s in stats) == 5
    assert sum(s["skippedFindingsCount"] for s in stats) == 5
    setup.store.close()


def test_another_topic_is_another_action(tmp_path, sns_queue):
    """Idempotency is keyed by the definition with its parameters: the same action is skipped on
    a re-run, the same action pointed at another topic is not."""
    path = tmp_path / "audits.sqlite3"
    audit_task_id, _ = synthetic_audit(path, 2)
    ctx = context(path, sns=sns_queue["sns"])
    other = sns_queue["sns"].create_topic(Name="other")["TopicArn"]
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": sns_queue["topic"]}})

    def start(task_id: str) -> dict:
        call(ctx, "StartAuditMitigationActionsTask", taskId=task_id, target={"auditTaskId": audit_task_id},
             auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken=task_id)
        return call(ctx, "DescribeAuditMitigationActionsTask", taskId=task_id)["taskStatistics"][CHECK_NAME]

    assert start("first")["succeededFindingsCount"] == 2
    assert len(sns_queue["drain"]()) == 2
    assert start("again")["skippedFindingsCount"] == 2
    call(ctx, "UpdateMitigationAction", actionName="notify", actionParams={"publishFindingToSnsParams": {
        "topicArn": other}})
    assert start("other-topic")["succeededFindingsCount"] == 2
    assert sns_queue["drain"]() == []  # the other topic has no subscriber; the first got nothing new
    ctx.store.close()


@pytest.fixture
def weak_account(iot, sns_queue, tmp_path):
    """Two ROCA certificates on things, audited through the service; actions of every type."""
    certs = [register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter-1"),
             register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-2")]
    ctx = context(tmp_path / "audits.sqlite3", iot=iot, sns=sns_queue["sns"])
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE, auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    audit_task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    for name, params in (
        ("deactivate", {"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}),
        ("quarantine", {"addThingsToThingGroupParams": {"thingGroupNames": ["quarantine"],
                                                        "overrideDynamicGroups": True}}),
        ("notify", {"publishFindingToSnsParams": {"topicArn": sns_queue["topic"]}}),
    ):
        call(ctx, "CreateMitigationAction", actionName=name, roleArn=ROLE, actionParams=params)
    yield {"ctx": ctx, "iot": iot, "sns": sns_queue["sns"], "certs": certs, "audit": audit_task_id,
           "drain": sns_queue["drain"]}
    ctx.store.close()


def test_a_real_run_with_a_dry_runs_task_id_and_token_is_refused_not_replayed(weak_account):
    """The README's `start-audit-mitigation-actions-task --task-id q1 --client-request-token q1
    [--dry-run]`: run without --dry-run after the dry run, the same id and token were answered
    as a retry of the dry run, and nothing changed while the command said it started."""
    a, ctx = weak_account, weak_account["ctx"]
    request = {"taskId": "q1", "target": {"auditTaskId": a["audit"]},
               "auditCheckToActionsMapping": {CHECK_NAME: ["deactivate"]}, "clientRequestToken": "q1"}
    OPERATIONS["StartAuditMitigationActionsTask"](ctx, dry_run=True, **request)
    assert OPERATIONS["StartAuditMitigationActionsTask"](ctx, dry_run=True, **request) == {"taskId": "q1"}  # a retry
    with pytest.raises(TaskAlreadyExists, match="a dry run with this clientRequestToken"):
        call(ctx, "StartAuditMitigationActionsTask", **request)
    with pytest.raises(TaskAlreadyExists, match="another target"):
        OPERATIONS["StartAuditMitigationActionsTask"](ctx, dry_run=True, **{**request, "target": {
            "findingIds": [ctx.store.get_record("mitigation_task", "q1")["findingIds"][0]]}})
    assert statuses(a["iot"], a["certs"]) == ["ACTIVE", "ACTIVE"]

def statuses(iot, certs) -> list[str]:
    return [iot.describe_certificate(certificateId=c["certificateId"])["certificateDescription"]["status"]
            for c in certs]


def test_dry_run_task_makes_no_mutating_call(weak_account):
    a, ctx = weak_account, weak_account["ctx"]
    called: list[str] = []
    for client in (a["iot"], a["sns"]):
        client.meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    mapping = {CHECK_NAME: ["deactivate", "quarantine", "notify"]}
    OPERATIONS["StartAuditMitigationActionsTask"](ctx, dry_run=True, taskId="dry", target={"auditTaskId": a["audit"]},
                                                  auditCheckToActionsMapping=mapping, clientRequestToken="dry")

    assert called, "the dry run should still read current state"
    assert all(name.startswith(("Describe", "List", "Get")) for name in called), called
    assert statuses(a["iot"], a["certs"]) == ["ACTIVE", "ACTIVE"]
    assert a["drain"]() == []
    task = call(ctx, "DescribeAuditMitigationActionsTask", taskId="dry", extensions=True)
    assert task[EXTENSIONS_MEMBER] == {"dryRun": True}
    assert task["taskStatistics"][CHECK_NAME]["skippedFindingsCount"] == 2
    finding_id = ctx.store.get_record("mitigation_task", "dry")["findingIds"][0]
    executions = call(ctx, "ListAuditMitigationActionsExecutions", taskId="dry", findingId=finding_id)
    assert [e["status"] for e in executions["actionsExecutions"]] == ["SKIPPED"] * 3
    assert all(e["message"].startswith("dry run, nothing changed: would") for e in executions["actionsExecutions"])

    # A dry run claims nothing: the real task that follows acts on every finding.
    call(ctx, "StartAuditMitigationActionsTask", taskId="real", target={"auditTaskId": a["audit"]},
         auditCheckToActionsMapping=mapping, clientRequestToken="real")
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="real")["taskStatistics"][CHECK_NAME][
        "succeededFindingsCount"] == 2
    assert statuses(a["iot"], a["certs"]) == ["INACTIVE", "INACTIVE"]
    assert set(a["iot"].list_things_in_thing_group(thingGroupName="quarantine")["things"]) == {"meter-1", "meter-2"}
    assert len(a["drain"]()) == 2


def test_targets_and_refusals(weak_account):
    a, ctx = weak_account, weak_account["ctx"]
    findings = call(ctx, "ListAuditFindings", taskId=a["audit"])["findings"]
    code = findings[0]["reasonForNonComplianceCode"]

    def start(task_id: str, target: dict, actions: tuple[str, ...] = ("notify",)) -> dict:
        call(ctx, "StartAuditMitigationActionsTask", taskId=task_id, target=target,
             auditCheckToActionsMapping={CHECK_NAME: list(actions)}, clientRequestToken=task_id)
        return call(ctx, "DescribeAuditMitigationActionsTask", taskId=task_id)["taskStatistics"][CHECK_NAME]

    assert start("by-id", {"findingIds": [findings[1]["findingId"]]})["totalFindingsCount"] == 1
    by_code = start("by-code", {"auditTaskId": a["audit"], "auditCheckToReasonCodeFilter": {CHECK_NAME: [code]}})
    assert by_code["totalFindingsCount"] == sum(f["reasonForNonComplianceCode"] == code for f in findings)
    assert start("no-match", {"auditTaskId": a["audit"],
                              "auditCheckToReasonCodeFilter": {CHECK_NAME: ["OTHER"]}})["totalFindingsCount"] == 0
    # A task applied to an audit is listed under that audit, whether or not a finding matched.
    window = {"startTime": ctx.now() - timedelta(hours=1), "endTime": ctx.now() + timedelta(hours=1)}
    listed = call(ctx, "ListAuditMitigationActionsTasks", **window, auditTaskId=a["audit"])["tasks"]
    assert [t["taskId"] for t in listed] == ["by-id", "by-code", "no-match"]
    with pytest.raises(InvalidRequest, match="either"):
        start("both", {"auditTaskId": a["audit"], "findingIds": [findings[0]["findingId"]]})
    with pytest.raises(InvalidRequest, match="auditTaskId"):
        start("filter-only", {"auditCheckToReasonCodeFilter": {CHECK_NAME: [code]}})
    with pytest.raises(InvalidRequest, match="no mitigation action"):
        start("unknown", {"auditTaskId": a["audit"]}, ("missing",))
    call(ctx, "CreateMitigationAction", actionName="ca", roleArn=ROLE,
         actionParams={"updateCACertificateParams": {"action": "DEACTIVATE"}})
    with pytest.raises(InvalidRequest, match="does not apply"):
        start("ca", {"auditTaskId": a["audit"]}, ("ca",))
    with pytest.raises(InvalidRequest, match="was used for task by-id"):
        call(ctx, "StartAuditMitigationActionsTask", taskId="reused", target={"auditTaskId": a["audit"]},
             auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken="by-id")
    call(ctx, "CreateMitigationAction", actionName="logging", roleArn=ROLE,
         actionParams={"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "INFO"}})
    with pytest.raises(InvalidRequest, match="ENABLE_IOT_LOGGING\\) does not apply"):
        start("logging", {"auditTaskId": a["audit"]}, ("logging",))


def test_notification_when_an_audit_ends(weak_account):
    a, ctx = weak_account, weak_account["ctx"]
    a["drain"]()
    topic = a["sns"].list_topics()["Topics"][0]["TopicArn"]
    call(ctx, "UpdateAccountAuditConfiguration", auditNotificationTargetConfigurations={
        "SNS": {"targetArn": topic, "roleArn": ROLE, "enabled": True}})
    task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    task = call(ctx, "DescribeAuditTask", taskId=task_id)

    [body] = a["drain"]()
    message = json.loads(body)
    # The payload of the AWS IoT Developer Guide (schema arn:aws:iot:::schema:auditnotification/1.0).
    assert message == {
        "accountId": "123456789012",
        "taskId": task_id,
        "taskStatus": "COMPLETED",
        "taskType": "ON_DEMAND_AUDIT_TASK",
        "failedChecksCount": 0,
        "canceledChecksCount": 0,
        "nonCompliantChecksCount": 1,
        "compliantChecksCount": 0,
        "totalChecksCount": 1,
        "taskStartTime": message["taskStartTime"],
        "auditDetails": [{"checkName": CHECK_NAME, "checkRunStatus": "COMPLETED_NON_COMPLIANT",
                          "nonCompliantResourcesCount": 2, "totalResourcesCount": 2}],
    }
    started = datetime.fromtimestamp(message["taskStartTime"] / 1000, timezone.utc)
    assert isinstance(message["taskStartTime"], int)
    assert abs((started - task["taskStartTime"]).total_seconds()) < 0.002

    call(ctx, "UpdateAccountAuditConfiguration", auditNotificationTargetConfigurations={
        "SNS": {"targetArn": topic, "roleArn": ROLE, "enabled": False}})
    call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])
    assert a["drain"]() == []


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_a_claim_whose_owner_is_gone_is_retaken(tmp_path, sns_queue, monkeypatch):
    """A task that died between claiming and applying must not leave its findings unmitigated:
    the claim of a dead process (or one held too long) is retaken by the next task; a live one's
    is waited for, and still held after the wait, the action fails (CLAIM_HELD)."""
    from devicedefender_audit import mitigation

    monkeypatch.setattr(mitigation, "HELD_WAIT_S", 0.2)
    monkeypatch.setattr(mitigation, "HELD_POLL_S", 0.05)
    path = tmp_path / "audits.sqlite3"
    audit_task_id, finding_ids = synthetic_audit(path, 3)
    ctx = context(path, sns=sns_queue["sns"])
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": sns_queue["topic"]}})
    digest = definition_of(stored_action(ctx.store, "notify")).digest
    crashed = {**new_claim("crashed", "notify"), "pid": dead_pid()}
    alive = new_claim("running-elsewhere", "notify")  # this (live) process's, as another task's would be
    alive["pid"] = os.getppid()
    stale = {**new_claim("hung", "notify"), "host": "another-host", "heartbeat": time.time() - STALE_AFTER_S - 1}
    for finding_id, claim in zip(finding_ids, (crashed, alive, stale), strict=True):
        assert ctx.store.insert_record(CLAIM_KIND, f"{finding_id}/{digest}", claim)
    assert abandoned(crashed) and abandoned(stale) and abandoned(alive) is None

    call(ctx, "StartAuditMitigationActionsTask", taskId="next", target={"auditTaskId": audit_task_id},
         auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken="next")

    published = sorted(json.loads(body)["findingId"] for body in sns_queue["drain"]())
    assert published == sorted([finding_ids[0], finding_ids[2]])
    outcomes = {e.finding_id: (e.status.value, e.error_code, e.message) for e in ctx.store.executions("next")}
    assert outcomes[finding_ids[1]] == ("FAILED", "CLAIM_HELD", (
        "being applied by task running-elsewhere for more than 0 s: not applied by this task (start it again once "
        "that task has ended)"))
    for finding_id in (finding_ids[0], finding_ids[2]):
        assert ctx.store.get_record(CLAIM_KIND, f"{finding_id}/{digest}")["state"] == "APPLIED"
    ctx.store.close()


def test_two_retakers_of_one_abandoned_claim_apply_it_once(tmp_path, sns_queue, monkeypatch):
    from devicedefender_audit import mitigation

    monkeypatch.setattr(mitigation, "HELD_POLL_S", 0.02)  # the loser waits for the winner's claim to be applied
    path = tmp_path / "audits.sqlite3"
    _, finding_ids = synthetic_audit(path, 6)
    store = open_store(path)
    action = ActionDefinition.for_type(MitigationActionType.PUBLISH_FINDING_TO_SNS, sns_topic_arn=sns_queue["topic"])
    pid = dead_pid()
    for finding_id in finding_ids:
        store.insert_record(CLAIM_KIND, f"{finding_id}/{action.digest}", {**new_claim("crashed", action.name),
                                                                          "pid": pid})
    findings = [store.get_finding(i) for i in finding_ids]
    store.close()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def retaker(task_id: str) -> None:
        own = open_store(path)
        mitigator = Mitigator(None, boto3.client("sns", region_name=REGION), own, dry_run=False)
        for finding in findings:
            barrier.wait(30)  # both reach each abandoned claim together
            outcomes.append(mitigator.execute(finding, action, task_id).status.value)
        own.close()

    threads = [threading.Thread(target=retaker, args=(f"retaker-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(json.loads(body)["findingId"] for body in sns_queue["drain"]()) == sorted(finding_ids)
    assert sorted(outcomes) == ["COMPLETED"] * 6 + ["SKIPPED"] * 6


def test_an_abandoned_claim_a_dead_retaker_marked_is_waited_for_not_looped_on(tmp_path, sns_queue, monkeypatch):
    """A retaker that died between its marker and its claim leaves the claim abandoned for good
    with its retake taken: the next run waits its time and fails the action (CLAIM_HELD), without
    spinning on the store."""
    from devicedefender_audit import mitigation
    from devicedefender_audit.mitigation_claims import RETAKE_KIND

    monkeypatch.setattr(mitigation, "HELD_WAIT_S", 0.3)
    monkeypatch.setattr(mitigation, "HELD_POLL_S", 0.05)
    path = tmp_path / "audits.sqlite3"
    _, [finding_id] = synthetic_audit(path, 1)
    store = open_store(path)
    action = ActionDefinition.for_type(MitigationActionType.PUBLISH_FINDING_TO_SNS, sns_topic_arn=sns_queue["topic"])
    key = f"{finding_id}/{action.digest}"
    crashed = {**new_claim("crashed", action.name), "pid": dead_pid()}
    store.insert_record(CLAIM_KIND, key, crashed)
    store.insert_record(RETAKE_KIND, f"{key}@{crashed['claimId']}", {"by": "died-retaking"})
    reads = []
    get_record = store.get_record
    monkeypatch.setattr(store, "get_record", lambda *args: reads.append(args) or get_record(*args))

    execution = Mitigator(None, sns_queue["sns"], store, dry_run=False).execute(store.get_finding(finding_id), action,
                                                                                "next")
    assert (execution.status.value, execution.error_code) == ("FAILED", "CLAIM_HELD")
    assert len(reads) < 30 and sns_queue["drain"]() == []
    store.close()


def test_a_retry_after_the_task_ended_with_keys_in_another_order_is_a_retry(weak_account):
    """Guard: the replay compares target and mapping as values, so a retry after the dry run
    has ended, whose JSON has the target's members in another order (a re-serialised body), is
    still the same request; the real run under the dry run's id and token is still refused."""
    a, ctx = weak_account, weak_account["ctx"]
    reason = {CHECK_NAME: ["CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"]}
    start = OPERATIONS["StartAuditMitigationActionsTask"]
    request = {"taskId": "r1", "clientRequestToken": "r1", "auditCheckToActionsMapping": {CHECK_NAME: ["deactivate"]}}
    start(ctx, dry_run=True, target={"auditTaskId": a["audit"], "auditCheckToReasonCodeFilter": reason}, **request)
    assert OPERATIONS["DescribeAuditMitigationActionsTask"](ctx, taskId="r1")["taskStatus"] != "IN_PROGRESS"
    again = json.loads(json.dumps({"auditCheckToReasonCodeFilter": reason, "auditTaskId": a["audit"]}))
    assert start(ctx, dry_run=True, target=again, **request) == {"taskId": "r1"}
    with pytest.raises(TaskAlreadyExists):
        start(ctx, target=again, **request)


def test_a_finding_suppressed_since_its_audit_is_not_mitigated(weak_account):
    """'Mitigation actions won't be performed on suppressed audit findings': a suppression made
    after the audit is the user's word too (it was deactivated all the same)."""
    a, ctx = weak_account, weak_account["ctx"]
    findings = call(ctx, "ListAuditFindings", taskId=a["audit"])["findings"]
    accepted = findings[0]["nonCompliantResource"]["resourceIdentifier"]
    call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=accepted,
         suppressIndefinitely=True, clientRequestToken="s1")
    call(ctx, "StartAuditMitigationActionsTask", taskId="real", target={"auditTaskId": a["audit"]},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]}, clientRequestToken="real")
    assert ctx.store.get_record("mitigation_task", "real")["findingIds"] == [findings[1]["findingId"]]
    status = {c["certificateId"]: s for c, s in zip(a["certs"], statuses(a["iot"], a["certs"]), strict=True)}
    assert status[accepted["deviceCertificateId"]] == "ACTIVE"
    assert status[findings[1]["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]] == "INACTIVE"


def test_rows_a_dry_run_did_not_run_are_dry_run_rows(weak_account):
    """CANCELED rows (and SKIPPED ones after a failed action) are recorded as the task's mode,
    so list-mitigations does not call a canceled dry run a real run."""
    a, ctx = weak_account, weak_account["ctx"]
    ctx.store.put_record("mitigation_task_cancel", "dry", {"taskId": "dry"})  # canceled before it starts
    OPERATIONS["StartAuditMitigationActionsTask"](ctx, dry_run=True, taskId="dry", target={"auditTaskId": a["audit"]},
                                                  auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]},
                                                  clientRequestToken="dry")
    executions = ctx.store.executions("dry")
    assert executions and all(e.status.value == "CANCELED" and e.dry_run for e in executions)


def test_an_interrupt_after_a_notification_went_out_neither_repeats_it_nor_loses_its_record(weak_account):
    """Ctrl-C right after SNS answered: the claim was released as for a failure, so the next task
    published the finding again, and the execution left no record."""
    a, ctx = weak_account, weak_account["ctx"]
    published = []

    def interrupt_after_the_first(**_):
        published.append(1)
        if len(published) == 1:
            raise KeyboardInterrupt

    a["sns"].meta.events.register("after-call.sns.Publish", interrupt_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        call(ctx, "StartAuditMitigationActionsTask", taskId="t1", target={"auditTaskId": a["audit"]},
             auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken="t1")
    [interrupted] = ctx.store.executions("t1")
    assert (interrupted.status.value, interrupted.error_code) == ("FAILED", "INTERRUPTED")
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="t1")["taskStatus"] == "CANCELED"  # not IN_PROGRESS
    assert [c.operation for c in interrupted.calls] == ["publish"]

    call(ctx, "StartAuditMitigationActionsTask", taskId="t2", target={"auditTaskId": a["audit"]},
         auditCheckToActionsMapping={CHECK_NAME: ["notify"]}, clientRequestToken="t2")
    assert len(a["drain"]()) == 2  # one message a finding, the interrupted one not sent again
    assert sorted(e.status.value for e in ctx.store.executions("t2")) == ["COMPLETED", "SKIPPED"]


@pytest.mark.parametrize("there", ["applied", "released", "still held"])
def test_an_action_another_task_is_applying_is_waited_for_and_the_order_kept(weak_account, monkeypatch, tmp_path,
                                                                            there):
    """Another running task holds the finding's deactivation. This task waits: applied there, it
    is skipped and the notification after it goes out; released there (it failed), this task
    deactivates the certificate itself, then notifies; still held after the wait, the
    deactivation fails here and the notification is skipped, so none goes out beside a
    deactivation that did not happen (and none is lost because the other task lacked it)."""
    from devicedefender_audit import mitigation

    monkeypatch.setattr(mitigation, "HELD_WAIT_S", 0.5 if there == "still held" else 30.0)
    monkeypatch.setattr(mitigation, "HELD_POLL_S", 0.05)
    a, ctx = weak_account, weak_account["ctx"]
    finding = next(ctx.store.findings(a["audit"]))
    key = f"{finding.finding_id}/{definition_of(stored_action(ctx.store, 'deactivate')).digest}"
    assert ctx.store.insert_record(CLAIM_KIND, key, {**new_claim("other-task", "deactivate"), "pid": os.getppid()})

    def the_other_task_ends_its_action() -> None:
        time.sleep(0.3)
        store = open_store(tmp_path / "audits.sqlite3")  # the other task's own connection
        if there == "applied":
            a["iot"].update_certificate(certificateId=finding.certificate_id, newStatus="INACTIVE")
            store.put_record(CLAIM_KIND, key, {"taskId": "other-task", "actionName": "deactivate", "state": "APPLIED"})
        elif there == "released":
            store.delete_record(CLAIM_KIND, key)
        store.close()

    other = threading.Thread(target=the_other_task_ends_its_action)
    other.start()
    call(ctx, "StartAuditMitigationActionsTask", taskId="second", target={"findingIds": [finding.finding_id]},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate", "notify"]}, clientRequestToken="second")
    other.join()

    executions = {e.action_name: (e.status.value, e.message) for e in ctx.store.executions("second")}
    published = [json.loads(body)["findingId"] for body in a["drain"]()]
    status = a["iot"].describe_certificate(certificateId=finding.certificate_id)["certificateDescription"]["status"]
    if there == "applied":
        assert executions["deactivate"] == ("SKIPPED", "skipped: already applied by an earlier run (task other-task)")
        assert executions["notify"][0] == "COMPLETED" and published == [finding.finding_id]
    elif there == "released":
        assert [executions[name][0] for name in ("deactivate", "notify")] == ["COMPLETED", "COMPLETED"]
        assert status == "INACTIVE" and published == [finding.finding_id]
    else:
        assert executions["deactivate"][0] == "FAILED" and "being applied by task other-task" in executions["deactivate"][1]
        assert executions["notify"] == ("SKIPPED", "skipped: action deactivate failed for this finding")
        assert status == "ACTIVE" and published == []
        assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="second")["taskStatus"] == "FAILED"


def test_a_retry_while_the_first_attempt_is_checked_is_throttled_not_told_it_started(weak_account, monkeypatch,
                                                                                   tmp_path):
    """The first attempt stored the task and is still checking the running-task limit and the
    token (it may be refused and delete the task): an SDK retry of the same request meanwhile
    gets ThrottlingException, which the SDK retries, not {"taskId"} for a task that may never
    run. Once admitted, a retry is answered with the task; a first attempt that fails in its
    checks (the store failing) leaves no task behind, so a retry starts it."""
    from devicedefender_audit.service import mitigation_tasks
    from devicedefender_audit.service.errors import Throttled

    a, ctx = weak_account, weak_account["ctx"]
    request = {"taskId": "t1", "target": {"auditTaskId": a["audit"]},
               "auditCheckToActionsMapping": {CHECK_NAME: ["notify"]}, "clientRequestToken": "tok"}
    tasks, checking, go_on = mitigation_tasks._tasks, threading.Event(), threading.Event()

    def slow_check(ctx_):
        checking.set()
        go_on.wait(30)
        return tasks(ctx_)

    monkeypatch.setattr(mitigation_tasks, "_tasks", slow_check)
    own = context(tmp_path / "audits.sqlite3", sns=a["sns"])  # the first attempt's connection
    first = threading.Thread(target=lambda: call(own, "StartAuditMitigationActionsTask", **request))
    first.start()
    checking.wait(30)
    with pytest.raises(Throttled, match="being started by this request's first attempt"):
        call(ctx, "StartAuditMitigationActionsTask", **request)
    go_on.set()
    first.join(30)
    own.store.close()
    assert call(ctx, "StartAuditMitigationActionsTask", **request) == {"taskId": "t1"}
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="t1")["taskStatus"] == "COMPLETED"

    class StoreFailed(Exception):
        pass

    def failing(_ctx):
        raise StoreFailed

    again = {**request, "taskId": "t2", "clientRequestToken": "tok2"}
    monkeypatch.setattr(mitigation_tasks, "_tasks", failing)
    with pytest.raises(StoreFailed):
        call(ctx, "StartAuditMitigationActionsTask", **again)
    monkeypatch.setattr(mitigation_tasks, "_tasks", tasks)
    assert call(ctx, "StartAuditMitigationActionsTask", **again) == {"taskId": "t2"}
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="t2")["taskStatus"] == "COMPLETED"
