"""The Lambda handlers in-process against moto: scheduled audits and the registration gate."""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, register
from moto.sns.models import sns_backends

from devicedefender_audit.lambda_fleet import audit_account_region, list_account_regions
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


# the organization fan-out (Step Functions' Distributed Map over account-regions) ----------------


def _member_iot(account: str, region: str):
    issued = boto3.client("sts", region_name=REGION).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/dda-audit", RoleSessionName="setup")["Credentials"]
    return boto3.client("iot", region_name=region, aws_access_key_id=issued["AccessKeyId"],
                        aws_secret_access_key=issued["SecretAccessKey"], aws_session_token=issued["SessionToken"])


def test_fan_out_lists_account_regions_to_s3_and_audits_each_in_its_partition(monkeypatch, aws, topic_arn):
    org = boto3.client("organizations", region_name=REGION)
    org.create_organization(FeatureSet="ALL")
    member = org.create_account(AccountName="member", Email="m@example.com")["CreateAccountStatus"]["AccountId"]
    roca = _member_iot(member, "eu-west-1").register_certificate_without_ca(
        certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")["certificateId"]
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="dda-fleet")
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", f"{REGION},eu-west-1"), ("DDA_FLEET_BUCKET", "dda-fleet"),
                        ("DDA_ORGANIZATION_ROLE", "dda-audit"), ("DDA_STORE", "dynamodb://dda-audits"),
                        ("DDA_SNS_TOPIC_ARN", topic_arn)):
        monkeypatch.setenv(name, value)

    listed = list_account_regions({"executionName": "run-1"}, None)

    assert (listed["bucket"], listed["key"], listed["count"]) == ("dda-fleet", "runs/run-1/account-regions.json", 4)
    items = json.loads(boto3.client("s3", region_name=REGION).get_object(
        Bucket="dda-fleet", Key=listed["key"])["Body"].read())
    assert {(i["accountId"], i["region"], i["roleArn"]) for i in items} == {
        (ACCOUNT, REGION, None), (ACCOUNT, "eu-west-1", None),
        (member, REGION, f"arn:aws:iam::{member}:role/dda-audit"),
        (member, "eu-west-1", f"arn:aws:iam::{member}:role/dda-audit")}

    reports = {(r["accountId"], r["region"]): r for r in (audit_account_region(item, None) for item in items)}

    weak = reports[(member, "eu-west-1")]
    assert (weak["exitCode"], weak["taskStatus"], weak["nonCompliantResourcesCount"]) == (3, "COMPLETED", 1)
    assert weak["findings"][0]["certificateId"] == roca
    assert weak["store"] == f"dynamodb://dda-audits/{member}/eu-west-1"
    assert {place: r["exitCode"] for place, r in reports.items() if place != (member, "eu-west-1")} == {
        (ACCOUNT, REGION): 0, (ACCOUNT, "eu-west-1"): 0, (member, REGION): 0}
    [(subject, message)] = _notifications(topic_arn)
    assert member in subject and "1 non-compliant" in subject and roca in message


def test_fan_out_reports_an_account_region_that_cannot_be_audited(monkeypatch, aws, topic_arn):
    import moto.sts.models
    from moto.sts.exceptions import STSClientError

    def denied(self, **kwargs):
        raise STSClientError("AccessDenied", "not authorized to perform: sts:AssumeRole")

    monkeypatch.setattr(moto.sts.models.STSBackend, "assume_role", denied)
    monkeypatch.setenv("DDA_SNS_TOPIC_ARN", topic_arn)
    role = "arn:aws:iam::210987654321:role/dda-audit"

    report = audit_account_region({"accountId": "210987654321", "region": "eu-west-1", "roleArn": role}, None)

    assert (report["exitCode"], report["taskStatus"], report["errorCode"]) == (1, "FAILED", "AccessDenied")
    assert role in report["message"]
    [(subject, _)] = _notifications(topic_arn)
    assert "AccessDenied" in subject
    with pytest.raises(ValueError, match="account-region item"):
        audit_account_region({"region": "eu-west-1"}, None)
