"""The AWS-CLI-named subcommands: options derived from botocore's model, AWS CLI's JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from botocore import xform_name
from conftest import DATA, register

from devicedefender_audit.cli import main
from devicedefender_audit.cli_api import API_COMMANDS, EXIT_SERVICE_ERROR
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import OPERATIONS


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_every_operation_has_its_aws_cli_command():
    assert API_COMMANDS == {xform_name(op, "-"): op for op in OPERATIONS}


def test_building_the_parser_loads_neither_the_service_nor_botocore():
    code = ("import sys; from devicedefender_audit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('devicedefender_audit.service', 'botocore'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_audit_findings_and_suppressions_from_the_command_line(iot, capsys):
    certs = [register(iot, (DATA / "roca" / name).read_text())["certificateId"] for name in ("cert04.pem", "cert05.pem")]
    code, _, err = run(capsys, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)
    assert code == EXIT_SERVICE_ERROR
    assert "(InvalidRequestException) when calling the StartOnDemandAuditTask operation" in err
    code, out, _ = run(capsys, "update-account-audit-configuration", "--role-arn", "arn:aws:iam::123456789012:role/a",
                       "--audit-check-configurations", json.dumps({CHECK_NAME: {"enabled": True}}))
    assert (code, out) == (0, None)  # an empty response prints nothing, as the AWS CLI
    code, out, _ = run(capsys, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)
    task_id = out["taskId"]
    code, out, _ = run(capsys, "describe-audit-task", "--task-id", task_id)
    assert out["taskStatus"] == "COMPLETED" and out["auditDetails"][CHECK_NAME]["nonCompliantResourcesCount"] == 2
    assert out["taskStartTime"].endswith("+00:00")

    code, everything, _ = run(capsys, "list-audit-findings", "--task-id", task_id)
    assert len(everything["findings"]) == 2 and "nextToken" not in everything  # pages merged
    code, first, _ = run(capsys, "list-audit-findings", "--task-id", task_id, "--max-results", "1")
    assert len(first["findings"]) == 1 and first["nextToken"]
    code, second, _ = run(capsys, "list-audit-findings", "--task-id", task_id, "--next-token", first["nextToken"])
    assert first["findings"] + second["findings"] == everything["findings"]

    resource = json.dumps({"deviceCertificateId": certs[0]})
    # The model's idempotency token may be left out, as with the AWS CLI: a fresh one is made.
    code, out, _ = run(capsys, "create-audit-suppression", "--check-name", CHECK_NAME, "--resource-identifier",
                       resource, "--suppress-indefinitely")
    assert (code, out) == (0, None)
    code, out, _ = run(capsys, "list-audit-suppressions")
    assert out == {"suppressions": [{"checkName": CHECK_NAME, "resourceIdentifier": {"deviceCertificateId": certs[0]},
                                     "suppressIndefinitely": True}]}
    task_id = run(capsys, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)[1]["taskId"]
    code, out, _ = run(capsys, "list-audit-findings", "--task-id", task_id, "--list-suppressed-findings")
    assert [f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in out["findings"]] == [
        certs[0]]

    code, out, err = run(capsys, "describe-audit-task", "--task-id", "missing")
    assert code == EXIT_SERVICE_ERROR and out is None
    assert "An error occurred (ResourceNotFoundException) when calling the DescribeAuditTask operation" in err


def test_bad_option_values_are_usage_errors(capsys, aws_env):
    with pytest.raises(SystemExit) as exit_info:
        main(["list-audit-tasks", "--start-time", "2024-01-01", "--end-time", "2024-02-01", "--task-status", "DONE"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["create-audit-suppression", "--check-name", CHECK_NAME, "--resource-identifier", "{not json",
              "--client-request-token", "t"])


def test_mitigation_task_dry_run_from_the_command_line(iot, capsys):
    """``--dry-run`` (our extension) on start-audit-mitigation-actions-task changes nothing."""
    cert = register(iot, (DATA / "roca" / "cert04.pem").read_text())["certificateId"]
    run(capsys, "update-account-audit-configuration", "--role-arn", "arn:aws:iam::123456789012:role/a",
        "--audit-check-configurations", json.dumps({CHECK_NAME: {"enabled": True}}))
    _, out, _ = run(capsys, "start-on-demand-audit-task", "--target-check-names", CHECK_NAME)
    audit_task_id = out["taskId"]
    code, out, _ = run(capsys, "create-mitigation-action", "--action-name", "deactivate", "--role-arn",
                       "arn:aws:iam::123456789012:role/m", "--action-params",
                       json.dumps({"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}))
    assert code == 0 and out["actionId"]
    code, out, _ = run(capsys, "start-audit-mitigation-actions-task", "--task-id", "dry", "--target",
                       json.dumps({"auditTaskId": audit_task_id}), "--audit-check-to-actions-mapping",
                       json.dumps({CHECK_NAME: ["deactivate"]}), "--client-request-token", "dry", "--dry-run")
    assert (code, out) == (0, {"taskId": "dry"})
    _, task, _ = run(capsys, "describe-audit-mitigation-actions-task", "--task-id", "dry")
    assert task["taskStatistics"][CHECK_NAME]["skippedFindingsCount"] == 1
    assert iot.describe_certificate(certificateId=cert)["certificateDescription"]["status"] == "ACTIVE"
