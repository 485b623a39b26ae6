"""Mitigation actions against moto: effects, dry run, idempotency, failures."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from conftest import DATA, REGION, register, run_audit

from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import MitigationActionType as Action
from devicedefender_audit.models import MitigationExecution, MitigationStatus

GROUP = "quarantine"
ALL = (Action.UPDATE_DEVICE_CERTIFICATE, Action.ADD_THINGS_TO_THING_GROUP, Action.PUBLISH_FINDING_TO_SNS)
TASK = "task-1"


def config(a, actions=ALL, group=GROUP, topic=None) -> list[ActionDefinition]:
    return [ActionDefinition.for_type(action, thing_group=group, sns_topic_arn=topic or a["topic"]) for action in actions]


def status_of(iot, cert) -> str:
    return iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]


def group_members(iot) -> set[str]:
    try:
        return {t for t in iot.list_things_in_thing_group(thingGroupName=GROUP)["things"]}
    except iot.exceptions.ResourceNotFoundException:
        return set()


def test_actions_take_effect(account):
    a = account
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a), TASK)
    assert [e.status for e in executions] == [MitigationStatus.COMPLETED] * 6
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["INACTIVE", "INACTIVE"]
    assert group_members(a["iot"]) == {"meter-1", "meter-1b", "meter-2"}
    messages = a["sqs"].receive_message(QueueUrl=a["queue"], MaxNumberOfMessages=10)["Messages"]
    published = sorted(json.loads(m["Body"])["findingId"] for m in messages)
    assert published == sorted(f.finding_id for f in a["findings"])
    assert len(a["store"].executions(TASK)) == 6


def test_dry_run_makes_no_mutating_call_and_changes_nothing(account):
    a = account
    called: list[str] = []
    for client in (a["iot"], a["sns"]):
        client.meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=True).apply(a["findings"], config(a), TASK)

    assert called, "the dry run should still read current state"
    assert all(name.startswith(("Describe", "List", "Get")) for name in called), called
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["ACTIVE", "ACTIVE"]
    assert group_members(a["iot"]) == set()
    assert "Messages" not in a["sqs"].receive_message(QueueUrl=a["queue"])
    assert all(e.status is MitigationStatus.SKIPPED and e.dry_run for e in executions)
    planned = [(c.operation, c.parameters) for e in executions for c in e.calls]
    assert ("update_certificate", {"certificateId": a["certs"][0]["certificateId"], "newStatus": "INACTIVE"}) in planned
    assert [op for op, _ in planned].count("create_thing_group") == 1
    assert [op for op, _ in planned].count("add_thing_to_thing_group") == 3
    assert [op for op, _ in planned].count("publish") == 2


@pytest.mark.parametrize("dry_run", [True, False])
def test_two_findings_of_one_certificate_change_it_once(account, dry_run):
    """A certificate with findings from two checks is deactivated and its things quarantined
    once: a dry run plans each mutating call once, and a real run makes it once."""
    a = account
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    second = first.model_copy(update={"finding_id": "second-finding", "check_name": "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"})
    called: list[str] = []
    a["iot"].meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    actions = config(a, (Action.UPDATE_DEVICE_CERTIFICATE, Action.ADD_THINGS_TO_THING_GROUP))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=dry_run).apply([first, second], actions, TASK)

    planned = [call.operation for e in executions for call in e.calls]
    assert planned.count("update_certificate") == 1
    assert planned.count("add_thing_to_thing_group") == 2  # meter-1 and meter-1b, once each
    later = [e for e in executions if e.finding_id == "second-finding"]
    assert [e.status for e in later] == [MitigationStatus.SKIPPED] * 2
    assert "already" in later[0].message and "INACTIVE" in later[0].message and "already added" in later[1].message
    if dry_run:
        assert first.finding_id in later[0].message and first.finding_id in later[1].message
        assert not {"UpdateCertificate", "AddThingToThingGroup", "CreateThingGroup"} & set(called)
    else:
        assert called.count("UpdateCertificate") == 1 and called.count("AddThingToThingGroup") == 2
        assert status_of(a["iot"], a["certs"][0]) == "INACTIVE"
        assert group_members(a["iot"]) == {"meter-1", "meter-1b"}


def test_rerun_is_idempotent(account):
    a = account
    Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a), TASK)
    a["sqs"].purge_queue(QueueUrl=a["queue"])
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a), TASK)
    assert [e.status for e in again] == [MitigationStatus.SKIPPED] * 6
    assert all("already applied" in e.message for e in again)
    assert "Messages" not in a["sqs"].receive_message(QueueUrl=a["queue"])


def test_already_inactive_certificate_is_skipped_without_store(account):
    a = account
    a["iot"].update_certificate(certificateId=a["certs"][0]["certificateId"], newStatus="INACTIVE")
    executions = Mitigator(a["iot"], a["sns"], None, dry_run=False).apply(
        a["findings"], config(a, (Action.UPDATE_DEVICE_CERTIFICATE,)), TASK)
    by_cert = {e.finding_id: e for e in executions}
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    assert by_cert[first.finding_id].status is MitigationStatus.SKIPPED
    assert "already INACTIVE" in by_cert[first.finding_id].message


def test_failed_action_is_recorded_and_others_continue(account):
    a = account
    broken = config(a, (Action.PUBLISH_FINDING_TO_SNS, Action.UPDATE_DEVICE_CERTIFICATE), topic=a["topic"] + "-missing")
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], broken, TASK)
    assert [e.status for e in executions] == [MitigationStatus.FAILED, MitigationStatus.COMPLETED] * 2
    assert executions[0].error_code == "NotFound"
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["INACTIVE", "INACTIVE"]
    # A failed action is not "already applied": a fixed re-run performs it.
    fixed = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(
        a["findings"], config(a, (Action.PUBLISH_FINDING_TO_SNS,)), TASK)
    assert [e.status for e in fixed] == [MitigationStatus.COMPLETED] * 2


def test_missing_parameters_are_a_clear_error():
    with pytest.raises(ValueError, match="--thing-group"):
        ActionDefinition.for_type(Action.ADD_THINGS_TO_THING_GROUP)
    with pytest.raises(ValueError, match="--sns-topic-arn"):
        ActionDefinition.for_type(Action.PUBLISH_FINDING_TO_SNS)


def test_certificate_without_things_is_skipped(iot, tmp_path):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    result = run_audit(iot, [RocaDetector()])
    sns = boto3.client("sns", region_name=REGION)
    executions = Mitigator(iot, sns, None, dry_run=False).apply(
        result.findings, [ActionDefinition.for_type(Action.ADD_THINGS_TO_THING_GROUP, thing_group=GROUP)], TASK)
    assert executions[0].status is MitigationStatus.SKIPPED
    assert "no things" in executions[0].message


def test_rerun_with_other_parameters_is_not_skipped(account):
    """Idempotency is keyed by what an action does: another topic or group is another action."""
    a = account
    other_topic = a["sns"].create_topic(Name="other")["TopicArn"]
    Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a), TASK)
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(
        a["findings"], config(a, (Action.ADD_THINGS_TO_THING_GROUP, Action.PUBLISH_FINDING_TO_SNS),
                              group="quarantine-2", topic=other_topic), TASK)
    assert [e.status for e in again] == [MitigationStatus.COMPLETED] * 4
    assert {t for t in a["iot"].list_things_in_thing_group(thingGroupName="quarantine-2")["things"]} == {
        "meter-1", "meter-1b", "meter-2"}


def test_digest_covers_type_and_parameters_not_the_name():
    first = ActionDefinition.from_action_params("a", "1", {"publishFindingToSnsParams": {"topicArn": "arn:t1"}})
    renamed = ActionDefinition.from_action_params("b", "2", {"publishFindingToSnsParams": {"topicArn": "arn:t1"}})
    other = ActionDefinition.from_action_params("a", "1", {"publishFindingToSnsParams": {"topicArn": "arn:t2"}})
    assert first.digest == renamed.digest != other.digest
    with pytest.raises(ValueError, match="exactly one"):
        ActionDefinition.from_action_params("x", "1", {})
    with pytest.raises(ValueError, match="enableIoTLoggingParams"):
        ActionDefinition.from_action_params("x", "1", {"enableIoTLoggingParams": {"logLevel": "INFO",
                                                                                  "roleArnForLogging": "r"}})


def test_legacy_names_still_read():
    """Stores and deployed gates from earlier releases say SUCCEEDED and PUBLISH_FINDINGS_TO_SNS."""
    assert Action("PUBLISH_FINDINGS_TO_SNS") is Action.PUBLISH_FINDING_TO_SNS
    old = MitigationExecution.model_validate({"taskId": "t", "findingId": "f", "actionName": "PUBLISH_FINDINGS_TO_SNS",
                                              "status": "SUCCEEDED"})
    assert old.status is MitigationStatus.COMPLETED and old.action_type is Action.PUBLISH_FINDING_TO_SNS


def test_a_finding_whose_things_another_finding_quarantined_is_not_redone_by_a_later_run(account):
    """The second finding of a certificate is SKIPPED because the first one's action put its
    things in the group; that effect is in place, so a later run must not apply it again (an
    operator who released the things after the first run would see them quarantined again)."""
    a = account
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    second = first.model_copy(update={"finding_id": "second-finding", "check_name": "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"})
    actions = config(a, (Action.ADD_THINGS_TO_THING_GROUP,))
    Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    for thing in ("meter-1", "meter-1b"):  # released by an operator
        a["iot"].remove_thing_from_thing_group(thingGroupName=GROUP, thingName=thing)
    called: list[str] = []
    a["iot"].meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert [e.status for e in again] == [MitigationStatus.SKIPPED] * 2
    assert all("already applied" in e.message for e in again), [e.message for e in again]
    assert "AddThingToThingGroup" not in called and group_members(a["iot"]) == set()


def test_a_dry_run_plans_a_change_once_when_two_actions_make_it(account):
    """Two action definitions of one type and parameters (names differ) on one finding: a real
    run applies the first and skips the second (the claim is per effect), so a dry run plans it once."""
    a = account
    [deactivate] = config(a, (Action.UPDATE_DEVICE_CERTIFICATE,))
    twice = [deactivate, dataclasses.replace(deactivate, name="deactivate-again", action_id="other-id")]
    finding = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    planned = {}
    for dry_run in (True, False):
        executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=dry_run).apply([finding], twice, TASK)
        planned[dry_run] = [call.operation for e in executions for call in e.calls]
        assert executions[1].status is MitigationStatus.SKIPPED, executions[1].message
    assert planned[True] == ["update_certificate"]
    assert status_of(a["iot"], a["certs"][0]) == "INACTIVE"


def test_a_certificate_another_finding_deactivated_is_not_redone_by_a_later_run(account):
    """The second finding of a certificate is SKIPPED because the first one's action set it
    INACTIVE; an operator who reactivates it afterwards has accepted it, so a later run must
    not deactivate it again through the second finding."""
    a = account
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    second = first.model_copy(update={"finding_id": "second-finding", "check_name": "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"})
    actions = config(a, (Action.UPDATE_DEVICE_CERTIFICATE,))
    Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    a["iot"].update_certificate(certificateId=first.certificate_id, newStatus="ACTIVE")  # accepted by an operator
    called: list[str] = []
    a["iot"].meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert [e.status for e in again] == [MitigationStatus.SKIPPED] * 2
    assert all("already applied" in e.message for e in again), [e.message for e in again]
    assert "UpdateCertificate" not in called and status_of(a["iot"], a["certs"][0]) == "ACTIVE"


def test_a_dry_run_plans_exactly_the_calls_the_real_run_makes(account):
    """Every way one change can be reached twice in a task at once (two findings of one
    certificate, two action definitions of the same effect, two groups, a group created by an
    earlier finding): the dry run's planned calls are the real run's made calls, in order, and
    each execution is skipped in the dry run for the reason it is skipped in the real one."""
    a = account
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    second = first.model_copy(update={"finding_id": "second-finding", "check_name": "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"})
    findings = [first, second, *(f for f in a["findings"] if f is not first)]
    actions = [*config(a), *config(a, (Action.ADD_THINGS_TO_THING_GROUP,), group="quarantine-2")]
    actions.append(dataclasses.replace(actions[0], name="deactivate-again", action_id="other-id"))
    runs = {dry_run: Mitigator(a["iot"], a["sns"], a["store"], dry_run=dry_run).apply(findings, actions, TASK)
            for dry_run in (True, False)}

    def calls(executions):
        return [(c.service, c.operation, c.parameters) for e in executions for c in e.calls]

    assert calls(runs[True]) == calls(runs[False])
    assert len(calls(runs[False])) == 2 + 2 + 3 + 3 + 3  # deactivations, groups, adds to each group, publishes
    for dry, real in zip(runs[True], runs[False], strict=True):
        assert (dry.finding_id, dry.action_name) == (real.finding_id, real.action_name)
        if real.status is MitigationStatus.COMPLETED:
            assert dry.message.startswith("dry run, nothing changed: would "), dry.message
        else:
            assert real.status is MitigationStatus.SKIPPED and dry.message.startswith("dry run: skipped: "), real.message


def test_the_sns_subject_carries_the_findings_own_severity(account):
    """An INSECURE_PARAMETERS finding is HIGH: its notification's subject said CRITICAL."""
    a = account
    high = a["findings"][0].model_copy(update={"finding_id": "high", "severity": "HIGH",
                                               "reason_for_non_compliance_code": "CERTIFICATE_KEY_INSECURE_PARAMETERS"})
    [execution] = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(
        [high], config(a, (Action.PUBLISH_FINDING_TO_SNS,)), TASK)
    assert execution.status is MitigationStatus.COMPLETED
    [published] = execution.calls
    assert published.parameters["Subject"].startswith("HIGH DEVICE_CERTIFICATE_KEY_QUALITY_CHECK: ")
    assert json.loads(published.parameters["Message"])["severity"] == "HIGH"



class LooksBeforeTheOtherRunCreates:
    """The moto client, answering DescribeThingGroup as it was before another run created the group."""

    def __init__(self, iot) -> None:
        self._iot = iot

    def __getattr__(self, name: str):
        return getattr(self._iot, name)

    def describe_thing_group(self, **_):
        raise self._iot.exceptions.ResourceNotFoundException(
            {"Error": {"Code": "ResourceNotFoundException", "Message": "not found"}}, "DescribeThingGroup")


def test_a_thing_group_created_meanwhile_by_another_run_is_used(account):
    """Two runs at once (the gate receiving an event twice) both find no quarantine group and
    both create it: the one told it exists already goes on to add the things."""
    a = account
    a["iot"].create_thing_group(thingGroupName=GROUP)  # by the other run, after this one looked
    with pytest.raises(a["iot"].exceptions.ResourceAlreadyExistsException):
        a["iot"].create_thing_group(thingGroupName=GROUP)  # what this run is told (moto, or other attributes)
    quarantine = config(a, actions=(Action.ADD_THINGS_TO_THING_GROUP,))
    executions = Mitigator(LooksBeforeTheOtherRunCreates(a["iot"]), a["sns"], a["store"], dry_run=False).apply(
        a["findings"][:1], quarantine, TASK)
    assert [e.status for e in executions] == [MitigationStatus.COMPLETED]
    assert group_members(a["iot"]) in ({"meter-1", "meter-1b"}, {"meter-2"})  # the finding's things
