"""Exports (ASFF, SARIF, CSV, JSON) from one finding model; Security Hub import against moto."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from conftest import DATA, REGION, REPO

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.securityhub import import_findings
from devicedefender_audit.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from devicedefender_audit.cli_export import _to_securityhub
from devicedefender_audit.exports.asff import AsffContext, asff_finding
from devicedefender_audit.models import (
    AuditFinding,
    AuditTask,
    NonCompliantResource,
    ResourceError,
    ResourceIdentifier,
)
from devicedefender_audit.store import open_store

ACCOUNT = "123456789012"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
ASFF_REQUIRED = ("SchemaVersion", "Id", "ProductArn", "GeneratorId", "AwsAccountId", "Types", "CreatedAt",
                 "UpdatedAt", "Severity", "Title", "Description", "Resources")
FACTOR = "1" * 30 + "7" * 60  # a 90-digit "prime factor" that must never leave the tool
PRIVATE_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n" \
              "-----END RSA PRIVATE KEY-----"


def _finding(task: AuditTask, n: int, reason: str = "RSA-2048 modulus is a ROCA key", things: str = "meter") -> AuditFinding:
    cert_id = f"{n:064x}"
    return AuditFinding(
        task_id=task.task_id, task_start_time=task.task_start_time,
        non_compliant_resource=NonCompliantResource(
            resource_identifier=ResourceIdentifier(
                device_certificate_id=cert_id, device_certificate_arn=f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{cert_id}"),
            additional_info={"keyAlgorithm": "RSA", "keySize": "2048", "certificateStatus": "ACTIVE",
                             "things": things, "privateExponent": FACTOR}),
        reason_for_non_compliance=reason, reason_for_non_compliance_code=ROCA)


def _stored_audit(path: Path, count: int, **finding_args: str) -> AuditTask:
    store = open_store(path)
    task = AuditTask(region=REGION)
    store.save_task(task)
    store.add_findings([_finding(task, n + 1, **finding_args) for n in range(count)])
    store.add_errors(task.task_id, [ResourceError(certificate_id="f" * 64, error_code="MALFORMED_CERTIFICATE",
                                                  message="not a certificate")])
    store.close()
    return task


def test_asff_has_every_required_attribute_and_a_stable_id(tmp_path):
    task = AuditTask(region=REGION)
    finding = _finding(task, 1)
    context = AsffContext(account_id="999999999999", region="eu-west-1")
    document = asff_finding(finding, context)
    assert all(document.get(name) for name in ASFF_REQUIRED)
    assert document["ProductArn"] == "arn:aws:securityhub:eu-west-1:999999999999:product/999999999999/default"
    assert document["AwsAccountId"] == ACCOUNT  # the audited account, from the certificate ARN
    assert document["Severity"]["Label"] == "CRITICAL"
    assert document["Vulnerabilities"][0]["Id"] == "CVE-2017-15361"
    assert document["CreatedAt"].endswith("Z") and document["UpdatedAt"] >= document["CreatedAt"]
    # the same certificate and flaw in a later audit is the same Security Hub finding
    later = _finding(AuditTask(region=REGION), 1)
    assert asff_finding(later, context)["Id"] == document["Id"]


def test_export_to_securityhub_in_batches_of_100(aws, tmp_path, capsys):
    store = tmp_path / "audits.sqlite3"
    _stored_audit(store, 150)
    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    for _ in range(2):  # a re-export updates the same findings instead of duplicating them
        code = main(["export", "--store", str(store), "--to-securityhub", "--region", REGION])
        out = capsys.readouterr().out
        assert code == EXIT_OK
        assert "imported 150 of 150 finding(s) in 2 request(s); 0 failed" in out
    imported = [f for page in hub.get_paginator("get_findings").paginate() for f in page["Findings"]]
    assert len(imported) == 150
    assert {f["ProductArn"] for f in imported} == {
        f"arn:aws:securityhub:{REGION}:{ACCOUNT}:product/{ACCOUNT}/default"}


def test_security_hub_sync_turns_findings_into_asff_a_batch_at_a_time(aws, monkeypatch):
    """A product line with a ROCA chip gives as many findings as devices: the sync converts and
    sends 100 at a time instead of holding every ASFF finding (2-3 KB each) at once."""
    from devicedefender_audit.exports import securityhub_sync

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    events: list[str] = []

    def converted(finding, context):
        events.append("asff")
        return asff_finding(finding, context)

    monkeypatch.setattr(securityhub_sync, "asff_finding", converted)
    hub.meta.events.register("before-call.securityhub.BatchImportFindings", lambda **_: events.append("import"))
    task = AuditTask(region=REGION)
    result = securityhub_sync.sync_audit(hub, task, [_finding(task, n) for n in range(250)], [],
                                         AsffContext(ACCOUNT, REGION))
    assert (result.imported.success_count, result.failed) == (250, False)
    assert events == ["asff"] * 100 + ["import"] + ["asff"] * 100 + ["import"] + ["asff"] * 50 + ["import"]


def test_an_import_call_refused_midway_keeps_the_count_of_the_batches_before_it(aws, monkeypatch):
    """A BatchImportFindings call that fails as a whole (denied, throttled past the retries)
    raised out of the sync, losing the count of the findings Security Hub already held."""
    from moto.core.exceptions import JsonRESTError
    from moto.securityhub.models import SecurityHubBackend

    from devicedefender_audit.exports.securityhub_sync import sync_audit

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    original, calls = SecurityHubBackend.batch_import_findings, []

    def second_refused(self, findings):
        calls.append(len(findings))
        if len(calls) == 2:
            raise JsonRESTError("AccessDeniedException", "not authorized")
        return original(self, findings)

    monkeypatch.setattr(SecurityHubBackend, "batch_import_findings", second_refused)
    task = AuditTask(region=REGION)
    result = sync_audit(hub, task, [_finding(task, n) for n in range(250)], [], AsffContext(ACCOUNT, REGION))
    assert calls == [100, 100] and result.imported.success_count == 100 and result.failed
    assert result.errors == ["securityhub:BatchImportFindings: AccessDeniedException: not authorized"]


def test_failed_findings_are_reported_not_dropped(aws, capsys, monkeypatch):
    from devicedefender_audit.exports import securityhub_sync

    hub = boto3.client("securityhub", region_name=REGION)
    hub.enable_security_hub()
    task = AuditTask(region=REGION)
    good = asff_finding(_finding(task, 1), AsffContext(ACCOUNT, REGION))
    bad = {**good, "Id": "bad", "Resources": []}
    result = import_findings(hub, [good, bad])
    assert result.success_count == 1 and [f["Id"] for f in result.failed] == ["bad"]

    def rejected_second(finding, context):  # Security Hub refuses the second finding
        document = asff_finding(finding, context)
        return {**document, "Id": "bad", "Resources": []} if finding.certificate_id == f"{2:064x}" else document

    monkeypatch.setattr(securityhub_sync, "asff_finding", rejected_second)
    findings = [_finding(task, 1), _finding(task, 2)]
    assert _to_securityhub(AwsTarget(region=REGION), task, [], AsffContext(ACCOUNT, REGION), findings) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "imported 1 of 2" in captured.out and "1 failed" in captured.out
    assert "error: bad: InvalidInput" in captured.err


def test_to_securityhub_only_sends_asff(aws_env, tmp_path, capsys):
    _stored_audit(tmp_path / "a.sqlite3", 1)
    assert main(["export", "--store", str(tmp_path / "a.sqlite3"), "--to-securityhub", "--format", "csv"]) == EXIT_USAGE
    assert "--to-securityhub sends ASFF" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["asff", "sarif", "csv", "json"])
def test_no_private_key_material_or_factor_in_any_export(aws_env, tmp_path, capsys, fmt):
    store = tmp_path / "a.sqlite3"
    _stored_audit(store, 2, reason=f"modulus factors as {FACTOR} * q; key {PRIVATE_PEM}", things="=cmd|' /C calc'!A0")
    out_file = tmp_path / f"out.{fmt}"
    assert main(["export", "--store", str(store), "--format", fmt, "--output", str(out_file)]) == EXIT_OK
    text = out_file.read_text()
    assert FACTOR not in text and "PRIVATE KEY" not in text and "MIIBOgIBAAJBAKj34" not in text
    assert "privateExponent" not in text and "[redacted]" in text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        findings = [row for row in rows if row["recordType"] == "FINDING"]
        assert len(findings) == 2 and findings[0]["things"].startswith("'=")  # no formula in a spreadsheet
        assert findings[0]["reasonCode"] == ROCA
        assert [row["reasonCode"] for row in rows if row["recordType"] == "RESOURCE_NOT_CHECKED"] == [
            "MALFORMED_CERTIFICATE"]
    elif fmt == "json":
        document = json.loads(text)
        assert len(document["findings"]) == 2 and document["resourceErrors"][0]["errorCode"] == "MALFORMED_CERTIFICATE"
    elif fmt == "sarif":
        run = json.loads(text)["runs"][0]
        assert [r["level"] for r in run["results"]] == ["error", "error", "warning"]
        assert run["results"][0]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"].startswith("arn:aws:iot:")


def test_exports_carry_a_findings_evidence(aws_env, tmp_path):
    """What shows a factorable key's evidence (the other certificates, the known-list entry) and a
    CA finding's ARN reaches every format that has additionalInfo, as show-findings has them."""
    store_path = tmp_path / "a.sqlite3"
    store = open_store(store_path)
    task = AuditTask(region=REGION)
    store.save_task(task)
    other, ca_id = "ab12" * 16, "cd34" * 16  # certificate ids: SHA-256 hex
    shared = _finding(task, 1)
    shared.non_compliant_resource.additional_info.update(
        {"sharedPrimeWith": other, "sharedPrimeCount": "1", "knownSameModulus": "known.txt:3"})
    ca_arn = f"arn:aws:iot:{REGION}:{ACCOUNT}:cacert/{ca_id}"
    ca = AuditFinding(task_id=task.task_id, task_start_time=task.task_start_time, check_name="CA_CERTIFICATE_KEY_QUALITY_CHECK",
                      non_compliant_resource=NonCompliantResource(
                          resource_type="CA_CERTIFICATE", resource_identifier=ResourceIdentifier(ca_certificate_id=ca_id),
                          additional_info={"keyAlgorithm": "RSA", "caCertificateArn": ca_arn}),
                      reason_for_non_compliance="a ROCA key", reason_for_non_compliance_code=ROCA)
    store.add_findings([shared, ca])
    store.close()
    out = {}
    for fmt in ("json", "csv", "asff"):
        assert main(["export", "--store", str(store_path), "--format", fmt, "--account-id", ACCOUNT,
                     "--output", str(tmp_path / fmt)]) == EXIT_OK
        out[fmt] = (tmp_path / fmt).read_text()

    infos = {f["nonCompliantResource"]["resourceIdentifier"].get("caCertificateId", "device"):
             f["nonCompliantResource"]["additionalInfo"] for f in json.loads(out["json"])["findings"]}
    assert infos["device"]["sharedPrimeWith"] == other and infos["device"]["knownSameModulus"] == "known.txt:3"
    assert infos[ca_id]["caCertificateArn"] == ca_arn
    rows = {row["checkName"]: row for row in csv.DictReader(io.StringIO(out["csv"])) if row["recordType"] == "FINDING"}
    device, ca_row = rows[shared.check_name], rows["CA_CERTIFICATE_KEY_QUALITY_CHECK"]
    assert device["evidence"] == f"sharedPrimeWith={other}; sharedPrimeCount=1; knownSameModulus=known.txt:3"
    assert ca_row["certificateArn"] == ca_arn and ca_row["evidence"] == ""
    assert list(device)[-1] == "recordType"  # still the last column
    asff = json.loads(out["asff"])
    others = [f["Resources"][0]["Details"]["Other"] for f in asff.get("Findings", asff)]
    assert [o.get("sharedPrimeWith") for o in others] == [other, None]


def test_check_format_sarif_points_at_files_and_lines(capsys, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((DATA / "good" / "cert01.pem").read_text() + (DATA / "roca" / "cert05.pem").read_text())
    garbage = tmp_path / "notes.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEga2V5\n-----END CERTIFICATE-----\n")
    code = main(["check", "--format", "sarif", str(bundle), str(garbage)])
    sarif = json.loads(capsys.readouterr().out)
    assert code == 3
    assert sarif["version"] == "2.1.0" and sarif["$schema"].endswith("sarif-2.1.0.json")
    run = sarif["runs"][0]
    rules = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    by_level = {r["level"]: r for r in run["results"]}
    error = by_level["error"]
    assert error["ruleId"] == ROCA and rules[error["ruleIndex"]] == ROCA
    location = error["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("bundle.pem")
    assert location["region"]["startLine"] > 1  # the second certificate of the bundle
    assert by_level["warning"]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("notes.pem")
    assert all(r["ruleIndex"] == rules.index(r["ruleId"]) for r in run["results"])


def test_check_does_not_import_exports_unless_asked(tmp_path):
    probe = ("import sys; from devicedefender_audit.cli import main; main(['check', sys.argv[1]]); "
             "print(sorted(m for m in sys.modules if m.startswith('devicedefender_audit.exports')))")
    out = subprocess.run([sys.executable, "-c", probe, str(DATA / "good" / "cert01.pem")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
