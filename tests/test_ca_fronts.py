"""The CA checks through every front a user has: the CLI (``run --checks``, ``mitigate``,
``export``), the service API (audit tasks, findings, suppressions, mitigation tasks, the SNS
notification, every response checked against botocore), and the DynamoDB store."""

from __future__ import annotations

import csv
import io
import json

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, load_private_key, register
from service_helpers import call

from devicedefender_audit.ca_inventory import CA_KEY_KIND
from devicedefender_audit.check_names import (
    CA_CERTIFICATE,
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.cli import main
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.service import InvalidRequest
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.mitigation_tasks import start_audit_mitigation_actions_task
from devicedefender_audit.store import open_store

ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
DEBIAN = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"
ROLE = "arn:aws:iam::123456789012:role/audit"


def add_cas(iot, good_key) -> dict[str, str]:
    """A ROCA CA, a Debian weak RSA CA, a good CA, and one ROCA device certificate."""
    def ca(pem: str) -> str:
        return iot.register_ca_certificate(caCertificate=pem, setAsActive=True)["certificateId"]

    return {
        "roca": ca((DATA / "roca" / "cert04.pem").read_text()),
        "debian": ca(issue_certificate(load_private_key(DATA / "debian" / "rsa2048-ssl-be32-pid1000-rnd.key"),
                                       "weak-ca")),
        "good": ca(issue_certificate(good_key, "good-ca")),
        "device": register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-1")["certificateId"],
    }


def ca_status(iot, certificate_id: str) -> str:
    return iot.describe_ca_certificate(certificateId=certificate_id)["certificateDescription"]["status"]


# the command line ------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_run_mitigate_and_export_ca_findings(capsys, moto_server, server_iot, fresh_rsa_key):
    cas = add_cas(server_iot, fresh_rsa_key)
    endpoint = ("--endpoint-url", moto_server)
    code, out, _ = run_cli(capsys, "run", *endpoint, "--no-progress", "--checks", CA_CERTIFICATE_KEY_QUALITY_CHECK)
    assert code == 3
    assert f"Check {CA_CERTIFICATE_KEY_QUALITY_CHECK}: COMPLETED_NON_COMPLIANT" in out
    assert DEVICE_CERTIFICATE_KEY_QUALITY_CHECK not in out and "(CA certificate)" in out
    code, out, _ = run_cli(capsys, "run", *endpoint, "--no-progress", "--format", "json",
                           "--checks", CA_CERTIFICATE_KEY_QUALITY_CHECK)
    document = json.loads(out)
    assert code == 3 and set(document["auditTask"]["auditDetails"]) == {CA_CERTIFICATE_KEY_QUALITY_CHECK}
    found = {f["nonCompliantResource"]["resourceIdentifier"]["caCertificateId"]: f["reasonForNonComplianceCode"]
             for f in document["findings"]}
    assert found == {cas["roca"]: ROCA, cas["debian"]: DEBIAN}
    assert {f["nonCompliantResource"]["resourceType"] for f in document["findings"]} == {CA_CERTIFICATE}
    task_id = document["auditTask"]["taskId"]

    # Exports: each names the CA certificate, by id and ARN.
    arns = {cid: server_iot.describe_ca_certificate(certificateId=cid)["certificateDescription"]["certificateArn"]
            for cid in (cas["roca"], cas["debian"])}
    code, out, err = run_cli(capsys, "export", task_id, "--format", "asff")
    assert code == 0, err
    asff = json.loads(out)["Findings"]
    assert {f["Resources"][0]["Id"] for f in asff} == set(arns.values())
    assert {f["AwsAccountId"] for f in asff} == {"123456789012"} and {f["Resources"][0]["Region"] for f in asff} == {
        REGION}
    assert all(f["Resources"][0]["Details"]["Other"]["caCertificateId"] in arns for f in asff)
    assert all("CA certificate" in f["Title"] for f in asff)
    assert all("UpdateCACertificate" in f["Remediation"]["Recommendation"]["Text"] for f in asff)
    code, out, _ = run_cli(capsys, "export", task_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {(r["certificateId"], r["certificateArn"]) for r in rows} == set(arns.items())
    code, out, _ = run_cli(capsys, "export", task_id, "--format", "sarif")
    results = json.loads(out)["runs"][0]["results"]
    assert code == 0 and {r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] for r in results} == set(
        arns.values())
    code, out, _ = run_cli(capsys, "export", task_id, "--format", "json")
    assert code == 0 and {f["nonCompliantResource"]["resourceType"] for f in json.loads(out)["findings"]} == {
        CA_CERTIFICATE}

    # A device action does not act on CA findings; UPDATE_CA_CERTIFICATE does, changing nothing in a dry run.
    code, _, err = run_cli(capsys, "mitigate", task_id, *endpoint, "--action", "ADD_THINGS_TO_THING_GROUP",
                           "--thing-group", "quarantine")
    assert code == 2 and "acts on" in err
    code, out, _ = run_cli(capsys, "mitigate", task_id, *endpoint, "--action", "UPDATE_CA_CERTIFICATE",
                           "--dry-run", "--format", "json")
    executions = json.loads(out)["actionsExecutions"]
    assert code == 0 and [(e["status"], e["dryRun"]) for e in executions] == [("SKIPPED", True)] * 2
    assert {ca_status(server_iot, cid) for cid in cas.values() if cid != cas["device"]} == {"ACTIVE"}
    code, out, _ = run_cli(capsys, "mitigate", task_id, *endpoint, "--action", "UPDATE_CA_CERTIFICATE",
                           "--action", "UPDATE_DEVICE_CERTIFICATE", "--format", "json")
    executions = json.loads(out)["actionsExecutions"]
    assert code == 0 and [(e["actionName"], e["status"]) for e in executions] == [
        ("UPDATE_CA_CERTIFICATE", "COMPLETED")] * 2
    assert [ca_status(server_iot, cas[name]) for name in ("roca", "debian", "good")] == ["INACTIVE", "INACTIVE",
                                                                                        "ACTIVE"]
    # The weak CAs are out of scope now: the CA check passes, and says so with exit 0.
    code, out, _ = run_cli(capsys, "run", *endpoint, "--no-progress", "--checks", CA_CERTIFICATE_KEY_QUALITY_CHECK)
    assert code == 0 and "COMPLETED_COMPLIANT" in out
    code, out, _ = run_cli(capsys, "list-audits")
    assert code == 0


def test_cli_run_all_checks_reports_ca_findings_beside_device_ones(capsys, moto_server, server_iot, fresh_rsa_key):
    cas = add_cas(server_iot, fresh_rsa_key)
    code, out, _ = run_cli(capsys, "run", "--endpoint-url", moto_server, "--no-progress", "--format", "json")
    document = json.loads(out)
    details = document["auditTask"]["auditDetails"]
    assert code == 3
    assert details[CA_CERTIFICATE_KEY_QUALITY_CHECK]["nonCompliantResourcesCount"] == 2
    assert details[CA_CERTIFICATE_KEY_QUALITY_CHECK]["totalResourcesCount"] == 3
    assert details[DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]["nonCompliantResourcesCount"] == 1
    by_type = {}
    for finding in document["findings"]:
        identifier = finding["nonCompliantResource"]["resourceIdentifier"]
        by_type.setdefault(finding["nonCompliantResource"]["resourceType"], set()).update(identifier.values())
    assert cas["device"] in by_type["DEVICE_CERTIFICATE"]
    assert {cas["roca"], cas["debian"]} <= by_type[CA_CERTIFICATE]
    # The summary of audits shows the CA findings too, not only the device check's.
    code, out, _ = run_cli(capsys, "list-audits")
    [ca_row] = [line.split() for line in out.splitlines() if CA_CERTIFICATE_KEY_QUALITY_CHECK in line]
    assert code == 0 and ca_row[-5:] == [CA_CERTIFICATE_KEY_QUALITY_CHECK, "COMPLETED_NON_COMPLIANT", "3", "2", "0"]


# the service API -------------------------------------------------------------------------------


@pytest.fixture
def service(iot, sns_queue, tmp_path, fresh_rsa_key):
    store = open_store(tmp_path / "audits.sqlite3")
    ctx = ServiceContext(store=store, iot_client=lambda: iot, detectors=default_detectors,
                         sns_client=lambda: sns_queue["sns"])
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE, auditCheckConfigurations={
        name: {"enabled": True} for name in (CA_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
                                             DEVICE_CERTIFICATE_KEY_QUALITY_CHECK)},
         auditNotificationTargetConfigurations={"SNS": {"targetArn": sns_queue["topic"], "roleArn": ROLE,
                                                        "enabled": True}})
    yield ctx, add_cas(iot, fresh_rsa_key)
    store.close()


def test_service_audits_suppresses_and_mitigates_ca_findings(service, iot, sns_queue):
    ctx, cas = service
    checks = [CA_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK]
    first = call(ctx, "StartOnDemandAuditTask", targetCheckNames=checks)["taskId"]
    task = call(ctx, "DescribeAuditTask", taskId=first)
    quality = task["auditDetails"][CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (quality["checkRunStatus"], quality["totalResourcesCount"], quality["nonCompliantResourcesCount"]) == (
        "COMPLETED_NON_COMPLIANT", 3, 2)
    [message] = [json.loads(body) for body in sns_queue["drain"]()]
    assert message["taskId"] == first and message["totalChecksCount"] == 2
    assert message["nonCompliantChecksCount"] + message["compliantChecksCount"] + message["failedChecksCount"] == 2
    notified = {d["checkName"]: d for d in message["auditDetails"]}
    assert notified[CA_CERTIFICATE_KEY_QUALITY_CHECK]["nonCompliantResourcesCount"] == 2

    roca = {"caCertificateId": cas["roca"]}
    [finding] = call(ctx, "ListAuditFindings", taskId=first, checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK,
                     resourceIdentifier=roca)["findings"]
    assert finding["nonCompliantResource"]["resourceType"] == CA_CERTIFICATE
    assert finding["nonCompliantResource"]["resourceIdentifier"] == roca
    assert finding["reasonForNonComplianceCode"] == ROCA
    assert call(ctx, "DescribeAuditFinding", findingId=finding["findingId"])["finding"] == finding
    assert call(ctx, "ListRelatedResourcesForAuditFinding", findingId=finding["findingId"]) == {"relatedResources": []}
    # A device certificate id in a CA identifier (and the other way round) is another resource.
    assert call(ctx, "ListAuditFindings", taskId=first, resourceIdentifier={"deviceCertificateId": cas["roca"]}) == {
        "findings": []}

    call(ctx, "CreateAuditSuppression", checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK, resourceIdentifier=roca,
         suppressIndefinitely=True, clientRequestToken="ca-1")
    # The device check's suppression of the same id does not touch the CA finding.
    call(ctx, "CreateAuditSuppression", checkName=DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
         resourceIdentifier={"deviceCertificateId": cas["debian"]}, suppressIndefinitely=True,
         clientRequestToken="dev-1")
    assert call(ctx, "DescribeAuditSuppression", checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK,
                resourceIdentifier=roca)["resourceIdentifier"] == roca
    second = call(ctx, "StartOnDemandAuditTask", targetCheckNames=checks)["taskId"]
    details = call(ctx, "DescribeAuditTask", taskId=second)["auditDetails"][CA_CERTIFICATE_KEY_QUALITY_CHECK]
    assert (details["nonCompliantResourcesCount"], details["suppressedNonCompliantResourcesCount"]) == (2, 1)
    suppressed = call(ctx, "ListAuditFindings", taskId=second, listSuppressedFindings=True)["findings"]
    assert [f["nonCompliantResource"]["resourceIdentifier"] for f in suppressed] == [roca]
    assert [f["nonCompliantResource"]["resourceIdentifier"] for f in call(
        ctx, "ListAuditFindings", taskId=second, checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK,
        listSuppressedFindings=False)["findings"]] == [{"caCertificateId": cas["debian"]}]
    sns_queue["drain"]()

    call(ctx, "CreateMitigationAction", actionName="retire-ca", roleArn=ROLE,
         actionParams={"updateCACertificateParams": {"action": "DEACTIVATE"}})
    call(ctx, "CreateMitigationAction", actionName="quarantine", roleArn=ROLE,
         actionParams={"addThingsToThingGroupParams": {"thingGroupNames": ["quarantine"]}})
    call(ctx, "CreateMitigationAction", actionName="retire-device", roleArn=ROLE,
         actionParams={"updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    for wrong in ("quarantine", "retire-device"):
        with pytest.raises(InvalidRequest, match="does not apply"):
            call(ctx, "StartAuditMitigationActionsTask", taskId=f"bad-{wrong}", target={"auditTaskId": second},
                 auditCheckToActionsMapping={CA_CERTIFICATE_KEY_QUALITY_CHECK: [wrong]}, clientRequestToken=wrong)
    with pytest.raises(InvalidRequest, match="does not apply"):
        call(ctx, "StartAuditMitigationActionsTask", taskId="bad-device", target={"auditTaskId": second},
             auditCheckToActionsMapping={DEVICE_CERTIFICATE_KEY_QUALITY_CHECK: ["retire-ca"]},
             clientRequestToken="bad-device")
    request = {"target": {"auditTaskId": second, "auditCheckToReasonCodeFilter": {
        CA_CERTIFICATE_KEY_QUALITY_CHECK: [ROCA, DEBIAN]}},
        "auditCheckToActionsMapping": {CA_CERTIFICATE_KEY_QUALITY_CHECK: ["retire-ca"]}}
    mutating = []
    iot.meta.events.register("before-call.iot.UpdateCACertificate", lambda **kw: mutating.append(kw))
    start_audit_mitigation_actions_task(ctx, dry_run=True, taskId="dry", clientRequestToken="dry", **request)
    dry = call(ctx, "DescribeAuditMitigationActionsTask", taskId="dry")
    # "Mitigation actions won't be performed on suppressed audit findings": the ROCA CA's is.
    assert dry["taskStatistics"][CA_CERTIFICATE_KEY_QUALITY_CHECK]["skippedFindingsCount"] == 1
    assert mutating == [] and ca_status(iot, cas["debian"]) == "ACTIVE"
    call(ctx, "StartAuditMitigationActionsTask", taskId="retire", clientRequestToken="retire", **request)
    done = call(ctx, "DescribeAuditMitigationActionsTask", taskId="retire")
    assert done["taskStatus"] == "COMPLETED"
    assert done["taskStatistics"][CA_CERTIFICATE_KEY_QUALITY_CHECK]["succeededFindingsCount"] == 1
    assert len(mutating) == 1 and [ca_status(iot, cas[name]) for name in ("roca", "debian", "good")] == [
        "ACTIVE", "INACTIVE", "ACTIVE"]
    assert call(ctx, "ListAuditMitigationActionsExecutions", taskId="retire",
                findingId=suppressed[0]["findingId"])["actionsExecutions"] == []


def test_service_failed_ca_listing_fails_the_ca_checks_in_the_notification(service, iot, sns_queue):
    ctx, _ = service

    def refuse(**kwargs):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListCACertificates")

    iot.meta.events.register("before-call.iot.ListCACertificates", refuse)
    task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
                                                                    CA_CERTIFICATE_KEY_QUALITY_CHECK])["taskId"]
    details = call(ctx, "DescribeAuditTask", taskId=task_id)["auditDetails"]
    assert details[CA_CERTIFICATE_KEY_QUALITY_CHECK]["checkRunStatus"] == "FAILED"
    assert details[DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]["checkRunStatus"] == "COMPLETED_NON_COMPLIANT"
    [message] = [json.loads(body) for body in sns_queue["drain"]()]
    assert (message["failedChecksCount"], message["nonCompliantChecksCount"], message["totalChecksCount"]) == (1, 1, 2)
    failed = next(d for d in message["auditDetails"] if d["checkName"] == CA_CERTIFICATE_KEY_QUALITY_CHECK)
    assert failed["errorCode"] == "INSUFFICIENT_PERMISSIONS"  # the model's code; AWS's leads the message
    assert failed["message"].startswith("AccessDeniedException: ")


# the DynamoDB store ----------------------------------------------------------------------------


def test_ca_checks_on_the_dynamodb_store(iot, fresh_rsa_key):
    from conftest import run_audit

    from devicedefender_audit.checks import make_checks

    cas = add_cas(iot, fresh_rsa_key)
    store = open_store("dynamodb://dda-ca")
    checks = make_checks([CA_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE_KEY_FACTORABLE_CHECK], default_detectors())
    describes = []
    iot.meta.events.register("before-call.iot.DescribeCACertificate", lambda **kw: describes.append(kw))
    for _ in range(2):
        audited = run_audit(iot, default_detectors(), store=store, checks=checks)
        assert {f.certificate_id for f in audited.findings
                if f.check_name == CA_CERTIFICATE_KEY_QUALITY_CHECK} == {cas["roca"], cas["debian"]}
        assert audited.errors == [] and audited.task.task_status.value == "COMPLETED"
    assert len(describes) == 3  # kept as records of kind ca_certificate_key in the table
    assert sorted(key for key, _ in store.records(CA_KEY_KIND)) == sorted(cas[n] for n in ("roca", "debian", "good"))
    # A damaged record in the table is described again, not a crash.
    boto3.client("dynamodb", region_name=REGION).put_item(TableName="dda-ca", Item={
        "PK": {"S": f"REC#{CA_KEY_KIND}"}, "SK": {"S": cas["roca"]}, "body": {"S": "{damaged"}})
    again = run_audit(iot, default_detectors(), store=store, checks=checks)
    assert cas["roca"] in {f.certificate_id for f in again.findings} and len(describes) == 4


# over HTTP, with the unmodified boto3 client -----------------------------------------------------


def test_ca_findings_through_serve_and_boto3(moto_server, tmp_path):
    from test_serve import NO_RETRIES, serve, until

    from devicedefender_audit.aws.clients import AwsTarget

    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    moto = target.client("iot")
    roca = moto.register_ca_certificate(caCertificate=(DATA / "roca" / "cert04.pem").read_text(),
                                        setAsActive=True)["certificateId"]
    server, ctx = serve(target, tmp_path / "served.sqlite3")
    try:
        iot = boto3.client("iot", region_name=REGION, endpoint_url=server.url, config=NO_RETRIES)
        iot.update_account_audit_configuration(roleArn=ROLE, auditCheckConfigurations={
            CA_CERTIFICATE_KEY_QUALITY_CHECK: {"enabled": True}})

        def audited() -> str:
            task_id = iot.start_on_demand_audit_task(targetCheckNames=[CA_CERTIFICATE_KEY_QUALITY_CHECK])["taskId"]
            until(lambda: iot.describe_audit_task(taskId=task_id)["taskStatus"] != "IN_PROGRESS", "the audit ends")
            return task_id

        first = audited()
        identifier = {"caCertificateId": roca}
        [finding] = iot.list_audit_findings(taskId=first, resourceIdentifier=identifier)["findings"]
        assert finding["nonCompliantResource"]["resourceType"] == CA_CERTIFICATE
        assert iot.list_related_resources_for_audit_finding(findingId=finding["findingId"])["relatedResources"] == []
        iot.create_audit_suppression(checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK, resourceIdentifier=identifier,
                                     suppressIndefinitely=True)
        second = audited()
        details = iot.describe_audit_task(taskId=second)["auditDetails"][CA_CERTIFICATE_KEY_QUALITY_CHECK]
        assert details["suppressedNonCompliantResourcesCount"] == 1
        # A suppression in force keeps the finding from mitigation, even from its earlier audit.
        iot.delete_audit_suppression(checkName=CA_CERTIFICATE_KEY_QUALITY_CHECK, resourceIdentifier=identifier)
        iot.create_mitigation_action(actionName="retire-ca", roleArn=ROLE,
                                     actionParams={"updateCACertificateParams": {"action": "DEACTIVATE"}})
        iot.start_audit_mitigation_actions_task(taskId="retire", target={"findingIds": [finding["findingId"]]},
                                                auditCheckToActionsMapping={
                                                    CA_CERTIFICATE_KEY_QUALITY_CHECK: ["retire-ca"]})
        until(lambda: iot.describe_audit_mitigation_actions_task(taskId="retire")["taskStatus"] == "COMPLETED",
              "the mitigation ends")
        assert ca_status(moto, roca) == "INACTIVE"
    finally:
        server.shutdown()
        server.server_close()
        ctx.wait(30)
        ctx.store.close()


def test_asff_takes_account_and_region_from_a_ca_certificate_arn():
    """AWS names a CA certificate ``...:cacert/<id>`` (moto says ``cert/``): its account and
    region are the finding's, whatever account imports it."""
    from datetime import datetime, timezone

    from devicedefender_audit.exports.asff import AsffContext, asff_finding
    from devicedefender_audit.models import AuditFinding, NonCompliantResource, ResourceIdentifier

    arn = "arn:aws:iot:eu-west-1:111122223333:cacert/" + "ab" * 32
    finding = AuditFinding(
        task_id="t1", check_name=CA_CERTIFICATE_KEY_QUALITY_CHECK, task_start_time=datetime.now(timezone.utc),
        non_compliant_resource=NonCompliantResource(
            resource_type=CA_CERTIFICATE, resource_identifier=ResourceIdentifier(ca_certificate_id="ab" * 32),
            additional_info={"caCertificateArn": arn}),
        reason_for_non_compliance="ROCA", reason_for_non_compliance_code=ROCA)
    document = asff_finding(finding, AsffContext(account_id="999999999999", region="us-east-1"))
    assert (document["AwsAccountId"], document["Resources"][0]["Region"], document["Resources"][0]["Id"]) == (
        "111122223333", "eu-west-1", arn)
    assert "UpdateCACertificate" in document["Remediation"]["Recommendation"]["Text"]


def test_a_ca_check_that_cannot_list_anything_exits_as_a_failure(aws_env, tmp_path, capsys):
    """No CA certificate could be listed (nothing answers): exit 1, as a failed device listing,
    not 4 ("some certificates could not be checked")."""
    code = main(["run", "--endpoint-url", "http://127.0.0.1:9", "--max-attempts", "1", "--no-progress",
                 "--store", str(tmp_path / "audits.sqlite3"), "--checks", CA_CERTIFICATE_KEY_QUALITY_CHECK])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"Check {CA_CERTIFICATE_KEY_QUALITY_CHECK}: FAILED" in out
