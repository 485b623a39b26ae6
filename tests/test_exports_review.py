"""Exports as the systems that read them see them: ASFF against botocore's ``securityhub`` model
and Security Hub's documented limits, suppressed findings, and audits that did not check every
certificate."""

from __future__ import annotations

import os
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
    assert (document.get("Note") or {}).get("UpdatedBy") == ("devicedefender-audit" if suppressed else None)
    assert document["RecordState"] == "ACTIVE"


def test_a_finding_found_before_the_audit_is_archived_whatever_the_python(monkeypatch):
    """Security Hub writes CreatedAt with a "Z", which Python before 3.11 does not parse: the
    finding was taken for one found later, and nothing was ever archived there."""
    from datetime import datetime, timezone

    from devicedefender_audit.exports import asff

    class Python310Datetime(datetime):
        @classmethod
        def fromisoformat(cls, text):
            if text.endswith("Z"):
                raise ValueError(f"Invalid isoformat string: {text!r}")
            return datetime.fromisoformat(text)

    monkeypatch.setattr(asff, "datetime", Python310Datetime)
    started = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert asff._found_after("2026-07-01T00:00:00.000Z", started)
    assert not asff._found_after("2026-05-01T00:00:00.000Z", started)


def _store_audit(path, findings_for, errors=(), status: str = "COMPLETED") -> AuditTask:
    """A stored audit whose findings ``findings_for(task)`` makes."""
    from devicedefender_audit.models import AuditTaskStatus
    from devicedefender_audit.store import open_store

    store = open_store(path)
    task = AuditTask(region=REGION, task_status=AuditTaskStatus(status))
    findings = findings_for(task)
    store.save_task(task)
    store.add_findings(findings)
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


def _failed_ca_check_task(task: AuditTask) -> None:
    """``task`` as an audit whose device check found something over part of the fleet, whose
    factorable check found nothing but could not cover every key, and whose CA check could not run."""
    from devicedefender_audit.models import AuditCheckDetails

    task.audit_details = {
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
            check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, total_resources_count=3,
            non_compliant_resources_count=1, failed_resources_count=1),
        "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK": AuditCheckDetails(
            check_run_status="FAILED", check_compliant=False, total_resources_count=3, not_covered_resources_count=1,
            error_code="RESOURCES_NOT_COVERED", message="1 key of a kind no detector data covers"),
        "CA_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
            check_run_status="FAILED", check_compliant=False, error_code="AccessDeniedException",
            message="iot:ListCACertificates denied"),
    }


def _incomplete_audit(tmp_path, status: str = "COMPLETED"):
    from devicedefender_audit.models import ResourceError
    from devicedefender_audit.store import open_store

    path = tmp_path / "a.sqlite3"
    errors = [ResourceError(certificate_id="e" * 64, error_code="THROTTLED", message="still throttled"),
              ResourceError(certificate_id="d" * 64, error_code="DELETED_DURING_SCAN", message="gone", left_scope=True)]
    task = _store_audit(path, lambda task: [make_finding(task, 1)], errors, status)
    _failed_ca_check_task(task)
    store = open_store(path)
    store.save_task(task)
    store.close()
    return path, task


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED"])
def test_csv_lists_unchecked_certificates_and_incomplete_checks(aws_env, tmp_path, status):
    """The CSV held findings only: a certificate that could not be checked, or a check that could
    not run (the CA listing denied), was absent, and a failed audit with no finding was a
    header-only file -- the spreadsheet of an all-clear."""
    import csv
    import io

    from devicedefender_audit.cli import EXIT_OK, main

    path, task = _incomplete_audit(tmp_path, status)
    out = tmp_path / "out.csv"
    assert main(["export", "--store", str(path), "--format", "csv", "--output", str(out)]) == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    by_type: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_type.setdefault(row["recordType"], []).append(row)
    assert [r["reasonCode"] for r in by_type["FINDING"]] == [ROCA]
    assert [(r["certificateId"], r["reasonCode"]) for r in by_type["RESOURCE_NOT_CHECKED"]] == [("e" * 64, "THROTTLED")]
    incomplete = {r["checkName"]: r["reasonCode"] for r in by_type["CHECK_INCOMPLETE"]}
    assert incomplete == {"DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK": "RESOURCES_NOT_COVERED",
                          "CA_CERTIFICATE_KEY_QUALITY_CHECK": "AccessDeniedException"}
    assert all(r["taskId"] == task.task_id for r in rows)


def test_sarif_says_the_audit_did_not_complete_and_marks_suppressed_results(aws_env, tmp_path):
    """SARIF had no invocation: a consumer saw a successful run whatever the audit's status, and a
    suppressed finding was an unsuppressed error alert."""
    import json

    from devicedefender_audit.cli import EXIT_OK, main
    from devicedefender_audit.store import open_store

    path, task = _incomplete_audit(tmp_path, "FAILED")
    store = open_store(path)
    store.add_findings([make_finding(task, 2, suppressed=True)])
    store.close()
    out = tmp_path / "out.sarif"
    assert main(["export", "--store", str(path), "--format", "sarif", "--output", str(out)]) == EXIT_OK
    run = json.loads(out.read_text())["runs"][0]
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    notes = [n["message"]["text"] for n in invocation["toolExecutionNotifications"]]
    assert any("FAILED" in n and task.task_id in n for n in notes)
    assert any("CA_CERTIFICATE_KEY_QUALITY_CHECK" in n and "AccessDeniedException" in n for n in notes)
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert [r["locations"][0]["logicalLocations"][0]["name"] for r in suppressed] == [f"{2:064x}"]
    assert suppressed[0]["suppressions"] == [{"kind": "external", "status": "accepted"}]


def test_sarif_of_a_complete_audit_is_a_successful_invocation(aws_env, tmp_path):
    import json

    from devicedefender_audit.cli import EXIT_OK, main
    from devicedefender_audit.models import AuditCheckDetails

    path = tmp_path / "a.sqlite3"
    task = _store_audit(path, lambda task: [])
    from devicedefender_audit.store import open_store

    task.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
        check_run_status="COMPLETED_COMPLIANT", check_compliant=True, total_resources_count=5)}
    store = open_store(path)
    store.save_task(task)
    store.close()
    out = tmp_path / "out.sarif"
    assert main(["export", "--store", str(path), "--format", "sarif", "--output", str(out)]) == EXIT_OK
    run = json.loads(out.read_text())["runs"][0]
    assert run["results"] == [] and run["invocations"] == [{"executionSuccessful": True}]


def test_asff_export_of_an_incomplete_audit_warns(aws_env, tmp_path, capsys):
    """ASFF has no place for a certificate that was not checked; the export says so on stderr
    rather than passing a partial list off as the account's findings."""
    from devicedefender_audit.cli import EXIT_OK, main

    path, task = _incomplete_audit(tmp_path, "FAILED")
    out = tmp_path / "out.json"
    assert main(["export", "--store", str(path), "--format", "asff", "--output", str(out), "--account-id", ACCOUNT,
                 "--region", REGION]) == EXIT_OK
    err = capsys.readouterr().err
    assert f"warning: audit {task.task_id} is FAILED" in err
    assert "1 certificate(s) could not be checked" in err
    assert "CA_CERTIFICATE_KEY_QUALITY_CHECK" in err


def _hub_findings(hub) -> dict[str, dict[str, Any]]:
    return {f["Id"]: f for page in hub.get_paginator("get_findings").paginate() for f in page["Findings"]}


def test_to_securityhub_archives_findings_a_later_complete_audit_no_longer_reports(aws, tmp_path, capsys):
    """A weak certificate deactivated or replaced drops out of the next audit, but its Security
    Hub finding stayed ACTIVE for ever: an export now archives the findings of this tool that a
    complete check no longer reports -- never one of a certificate that could not be checked, of
    a check that did not complete, or of another account's or product's findings."""
    import boto3

    from devicedefender_audit.cli import EXIT_OK, main
    from devicedefender_audit.models import AuditCheckDetails, ResourceError
    from devicedefender_audit.store import open_store

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    first = _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2, 3)])
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    before = _hub_findings(hub)
    assert {f["RecordState"] for f in before.values()} == {"ACTIVE"} and len(before) == 3
    foreign = {**next(iter(before.values())), "Id": "another-tool/1", "GeneratorId": "another-tool"}
    hub.batch_import_findings(Findings=[foreign])

    # The next audit: certificate 1 is still weak, 2 was fixed, 3 could not be checked this time.
    store = open_store(store_path)
    second = AuditTask(region=REGION, task_status="COMPLETED")
    second.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
        check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, total_resources_count=3,
        non_compliant_resources_count=1, failed_resources_count=1)}
    store.save_task(second)
    store.add_findings([make_finding(second, 1)])
    store.add_errors(second.task_id, [ResourceError(certificate_id=f"{3:064x}", error_code="THROTTLED", message="x")])
    store.close()
    assert first.task_id != second.task_id
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    out = capsys.readouterr().out
    assert "archived 1 finding(s) no longer reported" in out
    after = _hub_findings(hub)
    state = {f["Resources"][0]["Details"]["Other"].get("deviceCertificateId", f["Id"]): f["RecordState"]
             for f in after.values() if f["Id"] != "another-tool/1"}
    assert state == {f"{1:064x}": "ACTIVE", f"{2:064x}": "ARCHIVED", f"{3:064x}": "ACTIVE"}
    assert after["another-tool/1"]["RecordState"] == "ACTIVE"
    archived = next(f for f in after.values() if f["RecordState"] == "ARCHIVED")
    assert_importable([{k: v for k, v in archived.items()}])


def test_to_securityhub_archives_nothing_after_an_incomplete_audit(aws, tmp_path, capsys):
    import boto3

    from devicedefender_audit.cli import EXIT_OK, main
    from devicedefender_audit.store import open_store

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2)])
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    store = open_store(store_path)
    failed = AuditTask(region=REGION, task_status="FAILED")  # its check never completed
    store.save_task(failed)
    store.close()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    assert {f["RecordState"] for f in _hub_findings(hub).values()} == {"ACTIVE"}
    assert "archived" not in capsys.readouterr().out


def test_to_securityhub_without_get_findings_sends_nothing(aws, tmp_path, capsys, monkeypatch):
    import boto3
    from botocore.exceptions import ClientError

    from devicedefender_audit.cli import EXIT_FAILED, main
    from devicedefender_audit.exports import securityhub_sync
    from devicedefender_audit.models import AuditCheckDetails

    def denied(*args, **kwargs):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "GetFindings")

    monkeypatch.setattr(securityhub_sync, "own_findings", denied)
    boto3.client("securityhub", region_name=REGION).enable_security_hub()
    store_path = tmp_path / "a.sqlite3"

    def complete(task: AuditTask) -> list[AuditFinding]:
        task.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
            check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, non_compliant_resources_count=1)}
        return [make_finding(task, 1)]

    _store_audit(store_path, complete)
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "imported 0 of 1" in captured.out
    assert "error: securityhub:GetFindings: AccessDeniedException: not authorized" in captured.err
    assert "could not be looked up, so nothing was sent" in captured.err


def _exported(store_path, capsys) -> str:
    """What ``export --to-securityhub`` of the store's latest audit printed; it must succeed."""
    from devicedefender_audit.cli import EXIT_OK, main

    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    return capsys.readouterr().out


def _workflows(hub) -> dict[int, tuple[str, str | None]]:
    """(workflow status, note author) of each finding in Security Hub, by certificate number."""
    return {int(f["Resources"][0]["Details"]["Other"]["deviceCertificateId"], 16):
            (f["Workflow"]["Status"], f.get("Note", {}).get("UpdatedBy")) for f in _hub_findings(hub).values()}


def test_to_securityhub_carries_suppressions_made_or_ended_after_the_import(aws, tmp_path, capsys):
    """Security Hub takes a provider's workflow only when it creates a finding, so a finding
    suppressed in the audit after its import stayed an open critical NEW finding there for
    ever. The export now sets it as a customer does (BatchUpdateFindings, with a note of this
    tool's), reopens what this tool suppressed when the suppression ends, and leaves alone what
    someone resolved or suppressed in Security Hub by hand."""
    import boto3


    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"

    def export() -> str:
        return _exported(store_path, capsys)

    def audit(suppressed: set[int], numbers=(1, 2, 3, 4, 5)) -> None:
        _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n in suppressed) for n in numbers])

    audit(set(), numbers=(1, 2, 3, 4))
    export()
    assert set(_workflows(hub).values()) == {("NEW", None)}
    # An analyst resolves 3 and suppresses 4 in Security Hub.
    by_number = {int(f["Resources"][0]["Details"]["Other"]["deviceCertificateId"], 16): f
                 for f in _hub_findings(hub).values()}
    for number, status in ((3, "RESOLVED"), (4, "SUPPRESSED")):
        hub.batch_update_findings(FindingIdentifiers=[{"Id": by_number[number]["Id"],
                                                       "ProductArn": by_number[number]["ProductArn"]}],
                                  Workflow={"Status": status}, Note={"Text": "seen", "UpdatedBy": "alice"})

    audit({1, 2, 3, 5})  # 1, 2 and 3 suppressed since their import; 5 is new, and suppressed
    assert "suppressed 2 finding(s); 0 failed" in export()
    ours = "devicedefender-audit"
    assert _workflows(hub) == {1: ("SUPPRESSED", ours), 2: ("SUPPRESSED", ours), 3: ("RESOLVED", "alice"),
                               4: ("SUPPRESSED", "alice"), 5: ("SUPPRESSED", ours)}

    audit({2})  # the suppressions of 1, 3 and 5 end; 4 was never suppressed in the audit
    assert "reopened (suppression ended) 2 finding(s); 0 failed" in export()
    assert _workflows(hub) == {1: ("NEW", ours), 2: ("SUPPRESSED", ours), 3: ("RESOLVED", "alice"),
                               4: ("SUPPRESSED", "alice"), 5: ("NEW", ours)}
    assert "suppressed" not in export() and "reopened" not in export()  # nothing changed: no call


def _refuse_batch_update_findings(monkeypatch, refused) -> None:
    """Security Hub answers the ``BatchUpdateFindings`` calls for which ``refused(workflow)`` is
    true with AccessDeniedException (a role without the permission, or one call of a series)."""
    from moto.core.exceptions import JsonRESTError
    from moto.securityhub.models import SecurityHubBackend

    original = SecurityHubBackend.batch_update_findings

    def answer(self, identifiers, workflow, note):
        if refused(workflow):
            raise JsonRESTError("AccessDeniedException", "not authorized")
        return original(self, identifiers, workflow, note)

    monkeypatch.setattr(SecurityHubBackend, "batch_update_findings", answer)


def test_to_securityhub_without_batch_update_findings_says_so_and_still_archives(aws, tmp_path, capsys,
                                                                                 monkeypatch):
    """A role without securityhub:BatchUpdateFindings (a stack from before it was needed) fails
    the export with one line naming the call; the import and the archiving are still done."""
    import boto3

    from devicedefender_audit.cli import EXIT_FAILED, EXIT_OK, main
    from devicedefender_audit.models import AuditCheckDetails

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2)])
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    _refuse_batch_update_findings(monkeypatch, lambda workflow: True)

    def complete(task: AuditTask) -> list[AuditFinding]:  # 1 is suppressed now, 2 was fixed
        task.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
            check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, total_resources_count=2,
            non_compliant_resources_count=1)}
        return [make_finding(task, 1, suppressed=True)]

    _store_audit(store_path, complete)
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "imported 1 of 1" in captured.out and "archived 1 finding(s)" in captured.out
    assert "suppressed 0 finding(s)" in captured.out
    assert "error: securityhub:BatchUpdateFindings: AccessDeniedException: not authorized" in captured.err
    assert _workflows(hub)[1] == ("NEW", None)


def test_a_failed_workflow_call_keeps_what_the_calls_before_it_did(aws, tmp_path, capsys, monkeypatch):
    """One BatchUpdateFindings call failing as a whole lost the count of the batches before it
    (which Security Hub had applied) and kept the other status from being set at all."""
    import boto3

    from devicedefender_audit.cli import EXIT_FAILED, EXIT_OK, main

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    numbers = [*range(1, 151), 900]
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n == 900) for n in numbers])
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    calls: list[str] = []

    def second_suppression_call(workflow) -> bool:
        calls.append(workflow["Status"])
        return workflow["Status"] == "SUPPRESSED" and calls.count("SUPPRESSED") == 2

    _refuse_batch_update_findings(monkeypatch, second_suppression_call)
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n != 900) for n in numbers])
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "suppressed 100 finding(s); 0 failed" in captured.out
    assert "reopened (suppression ended) 1 finding(s); 0 failed" in captured.out
    assert "error: securityhub:BatchUpdateFindings: AccessDeniedException" in captured.err
    states = _workflows(hub)
    assert sum(state == ("SUPPRESSED", "devicedefender-audit") for state in states.values()) == 100
    assert states[900] == ("NEW", "devicedefender-audit")


def test_a_finding_refused_for_a_passing_reason_is_sent_once_more(aws, tmp_path, capsys, monkeypatch):
    """Security Hub refuses an update that meets an import still being processed
    (ConcurrentUpdateError), and the sync updates findings it has just imported: each such
    finding is sent once more after a pause, and only a second refusal is a failure."""
    import boto3
    from moto.securityhub.models import SecurityHubBackend

    from devicedefender_audit.aws import securityhub
    from devicedefender_audit.cli import EXIT_FAILED, EXIT_OK, main

    monkeypatch.setattr(securityhub, "RETRY_PAUSE", 0)
    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2, 3)])
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_OK
    original, calls = SecurityHubBackend.batch_update_findings, []
    busy = {1: 1, 2: 2}  # how many attempts Security Hub refuses, by certificate

    def concurrent(self, identifiers, workflow, note):
        calls.append(len(identifiers))
        refused = [i for i in identifiers if busy.get(int(i["Id"].split("/")[4], 16), 0) > 0]
        for identifier in refused:
            busy[int(identifier["Id"].split("/")[4], 16)] -= 1
        processed, unprocessed = original(self, [i for i in identifiers if i not in refused], workflow, note)
        return processed, unprocessed + [{"FindingIdentifier": i, "ErrorCode": "ConcurrentUpdateError",
                                          "ErrorMessage": "busy"} for i in refused]

    monkeypatch.setattr(SecurityHubBackend, "batch_update_findings", concurrent)
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=True) for n in (1, 2, 3)])
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert calls == [3, 2]  # all three, then the two refused
    assert "suppressed 2 finding(s); 1 failed" in captured.out
    assert f"/{2:064x}/" in captured.err and "ConcurrentUpdateError: busy" in captured.err
    assert {n: state[0] for n, state in _workflows(hub).items()} == {1: "SUPPRESSED", 2: "NEW", 3: "SUPPRESSED"}


def test_a_suppression_made_or_ended_is_carried_over_whatever_the_note(aws, tmp_path, capsys):
    """The owner of a workflow was judged by its note alone, so a finding stayed hidden when the
    audit no longer suppressed it: one created suppressed by the previous release (no note), or
    one an analyst commented on (Security Hub keeps one note). A suppression made or ended in
    the audit is a decision and is carried over, whatever the note; a NOTIFIED set by hand stays
    until such a decision."""
    import boto3

    from devicedefender_audit.exports.asff import AsffContext, asff_finding

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    # 1 as the previous release created a suppressed finding: SUPPRESSED, and no note.
    legacy = asff_finding(make_finding(AuditTask(region=REGION), 1, suppressed=True), AsffContext(ACCOUNT, REGION))
    hub.batch_import_findings(Findings=[{k: v for k, v in legacy.items() if k != "Note"}])
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n in (1, 2)) for n in (1, 2, 3)])
    _exported(store_path, capsys)
    by_number = {int(f["Resources"][0]["Details"]["Other"]["deviceCertificateId"], 16): f
                 for f in _hub_findings(hub).values()}
    assert (by_number[1]["Workflow"]["Status"], by_number[1].get("Note")) == ("SUPPRESSED", None)
    hub.batch_update_findings(FindingIdentifiers=[{"Id": by_number[2]["Id"], "ProductArn": by_number[2]["ProductArn"]}],
                              Note={"Text": "ticket SEC-42", "UpdatedBy": "alice"})  # a comment, status unchanged
    hub.batch_update_findings(FindingIdentifiers=[{"Id": by_number[3]["Id"], "ProductArn": by_number[3]["ProductArn"]}],
                              Workflow={"Status": "NOTIFIED"})  # set by hand in the console: no note
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n in (1, 2)) for n in (1, 2, 3)])
    assert "suppressed" not in _exported(store_path, capsys)  # no decision: NOTIFIED stays

    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n == 3) for n in (1, 2, 3)])
    out = _exported(store_path, capsys)
    assert "reopened (suppression ended) 2 finding(s)" in out and "suppressed 1 finding(s)" in out
    states = _workflows(hub)
    assert (states[1][0], states[2][0], states[3][0]) == ("NEW", "NEW", "SUPPRESSED")


def test_to_securityhub_refuses_an_audit_that_a_later_complete_one_replaced(aws, tmp_path, capsys):
    """Exporting an older audit to Security Hub put back the suppressions (and findings) that
    later audits had changed: only an audit no later one completed after is sent (a later one
    that failed does not replace it)."""
    import boto3

    from devicedefender_audit.cli import EXIT_USAGE, main

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    older = _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])
    _store_audit(store_path, lambda task: [make_finding(task, 1)])
    _exported(store_path, capsys)
    assert main(["export", older.task_id, "--store", str(store_path), "--to-securityhub",
                 "--region", REGION]) == EXIT_USAGE
    assert f"completed after {older.task_id}" in capsys.readouterr().err
    assert _workflows(hub) == {1: ("NEW", None)}
    # Written to a file, an older audit is still exported.
    assert main(["export", older.task_id, "--store", str(store_path), "--format", "asff",
                 "--output", str(tmp_path / "older.json")]) == 0
    # An audit that failed after the last complete one does not keep that one from being sent.
    good = _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])
    _store_audit(store_path, lambda task: [], status="FAILED")
    capsys.readouterr()
    assert main(["export", good.task_id, "--store", str(store_path), "--to-securityhub",
                 "--region", REGION]) == 0
    assert _workflows(hub)[1][0] == "SUPPRESSED"


def _comment(hub, finding) -> None:
    """An analyst's comment on a finding, its status left as it is (Security Hub keeps one note)."""
    hub.batch_update_findings(FindingIdentifiers=[{"Id": finding["Id"], "ProductArn": finding["ProductArn"]}],
                              Note={"Text": "ticket SEC-42", "UpdatedBy": "alice"})


def _by_number(hub) -> dict[int, dict[str, Any]]:
    return {int(f["Resources"][0]["Details"]["Other"]["deviceCertificateId"], 16): f for f in _hub_findings(hub).values()}


def test_a_decision_whose_change_failed_is_carried_over_by_the_next_export(aws, tmp_path, capsys, monkeypatch):
    """The import recorded the audit's new suppression even when its workflow change had been
    refused, so the next export saw no decision, and a finding whose note was an analyst's
    comment stayed SUPPRESSED for ever although the audit showed it open."""
    import boto3

    from devicedefender_audit.cli import EXIT_FAILED, main

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])
    _exported(store_path, capsys)  # created SUPPRESSED with this tool's note
    _comment(hub, _by_number(hub)[1])
    _store_audit(store_path, lambda task: [make_finding(task, 1)])  # the suppression ends
    with monkeypatch.context() as refused:
        _refuse_batch_update_findings(refused, lambda workflow: True)
        assert main(["export", "--store", str(store_path), "--to-securityhub", "--region", REGION]) == EXIT_FAILED
    assert _by_number(hub)[1]["ProductFields"]["devicedefender-audit/Suppressed"] == "true"  # still to carry
    assert "reopened (suppression ended) 1 finding(s)" in _exported(store_path, capsys)
    assert _workflows(hub)[1] == ("NEW", "devicedefender-audit")
    assert "reopened" not in _exported(store_path, capsys)


def test_a_finding_reported_again_after_its_archiving_gets_the_audits_workflow(aws, tmp_path, capsys):
    """Only active findings were looked up, so one archived while suppressed (its certificate
    replaced) came back, reported again with its suppression ended, still SUPPRESSED."""
    import boto3

    from devicedefender_audit.models import AuditCheckDetails

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"

    def audit(numbers, suppressed=()):
        def make(task):
            task.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
                check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False,
                non_compliant_resources_count=len(numbers))}
            return [make_finding(task, n, suppressed=n in suppressed) for n in numbers]
        _store_audit(store_path, make)

    audit((1, 2), suppressed=(1,))
    _exported(store_path, capsys)
    _comment(hub, _by_number(hub)[1])
    audit((2,))
    assert "archived 1 finding(s)" in _exported(store_path, capsys)
    audit((1, 2))  # reported again, no longer suppressed
    assert "reopened (suppression ended) 1 finding(s)" in _exported(store_path, capsys)
    assert (_by_number(hub)[1]["RecordState"], _workflows(hub)[1][0]) == ("ACTIVE", "NEW")


def test_a_reopen_by_hand_after_an_import_that_failed_stands(aws, tmp_path, capsys, monkeypatch):
    """The workflow was set but the import that records the decision failed: the next export
    took the same decision again and overruled the analyst who had reopened the finding since
    (this tool's note, naming SUPPRESSED, tells the status was changed by hand)."""
    import boto3
    from moto.core.exceptions import JsonRESTError
    from moto.securityhub.models import SecurityHubBackend

    from devicedefender_audit.cli import EXIT_FAILED, main

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    _store_audit(store_path, lambda task: [make_finding(task, 1)])
    _exported(store_path, capsys)
    _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])

    def refused(self, findings):
        raise JsonRESTError("AccessDeniedException", "not authorized")

    with monkeypatch.context() as denied:
        denied.setattr(SecurityHubBackend, "batch_import_findings", refused)
        assert main(["export", "--store", str(store_path), "--to-securityhub",
                     "--region", REGION]) == EXIT_FAILED
    assert _workflows(hub)[1] == ("SUPPRESSED", "devicedefender-audit")
    finding = _by_number(hub)[1]
    hub.batch_update_findings(FindingIdentifiers=[{"Id": finding["Id"], "ProductArn": finding["ProductArn"]}],
                              Workflow={"Status": "NEW"})  # reopened in the console: no note
    _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])
    assert "suppressed" not in _exported(store_path, capsys)
    assert _workflows(hub)[1][0] == "NEW"


def test_a_suppression_made_again_after_a_reopen_by_hand_is_carried_over(aws, tmp_path, capsys):
    """This tool's note, naming SUPPRESSED, stayed on a finding an analyst had reopened, so when
    the audit suppressed it again later the stale note read as a hand edit and the new decision
    was dropped with exit 0."""
    import boto3

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"
    for suppressed in (False, True):
        _store_audit(store_path, lambda task, s=suppressed: [make_finding(task, 1, suppressed=s)])
        _exported(store_path, capsys)
    finding = _by_number(hub)[1]
    hub.batch_update_findings(FindingIdentifiers=[{"Id": finding["Id"], "ProductArn": finding["ProductArn"]}],
                              Workflow={"Status": "NEW"})  # reopened in the console: this tool's note stays
    _store_audit(store_path, lambda task: [make_finding(task, 1)])  # the suppression ends
    _exported(store_path, capsys)
    assert _workflows(hub)[1] == ("NEW", "devicedefender-audit")
    _store_audit(store_path, lambda task: [make_finding(task, 1, suppressed=True)])  # suppressed again
    assert "suppressed 1 finding(s)" in _exported(store_path, capsys)
    assert _workflows(hub)[1][0] == "SUPPRESSED"


def test_a_workflow_set_by_hand_after_this_tools_is_left_as_it_is(aws, tmp_path, capsys):
    """This tool's note stays on a finding when someone changes its status without one (the
    console does), so the note alone cannot say who set the status: an analyst who reopened a
    finding the tool suppressed, or suppressed one it had reopened, was overruled by the next
    export, and the analyst's own note erased."""
    import boto3


    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    store_path = tmp_path / "a.sqlite3"

    def export() -> str:
        return _exported(store_path, capsys)

    def by_hand(number: int, status: str, note: dict[str, str] | None = None) -> None:
        [finding] = [f for f in _hub_findings(hub).values()
                     if f["Resources"][0]["Details"]["Other"]["deviceCertificateId"] == f"{number:064x}"]
        hub.batch_update_findings(FindingIdentifiers=[{"Id": finding["Id"], "ProductArn": finding["ProductArn"]}],
                                  Workflow={"Status": status}, **({"Note": note} if note else {}))

    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n in (1, 2)) for n in (1, 2, 3)])
    export()  # 1 and 2 are created suppressed by this tool; 3 is open
    by_hand(1, "NEW")  # reopened in the console: this tool's note stays
    by_hand(2, "NEW", {"Text": "not accepted: replace the devices", "UpdatedBy": "alice"})
    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n in (1, 2)) for n in (1, 2, 3)])
    assert "suppressed" not in export()
    ours = "devicedefender-audit"
    assert _workflows(hub) == {1: ("NEW", ours), 2: ("NEW", "alice"), 3: ("NEW", None)}

    _store_audit(store_path, lambda task: [make_finding(task, n, suppressed=n == 3) for n in (1, 2, 3)])
    assert "suppressed 1 finding(s)" in export()  # 3: nobody had set its workflow
    by_hand(3, "NEW")
    _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2, 3)])
    # 3 was reopened by hand already: only this tool's note is brought up to date.
    assert "reopened (suppression ended) 1 finding(s)" in export()
    assert _workflows(hub) == {1: ("NEW", ours), 2: ("NEW", "alice"), 3: ("NEW", ours)}
    by_hand(1, "SUPPRESSED")  # suppressed by hand after this tool's note said it reopened it
    _store_audit(store_path, lambda task: [make_finding(task, n) for n in (1, 2, 3)])
    assert "reopened" not in export()
    assert _workflows(hub)[1] == ("SUPPRESSED", ours)


def test_output_that_fails_mid_write_leaves_the_previous_file_whole(aws_env, tmp_path):
    """--output was written in place: a disk that filled up mid-write left a truncated CSV (fewer
    rows: fewer weak certificates) or JSON where the last export had been. The file is now
    replaced only once written whole. The failure is made real with RLIMIT_FSIZE (EFBIG)."""
    import subprocess
    import sys

    from conftest import REPO

    store = tmp_path / "a.sqlite3"
    _store_audit(store, lambda task: [make_finding(task, n) for n in range(1, 400)])
    out = tmp_path / "findings.csv"
    out.write_text("previous export\n")
    probe = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
             "from devicedefender_audit.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", probe, "export", "--store", str(store), "--format", "csv",
                           "--output", str(out)], check=False, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "cannot be written" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("findings")) == ["findings.csv"]


def test_output_replaces_an_existing_file_keeping_its_mode_and_writes_to_a_device(aws_env, tmp_path):
    import stat

    from devicedefender_audit.cli import EXIT_OK, main

    store = tmp_path / "a.sqlite3"
    _store_audit(store, lambda task: [make_finding(task, 1)])
    out = tmp_path / "findings.json"
    out.write_text("old")
    out.chmod(0o640)
    assert main(["export", "--store", str(store), "--output", str(out)]) == EXIT_OK
    assert '"findings"' in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert main(["export", "--store", str(store), "--output", "/dev/null"]) == EXIT_OK
    # a writable file in a directory where no file can be created is written in place
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "findings.json").write_text("old")
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere
            assert main(["export", "--store", str(store), "--output", str(locked / "findings.json")]) == EXIT_OK
            assert '"findings"' in (locked / "findings.json").read_text()
    finally:
        locked.chmod(0o755)
