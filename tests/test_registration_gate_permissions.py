"""The gate's role (infra/template.yaml, GateRole) against the calls the gate actually makes:
each boto3 call of a real (not dry) run with every action, for a weak device certificate on a
thing (JITR) and a weak CA (RegisterCACertificate record), is mapped to its IAM action and the
resource ARNs the Service Authorization Reference gives it (cert, cacert, thing, thinggroup; no
resource type for ListPrincipalThings: "*"), and must be allowed by a statement of the role
with every condition true. cfn-lint checks the template's syntax, not this."""

from __future__ import annotations

import fnmatch
from typing import Any

import boto3
from conftest import DATA, REGION, register
from test_infra import _template
from test_registration_gate_api import ACCOUNT, registered_event
from test_registration_gate_failures import jitr_event

from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.registration_gate import GateSettings, Home, gate_event

GROUP = "quarantine-weak-keys"


def _resolve(value: Any, refs: dict[str, str]) -> Any:
    """A statement's Action/Resource with Fn::Sub, Ref and Fn::GetAtt resolved for this test."""
    if isinstance(value, list):
        return [_resolve(v, refs) for v in value]
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for name, resolved in refs.items():
            text = text.replace("${" + name + "}", resolved)
        assert "${" not in text, text
        return text
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return refs[".".join(value["Fn::GetAtt"])]
    return value


def _allowed(topic: str) -> list[tuple[list[str], list[str]]]:
    """(actions, resources) of each GateRole statement, conditional ones included (all true)."""
    refs = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
            "QuarantineThingGroup": GROUP, "FindingsTopic": topic, "GateLogGroup.Arn": "log-group",
            "GateFailedEvents.Arn": "queue"}
    [policy] = _template("template.yaml")["Resources"]["GateRole"]["Properties"]["Policies"]
    granted = []
    for statement in policy["PolicyDocument"]["Statement"]:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        assert statement["Effect"] == "Allow"
        actions, resources = (_resolve(statement[k], refs) for k in ("Action", "Resource"))
        granted.append(([actions] if isinstance(actions, str) else actions,
                        [resources] if isinstance(resources, str) else resources))
    return granted


def _iam(service: str, operation: str, params: dict) -> tuple[str, list[str]]:
    """The IAM action of a call and the ARNs it is authorized on."""
    arn = f"arn:aws:iot:{REGION}:{ACCOUNT}:"
    resources = {
        "DescribeCertificate": [arn + f"cert/{params.get('certificateId')}"],
        "UpdateCertificate": [arn + f"cert/{params.get('certificateId')}"],
        "DescribeCACertificate": [arn + f"cacert/{params.get('certificateId')}"],
        "UpdateCACertificate": [arn + f"cacert/{params.get('certificateId')}"],
        "ListPrincipalThings": ["*"],
        "DescribeThingGroup": [arn + f"thinggroup/{params.get('thingGroupName')}"],
        "CreateThingGroup": [arn + f"thinggroup/{params.get('thingGroupName')}"],
        "AddThingToThingGroup": [arn + f"thinggroup/{params.get('thingGroupName')}",
                                 arn + f"thing/{params.get('thingName')}"],
        "Publish": [params.get("TopicArn")],
    }[operation]
    return f"{service}:{operation}", resources


def test_every_call_the_gate_makes_is_allowed_by_its_role(aws):
    iot, sns = boto3.client("iot", region_name=REGION), boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name="findings")["TopicArn"]
    made: list[tuple[str, str, dict]] = []
    for client, service in ((iot, "iot"), (sns, "sns")):
        client.meta.events.register(f"provide-client-params.{service}.*",
                                    lambda params, model, service=service, **_: made.append(
                                        (service, model.name, dict(params))))
    device = register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-7")
    ca = iot.register_ca_certificate(caCertificate=(DATA / "roca" / "cert04.pem").read_text(), setAsActive=True)
    made.clear()
    settings = GateSettings.from_env({
        "DDA_GATE_ACTIONS": "UPDATE_DEVICE_CERTIFICATE,UPDATE_CA_CERTIFICATE,ADD_THINGS_TO_THING_GROUP,"
                            "PUBLISH_FINDING_TO_SNS",
        "DDA_QUARANTINE_GROUP": GROUP, "DDA_SNS_TOPIC_ARN": topic, "DDA_DRY_RUN": "false"})
    home = Home(ACCOUNT, REGION)

    for event in (jitr_event(device["certificateId"]), registered_event("RegisterCACertificate", ca)):
        outcome = gate_event(event, iot, sns, default_detectors(), settings, home)
        assert outcome.verdict == "VULNERABLE" and {e.status.value for e in outcome.executions} == {"COMPLETED"}

    granted = _allowed(topic)
    calls = {_iam(service, operation, params)[0] for service, operation, params in made}
    assert calls == {"iot:DescribeCertificate", "iot:UpdateCertificate", "iot:DescribeCACertificate",
                     "iot:UpdateCACertificate", "iot:ListPrincipalThings", "iot:DescribeThingGroup",
                     "iot:CreateThingGroup", "iot:AddThingToThingGroup", "sns:Publish"}
    for service, operation, params in made:
        action, resources = _iam(service, operation, params)
        for resource in resources:
            assert any(action in actions and any(fnmatch.fnmatchcase(resource, pattern) for pattern in patterns)
                       for actions, patterns in granted), (action, resource)


def test_events_the_gate_could_not_gate_are_kept_after_lambdas_retries():
    """GateUnfinished fails the invocation; after Lambda's two retries the event goes to a queue
    the role may send to, not away."""
    resources = _template("template.yaml")["Resources"]
    function = resources["GateFunction"]["Properties"]
    assert function["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": ["GateFailedEvents", "Arn"]}}
    assert resources["GateFailedEvents"]["Condition"] == "GateEnabled"
    assert (["sqs:SendMessage"], ["queue"]) in _allowed("topic")
