"""The registration gate fed by EventBridge with CloudTrail records of the AWS IoT calls that
register certificates (RegisterCertificate, RegisterCertificateWithoutCA, CreateCertificateFromCsr,
AcceptCertificateTransfer, RegisterCACertificate), in-process against moto: each record names a
certificate registered in moto, the handler checks its key and mitigates, a dry run makes no
mutating call, and anything else is one log line and an outcome that says so."""

from __future__ import annotations

import logging

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, register, sns_notifications

from devicedefender_audit.check_names import CA_CERTIFICATE, CA_CERTIFICATE_KEY_QUALITY_CHECK
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.lambda_handlers import registration_gate
from devicedefender_audit.registration_gate import API_REGISTRATIONS, GateSettings, GateUnfinished, gate_event

ACCOUNT = "123456789012"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
GATE_LOGGER = "devicedefender_audit.registration_gate"
#: What a dry run of the gate may call: descriptions and listings only.
READ_ONLY = {"DescribeCertificate", "DescribeCACertificate", "ListPrincipalThings", "DescribeThingGroup"}


def cloudtrail_event(event_name: str, response: dict | None = None, request: dict | None = None,
                     error: str | None = None) -> dict:
    """An EventBridge event as the default bus delivers a CloudTrail management event of an AWS
    IoT call (detail-type "AWS API Call via CloudTrail"); a failed call has errorCode and
    errorMessage and no responseElements."""
    detail = {
        "eventVersion": "1.09",
        "userIdentity": {"type": "AssumedRole", "principalId": "AROAEXAMPLE:provisioner", "accountId": ACCOUNT,
                         "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/provisioner/session"},
        "eventTime": "2025-03-05T10:00:00Z",
        "eventSource": "iot.amazonaws.com",
        "eventName": event_name,
        "awsRegion": REGION,
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": request,
        "responseElements": None if error else response,
        "requestID": "0f0e0d0c-0000-4000-8000-000000000001",
        "eventID": "0f0e0d0c-0000-4000-8000-000000000002",
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
    }
    if error:
        detail.update(errorCode=error, errorMessage="The certificate is already provisioned or registered")
    return {"version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.iot", "account": ACCOUNT, "time": "2025-03-05T10:00:00Z", "region": REGION, "resources": [],
            "detail": detail}


def registered_event(event_name: str, cert: dict) -> dict:
    """The record of ``event_name`` having registered ``cert`` (moto's response: id and ARN)."""
    if event_name == "AcceptCertificateTransfer":  # answers nothing; the id is in the request
        return cloudtrail_event(event_name, request={"certificateId": cert["certificateId"], "setAsActive": True})
    return cloudtrail_event(event_name, response={"certificateId": cert["certificateId"],
                                                  "certificateArn": cert["certificateArn"]},
                            request={"setAsActive": True})


def _gate_env(monkeypatch, topic: str, dry_run: str, actions: str = (
        "UPDATE_DEVICE_CERTIFICATE,UPDATE_CA_CERTIFICATE,ADD_THINGS_TO_THING_GROUP,PUBLISH_FINDING_TO_SNS")) -> None:
    monkeypatch.setenv("DDA_GATE_ACTIONS", actions)
    monkeypatch.setenv("DDA_QUARANTINE_GROUP", "quarantine")
    monkeypatch.setenv("DDA_SNS_TOPIC_ARN", topic)
    monkeypatch.setenv("DDA_DRY_RUN", dry_run)


def _recording_clients() -> tuple[object, object, list[str]]:
    """IoT and SNS clients on moto that record every operation they call."""
    calls: list[str] = []
    iot, sns = boto3.client("iot", region_name=REGION), boto3.client("sns", region_name=REGION)
    for client, service in ((iot, "iot"), (sns, "sns")):
        client.meta.events.register(f"before-call.{service}.*", lambda model, **_: calls.append(model.name))
    return iot, sns, calls


def _gate_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == GATE_LOGGER]


def _status(iot, certificate_id: str) -> str:
    return iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"]


def _register_via(iot, event_name: str, pem: str) -> dict:
    """Register ``pem`` in moto as ``event_name`` would. moto has no certificate transfer, and its
    CreateCertificateFromCsr signs a key of its own rather than the CSR's: those two register the
    certificate without a CA, as the account would hold it after the call."""
    if event_name == "RegisterCertificate":
        return iot.register_certificate(certificatePem=pem, setAsActive=True)
    return register(iot, pem, thing="meter-7")


def test_the_gated_calls_are_the_ones_that_bring_a_key_someone_else_generated():
    assert set(API_REGISTRATIONS) == {"RegisterCertificate", "RegisterCertificateWithoutCA", "CreateCertificateFromCsr",
                                      "AcceptCertificateTransfer", "RegisterCACertificate"}
    assert "CreateKeysAndCertificate" not in API_REGISTRATIONS  # AWS IoT generates that key
    assert API_REGISTRATIONS["RegisterCACertificate"] == CA_CERTIFICATE


@pytest.mark.parametrize("event_name", [n for n, kind in API_REGISTRATIONS.items() if kind != CA_CERTIFICATE])
def test_a_weak_device_key_registered_through_the_api_is_deactivated(monkeypatch, caplog, iot, topic_arn, event_name):
    cert = _register_via(iot, event_name, (DATA / "roca" / "cert05.pem").read_text())
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE,PUBLISH_FINDING_TO_SNS")
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)

    outcome = registration_gate(registered_event(event_name, cert), None)

    assert (outcome["certificateId"], outcome["via"], outcome["verdict"], outcome["detail"]) == (
        cert["certificateId"], event_name, "VULNERABLE", ROCA)
    assert [(e["actionName"], e["status"]) for e in outcome["actionsExecutions"]] == [
        ("UPDATE_DEVICE_CERTIFICATE", "COMPLETED"), ("PUBLISH_FINDING_TO_SNS", "COMPLETED")]
    assert _status(iot, cert["certificateId"]) == "INACTIVE"
    [(subject, message)] = sns_notifications(topic_arn)
    assert ROCA in subject and cert["certificateId"] in message
    [line] = _gate_lines(caplog)
    assert line.levelno == logging.WARNING and "VULNERABLE" in line.getMessage() and event_name in line.getMessage()


def test_the_certificate_id_is_read_from_the_arn_when_the_record_has_only_the_arn(monkeypatch, iot, topic_arn):
    cert = register(iot, (DATA / "roca" / "cert04.pem").read_text())
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE")
    outcome = registration_gate(cloudtrail_event("RegisterCertificateWithoutCA",
                                                 response={"certificateArn": cert["certificateArn"]}), None)
    assert (outcome["certificateId"], outcome["verdict"]) == (cert["certificateId"], "VULNERABLE")
    assert _status(iot, cert["certificateId"]) == "INACTIVE"


def test_a_dry_run_plans_and_makes_no_mutating_call(aws, topic_arn):
    iot, sns, calls = _recording_clients()
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-7")
    calls.clear()
    settings = GateSettings.from_env({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE,ADD_THINGS_TO_THING_GROUP,"
                                                          "PUBLISH_FINDING_TO_SNS",
                                      "DDA_QUARANTINE_GROUP": "quarantine", "DDA_SNS_TOPIC_ARN": topic_arn})
    assert settings.dry_run  # acting is opted into

    outcome = gate_event(registered_event("CreateCertificateFromCsr", cert), iot, sns, default_detectors(), settings)

    assert outcome.verdict == "VULNERABLE"
    assert set(calls) <= READ_ONLY and "DescribeCertificate" in calls
    planned = {(c.service, c.operation) for e in outcome.executions for c in e.calls}
    assert planned == {("iot", "update_certificate"), ("iot", "create_thing_group"),
                       ("iot", "add_thing_to_thing_group"), ("sns", "publish")}
    assert {e.status.value for e in outcome.executions} == {"SKIPPED"}
    assert all("would" in e.message for e in outcome.executions)
    assert _status(iot, cert["certificateId"]) == "ACTIVE" and sns_notifications(topic_arn) == []


def test_a_weak_ca_registered_through_the_api_is_deactivated_by_the_ca_action_only(monkeypatch, iot, topic_arn):
    ca = iot.register_ca_certificate(caCertificate=(DATA / "roca" / "cert05.pem").read_text(), setAsActive=True)
    _gate_env(monkeypatch, topic_arn, dry_run="false")

    outcome = registration_gate(registered_event("RegisterCACertificate", ca), None)

    assert (outcome["certificateId"], outcome["resourceType"], outcome["verdict"]) == (
        ca["certificateId"], CA_CERTIFICATE, "VULNERABLE")
    [finding] = outcome["findings"]
    assert finding["checkName"] == CA_CERTIFICATE_KEY_QUALITY_CHECK
    assert finding["nonCompliantResource"]["resourceIdentifier"] == {"caCertificateId": ca["certificateId"]}
    assert finding["nonCompliantResource"]["additionalInfo"]["caCertificateArn"] == ca["certificateArn"]
    # The device actions (deactivate a device certificate, quarantine things) do not act on a CA.
    assert [(e["actionName"], e["status"]) for e in outcome["actionsExecutions"]] == [
        ("UPDATE_CA_CERTIFICATE", "COMPLETED"), ("PUBLISH_FINDING_TO_SNS", "COMPLETED")]
    status = iot.describe_ca_certificate(certificateId=ca["certificateId"])["certificateDescription"]["status"]
    assert status == "INACTIVE"
    [(subject, _)] = sns_notifications(topic_arn)
    assert ROCA in subject and CA_CERTIFICATE_KEY_QUALITY_CHECK in subject


def test_a_weak_ca_in_a_dry_run_stays_active(aws, topic_arn):
    iot, sns, calls = _recording_clients()
    ca = iot.register_ca_certificate(caCertificate=(DATA / "roca" / "cert05.pem").read_text(), setAsActive=True)
    calls.clear()
    settings = GateSettings.from_env({"DDA_GATE_ACTIONS": "UPDATE_CA_CERTIFICATE", "DDA_DRY_RUN": "true"})

    outcome = gate_event(registered_event("RegisterCACertificate", ca), iot, sns, default_detectors(), settings)

    assert outcome.verdict == "VULNERABLE" and set(calls) <= READ_ONLY
    [execution] = outcome.executions
    assert execution.status.value == "SKIPPED" and [c.operation for c in execution.calls] == ["update_ca_certificate"]
    status = iot.describe_ca_certificate(certificateId=ca["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE"


def test_a_good_key_registered_through_the_api_passes(monkeypatch, iot, topic_arn, fresh_rsa_key):
    cert = register(iot, issue_certificate(fresh_rsa_key))
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    outcome = registration_gate(registered_event("RegisterCertificateWithoutCA", cert), None)
    assert (outcome["verdict"], outcome["actionsExecutions"]) == ("CLEAN", [])
    assert _status(iot, cert["certificateId"]) == "ACTIVE"


def test_a_failed_call_is_skipped_without_describing_anything(aws, caplog, topic_arn):
    iot, sns, calls = _recording_clients()
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)
    event = cloudtrail_event("RegisterCertificate", request={"setAsActive": True},
                             error="ResourceAlreadyExistsException")

    outcome = gate_event(event, iot, sns, default_detectors(), GateSettings.from_env({"DDA_GATE_ACTIONS": ""}))

    assert (outcome.verdict, outcome.certificate_id, outcome.via) == ("CALL_FAILED", None, "RegisterCertificate")
    assert "ResourceAlreadyExistsException" in outcome.detail and calls == []
    [line] = _gate_lines(caplog)
    assert line.levelno == logging.INFO and "CALL_FAILED" in line.getMessage()


def test_a_certificate_gone_before_the_record_arrives_is_reported_not_clean(monkeypatch, iot, topic_arn):
    """CloudTrail delivers in minutes: the certificate may be deleted by then."""
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), status="INACTIVE")
    iot.delete_certificate(certificateId=cert["certificateId"])
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    outcome = registration_gate(registered_event("RegisterCertificateWithoutCA", cert), None)
    assert (outcome["certificateId"], outcome["verdict"]) == (cert["certificateId"], "ResourceNotFoundException")
    assert "cannot describe the certificate" in outcome["detail"]


def _detail(**changes) -> dict:
    event = cloudtrail_event("RegisterCertificate", response={"certificateId": "a" * 64})
    event["detail"].update(changes)
    return event


@pytest.mark.parametrize(("event", "verdict", "says"), [
    ([], "UNRECOGNIZED_EVENT", "a list, not a JSON object"),
    ("certificateId", "UNRECOGNIZED_EVENT", "a str, not a JSON object"),
    ({}, "UNRECOGNIZED_EVENT", "no certificateId"),
    ({"certificateId": "not-an-id"}, "UNRECOGNIZED_EVENT", "no certificateId of 64 hex digits"),
    ({**cloudtrail_event("RegisterCertificate"), "detail-type": "AWS Console Signin via CloudTrail"},
     "UNRECOGNIZED_EVENT", "not a CloudTrail record of an AWS IoT call"),
    ({**cloudtrail_event("RegisterCertificate"), "detail": "RegisterCertificate"}, "UNRECOGNIZED_EVENT",
     "not a CloudTrail record of an AWS IoT call"),
    (_detail(eventSource="iotwireless.amazonaws.com"), "UNRECOGNIZED_EVENT", "'iotwireless.amazonaws.com'"),
    (_detail(eventName="CreateKeysAndCertificate"), "UNRECOGNIZED_EVENT", "'CreateKeysAndCertificate' registers no"),
    (_detail(eventName="AttachPolicy"), "UNRECOGNIZED_EVENT", "'AttachPolicy' registers no certificate"),
], ids=["list", "string", "empty", "bad-id", "other-detail-type", "detail-not-object", "other-service",
        "aws-generated-key", "other-call"])
def test_anything_else_is_one_log_line_and_an_outcome_that_says_so(monkeypatch, caplog, aws, topic_arn, event,
                                                                   verdict, says):
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)

    outcome = registration_gate(event, None)

    assert (outcome["verdict"], outcome["certificateId"], outcome["actionsExecutions"]) == (verdict, None, [])
    assert says in outcome["detail"]
    [line] = _gate_lines(caplog)
    assert line.levelno == logging.WARNING and verdict in line.getMessage() and line.exc_info is None


@pytest.mark.parametrize("event", [
    _detail(responseElements=None),
    _detail(responseElements={"certificateId": "a" * 63}),
    _detail(responseElements={"certificateArn": "arn:aws:iot:us-east-1:123456789012:cert/"}),
], ids=["no-response", "short-id", "empty-arn"])
def test_a_registration_record_that_names_no_certificate_fails_the_invocation(monkeypatch, caplog, aws, topic_arn,
                                                                              event):
    """A certificate was registered and the gate cannot say which: not a WARNING nobody reads
    (it was, and returned success), but a failed invocation that Lambda keeps in the stack's
    GateFailedEvents queue after its retries."""
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)
    with pytest.raises(GateUnfinished, match="registered by RegisterCertificate not gated: NO_CERTIFICATE_ID"):
        registration_gate(event, None)
    [line] = _gate_lines(caplog)
    assert line.levelno == logging.ERROR and "NO_CERTIFICATE_ID" in line.getMessage()
