"""The Lambda handlers in-process against moto: scheduled audits (full audits per region partition,
the due scheduled audits), the registration gate, the organization fan-out."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, register, sns_notifications

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.check_names import (
    AUDIT_CHECKS,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.lambda_fleet import audit_account_region, list_account_regions
from devicedefender_audit.lambda_handlers import registration_gate, scheduled_audit
from devicedefender_audit.models import AuditTask
from devicedefender_audit.service.configuration import update_account_audit_configuration
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.scheduled import create_scheduled_audit
from devicedefender_audit.store import open_store, partition_location

ACCOUNT = "123456789012"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"


def _registration_event(certificate_id: str) -> dict:
    """The payload AWS IoT publishes on $aws/events/certificates/registered/<caCertificateId>."""
    return {"certificateId": certificate_id, "caCertificateId": "c" * 64, "timestamp": 1735689600000,
            "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": ACCOUNT,
            "certificateRegistrationTimestamp": "1735689600000"}


def _audit_function_to_security_hub(monkeypatch, tmp_path, topic_arn: str) -> None:
    """The audit function's settings, notifying ``topic_arn`` and importing into an enabled hub."""
    boto3.client("securityhub", region_name=REGION).enable_security_hub()
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    monkeypatch.setenv("DDA_SNS_TOPIC_ARN", topic_arn)
    monkeypatch.setenv("DDA_SECURITYHUB", "true")


def test_scheduled_audit_notifies_and_imports_findings(monkeypatch, tmp_path, iot, topic_arn, fresh_rsa_key):
    roca = register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")
    register(iot, issue_certificate(fresh_rsa_key))
    _audit_function_to_security_hub(monkeypatch, tmp_path, topic_arn)

    result = scheduled_audit({"regions": [REGION, "eu-west-1"]}, None)

    east, west = result["audits"]
    assert (east["region"], east["checkRunStatus"], east["nonCompliantResourcesCount"], east["exitCode"]) == (
        REGION, "COMPLETED_NON_COMPLIANT", 1, 3)
    assert east["findings"] == [{"checkName": DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, "certificateId": roca["certificateId"],
                                 "reasonCode": ROCA, "things": "meter"}]
    assert east["securityHub"] == {"imported": 1, "failed": [], "suppressed": 0, "reopened": 0, "workflowFailed": [],
                                   "archived": 0, "archiveFailed": []}
    # Without an account audit configuration every check runs, each reported with its counts.
    assert list(east["checks"]) == list(AUDIT_CHECKS)
    assert east["checks"][DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]["totalResourcesCount"] == 2
    assert east["checks"][DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK]["checkRunStatus"] == "COMPLETED_COMPLIANT"
    assert east["checks"][CA_CERTIFICATE_KEY_QUALITY_CHECK]["totalResourcesCount"] == 0
    assert (west["region"], west["totalResourcesCount"], west["checkRunStatus"], west["exitCode"]) == (
        "eu-west-1", 0, "COMPLETED_COMPLIANT", 0)
    assert (east["store"], west["store"]) == (str(tmp_path / f"lambda.{ACCOUNT}.{REGION}.sqlite3"),
                                              str(tmp_path / f"lambda.{ACCOUNT}.eu-west-1.sqlite3"))
    [(subject, message)] = sns_notifications(topic_arn)  # the compliant region is not notified
    assert "1 non-compliant" in subject and roca["certificateId"] in message
    imported = boto3.client("securityhub", region_name=REGION).get_findings()["Findings"]
    assert [f["Resources"][0]["Id"] for f in imported] == [roca["certificateArn"]]

    # The weak certificate is deactivated: the next audit finds nothing and archives its finding.
    iot.update_certificate(certificateId=roca["certificateId"], newStatus="INACTIVE")
    [east] = scheduled_audit({"regions": [REGION]}, None)["audits"]
    assert (east["nonCompliantResourcesCount"], east["securityHub"]["archived"]) == (0, 1)
    [finding] = boto3.client("securityhub", region_name=REGION).get_findings()["Findings"]
    assert finding["RecordState"] == "ARCHIVED"


def test_a_security_hub_sync_that_failed_is_notified_even_after_a_clean_audit(monkeypatch, tmp_path, iot, topic_arn,
                                                                              fresh_rsa_key):
    """A scheduled invocation's result is read by no one: a role that may not read this tool's
    findings back (GetFindings) left Security Hub stale in silence after a clean audit, and a
    weak-key notification went out before the sync, without saying how it went."""
    from moto.core.exceptions import JsonRESTError
    from moto.securityhub.models import SecurityHubBackend

    def refused(self, **_):
        raise JsonRESTError("AccessDeniedException", "not authorized")

    monkeypatch.setattr(SecurityHubBackend, "get_findings", refused)
    register(iot, issue_certificate(fresh_rsa_key))
    _audit_function_to_security_hub(monkeypatch, tmp_path, topic_arn)

    [report] = scheduled_audit({"regions": [REGION]}, None)["audits"]

    assert (report["exitCode"], report["checkRunStatus"]) == (0, "COMPLETED_COMPLIANT")
    assert report["securityHub"]["errors"] == ["securityhub:GetFindings: AccessDeniedException: not authorized"]
    [(subject, message)] = sns_notifications(topic_arn)
    assert subject.startswith(f"devicedefender-audit {ACCOUNT} {REGION}: Security Hub sync failed: 0 non-compliant")
    assert "securityhub:GetFindings: AccessDeniedException" in message


def test_the_weak_key_alert_goes_out_before_the_security_hub_sync(monkeypatch, tmp_path, iot, topic_arn):
    """A sync near the function's time limit must not hold the alert back: weak keys are
    notified first, and a sync that then failed is a second notification."""
    from moto.core.exceptions import JsonRESTError
    from moto.securityhub.models import SecurityHubBackend

    order: list[str] = []

    def refused(self, **_):
        order.append("GetFindings")
        raise JsonRESTError("AccessDeniedException", "not authorized")

    monkeypatch.setattr(SecurityHubBackend, "get_findings", refused)
    register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")
    _audit_function_to_security_hub(monkeypatch, tmp_path, topic_arn)
    from devicedefender_audit import lambda_audit

    publish = lambda_audit.notify
    monkeypatch.setattr(lambda_audit, "notify", lambda *args: (order.append("notify"), publish(*args)))

    [report] = scheduled_audit({"regions": [REGION]}, None)["audits"]

    assert report["exitCode"] == 3 and order == ["notify", "GetFindings", "notify"]
    alert, failed_sync = sns_notifications(topic_arn)
    assert "1 non-compliant" in alert[0] and "Security Hub" not in alert[0]
    assert failed_sync[0].startswith(f"devicedefender-audit {ACCOUNT} {REGION}: Security Hub sync failed")


def test_findings_go_to_the_product_of_the_regions_partition(monkeypatch):
    """The product ARN named partition aws in every region: in China and GovCloud, Security Hub
    refused every finding, and the lookup of findings to archive found none."""
    from devicedefender_audit import lambda_audit
    from devicedefender_audit.exports.asff import region_partition

    assert [region_partition(r) for r in ("cn-north-1", "us-gov-west-1", "eu-west-1", "no-such-1")] == [
        "aws-cn", "aws-us-gov", "aws", "aws"]
    seen: list[str] = []

    def sync(hub, task, findings, errors, context):
        seen.append(context.product_arn)

    monkeypatch.setattr("devicedefender_audit.exports.securityhub_sync.sync_audit", sync)
    target = type("Target", (), {"region_name": "cn-north-1", "client": lambda self, name: None})()
    lambda_audit._to_securityhub(target, ACCOUNT, AuditTask(region="cn-north-1"), [], [])
    assert seen == [f"arn:aws-cn:securityhub:cn-north-1:{ACCOUNT}:product/{ACCOUNT}/default"]


def test_scheduled_audit_defaults_to_the_functions_region(monkeypatch, tmp_path, aws):
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    monkeypatch.delenv("DDA_REGIONS", raising=False)
    assert [a["region"] for a in scheduled_audit({}, None)["audits"]] == [REGION]


def _describes(monkeypatch) -> list[str]:
    """The region of every DescribeCertificate call moto answers, from any client."""
    from moto.iot.responses import IoTResponse

    regions: list[str] = []
    original = IoTResponse.describe_certificate

    def counted(self):
        regions.append(self.region)
        return original(self)

    monkeypatch.setattr(IoTResponse, "describe_certificate", counted)
    return regions


def test_scheduled_audit_keeps_each_region_in_its_own_partition(monkeypatch, aws, topic_arn):
    """The same certificate in two regions: each region's inventory, tasks and findings are its
    own, so a second audit of either describes nothing (one shared store would mark one region's
    certificates gone at the other's sync and describe them again)."""
    weak = (DATA / "roca" / "cert04.pem").read_text()
    ids = {region: boto3.client("iot", region_name=region).register_certificate_without_ca(
        certificatePem=weak, status="ACTIVE")["certificateId"] for region in (REGION, "eu-west-1")}
    assert ids[REGION] == ids["eu-west-1"]  # a certificate id is the hash of the certificate
    ca = boto3.client("iot", region_name="eu-west-1").register_ca_certificate(
        caCertificate=(DATA / "roca" / "cert05.pem").read_text(), setAsActive=True)["certificateId"]
    location = "dynamodb://dda-audits"  # the stack's table; SQLite partitions: the test above
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", f"{REGION},eu-west-1"), ("DDA_STORE", location),
                        ("DDA_SNS_TOPIC_ARN", topic_arn)):
        monkeypatch.setenv(name, value)
    describes = _describes(monkeypatch)

    first = scheduled_audit({}, None)["audits"]
    assert sorted(describes) == ["eu-west-1", REGION]
    second = scheduled_audit({}, None)["audits"]
    assert sorted(describes) == ["eu-west-1", REGION]  # nothing new to describe in either region

    for report in (*first, *second):
        assert report["checks"][DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]["nonCompliantResourcesCount"] == 1
    east, west = second
    assert {(f["checkName"], f["certificateId"]) for f in east["findings"]} == {
        (DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, ids[REGION])}
    assert {(f["checkName"], f["certificateId"]) for f in west["findings"]} == {
        (DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, ids[REGION]), (CA_CERTIFICATE_KEY_QUALITY_CHECK, ca)}
    for region, report in ((REGION, east), ("eu-west-1", west)):
        where = partition_location(location, ACCOUNT, region)
        assert report["store"] == where
        partition = open_store(where, AwsTarget(region=REGION))
        try:
            assert {t.region for t in partition.list_tasks()} == {region}
            assert [t.task_id for t in partition.list_tasks()] == [report["taskId"], first[[REGION, "eu-west-1"].index(
                region)]["taskId"]]
            record = partition.inventory_record(ids[REGION])
            assert record is not None and f":{region}:" in record.certificate_arn and record.gone_since is None
        finally:
            partition.close()


def _partition_context(location: str, region: str, clock=None) -> ServiceContext:
    """The service API over one region's partition, as the API commands use it with --store."""
    target = AwsTarget(region=region)
    return ServiceContext(store=open_store(partition_location(location, ACCOUNT, region), AwsTarget(region=REGION)),
                          iot_client=lambda: target.client("iot"), detectors=default_detectors, region=region,
                          **({"clock": clock} if clock else {}))


def test_scheduled_audit_runs_the_checks_the_account_configuration_enables(monkeypatch, aws, topic_arn):
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", f"{REGION},eu-west-1"),
                        ("DDA_STORE", "dynamodb://dda-audits"), ("DDA_SNS_TOPIC_ARN", topic_arn)):
        monkeypatch.setenv(name, value)
    for region, enabled in ((REGION, {CA_CERTIFICATE_KEY_QUALITY_CHECK}), ("eu-west-1", set())):
        ctx = _partition_context("dynamodb://dda-audits", region)
        update_account_audit_configuration(ctx, roleArn=f"arn:aws:iam::{ACCOUNT}:role/audit", auditCheckConfigurations={
            name: {"enabled": name in enabled} for name in AUDIT_CHECKS})
        ctx.store.close()

    east, west = scheduled_audit({}, None)["audits"]

    assert list(east["checks"]) == [CA_CERTIFICATE_KEY_QUALITY_CHECK] and east["exitCode"] == 0
    assert (west["taskId"], west["exitCode"], west["errorCode"]) == (None, 1, "NO_CHECKS_ENABLED")
    [(subject, message)] = sns_notifications(topic_arn)  # a region left unaudited is never silent
    assert "eu-west-1" in subject and "NO_CHECKS_ENABLED" in subject and "enables no check" in message


def test_run_due_starts_the_scheduled_audits_defined_through_the_api(monkeypatch, aws, topic_arn):
    roca = boto3.client("iot", region_name="eu-west-1").register_certificate_without_ca(
        certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")["certificateId"]
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", f"{REGION},eu-west-1"),
                        ("DDA_STORE", "dynamodb://dda-audits"), ("DDA_SNS_TOPIC_ARN", topic_arn)):
        monkeypatch.setenv(name, value)
    created = datetime(2025, 3, 4, 15, 30, tzinfo=timezone.utc)
    ctx = _partition_context("dynamodb://dda-audits", "eu-west-1", clock=lambda: created)
    update_account_audit_configuration(ctx, roleArn=f"arn:aws:iam::{ACCOUNT}:role/audit", auditCheckConfigurations={
        DEVICE_CERTIFICATE_KEY_QUALITY_CHECK: {"enabled": True}})
    create_scheduled_audit(ctx, scheduledAuditName="nightly", frequency="DAILY",
                           targetCheckNames=[DEVICE_CERTIFICATE_KEY_QUALITY_CHECK])
    ctx.store.close()

    assert scheduled_audit({"action": "run-due", "now": "2025-03-04T23:59:00Z"}, None)["runDue"][1]["audits"] == []
    east, west = scheduled_audit({"action": "run-due", "now": "2025-03-05T00:10:00Z"}, None)["runDue"]

    assert (east["startedTasks"], east["failedSchedules"], east["audits"]) == ([], [], [])
    [started] = west["startedTasks"]
    assert (started["scheduledAuditName"], started["slot"]) == ("nightly", "2025-03-05T00:00:00+00:00")
    [report] = west["audits"]
    assert (report["taskId"], report["taskType"], report["exitCode"]) == (started["taskId"], "SCHEDULED_AUDIT_TASK", 3)
    assert [f["certificateId"] for f in report["findings"]] == [roca]
    partition = open_store(west["store"], AwsTarget(region=REGION))
    try:
        task = partition.get_task(started["taskId"])
        assert (task.task_type, task.scheduled_audit_name, task.region) == ("SCHEDULED_AUDIT_TASK", "nightly",
                                                                            "eu-west-1")
    finally:
        partition.close()
    [(subject, _)] = sns_notifications(topic_arn)
    assert "eu-west-1" in subject and "1 non-compliant" in subject
    # The slot is taken: the same moment again starts nothing.
    again = scheduled_audit({"action": "run-due", "now": "2025-03-05T00:20:00Z"}, None)["runDue"]
    assert [r["startedTasks"] for r in again] == [[], []]


def test_scheduled_audit_refuses_an_unknown_payload(monkeypatch, aws):
    monkeypatch.setenv("AWS_REGION", REGION)
    with pytest.raises(ValueError, match="unknown action 'run'"):
        scheduled_audit({"action": "run"}, None)
    with pytest.raises(ValueError, match="now: "):
        scheduled_audit({"action": "run-due", "now": "yesterday"}, None)
    with pytest.raises(ValueError, match="regions: .*no endpoint in nowhere-1"):
        scheduled_audit({"regions": ["nowhere-1"]}, None)
    with pytest.raises(ValueError, match="run-due action only"):
        scheduled_audit({"now": "2025-03-05T00:10:00Z"}, None)



@pytest.mark.parametrize("event", [None, [], "", 0, False], ids=repr)
def test_scheduled_audit_refuses_a_payload_that_is_not_an_object(monkeypatch, tmp_path, aws, event):
    """Lambda delivers {} for an invocation without a payload: a falsy non-object was sent on
    purpose (a mistake), and must not run a full audit of every region in its place."""
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    with pytest.raises(ValueError, match="the payload is a JSON object"):
        scheduled_audit(event, None)
    assert not list(tmp_path.iterdir())  # no region audited

def _gate_env(monkeypatch, topic: str, dry_run: str) -> None:
    monkeypatch.setenv("DDA_GATE_ACTIONS", "UPDATE_DEVICE_CERTIFICATE,ADD_THINGS_TO_THING_GROUP,PUBLISH_FINDING_TO_SNS")
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
    [(subject, message)] = sns_notifications(topic_arn)
    assert ROCA in subject and cert["certificateId"] in message


def test_gate_dry_run_changes_nothing(monkeypatch, iot, topic_arn):
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-7")
    _gate_env(monkeypatch, topic_arn, dry_run="true")

    outcome = registration_gate(_registration_event(cert["certificateId"]), None)

    assert outcome["verdict"] == "VULNERABLE"
    assert {e["status"] for e in outcome["actionsExecutions"]} == {"SKIPPED"}
    assert "would" in outcome["actionsExecutions"][0]["message"]
    status = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE" and sns_notifications(topic_arn) == []


def test_gate_lets_a_good_key_through(monkeypatch, iot, topic_arn, fresh_rsa_key):
    cert = register(iot, issue_certificate(fresh_rsa_key))
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    outcome = registration_gate(_registration_event(cert["certificateId"]), None)
    assert outcome["verdict"] == "CLEAN" and outcome["actionsExecutions"] == []
    status = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE"


def test_gate_reports_other_messages_and_refuses_bad_settings(monkeypatch, aws, topic_arn):
    _gate_env(monkeypatch, topic_arn, dry_run="true")
    # Another message is an outcome that says so (registration_gate tests: test_registration_gate_api.py).
    outcome = registration_gate({"eventType": "THING_EVENT"}, None)
    assert (outcome["verdict"], outcome["certificateId"]) == ("UNRECOGNIZED_EVENT", None)
    assert "not a certificate registration event" in outcome["detail"]
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
    assert set(weak["checks"]) == set(AUDIT_CHECKS)  # no configuration in the partition: every check
    assert {place: r["exitCode"] for place, r in reports.items() if place != (member, "eu-west-1")} == {
        (ACCOUNT, REGION): 0, (ACCOUNT, "eu-west-1"): 0, (member, REGION): 0}
    [(subject, message)] = sns_notifications(topic_arn)
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
    [(subject, _)] = sns_notifications(topic_arn)
    assert "AccessDenied" in subject
    with pytest.raises(ValueError, match="account-region item"):
        audit_account_region({"region": "eu-west-1"}, None)


@pytest.mark.parametrize(("item", "error"), [
    ({"accountId": "21098765432", "region": "eu-west-1"}, "12-digit"),
    ({"accountId": "210987654321", "region": "eu-west-1", "roleArn": "arn:aws:iam::111111111111:role/dda-audit"},
     "not a role of account 210987654321"),
    ({"accountId": "210987654321", "region": "eu-west-1", "roleArn": "dda-audit"}, "IAM role ARN"),
])
def test_fan_out_refuses_an_item_that_would_audit_into_another_accounts_partition(aws, item, error):
    with pytest.raises(ValueError, match=error):
        audit_account_region(item, None)
