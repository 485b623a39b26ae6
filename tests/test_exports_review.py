"""Exports as the systems that read them see them: ASFF against botocore's ``securityhub`` model
and Security Hub's documented limits, suppressed findings, and audits that did not check every
certificate."""

from __future__ import annotations

import re
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters
from conftest import REGION

from devicedefender_audit.exports.asff import AsffContext, asff_finding
from devicedefender_audit.models import AuditFinding, AuditTask, NonCompliantResource, ResourceIdentifier

ACCOUNT = "123456789012"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
#: Security Hub's documented limits that botocore's model does not carry (ASFF reference:
#: AwsSecurityFinding; Resources[].Details.Other "fewer than 1,024 characters").
MAX_LENGTHS = {"Title": 256, "Description": 1024, "Id": 512, "GeneratorId": 512}
MAX_OTHER_VALUE = 1023


def _securityhub_input_shape():
    model = botocore.session.get_session().get_service_model("securityhub")
    return model.operation_model("BatchImportFindings").input_shape


def _model_errors(value: Any, shape, path: str = "") -> list[str]:
    """Enum and pattern violations of ``value`` against ``shape`` (botocore's validator checks
    types, required members and minimums, but neither enums nor patterns)."""
    errors: list[str] = []
    if shape.type_name == "structure":
        for name, item in value.items():
            errors += _model_errors(item, shape.members[name], f"{path}.{name}")
    elif shape.type_name == "list":
        for n, item in enumerate(value):
            errors += _model_errors(item, shape.member, f"{path}[{n}]")
    elif shape.type_name == "map":
        for key, item in value.items():
            errors += _model_errors(key, shape.key, f"{path} key")
            errors += _model_errors(item, shape.value, f"{path}.{key}")
    elif shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not in {shape.enum}")
        pattern = shape.metadata.get("pattern")
        if pattern and not re.fullmatch(pattern, value, re.DOTALL):
            errors.append(f"{path}: {value!r} does not match {pattern}")
    return errors


def assert_importable(findings: list[dict[str, Any]]) -> None:
    """What BatchImportFindings would accept: botocore's shape, enums, patterns, and the
    documented lengths."""
    shape = _securityhub_input_shape()
    validate_parameters({"Findings": findings}, shape)
    assert _model_errors({"Findings": findings}, shape) == []
    for finding in findings:
        for name, limit in MAX_LENGTHS.items():
            assert len(finding[name]) <= limit, name
        for resource in finding["Resources"]:
            other = resource.get("Details", {}).get("Other", {})
            assert len(other) <= 50
            assert all(len(k) < 128 and len(v) <= MAX_OTHER_VALUE for k, v in other.items()), other


def make_finding(task: AuditTask, n: int = 1, *, things: str = "meter", suppressed: bool = False,
                 account: str = ACCOUNT) -> AuditFinding:
    cert_id = f"{n:064x}"
    return AuditFinding(
        task_id=task.task_id, task_start_time=task.task_start_time, is_suppressed=suppressed,
        non_compliant_resource=NonCompliantResource(
            resource_identifier=ResourceIdentifier(
                device_certificate_id=cert_id, device_certificate_arn=f"arn:aws:iot:{REGION}:{account}:cert/{cert_id}"),
            additional_info={"keyAlgorithm": "RSA", "keySize": "2048", "certificateStatus": "ACTIVE",
                             "things": things}),
        reason_for_non_compliance="RSA-2048 modulus has the ROCA structure", reason_for_non_compliance_code=ROCA)


def test_asff_of_a_finding_is_a_valid_batch_import_findings_input():
    document = asff_finding(make_finding(AuditTask(region=REGION)), AsffContext(ACCOUNT, REGION))
    assert_importable([document])


def test_asff_things_of_a_shared_certificate_fit_security_hubs_other_value_limit():
    """A certificate shared by a fleet of things (common in IoT) listed them all in one
    Details.Other value, over Security Hub's 1,024-character limit: the finding was rejected."""
    things = ",".join(f"factory-line-7-sensor-{n:05d}" for n in range(400))
    document = asff_finding(make_finding(AuditTask(region=REGION), things=things), AsffContext(ACCOUNT, REGION))
    assert_importable([document])
    shown = document["Resources"][0]["Details"]["Other"]["things"]
    assert shown.startswith("factory-line-7-sensor-00000,factory-line-7-sensor-00001,")
    listed = shown.split(" (+")[0].split(",")
    assert all(name.startswith("factory-line-7-sensor-") for name in listed)  # no name cut in half
    assert shown.endswith(f" (+{400 - len(listed)} more)")


@pytest.mark.parametrize("suppressed", [True, False])
def test_asff_suppressed_finding_is_created_suppressed_in_security_hub(suppressed):
    """A finding suppressed in the audit (CreateAuditSuppression) was imported NEW, so the
    accepted risk nagged in Security Hub as an open critical finding."""
    document = asff_finding(make_finding(AuditTask(region=REGION), suppressed=suppressed), AsffContext(ACCOUNT, REGION))
    assert_importable([document])
    assert document.get("Workflow") == ({"Status": "SUPPRESSED"} if suppressed else None)
    assert document["RecordState"] == "ACTIVE"


def _store_audit(path, findings_for, errors=(), status: str = "COMPLETED") -> AuditTask:
    """A stored audit whose findings ``findings_for(task)`` makes."""
    from devicedefender_audit.models import AuditTaskStatus
    from devicedefender_audit.store import open_store

    store = open_store(path)
    task = AuditTask(region=REGION, task_status=AuditTaskStatus(status))
    store.save_task(task)
    store.add_findings(findings_for(task))
    if errors:
        store.add_errors(task.task_id, list(errors))
    store.close()
    return task


def test_to_securityhub_refuses_another_accounts_findings(aws, tmp_path, capsys):
    """With the default product ARN, Security Hub takes a finding only from the account it is
    about (AwsAccountId == the caller): a member account's store (run --role-arn/--organization)
    sent with the administrator's credentials was rejected finding by finding, after the call."""
    import boto3

    from devicedefender_audit.cli import EXIT_USAGE, main

    member = "210987654321"
    store = tmp_path / f"audits.{member}.{REGION}.sqlite3"
    _store_audit(store, lambda task: [make_finding(task, n, account=member) for n in (1, 2)])
    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    code = main(["export", "--store", str(store), "--to-securityhub", "--region", REGION])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"account {member}" in err and ACCOUNT in err and "credentials" in err
    assert hub.get_findings()["Findings"] == []
