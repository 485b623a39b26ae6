"""The deployment templates: cfn-lint clean, handlers that exist, roles that match the documented policies."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from typing import Any

import boto3
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode
from conftest import DATA, REGION, REPO, issue_certificate, register, run_audit

from devicedefender_audit.check_names import AUDIT_CHECKS
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.lambda_audit import ACTION, RUN_DUE
from devicedefender_audit.registration_gate import API_REGISTRATIONS

INFRA = REPO / "infra"
TEMPLATES = sorted([*INFRA.glob("*.yaml"), *INFRA.glob("*.yml"),
                    *(p for p in INFRA.glob("*.json") if "AWSTemplateFormatVersion" in p.read_text())])


def _template(name: str) -> dict:
    template, errors = decode(str(INFRA / name))
    assert not errors, errors
    return template


def test_there_is_a_template():
    assert INFRA / "template.yaml" in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_passes(template):
    """Errors, warnings and informational findings alike: a template ships clean."""
    assert [str(match) for match in lint_file(template)] == []


@pytest.mark.parametrize("template", [p.name for p in TEMPLATES])
def test_every_lambda_handler_exists(template):
    functions = [r["Properties"] for r in _template(template)["Resources"].values()
                 if r["Type"] == "AWS::Lambda::Function"]
    assert functions or template == "member-role.yaml"  # the member accounts' role has no code
    for function in functions:
        module, _, name = function["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), function["Handler"]


def _actions(statements: list, effect: str = "Allow") -> set[str]:
    """Every action the statements of ``effect`` may grant (or deny): a conditional statement
    (``Fn::If``) counts."""
    found = set()
    for statement in statements:
        if isinstance(statement, dict) and "Fn::If" in statement:
            found |= _actions([branch for branch in statement["Fn::If"][1:] if isinstance(branch, dict)], effect)
        elif isinstance(statement, dict) and "Action" in statement and statement.get("Effect") == effect:
            actions = statement["Action"]
            found.update([actions] if isinstance(actions, str) else actions)
    return found


def _policy_actions(resource: str, prefix: str, template: str = "template.yaml", effect: str = "Allow") -> set[str]:
    role = _template(template)["Resources"][resource]["Properties"]
    return {a for policy in role["Policies"] for a in _actions(policy["PolicyDocument"]["Statement"], effect)
            if a.startswith(prefix)}


@pytest.mark.parametrize(("template", "role", "policy"), [
    ("template.yaml", "AuditRole", "iam-policy-audit.json"),
    ("template.yaml", "GateRole", "iam-policy-mitigate.json"),
    ("template.yaml", "FleetAuditRole", "iam-policy-audit.json"),
    ("member-role.yaml", "AuditRole", "iam-policy-audit.json"),
])
def test_roles_grant_what_the_documented_policies_grant(template, role, policy):
    documented = json.loads((INFRA / policy).read_text())["Statement"]
    assert _policy_actions(role, "iot:", template) == {a for a in _actions(documented) if a.startswith("iot:")}


def test_the_organization_fan_out_is_a_distributed_map_over_account_regions():
    template = _template("template.yaml")
    resources = template["Resources"]
    machine = resources["FleetStateMachine"]["Properties"]
    listing = machine["Definition"]["States"]["ListAccountRegions"]
    fan_out = machine["Definition"]["States"][listing["Next"]]
    assert fan_out["Type"] == "Map" and fan_out["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    # The items come from S3 (a state's input is capped at 256 KB), written by the list function.
    assert fan_out["ItemReader"]["Resource"] == "arn:${Partition}:states:::s3:getObject"
    assert fan_out["ToleratedFailurePercentage"] == 100  # one account-region never stops the others
    [audit] = fan_out["ItemProcessor"]["States"].values()
    substitutions = machine["DefinitionSubstitutions"]
    assert audit["Parameters"]["FunctionName"] == "${AuditFunction}" and listing["Parameters"]["FunctionName"] == (
        "${ListFunction}")
    handler = {name: resources[ref["Fn::GetAtt"][0]]["Properties"]["Handler"]
               for name, ref in substitutions.items() if name.endswith("Function")}
    assert handler == {"AuditFunction": "devicedefender_audit.lambda_fleet.audit_account_region",
                       "ListFunction": "devicedefender_audit.lambda_fleet.list_account_regions"}
    assert {resources[name].get("Condition") for name in ("FleetStateMachine", "FleetAuditRole")} == {"FanOut"}
    assert "Condition" not in resources["FleetBucket"]  # it keeps the single-account audit's fleet state too
    target = resources["AuditSchedule"]["Properties"]["Target"]["Arn"]
    assert target == {"Fn::If": ["FanOut", {"Ref": "FleetStateMachine"}, {"Fn::GetAtt": ["AuditFunction", "Arn"]}]}
    assert "sts:AssumeRole" in _policy_actions("FleetAuditRole", "sts:")


def test_the_audit_policy_allows_every_call_an_audit_of_every_check_makes(iot, fresh_rsa_key):
    """The documented read-only policy (and so the roles above) against the calls an audit with
    every check actually makes, device and CA certificates alike."""
    register(iot, issue_certificate(fresh_rsa_key), thing="meter")
    register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter-2")
    iot.register_ca_certificate(caCertificate=(DATA / "roca" / "cert05.pem").read_text(), setAsActive=True)
    calls: set[str] = set()
    iot.meta.events.register("before-call.iot.*", lambda model, **_: calls.add(f"iot:{model.name}"))
    detectors = default_detectors()
    audited = run_audit(iot, detectors, checks=make_checks(AUDIT_CHECKS, detectors))
    assert audited.task.task_status.value == "COMPLETED" and len(audited.findings) == 2
    documented = _actions(json.loads((INFRA / "iam-policy-audit.json").read_text())["Statement"])
    assert {"iot:ListCertificates", "iot:ListCACertificates", "iot:DescribeCACertificate"} <= calls
    assert calls <= documented


def test_the_audit_role_allows_every_call_a_security_hub_sync_makes(aws):
    """The Lambda's Security Hub sync imports, looks its findings up, sets the workflow of one
    suppressed since its import and archives a resolved one: every call it makes is granted."""
    from devicedefender_audit.exports.asff import AsffContext
    from devicedefender_audit.exports.securityhub_sync import sync_audit
    from devicedefender_audit.models import (
        AuditCheckDetails,
        AuditFinding,
        AuditTask,
        NonCompliantResource,
        ResourceIdentifier,
    )

    account = boto3.client("sts").get_caller_identity()["Account"]
    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    context = AsffContext(account, REGION)

    def finding(task: AuditTask, n: int, suppressed: bool) -> AuditFinding:
        certificate = f"{n:064x}"
        return AuditFinding(
            task_id=task.task_id, task_start_time=task.task_start_time, is_suppressed=suppressed,
            non_compliant_resource=NonCompliantResource(resource_identifier=ResourceIdentifier(
                device_certificate_id=certificate,
                device_certificate_arn=f"arn:aws:iot:{REGION}:{account}:cert/{certificate}")),
            reason_for_non_compliance="weak", reason_for_non_compliance_code="CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361")

    first = AuditTask(region=REGION, task_status="COMPLETED")
    sync_audit(hub, first, [finding(first, 1, False), finding(first, 2, False)], [], context)
    calls: set[str] = set()
    hub.meta.events.register("before-call.securityhub.*", lambda model, **_: calls.add(f"securityhub:{model.name}"))
    second = AuditTask(region=REGION, task_status="COMPLETED")
    second.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
        check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, total_resources_count=2,
        non_compliant_resources_count=1)}
    result = sync_audit(hub, second, [finding(second, 1, True)], [], context)
    assert (result.workflow["SUPPRESSED"].success_count, result.archived.success_count, result.failed) == (1, 1, False)
    assert calls == {"securityhub:BatchImportFindings", "securityhub:GetFindings", "securityhub:BatchUpdateFindings"}
    assert calls <= _policy_actions("AuditRole", "securityhub:")
    # ... and the workflow may be set to SUPPRESSED or NEW only (Security Hub's documented Deny).
    assert _policy_actions("AuditRole", "securityhub:", effect="Deny") == {"securityhub:BatchUpdateFindings"}


def test_run_due_has_its_own_schedule_on_the_audit_function():
    """The stack's schedule runs full audits; a second one (unless its expression is empty) asks
    the same function for the scheduled audits defined through the API that are due."""
    template = _template("template.yaml")
    resources = template["Resources"]
    run_due = resources["RunDueSchedule"]
    assert run_due["Condition"] == "RunDue"
    assert template["Conditions"]["RunDue"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunDueScheduleExpression"}, ""]}]}
    assert template["Parameters"]["RunDueScheduleExpression"]["Default"] == "rate(1 hour)"
    target = run_due["Properties"]["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["AuditFunction", "Arn"]}
    assert json.loads(target["Input"]) == {ACTION: RUN_DUE}
    assert json.loads(resources["AuditSchedule"]["Properties"]["Target"]["Input"]) == {}  # a full audit
    # The scheduler may invoke the function whenever a schedule targets it, and only then.
    [invoke] = [s for s in resources["SchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                if s["Fn::If"][1].get("Action") == "lambda:InvokeFunction"]
    assert invoke["Fn::If"][0] == "InvokesAuditFunction"
    assert template["Conditions"]["InvokesAuditFunction"] == {
        "Fn::Or": [{"Condition": "RunDue"}, {"Fn::Not": [{"Condition": "FanOut"}]}]}


def _gate_statements() -> dict[str, dict]:
    """The gate role's statements by Sid, each with the condition it is granted under (or None)."""
    [policy] = _template("template.yaml")["Resources"]["GateRole"]["Properties"]["Policies"]
    statements = {}
    for statement in policy["PolicyDocument"]["Statement"]:
        condition, statement = (statement["Fn::If"][0], statement["Fn::If"][1]) if "Fn::If" in statement else (
            None, statement)
        statements[statement["Sid"]] = {**statement, "condition": condition}
    return statements


def test_the_gate_hears_api_registrations_through_an_eventbridge_rule_on_cloudtrail_records():
    template = _template("template.yaml")
    resources = template["Resources"]
    rule = resources["GateApiRule"]
    assert rule["Condition"] == "GateApi" and template["Parameters"]["GateApiRegistrations"]["Default"] == "true"
    assert template["Conditions"]["GateApi"] == {"Fn::And": [
        {"Condition": "GateEnabled"}, {"Fn::Equals": [{"Ref": "GateApiRegistrations"}, "true"]}]}
    pattern = rule["Properties"]["EventPattern"]
    assert (pattern["source"], pattern["detail-type"], pattern["detail"]["eventSource"]) == (
        ["aws.iot"], ["AWS API Call via CloudTrail"], ["iot.amazonaws.com"])
    assert set(pattern["detail"]["eventName"]) == set(API_REGISTRATIONS)  # the calls the handler reads
    assert pattern["detail"]["errorCode"] == [{"exists": False}]  # a failed call registered nothing
    [target] = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["GateFunction", "Arn"]}
    permission = resources["GateApiInvokePermission"]
    assert permission["Condition"] == "GateApi"
    assert (permission["Properties"]["Principal"], permission["Properties"]["SourceArn"]) == (
        "events.amazonaws.com", {"Fn::GetAtt": ["GateApiRule", "Arn"]})
    assert resources["GateFunction"]["Properties"]["Handler"] == "devicedefender_audit.lambda_handlers.registration_gate"
    # The gate's one line per event at INFO reaches the log.
    assert resources["GateFunction"]["Properties"]["LoggingConfig"]["ApplicationLogLevel"] == "INFO"


def test_the_gate_role_reads_and_deactivates_cas_only_when_configured_to():
    statements = _gate_statements()
    read, deactivate = statements["ReadRegisteredCACertificates"], statements["DeactivateWeakCACertificates"]
    assert (read["Action"], read["condition"]) == ("iot:DescribeCACertificate", "GateApi")
    assert (deactivate["Action"], deactivate["condition"]) == ("iot:UpdateCACertificate", "GateDeactivatesCAs")
    assert read["Resource"] == deactivate["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:cacert/*"}
    assert statements["ReadRegisteredCertificates"]["condition"] is None
    # UPDATE_CA_CERTIFICATE in GateActions (the condition: the name removed changes the string).
    [api, contains] = _template("template.yaml")["Conditions"]["GateDeactivatesCAs"]["Fn::And"]
    assert api == {"Condition": "GateApi"}
    assert contains == {"Fn::Not": [{"Fn::Equals": [
        {"Fn::Join": ["", {"Fn::Split": ["UPDATE_CA_CERTIFICATE", {"Ref": "GateActions"}]}]}, {"Ref": "GateActions"}]}]}


def _value(node: Any, template: dict, parameters: dict[str, str]) -> Any:
    """A condition's operand with Ref (to a parameter), Fn::Join and Fn::Split evaluated."""
    if isinstance(node, dict) and "Ref" in node:
        return parameters.get(node["Ref"], template["Parameters"][node["Ref"]].get("Default"))
    if isinstance(node, dict) and "Fn::Join" in node:
        separator, items = node["Fn::Join"]
        return separator.join(_value(items, template, parameters))
    if isinstance(node, dict) and "Fn::Split" in node:
        separator, text = node["Fn::Split"]
        return _value(text, template, parameters).split(separator)
    assert isinstance(node, str), node
    return node


def _holds(condition: Any, template: dict, parameters: dict[str, str]) -> bool:
    """A template condition (by name or as written) under ``parameters`` (else the defaults)."""
    if isinstance(condition, str):
        return _holds(template["Conditions"][condition], template, parameters)
    [(function, operand)] = condition.items()
    if function == "Condition":
        return _holds(operand, template, parameters)
    if function in ("Fn::And", "Fn::Or"):
        results = [_holds(c, template, parameters) for c in operand]
        return all(results) if function == "Fn::And" else any(results)
    if function == "Fn::Not":
        return not _holds(operand[0], template, parameters)
    assert function == "Fn::Equals", function
    left, right = (_value(v, template, parameters) for v in operand)
    return left == right


GATE_ALWAYS = {"iot:DescribeCertificate", "iot:ListPrincipalThings", "logs:CreateLogStream", "logs:PutLogEvents",
               "sqs:SendMessage"}
QUARANTINE = {"iot:DescribeThingGroup", "iot:CreateThingGroup", "iot:AddThingToThingGroup"}


@pytest.mark.parametrize(("actions", "api", "granted"), [
    ("", "true", {"iot:DescribeCACertificate"}),  # report only: reads, nothing else
    ("UPDATE_DEVICE_CERTIFICATE,PUBLISH_FINDING_TO_SNS", "true",
     {"iot:DescribeCACertificate", "iot:UpdateCertificate", "sns:Publish"}),  # the default
    ("PUBLISH_FINDINGS_TO_SNS", "false", {"sns:Publish"}),  # the earlier name, which the gate accepts
    ("ADD_THINGS_TO_THING_GROUP", "false", QUARANTINE),
    ("UPDATE_CA_CERTIFICATE", "true", {"iot:DescribeCACertificate", "iot:UpdateCACertificate"}),
    ("UPDATE_CA_CERTIFICATE", "false", set()),  # CAs are gated only through API registrations
    ("UPDATE_DEVICE_CERTIFICATE, ADD_THINGS_TO_THING_GROUP, UPDATE_CA_CERTIFICATE, PUBLISH_FINDING_TO_SNS", "true",
     {"iot:UpdateCertificate", *QUARANTINE, "iot:DescribeCACertificate", "iot:UpdateCACertificate", "sns:Publish"}),
])
def test_the_gate_role_may_make_an_actions_calls_only_when_gate_actions_names_it(actions, api, granted):
    template = _template("template.yaml")
    parameters = {"EnableRegistrationGate": "true", "GateActions": actions, "GateApiRegistrations": api}
    allowed = {action for statement in _gate_statements().values()
               if statement["condition"] is None or _holds(statement["condition"], template, parameters)
               for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    assert allowed == GATE_ALWAYS | granted


def test_gate_actions_are_upper_case_as_the_roles_conditions_match_them():
    """The gate reads action names in any case; the conditions above compare them as written."""
    parameter = _template("template.yaml")["Parameters"]["GateActions"]
    assert re.fullmatch(parameter["AllowedPattern"], parameter["Default"])
    assert re.fullmatch(parameter["AllowedPattern"], "UPDATE_DEVICE_CERTIFICATE, PUBLISH_FINDING_TO_SNS")
    assert re.fullmatch(parameter["AllowedPattern"], "")
    assert not re.fullmatch(parameter["AllowedPattern"], "update_device_certificate")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("template", [p.name for p in TEMPLATES])
def test_no_arn_names_the_aws_partition(template):
    """A stack in aws-cn or aws-us-gov gets its own partition's ARNs (AWS::Partition)."""
    assert [s for s in _strings(_template(template)) if "arn:aws:" in s] == []


def _resources(node: Any) -> list[str]:
    """Every state's (and item reader's, result writer's) ``Resource``."""
    if isinstance(node, list):
        return [r for value in node for r in _resources(value)]
    if not isinstance(node, dict):
        return []
    own = [node["Resource"]] if isinstance(node.get("Resource"), str) else []
    return own + [r for key, value in node.items() if key != "Resource" for r in _resources(value)]


def test_the_fan_outs_integrations_are_in_the_stacks_partition():
    machine = _template("template.yaml")["Resources"]["FleetStateMachine"]["Properties"]
    resolved = {"${" + name + "}": value["Fn::Sub"].replace("${AWS::Partition}", "aws-cn") if "Fn::Sub" in value else
                "aws-cn" if value == {"Ref": "AWS::Partition"} else "resolved-elsewhere"
                for name, value in machine["DefinitionSubstitutions"].items()}
    resources = [re.sub(r"\$\{\w+\}", lambda m: resolved[m.group()], r) for r in _resources(machine["Definition"])]
    assert sorted(resources) == ["arn:aws-cn:states:::lambda:invoke", "arn:aws-cn:states:::lambda:invoke",
                                 "arn:aws-cn:states:::s3:getObject", "arn:aws-cn:states:::s3:putObject"]


def _build_lambda(monkeypatch, function: tuple[int, int], layer: tuple[int, int]) -> int:
    """infra/build_lambda.py's exit status for artifacts of these (unzipped, zipped) sizes."""
    spec = importlib.util.spec_from_file_location("build_lambda", INFRA / "build_lambda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "build", lambda *_: {"dependencies": (function[0], 0), "function.zip": function,
                                                     "blocklists-layer.zip": layer})
    return module.main([])


def test_build_lambda_fails_only_past_the_unzipped_limit(monkeypatch, capsys):
    """The template deploys from S3: a zip over 50 MB (the direct-upload limit) is named, not refused."""
    mb = 1024 * 1024
    assert _build_lambda(monkeypatch, (120 * mb, 60 * mb), (100 * mb, 55 * mb)) == 0
    out = capsys.readouterr().out
    assert "function.zip is over 50 MB zipped: upload it through S3" in out and "fits a zip deployment" in out
    assert _build_lambda(monkeypatch, (150 * mb, 40 * mb), (101 * mb, 30 * mb)) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_the_gate_rule_passes_what_the_gate_reads_and_nothing_else(aws):
    """The template's event pattern on moto's EventBridge, with CloudTrail-shaped records: every
    gated call's record is delivered, a failed call's and an ungated call's are not."""
    from test_registration_gate_api import cloudtrail_event

    events = boto3.client("events", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="gate")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = _template("template.yaml")["Resources"]["GateApiRule"]["Properties"]["EventPattern"]
    events.put_rule(Name="gate", EventPattern=json.dumps(pattern), State="ENABLED")
    events.put_targets(Rule="gate", Targets=[{"Id": "q", "Arn": queue_arn}])
    records = [cloudtrail_event(name, response={"certificateId": "a" * 64}) for name in API_REGISTRATIONS]
    records += [cloudtrail_event("RegisterCertificate", error="CertificateValidationException"),
                cloudtrail_event("CreateKeysAndCertificate", response={"certificateId": "b" * 64})]
    events.put_events(Entries=[{"Source": r["source"], "DetailType": r["detail-type"], "Detail": json.dumps(r["detail"])}
                               for r in records])
    delivered = []
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        delivered += [json.loads(m["Body"])["detail"]["eventName"] for m in batch]
        sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                           for i, m in enumerate(batch)])
    assert sorted(delivered) == sorted(API_REGISTRATIONS)


def test_the_gate_actions_default_names_current_action_types():
    """The template's default is what a deployed gate reads; it spells today's names, not the
    earlier PUBLISH_FINDINGS_TO_SNS that the gate still accepts."""
    from devicedefender_audit.models import MitigationActionType

    default = _template("template.yaml")["Parameters"]["GateActions"]["Default"]
    assert all(name in MitigationActionType.__members__ for name in default.split(","))
