"""The human tables (``--format table``) say what the JSON says: suppressed findings, which
mitigation task a row belongs to, the audit's region, why a checked file is vulnerable or unusable.
"""

from __future__ import annotations

import json

import pytest
from conftest import DATA, REGION, register
from test_cli import run_cli

from devicedefender_audit.cli import main
from devicedefender_audit.models import AuditTask
from devicedefender_audit.report import tasks_text

QUALITY = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"


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


def test_list_mitigations_of_an_audit_without_any_says_none_was_applied(capsys, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text())
    assert main(["run", "--endpoint-url", moto_server, "--no-progress", "--checks", QUALITY, "--format", "json"]) == 3
    task_id = json.loads(capsys.readouterr().out)["auditTask"]["taskId"]
    code, out = run_cli(capsys, "list-mitigations")
    assert (code, out.strip()) == (0, f"No mitigation action has been applied to audit {task_id}.")


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


def test_list_audits_says_the_region_of_each_audit(capsys, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text())
    assert main(["run", "--endpoint-url", moto_server, "--no-progress", "--checks", QUALITY]) == 3
    capsys.readouterr()
    code, out = run_cli(capsys, "list-audits")
    header, _, row = out.splitlines()
    assert code == 0 and header.split()[:5] == ["TASK", "ID", "STARTED", "REGION", "STATUS"]
    assert row.split()[3:6] == [REGION, "COMPLETED", QUALITY]
    assert "ACCOUNT" not in header  # no task here records its account


def test_the_account_column_appears_when_a_task_records_its_account():
    fleet = AuditTask(task_id="t-fleet", account="111122223333", region="eu-west-1")
    single = AuditTask(task_id="t-single", region="us-east-1")
    older = AuditTask(task_id="t-old")  # recorded before tasks kept their region
    lines = tasks_text([fleet, single, older]).splitlines()
    assert lines[0].split()[:6] == ["TASK", "ID", "STARTED", "ACCOUNT", "REGION", "STATUS"]
    assert [line.split()[0:1] + line.split()[3:5] for line in lines[2:]] == [
        ["t-fleet", "111122223333", "eu-west-1"], ["t-single", "-", "us-east-1"], ["t-old", "-", "-"]]


def test_check_table_says_which_weak_key_not_only_the_reason_code(capsys):
    weak = DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"
    code, out = run_cli(capsys, "check", str(weak), str(DATA / "roca" / "cert05.pem"),
                        "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
    assert code == 3
    rows = {(line.split()[0].rsplit("/", 1)[-1], line.split()[3]): line for line in out.splitlines()[2:]}
    assert rows[(weak.name, "debian_weak:")].endswith(
        "debian_weak: VULNERABLE   CVE-2008-0166: RSA-1024 key is one of the predictable Debian OpenSSL keys "
        "(generated by openssl le32 rnd pid 1)")
    assert rows[("cert05.pem", "roca:")].endswith(
        "roca: VULNERABLE          CVE-2017-15361: RSA-2049 modulus has the ROCA (Infineon RSALib) structure; "
        "its factors can be recovered")
    assert rows[(weak.name, "roca:")].endswith("roca: CLEAN")  # a clean result has nothing to add


@pytest.mark.parametrize("content, seen", [
    (b"", "empty file; "),
    (b" \n\n\t", "blank file (whitespace only); "),
    ((DATA / "good" / "mod04.txt").read_bytes(), "a bare number (such as an RSA modulus in hex), not a key file; "),
    (b"Modulus=C0FFEE01\n", "a bare number"),
    (b"30:82:01:0a:02\n 82:01:01\n", "a bare number"),
    (b"12345678901234567890\n", "a bare number"),
    (b"hello world\n", "text with no PEM block (-----BEGIN ...) nor OpenSSH key line; "),
])
def test_check_says_what_a_file_without_a_key_holds_and_what_was_expected(capsys, tmp_path, content, seen):
    unusable = tmp_path / "unusable.pem"
    unusable.write_bytes(content)
    good = DATA / "good" / "cert01.pem"
    code, out = run_cli(capsys, "check", str(unusable), str(good), "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
    assert code == 4  # a per-file error: the other file is still checked, and nothing is vulnerable
    [error] = [line for line in out.splitlines() if line.startswith(str(unusable))]
    assert error.split(None, 3)[1:3] == ["-", "ERROR"]
    message = error.split(None, 3)[3]
    assert message.startswith(seen)
    assert message.endswith("; expected a certificate, key or CSR (PEM, DER or an OpenSSH public key)")
    assert sum(line.startswith(str(good)) for line in out.splitlines()) == 2  # roca and debian_weak


def test_check_of_binary_that_is_not_der_says_so(capsys, tmp_path):
    truncated = tmp_path / "cert.der"
    truncated.write_bytes(bytes(range(256)))
    code, out = run_cli(capsys, "check", "--format", "json", str(truncated))
    assert code == 4
    assert json.loads(out)[0]["error"] == (
        "binary data that is not one whole DER certificate, key or CSR (truncated?), nor PEM or OpenSSH text")


def test_an_audit_that_ended_failed_says_so_under_its_empty_findings(capsys, aws_env):
    """No finding in a FAILED audit is not 'checked and covered': the line says how it ended."""
    assert main(["run", "--endpoint-url", "http://127.0.0.1:9", "--no-progress", "--max-attempts", "1"]) == 1
    out = capsys.readouterr().out
    assert "No finding, but the audit ended FAILED: not every certificate was checked" in out
    assert "No non-compliant certificates" not in out
