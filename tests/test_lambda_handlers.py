"""The Lambda handlers in-process against moto: scheduled audits and the registration gate."""

from __future__ import annotations

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, register
from moto.sns.models import sns_backends

from devicedefender_audit.lambda_handlers import registration_gate, scheduled_audit

ACCOUNT = "123456789012"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"


@pytest.fixture
def topic_arn(aws) -> str:
    return boto3.client("sns", region_name=REGION).create_topic(Name="dda-findings")["TopicArn"]


def _notifications(topic: str) -> list[tuple[str, str]]:
    """(subject, message) of everything published to ``topic`` in moto."""
    sent = sns_backends[ACCOUNT][REGION].topics[topic].sent_notifications
    return [(subject, message) for _, message, subject, *_ in sent]


def _registration_event(certificate_id: str) -> dict:
    """The payload AWS IoT publishes on $aws/events/certificates/registered/<caCertificateId>."""
    return {"certificateId": certificate_id, "caCertificateId": "c" * 64, "timestamp": 1735689600000,
            "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": ACCOUNT,
            "certificateRegistrationTimestamp": "1735689600000"}


def test_scheduled_audit_notifies_and_imports_findings(monkeypatch, tmp_path, iot, topic_arn, fresh_rsa_key):
    roca = register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")
    register(iot, issue_certificate(fresh_rsa_key))
    boto3.client("securityhub", region_name=REGION).enable_security_hub()
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    monkeypatch.setenv("DDA_SNS_TOPIC_ARN", topic_arn)
    monkeypatch.setenv("DDA_SECURITYHUB", "true")

    result = scheduled_audit({"regions": [REGION, "eu-west-1"]}, None)

    east, west = result["audits"]
    assert (east["region"], east["checkRunStatus"], east["nonCompliantResourcesCount"]) == (
        REGION, "COMPLETED_NON_COMPLIANT", 1)
    assert east["findings"] == [{"certificateId": roca["certificateId"], "reasonCode": ROCA, "things": "meter"}]
    assert east["securityHub"] == {"imported": 1, "failed": []}
    assert (west["region"], west["totalResourcesCount"], west["checkRunStatus"]) == (
        "eu-west-1", 0, "COMPLETED_COMPLIANT")
    [(subject, message)] = _notifications(topic_arn)  # the compliant region is not notified
    assert "1 non-compliant" in subject and roca["certificateId"] in message
    imported = boto3.client("securityhub", region_name=REGION).get_findings()["Findings"]
    assert [f["Resources"][0]["Id"] for f in imported] == [roca["certificateArn"]]


def test_scheduled_audit_defaults_to_the_functions_region(monkeypatch, tmp_path, aws):
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    monkeypatch.delenv("DDA_REGIONS", raising=False)
    assert [a["region"] for a in scheduled_audit({}, None)["audits"]] == [REGION]


def _gate_env(monkeypatch, topic: str, dry_run: str) -> None:
    monkeypatch.setenv("DDA_GATE_ACTIONS", "UPDATE_DEVICE_CERTIFICATE,ADD_THINGS_TO_THING_GROUP,PUBLISH_FINDINGS_TO_SNS")
    monkeypatch.setenv("DDA_QUARANTINE_GROUP", "quarantine")
    monkeypatch.setenv("DDA_SNS_TOPIC_ARN", topic)
    monkeypatch.setenv("DDA_DRY_RUN", dry_run)


def test_gate_deactivates_quarantines_and_notifies_a_weak_key(monkeypatch, iot, topic_arn):
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-7")
    _gate_env(monkeypatch, topic_arn, dry_run="false")

    outcome = registration_gate(_registration_event(cert["certificateId"]), None)

    assert outcome["verdict"] == "VULNERABLE" and outcome["detail"] == ROCA
    assert [(e["actionName"], e["status"]) for e in outcome["actionsExecutions"]] == [
        ("UPDATE_DEVICE_CERTIFICATE", "COMPLETED"), ("ADD_THINGS_TO_THING_GROUP", "COMPLETED"),
        ("PUBLISH_FINDING_TO_SNS", "COMPLETED")]
    status = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]
    assert status == "INACTIVE"
    things = iot.list_things_in_thing_group(thingGroupName="quarantine")["things"]
    assert things == ["meter-7"]
    [(subject, message)] = _notifications(topic_arn)
    assert ROCA in subject and cert["certificateId"] in message


def test_gate_dry_run_changes_nothing(monkeypatch, iot, topic_arn):
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-7")
    _gate_env(monkeypatch, topic_arn, dry_run="true")

    outcome = registration_gate(_registration_event(cert["certificateId"]), None)

    assert outcome["verdict"] == "VULNERABLE"
    assert {e["status"] for e in outcome["actionsExecutions"]} == {"SKIPPED"}
    assert "would" in outcome["actionsExecutions"][0]["message"]
    status = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE" and _notifications(topic_arn) == []


def test_gate_lets_a_good_key_through(monkeypatch, iot, topic_arn, fresh_rsa_key):
    cert = register(iot, issue_certificate(fresh_rsa_key))
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    outcome = registration_gate(_registration_event(cert["certificateId"]), None)
    assert outcome["verdict"] == "CLEAN" and outcome["actionsExecutions"] == []
    status = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE"


def test_gate_refuses_other_messages_and_bad_settings(monkeypatch, aws, topic_arn):
    _gate_env(monkeypatch, topic_arn, dry_run="true")
    with pytest.raises(ValueError, match="not a certificate registration event"):
        registration_gate({"eventType": "THING_EVENT"}, None)
    monkeypatch.delenv("DDA_QUARANTINE_GROUP")
    with pytest.raises(ValueError, match="thing group"):
        registration_gate(_registration_event("a" * 64), None)
