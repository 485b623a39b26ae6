"""Mitigation actions against moto: effects, dry run, idempotency, failures."""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import DATA, REGION, register, run_audit

from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.mitigation import MitigationConfig, Mitigator
from devicedefender_audit.models import MitigationActionType as Action
from devicedefender_audit.models import MitigationStatus
from devicedefender_audit.store import open_store

GROUP = "quarantine"
ALL = (Action.UPDATE_DEVICE_CERTIFICATE, Action.ADD_THINGS_TO_THING_GROUP, Action.PUBLISH_FINDINGS_TO_SNS)


@pytest.fixture
def account(iot, tmp_path):
    """Two ROCA certificates on things, audited and stored; an SNS topic drained by SQS."""
    certs = [
        register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter-1"),
        register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-2"),
    ]
    iot.create_thing(thingName="meter-1b")
    iot.attach_thing_principal(thingName="meter-1b", principal=certs[0]["certificateArn"])
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="findings")["TopicArn"]
    queue = sqs.create_queue(QueueName="findings")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    store = open_store(tmp_path / "audits.sqlite3")
    result = run_audit(iot, [RocaDetector()], store)
    yield {"iot": iot, "sns": sns, "sqs": sqs, "queue": queue, "topic": topic, "store": store,
           "findings": result.findings, "certs": certs}
    store.close()


def config(a, actions=ALL) -> MitigationConfig:
    return MitigationConfig(actions=actions, thing_group=GROUP, sns_topic_arn=a["topic"])


def status_of(iot, cert) -> str:
    return iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]


def group_members(iot) -> set[str]:
    try:
        return {t for t in iot.list_things_in_thing_group(thingGroupName=GROUP)["things"]}
    except iot.exceptions.ResourceNotFoundException:
        return set()


def test_actions_take_effect(account):
    a = account
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a))
    assert [e.status for e in executions] == [MitigationStatus.SUCCEEDED] * 6
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["INACTIVE", "INACTIVE"]
    assert group_members(a["iot"]) == {"meter-1", "meter-1b", "meter-2"}
    messages = a["sqs"].receive_message(QueueUrl=a["queue"], MaxNumberOfMessages=10)["Messages"]
    published = sorted(json.loads(m["Body"])["findingId"] for m in messages)
    assert published == sorted(f.finding_id for f in a["findings"])
    assert len(a["store"].executions(a["findings"][0].task_id)) == 6


def test_dry_run_makes_no_mutating_call_and_changes_nothing(account):
    a = account
    called: list[str] = []
    for client in (a["iot"], a["sns"]):
        client.meta.events.register("before-call.*.*", lambda model, **_: called.append(model.name))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=True).apply(a["findings"], config(a))

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


def test_rerun_is_idempotent(account):
    a = account
    Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a))
    a["sqs"].purge_queue(QueueUrl=a["queue"])
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], config(a))
    assert [e.status for e in again] == [MitigationStatus.SKIPPED] * 6
    assert all("already applied" in e.message for e in again)
    assert "Messages" not in a["sqs"].receive_message(QueueUrl=a["queue"])


def test_already_inactive_certificate_is_skipped_without_store(account):
    a = account
    a["iot"].update_certificate(certificateId=a["certs"][0]["certificateId"], newStatus="INACTIVE")
    executions = Mitigator(a["iot"], a["sns"], None, dry_run=False).apply(
        a["findings"], config(a, (Action.UPDATE_DEVICE_CERTIFICATE,)))
    by_cert = {e.finding_id: e for e in executions}
    first = next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])
    assert by_cert[first.finding_id].status is MitigationStatus.SKIPPED
    assert "already INACTIVE" in by_cert[first.finding_id].message


def test_failed_action_is_recorded_and_others_continue(account):
    a = account
    broken = MitigationConfig(actions=(Action.PUBLISH_FINDINGS_TO_SNS, Action.UPDATE_DEVICE_CERTIFICATE),
                              sns_topic_arn=a["topic"] + "-missing")
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], broken)
    assert [e.status for e in executions] == [MitigationStatus.FAILED, MitigationStatus.SUCCEEDED] * 2
    assert executions[0].error_code == "NotFound"
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["INACTIVE", "INACTIVE"]
    # A failed action is not "already applied": a fixed re-run performs it.
    fixed = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(
        a["findings"], config(a, (Action.PUBLISH_FINDINGS_TO_SNS,)))
    assert [e.status for e in fixed] == [MitigationStatus.SUCCEEDED] * 2


def test_missing_parameters_are_a_clear_error(account):
    a = account
    with pytest.raises(ValueError, match="--thing-group"):
        Mitigator(a["iot"], a["sns"], None, dry_run=True).apply(
            a["findings"], MitigationConfig(actions=(Action.ADD_THINGS_TO_THING_GROUP,)))


def test_certificate_without_things_is_skipped(iot, tmp_path):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    result = run_audit(iot, [RocaDetector()])
    sns = boto3.client("sns", region_name=REGION)
    executions = Mitigator(iot, sns, None, dry_run=False).apply(
        result.findings, MitigationConfig(actions=(Action.ADD_THINGS_TO_THING_GROUP,), thing_group=GROUP))
    assert executions[0].status is MitigationStatus.SKIPPED
    assert "no things" in executions[0].message
