"""The registration gate under what a deployment meets: AWS calls that fail for a while
(throttling, a lost connection), events delivered twice, events from another account or region,
a certificate activated before the gate runs, and settings mistyped in the environment. The
gate must never let a weak key through in silence: a certificate it could not check, or a
mitigation that failed, fails the invocation so that Lambda runs it again (asynchronous
invocations are retried twice, AWS Lambda guide, "How Lambda handles errors and retries with
asynchronous invocation"); a repeated event changes nothing already changed."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from botocore.awsrequest import AWSResponse
from conftest import DATA, REGION, register, sns_notifications
from test_registration_gate_api import (
    ACCOUNT,
    GATE_LOGGER,
    ROCA,
    _gate_env,
    _status,
    cloudtrail_event,
    registered_event,
)

from devicedefender_audit.aws import clients
from devicedefender_audit.lambda_handlers import registration_gate
from devicedefender_audit.registration_gate import GateConfigurationError, GateSettings, GateUnfinished

CONTEXT = SimpleNamespace(invoked_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:dda-gate")


def jitr_event(certificate_id: str, account: str = ACCOUNT) -> dict:
    """The message AWS IoT publishes on $aws/events/certificates/registered/<caCertificateId>
    (AWS IoT developer guide, "Just-in-time registration"), as the topic rule passes it on."""
    return {"certificateId": certificate_id, "caCertificateId": "b" * 64, "timestamp": 1741168800000,
            "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": account,
            "certificateRegistrationTimestamp": "1741168799000"}


def _failing(monkeypatch, operation: str, code: str, times: int = 1_000) -> list[str]:
    """Make the gate's own clients answer ``operation`` with AWS error ``code`` (as after botocore
    has spent its retries), ``times`` times; every other call goes to moto. Returns the calls."""
    calls: list[str] = []
    left = [times]
    real_client = clients.AwsTarget.client

    def answer(model, **_):
        calls.append(model.name)
        if model.name != operation or left[0] <= 0:
            return None
        left[0] -= 1
        status = 400 if code.endswith("Exception") and "Throttl" not in code else 429
        http = AWSResponse("https://iot.amazonaws.com", status, {}, None)
        return http, {"Error": {"Code": code, "Message": f"{code} (injected)"}, "ResponseMetadata": {}}

    def client(self, service, *args, **kwargs):
        made = real_client(self, service, *args, **kwargs)
        made.meta.events.register(f"before-call.{service}.*", answer)
        return made

    monkeypatch.setattr(clients.AwsTarget, "client", client)
    return calls


def _weak(iot, status: str = "ACTIVE") -> dict:
    return register(iot, (DATA / "roca" / "cert05.pem").read_text(), status=status, thing="meter-7")


# AWS calls that fail for a while: the invocation fails, Lambda retries, the key is still gated --


@pytest.mark.parametrize("code", ["ThrottlingException", "ServiceUnavailableException", "AccessDeniedException"])
def test_a_certificate_that_cannot_be_described_fails_the_invocation(monkeypatch, caplog, iot, topic_arn, code):
    """A throttled DescribeCertificate was an outcome and a success: Lambda did not retry, the
    weak key stayed ACTIVE and nothing was notified."""
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE,PUBLISH_FINDING_TO_SNS")
    _failing(monkeypatch, "DescribeCertificate", code, times=1)
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)

    with pytest.raises(GateUnfinished, match=f"{cert['certificateId']}.*{code}"):
        registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    [line] = [r for r in caplog.records if r.name == GATE_LOGGER]
    assert line.levelno == logging.ERROR and code in line.getMessage()

    retried = registration_gate(jitr_event(cert["certificateId"]), CONTEXT)  # Lambda's retry
    assert retried["verdict"] == "VULNERABLE" and _status(iot, cert["certificateId"]) == "INACTIVE"
    assert len(sns_notifications(topic_arn)) == 1


def test_a_certificate_deleted_before_the_gate_runs_is_reported_and_not_retried(monkeypatch, iot, topic_arn):
    cert = register(iot, (DATA / "roca" / "cert05.pem").read_text(), status="INACTIVE")
    iot.delete_certificate(certificateId=cert["certificateId"])
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    outcome = registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    assert outcome["verdict"] == "ResourceNotFoundException" and outcome["actionsExecutions"] == []


def test_a_failed_deactivation_fails_the_invocation_and_the_retry_finishes_it(monkeypatch, iot, topic_arn):
    """UpdateCertificate throttled: the execution was FAILED inside a successful invocation, so
    the weak key stayed ACTIVE for good."""
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE,PUBLISH_FINDING_TO_SNS")
    calls = _failing(monkeypatch, "UpdateCertificate", "ThrottlingException", times=1)

    with pytest.raises(GateUnfinished, match="UPDATE_DEVICE_CERTIFICATE:FAILED"):
        registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    assert _status(iot, cert["certificateId"]) == "ACTIVE"

    calls.clear()
    retried = registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    assert [(e["actionName"], e["status"]) for e in retried["actionsExecutions"]] == [
        ("UPDATE_DEVICE_CERTIFICATE", "COMPLETED"), ("PUBLISH_FINDING_TO_SNS", "COMPLETED")]
    assert _status(iot, cert["certificateId"]) == "INACTIVE" and calls.count("UpdateCertificate") == 1


# events delivered twice: the second changes nothing the first changed ---------------------------


def test_a_duplicated_event_deactivates_once_and_publishes_no_private_material(monkeypatch, iot, topic_arn):
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    calls = _failing(monkeypatch, "none", "none")
    event = registered_event("RegisterCertificateWithoutCA", cert)

    first = registration_gate(event, CONTEXT)
    second = registration_gate(event, CONTEXT)

    assert calls.count("UpdateCertificate") == 1 and calls.count("AddThingToThingGroup") == 2  # AWS: idempotent
    assert [(e["actionName"], e["status"]) for e in first["actionsExecutions"]] == [
        ("UPDATE_DEVICE_CERTIFICATE", "COMPLETED"), ("ADD_THINGS_TO_THING_GROUP", "COMPLETED"),
        ("PUBLISH_FINDING_TO_SNS", "COMPLETED")]
    [update, _, _] = second["actionsExecutions"]
    assert update["status"] == "SKIPPED" and "already INACTIVE" in update["message"]
    assert iot.list_things_in_thing_group(thingGroupName="quarantine")["things"] == ["meter-7"]
    # Each delivery notifies (the gate keeps no state); the message is the finding, no key material.
    messages = [json.loads(m) for _, m in sns_notifications(topic_arn)]
    assert len(messages) == 2
    for message in messages:
        assert message["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] == cert["certificateId"]
        assert message["reasonForNonComplianceCode"] == ROCA
        assert "-----BEGIN" not in json.dumps(message) and "PRIVATE" not in json.dumps(message).upper()


def test_a_certificate_activated_before_the_gate_runs_is_deactivated(monkeypatch, iot, topic_arn):
    """JITR: the account's own activation function may have set it ACTIVE first."""
    cert = _weak(iot, status="PENDING_ACTIVATION")
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="ACTIVE")
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE")
    outcome = registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    [execution] = outcome["actionsExecutions"]
    assert execution["status"] == "COMPLETED" and "from ACTIVE to INACTIVE" in execution["message"]
    assert _status(iot, cert["certificateId"]) == "INACTIVE"


# events of another account or region: never described or acted on here -------------------------


def _other_region_record(cert: dict) -> dict:
    event = registered_event("RegisterCertificateWithoutCA", cert)
    event["region"] = event["detail"]["awsRegion"] = "eu-west-1"
    return event


def _other_account_record(cert: dict) -> dict:
    event = registered_event("RegisterCertificateWithoutCA", cert)
    event["account"] = event["detail"]["recipientAccountId"] = event["detail"]["userIdentity"]["accountId"] = (
        "210987654321")
    return event


@pytest.mark.parametrize(("make", "verdict", "says"), [
    (lambda cert: jitr_event(cert["certificateId"], account="210987654321"), "OTHER_ACCOUNT", "210987654321"),
    (_other_account_record, "OTHER_ACCOUNT", "210987654321"),
    (_other_region_record, "OTHER_REGION", "eu-west-1"),
], ids=["jitr-other-account", "cloudtrail-other-account", "cloudtrail-other-region"])
def test_an_event_of_another_account_or_region_is_not_acted_on_here(monkeypatch, caplog, iot, topic_arn, make,
                                                                     verdict, says):
    """A bus fed by other accounts (or a copied rule) named a certificate the gate then looked up
    in its own account: reported as deleted, or, when the same certificate is registered in both
    (multi-account registration), acted on in the wrong account."""
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    calls = _failing(monkeypatch, "none", "none")
    caplog.set_level(logging.INFO, logger=GATE_LOGGER)

    outcome = registration_gate(make(cert), CONTEXT)

    assert (outcome["verdict"], outcome["certificateId"], outcome["actionsExecutions"]) == (
        verdict, cert["certificateId"], [])
    assert says in outcome["detail"] and calls == []
    assert _status(iot, cert["certificateId"]) == "ACTIVE"
    [line] = [r for r in caplog.records if r.name == GATE_LOGGER]
    assert line.levelno == logging.WARNING and verdict in line.getMessage()


def test_the_home_account_and_region_are_acted_on(monkeypatch, iot, topic_arn):
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="false", actions="UPDATE_DEVICE_CERTIFICATE")
    for event in (jitr_event(cert["certificateId"]), registered_event("RegisterCertificate", cert)):
        assert registration_gate(event, CONTEXT)["verdict"] == "VULNERABLE"
    assert _status(iot, cert["certificateId"]) == "INACTIVE"


# settings: a mistyped one is one clear error, never a gate that silently does nothing ----------


@pytest.mark.parametrize(("env", "says"), [
    ({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE", "DDA_DRY_RUN": "flase"},
     "DDA_DRY_RUN must be true or false, not 'flase'"),
    ({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE", "DDA_DRY_RUN": "0"}, "DDA_DRY_RUN must be true or false"),
    ({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE", "DDA_DRYRUN": "false"},
     "DDA_DRYRUN is not a setting of the gate: did you mean DDA_DRY_RUN?"),
    ({"DDA_GATE_ACTION": "UPDATE_DEVICE_CERTIFICATE", "DDA_DRY_RUN": "false"},
     "DDA_GATE_ACTION is not a setting of the gate: did you mean DDA_GATE_ACTIONS?"),
    ({"DDA_DRY_RUN": "false"}, "DDA_GATE_ACTIONS is not set"),
    ({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFCATE"},
     "DDA_GATE_ACTIONS: 'UPDATE_DEVICE_CERTIFCATE' is not a mitigation action type"),
    ({"DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE;PUBLISH_FINDING_TO_SNS"}, "comma-separated"),
    ({"DDA_GATE_ACTIONS": "ADD_THINGS_TO_THING_GROUP"}, "ADD_THINGS_TO_THING_GROUP needs DDA_QUARANTINE_GROUP"),
    ({"DDA_GATE_ACTIONS": "PUBLISH_FINDING_TO_SNS", "DDA_SNS_TOPIC_ARN": " "},
     "PUBLISH_FINDING_TO_SNS needs DDA_SNS_TOPIC_ARN"),
    ({"DDA_GATE_ACTIONS": "ADD_THINGS_TO_THING_GROUP", "DDA_QUARANTINE_GROUP": "weak/keys"},
     "DDA_QUARANTINE_GROUP: CreateMitigationActionRequest.actionParams.addThingsToThingGroupParams"),
], ids=["dry-run-typo", "dry-run-zero", "dry-run-name-typo", "actions-name-typo", "actions-unset",
        "action-typo", "semicolons", "no-group", "blank-topic", "group-aws-refuses"])
def test_a_mistyped_setting_is_one_clear_error(env, says):
    with pytest.raises(GateConfigurationError) as raised:
        GateSettings.from_env(env)
    assert says in str(raised.value)


@pytest.mark.parametrize(("env", "actions", "dry_run"), [
    ({"DDA_GATE_ACTIONS": ""}, [], True),  # report only, in a dry run: both said explicitly
    ({"DDA_GATE_ACTIONS": " update_device_certificate , ", "DDA_DRY_RUN": " FALSE "},
     ["UPDATE_DEVICE_CERTIFICATE"], False),
    ({"DDA_GATE_ACTIONS": "PUBLISH_FINDINGS_TO_SNS",  # the earlier name, as deployed gates have it
      "DDA_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:1:t",
      "DDA_DRY_RUN": "True", "DDA_STORE": "dynamodb://t", "DDA_BLOCKLISTS": "/opt/blocklists"},
     ["PUBLISH_FINDING_TO_SNS"], True),
])
def test_settings_that_are_right_are_read(env, actions, dry_run):
    settings = GateSettings.from_env(env)
    assert ([a.action_type.value for a in settings.actions], settings.dry_run) == (actions, dry_run)


def test_the_handler_refuses_a_mistyped_setting_before_any_aws_call(monkeypatch, iot, topic_arn):
    cert = _weak(iot)
    _gate_env(monkeypatch, topic_arn, dry_run="flase")
    calls = _failing(monkeypatch, "none", "none")
    with pytest.raises(GateConfigurationError, match="DDA_DRY_RUN"):
        registration_gate(jitr_event(cert["certificateId"]), CONTEXT)
    assert calls == [] and _status(iot, cert["certificateId"]) == "ACTIVE"


def test_a_failed_call_record_names_the_call_and_is_not_retried(monkeypatch, iot, topic_arn):
    _gate_env(monkeypatch, topic_arn, dry_run="false")
    event = cloudtrail_event("CreateCertificateFromCsr", request={"setAsActive": True},
                             error="InvalidRequestException")
    outcome = registration_gate(event, CONTEXT)
    assert (outcome["verdict"], outcome["via"]) == ("CALL_FAILED", "CreateCertificateFromCsr")

