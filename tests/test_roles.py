"""Acting as the configured roles: the audit, notifications and mitigation actions assume
their ``roleArn`` with STS (moto's), a role that cannot be assumed fails only what needed it, and
the temporary credentials are assumed again before they expire.

moto's STS lets any role be assumed (it has no trust policies), and a role of another account
switches moto to that account; the tests use both: a role in another account proves which
credentials the audit read with, and ``refuse`` makes moto deny one role as AWS denies a role
whose trust policy does not name the caller.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from conftest import DATA, REGION, register
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend, sts_backends
from service_helpers import call

from devicedefender_audit.aws.clients import AwsTarget, assume_role_session
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import InvalidRequest, ServiceContext
from devicedefender_audit.store import open_store

# moto has no error shape for a refused AssumeRole; botocore reads the code all the same.
pytestmark = pytest.mark.filterwarnings("ignore:Exception\\(STSClientError\\):UserWarning")
ACCOUNT, OTHER_ACCOUNT = "123456789012", "111111111111"
AUDIT_ROLE = f"arn:aws:iam::{ACCOUNT}:role/audit"
MITIGATION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mitigation"
OTHER_ACCOUNT_ROLE = f"arn:aws:iam::{OTHER_ACCOUNT}:role/audit"
UNTRUSTED_ROLE = f"arn:aws:iam::{ACCOUNT}:role/untrusted"


@pytest.fixture
def refuse(monkeypatch):
    """moto's STS refuses UNTRUSTED_ROLE, as AWS does when the trust policy does not allow the caller."""
    assume_role = STSBackend.assume_role

    def refusing(self, **request):
        if request["role_arn"] == UNTRUSTED_ROLE:
            raise STSClientError("AccessDenied", f"User: arn:aws:iam::{ACCOUNT}:user/testing is not authorized "
                                                 f"to perform: sts:AssumeRole on resource: {UNTRUSTED_ROLE}")
        return assume_role(self, **request)

    monkeypatch.setattr(STSBackend, "assume_role", refusing)


def sessions() -> list[tuple[str, str]]:
    """(role, session name) of every AssumeRole moto granted."""
    return [(r.role_arn, r.session_name) for account in (ACCOUNT, OTHER_ACCOUNT)
            for r in sts_backends[account]["aws"].assumed_roles]


@pytest.fixture
def ctx(iot, tmp_path, refuse):
    target = AwsTarget(region=REGION)
    context = ServiceContext(store=open_store(tmp_path / "audits.sqlite3"), iot_client=lambda: target.client("iot"),
                             detectors=lambda: [RocaDetector()], region=REGION,
                             sns_client=lambda: target.client("sns"), role_client=target.client)
    context.target = target  # type: ignore[attr-defined]
    yield context
    context.store.close()


def configure(ctx, role: str, **more) -> None:
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=role, auditCheckConfigurations={CHECK_NAME: {"enabled": True}},
         **more)


def audited_certificates(ctx) -> tuple[dict, list[str]]:
    task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    findings = call(ctx, "ListAuditFindings", taskId=task_id)["findings"]
    return (call(ctx, "DescribeAuditTask", taskId=task_id),
            [f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in findings])


def test_the_audit_reads_the_account_as_the_configured_role(ctx, iot):
    here = register(iot, (DATA / "roca" / "cert04.pem").read_text())["certificateId"]
    elsewhere = register(ctx.target.client("iot", role_arn=OTHER_ACCOUNT_ROLE, purpose="setup"),
                         (DATA / "roca" / "cert05.pem").read_text())["certificateId"]
    configure(ctx, OTHER_ACCOUNT_ROLE)
    task, weak = audited_certificates(ctx)
    assert task["auditDetails"][CHECK_NAME]["totalResourcesCount"] == 1 and weak == [elsewhere]
    configure(ctx, AUDIT_ROLE)
    assert audited_certificates(ctx)[1] == [here]
    assert (OTHER_ACCOUNT_ROLE, "devicedefender-audit-audit") in sessions()
    assert (AUDIT_ROLE, "devicedefender-audit-audit") in sessions()


def test_an_audit_role_that_cannot_be_assumed_fails_the_task_with_the_reason(ctx, iot):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    configure(ctx, UNTRUSTED_ROLE)
    task, weak = audited_certificates(ctx)
    details = task["auditDetails"][CHECK_NAME]
    assert task["taskStatus"] == "FAILED" and weak == []
    assert details["errorCode"] == "INSUFFICIENT_PERMISSIONS"  # the model's code; STS's leads the message
    assert details["message"].startswith("AccessDenied: ")
    assert f"cannot assume role {UNTRUSTED_ROLE} (session devicedefender-audit-audit)" in details["message"]


def test_a_purpose_without_a_role_is_refused_when_the_service_assumes_roles(ctx, iot, caplog):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="audits")["TopicArn"]
    configure(ctx, AUDIT_ROLE, auditNotificationTargetConfigurations={"SNS": {"targetArn": topic, "enabled": True}})
    with caplog.at_level(logging.WARNING, logger="devicedefender_audit.service.notifications"):
        call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])
    assert "no roleArn is configured for the notification" in caplog.text and "--own-credentials" in caplog.text
    with pytest.raises(InvalidRequest, match="no roleArn is configured for the mitigation"):
        ctx.client_for("iot", None, "mitigation")


def test_each_mitigation_action_acts_as_its_role(ctx, iot):
    certificate = register(iot, (DATA / "roca" / "cert04.pem").read_text())["certificateId"]
    configure(ctx, AUDIT_ROLE)
    audit_task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="findings")["TopicArn"]
    call(ctx, "CreateMitigationAction", actionName="deactivate", roleArn=MITIGATION_ROLE,
         actionParams={"updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    call(ctx, "CreateMitigationAction", actionName="notify", roleArn=UNTRUSTED_ROLE,
         actionParams={"publishFindingToSnsParams": {"topicArn": topic}})
    call(ctx, "StartAuditMitigationActionsTask", taskId="m", target={"auditTaskId": audit_task_id},
         auditCheckToActionsMapping={CHECK_NAME: ["deactivate", "notify"]}, clientRequestToken="m")

    [finding_id] = [f["findingId"] for f in call(ctx, "ListAuditFindings", taskId=audit_task_id)["findings"]]
    executions = {e["actionName"]: e for e in call(ctx, "ListAuditMitigationActionsExecutions", taskId="m",
                                                    findingId=finding_id)["actionsExecutions"]}
    assert executions["deactivate"]["status"] == "COMPLETED"
    assert iot.describe_certificate(certificateId=certificate)["certificateDescription"]["status"] == "INACTIVE"
    assert executions["notify"]["status"] == "FAILED" and executions["notify"]["errorCode"] == "AccessDenied"
    assert f"cannot assume role {UNTRUSTED_ROLE} (session devicedefender-audit-mitigation)" in \
        executions["notify"]["message"]
    assert (MITIGATION_ROLE, "devicedefender-audit-mitigation") in sessions()
    assert call(ctx, "DescribeAuditMitigationActionsTask", taskId="m")["taskStatistics"][CHECK_NAME][
        "failedFindingsCount"] == 1


def test_notifications_publish_as_the_targets_role(ctx, iot, caplog):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="audits")["TopicArn"]
    configure(ctx, AUDIT_ROLE, auditNotificationTargetConfigurations={
        "SNS": {"targetArn": topic, "roleArn": MITIGATION_ROLE, "enabled": True}})
    call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])
    assert (MITIGATION_ROLE, "devicedefender-audit-notification") in sessions()
    configure(ctx, AUDIT_ROLE, auditNotificationTargetConfigurations={
        "SNS": {"targetArn": topic, "roleArn": UNTRUSTED_ROLE, "enabled": True}})
    with caplog.at_level(logging.WARNING, logger="devicedefender_audit.service.notifications"):
        task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    assert call(ctx, "DescribeAuditTask", taskId=task_id)["taskStatus"] == "COMPLETED"  # the task's outcome stands
    assert "not sent" in caplog.text and f"cannot assume role {UNTRUSTED_ROLE}" in caplog.text


def test_role_credentials_are_assumed_again_before_they_expire(aws):
    now = [datetime.now(timezone.utc)]
    session = assume_role_session(boto3.session.Session(region_name=REGION), AUDIT_ROLE, "devicedefender-audit-t",
                                  None, REGION, time_fetcher=lambda: now[0])
    iot = session.client("iot")

    def assumed() -> int:
        return sum(name == "devicedefender-audit-t" for _, name in sessions())

    iot.list_things()
    assert assumed() == 1
    now[0] += timedelta(minutes=30)  # moto's credentials last an hour: still fresh
    iot.list_things()
    assert assumed() == 1
    now[0] += timedelta(minutes=21)  # 9 minutes left: assumed again before the call
    iot.list_things()
    assert assumed() == 2


def test_the_cli_assumes_the_configured_roles_only_when_asked(iot, tmp_path, capsys):
    """The API commands act with the caller's own credentials unless ``--assume-roles``."""
    import json

    from devicedefender_audit.cli import main

    store = ["--store", str(tmp_path / "cli.sqlite3")]
    register(iot, (DATA / "roca" / "cert04.pem").read_text())  # in this account, none in the other
    assert main(["update-account-audit-configuration", *store, "--role-arn", OTHER_ACCOUNT_ROLE,
                 "--audit-check-configurations", json.dumps({CHECK_NAME: {"enabled": True}})]) == 0

    def audited(*options: str) -> int:
        capsys.readouterr()
        assert main(["start-on-demand-audit-task", *store, "--target-check-names", CHECK_NAME, *options]) == 0
        task_id = json.loads(capsys.readouterr().out)["taskId"]
        assert main(["describe-audit-task", *store, "--task-id", task_id]) == 0
        return json.loads(capsys.readouterr().out)["auditDetails"][CHECK_NAME]["totalResourcesCount"]

    assert audited() == 1 and (OTHER_ACCOUNT_ROLE, "devicedefender-audit-audit") not in sessions()
    assert audited("--assume-roles") == 0 and (OTHER_ACCOUNT_ROLE, "devicedefender-audit-audit") in sessions()
