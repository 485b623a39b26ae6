"""The human tables (``--format table``) say what the JSON says: suppressed findings, which
mitigation task a row belongs to, the audit's region, why a checked file is vulnerable or unusable.
"""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import DATA, REGION, register

from devicedefender_audit.cli import main

QUALITY = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"


@pytest.fixture
def server_iot(moto_server):
    return boto3.client("iot", region_name=REGION, endpoint_url=moto_server)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def finding_lines(out: str) -> list[str]:
    """The rows of the findings table (after its header and rule)."""
    lines = out.split("\nFindings:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return lines[2:]


def test_a_suppressed_finding_is_marked_and_counted_in_the_table(capsys, moto_server, server_iot):
    suppressed = register(server_iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")["certificateId"]
    other = register(server_iot, (DATA / "roca" / "cert05.pem").read_text(), thing="other")["certificateId"]
    assert main(["create-audit-suppression", "--check-name", QUALITY, "--client-request-token", "t1",
                 "--resource-identifier", json.dumps({"deviceCertificateId": suppressed}),
                 "--suppress-indefinitely"]) == 0
    capsys.readouterr()

    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--no-progress", "--checks", QUALITY)
    assert code == 3
    assert "  certificates in scope: 2   non-compliant: 2 (1 suppressed)   failed: 0" in out
    rows = finding_lines(out)
    assert [row.split()[:2] for row in rows if suppressed in row] == [["CRITICAL", "(suppressed)"]]
    assert [row.split()[:2] for row in rows if other in row] == [["CRITICAL", other]]

    code, shown = run_cli(capsys, "show-findings")
    assert code == 3 and shown == out


def test_without_suppressions_the_summary_line_is_unchanged(capsys, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text())
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--no-progress", "--checks", QUALITY)
    assert code == 3
    assert "  certificates in scope: 1   non-compliant: 1   failed: 0" in out
    assert "suppressed" not in out


def test_list_mitigations_groups_rows_under_each_task_saying_whether_it_was_a_dry_run(
        capsys, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")
    assert main(["run", "--endpoint-url", moto_server, "--no-progress", "--checks", QUALITY]) == 3
    capsys.readouterr()
    runs = []
    for dry_run in (["--dry-run"], [], []):  # a dry run, the real run, a re-run
        code, out = run_cli(capsys, "mitigate", "--endpoint-url", moto_server, *dry_run,
                            "--action", "UPDATE_DEVICE_CERTIFICATE")
        assert code == 0
        runs.append(out)
    code, out = run_cli(capsys, "list-mitigations", "--format", "json")
    task_ids = list(dict.fromkeys(e["taskId"] for e in json.loads(out)["actionsExecutions"]))
    assert len(task_ids) == 3

    code, out = run_cli(capsys, "list-mitigations")
    assert code == 0
    sections = out.strip().split("\n\n")
    assert [section.splitlines()[0].split("  ")[:2] for section in sections] == [
        [f"Mitigation task {task_ids[0]}", "dry run: nothing changed"],
        [f"Mitigation task {task_ids[1]}", "real run"],
        [f"Mitigation task {task_ids[2]}", "real run"],
    ]
    dry, real, rerun = (section.splitlines()[3:] for section in sections)
    assert "would call iot.update_certificate" in "\n".join(dry) and "called" not in "\n".join(dry)
    assert "COMPLETED" in real[0] and "  called iot.update_certificate" in "\n".join(real)
    assert "UPDATE_DEVICE_CERTIFICATE" in rerun[0]
    # mitigate prints its own task the same way
    assert [run.splitlines()[0] for run in runs] == [section.splitlines()[0] for section in sections]
