"""The command line against a real moto server process-local thread (HTTP, like AWS)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DATA, REPO, issue_certificate, register

from devicedefender_audit.cli import main

ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
DEBIAN = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_run_json_gates_on_findings(capsys, moto_server, server_iot, fresh_rsa_key):
    register(server_iot, issue_certificate(fresh_rsa_key))
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--format", "json", "--no-progress")
    assert code == 0
    assert json.loads(out)["findings"] == []

    roca = register(server_iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter")
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--format", "json", "--no-progress")
    assert code == 3
    report = json.loads(out)
    assert [(f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"],
             f["reasonForNonComplianceCode"], f["severity"]) for f in report["findings"]] == [
        (roca["certificateId"], ROCA, "CRITICAL")]
    task_id = report["auditTask"]["taskId"]

    code, out = run_cli(capsys, "list-audits", "--format", "json")
    assert json.loads(out)["tasks"][0]["taskId"] == task_id
    code, out = run_cli(capsys, "show-findings", task_id)
    assert code == 3 and roca["certificateId"] in out and ROCA in out

    code, out = run_cli(capsys, "mitigate", "--endpoint-url", moto_server, "--dry-run",
                        "--action", "UPDATE_DEVICE_CERTIFICATE", "--action", "ADD_THINGS_TO_THING_GROUP",
                        "--thing-group", "quarantine")
    assert code == 0 and "would call iot.update_certificate" in out
    status = server_iot.describe_certificate(certificateId=roca["certificateId"])["certificateDescription"]["status"]
    assert status == "ACTIVE"

    code, out = run_cli(capsys, "mitigate", "--endpoint-url", moto_server,
                        "--action", "UPDATE_DEVICE_CERTIFICATE")
    assert code == 0 and "COMPLETED" in out
    status = server_iot.describe_certificate(certificateId=roca["certificateId"])["certificateDescription"]["status"]
    assert status == "INACTIVE"

    code, out = run_cli(capsys, "list-mitigations", "--format", "json")
    recorded = [(e["actionName"], e["status"], e["dryRun"]) for e in json.loads(out)["actionsExecutions"]]
    assert recorded == [("UPDATE_DEVICE_CERTIFICATE", "SKIPPED", True), ("ADD_THINGS_TO_THING_GROUP", "SKIPPED", True),
                        ("UPDATE_DEVICE_CERTIFICATE", "COMPLETED", False)]


def test_run_table_reports_failed_resources(capsys, moto_server, server_iot):
    register(server_iot, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--no-progress")
    assert code == 4
    assert "MALFORMED_CERTIFICATE" in out and "could not be checked" in out


def test_run_fails_cleanly_when_listing_fails(capsys, aws_env):
    code, out = run_cli(capsys, "run", "--endpoint-url", "http://127.0.0.1:9", "--no-progress",
                        "--max-attempts", "2")
    assert code == 1
    assert "could not list certificates" in out


def test_show_findings_without_audits_is_an_error(capsys, aws_env):
    assert main(["show-findings"]) == 2
    assert "no audit" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "--workers", "0"],
    ["run", "--max-attempts", "-1"],
    ["run", "--rate", "DescribeCertificate=0"],
    ["blocklist", "generate", "--bits", "-5"],
    ["blocklist", "generate", "--bits", "2048", "--pid-start", "40000"],
])
def test_bad_arguments_are_usage_errors_not_tracebacks(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("make_bad", [
    lambda tmp: tmp,  # a directory
    lambda tmp: (tmp / "file.txt", (tmp / "file.txt").write_text("x"))[0] / "audits.sqlite3",  # parent is a file
    lambda tmp: (tmp / "notdb.sqlite3", (tmp / "notdb.sqlite3").write_bytes(b"not a database" * 100))[0],
])
def test_bad_store_fails_before_any_aws_call(capsys, aws_env, tmp_path, make_bad):
    bad = make_bad(tmp_path)
    # an endpoint that would fail: the store must be refused before it is ever tried
    code = main(["run", "--store", str(bad), "--endpoint-url", "http://127.0.0.1:9", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: store") and len(err.strip().splitlines()) == 1


def test_mitigate_without_credentials_is_one_clear_error(capsys, monkeypatch, tmp_path, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text())
    assert main(["run", "--endpoint-url", moto_server, "--no-progress"]) == 3
    capsys.readouterr()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = main(["mitigate", "--endpoint-url", moto_server, "--action", "UPDATE_DEVICE_CERTIFICATE"])
    captured = capsys.readouterr()
    assert code == 1 and "credentials" in captured.err.lower() and "FAILED" not in captured.out


def test_check_files(capsys):
    code, out = run_cli(capsys, "check", str(DATA / "good" / "cert01.pem"))
    assert code == 0 and "roca: CLEAN" in out
    code, out = run_cli(capsys, "check", "--format", "json",
                        str(DATA / "roca" / "cert05.pem"), str(DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"))
    assert code == 3
    verdicts = {(c["file"].rsplit("/", 1)[-1], r["detector"]): r["verdict"]
                for c in json.loads(out) for r in c["results"]}
    assert verdicts[("cert05.pem", "roca")] == "VULNERABLE"
    assert verdicts[("rsa1024-ssl-le32-pid1-rnd.key", "debian_weak")] == "VULNERABLE"


def test_demo_command_in_a_fresh_process(tmp_path, aws_env):
    """The README's first command: findings for the weak demo devices, none for the good ones."""
    proc = subprocess.run(
        [sys.executable, "-m", "devicedefender_audit", "demo", "--store", str(tmp_path / "demo.sqlite3")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    critical = [line for line in proc.stdout.splitlines() if line.startswith("CRITICAL")]
    assert sum(ROCA in line for line in critical) == 2
    # four RSA-1024 openssl keys, the RSA-2048 one, the ssh-keygen one and the P-256 CA certificate
    assert sum(DEBIAN in line for line in critical) == 7 and len(critical) == 9
    assert sum("(CA certificate)" in line and DEBIAN in line for line in critical) == 1
    assert "Check CA_CERTIFICATE_KEY_QUALITY_CHECK: COMPLETED_NON_COMPLIANT" in proc.stdout
    assert "not covered: 0" in proc.stdout  # the good RSA-1024/2048 keys are checked, not skipped
    assert "MALFORMED_CERTIFICATE" in proc.stdout
    assert "would call iot.update_certificate" in proc.stdout
    assert "would call iot.update_ca_certificate" in proc.stdout


def test_demo_json_carries_the_mitigation_dry_run(tmp_path, aws_env):
    # A process of its own: the demo seeds moto's global backend, which other tests here share.
    proc = subprocess.run(
        [sys.executable, "-m", "devicedefender_audit", "demo", "--format", "json",
         "--store", str(tmp_path / "demo.sqlite3")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    executions = document["mitigationDryRun"]["actionsExecutions"]
    assert {e["actionName"] for e in executions} >= {"UPDATE_DEVICE_CERTIFICATE", "UPDATE_CA_CERTIFICATE"}
    assert all(e["status"] != "FAILED" for e in executions)
    # Every finding has a dry-run execution, and every execution is for a finding of this audit.
    assert {e["findingId"] for e in executions} == {f["findingId"] for f in document["findings"]}


def test_missing_credentials_and_region_are_explained(capsys, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "s.sqlite3"))
    assert main(["run", "--no-progress"]) == 1
    assert "region" in capsys.readouterr().err
    assert main(["run", "--no-progress", "--region", "us-east-1", "--max-attempts", "1"]) == 1
    assert "--demo" in capsys.readouterr().err


def test_progress_bar_draws_only_when_enabled():
    import io

    from devicedefender_audit.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar("Scanning", stream=stream, enabled=True)
    bar.set_total(3)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert "3/3" in stream.getvalue() and stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    ProgressBar("Scanning", stream=quiet).set_total(3)  # StringIO is not a terminal
    assert quiet.getvalue() == ""


def test_blocklist_info_lists_rsa_and_ec_coverage(capsys):
    code, out = run_cli(capsys, "blocklist", "info")
    assert code == 0 and "RSA BITS" in out and "EC CURVE" in out and "P-256     complete" in out


def test_blocklist_generate_and_build_an_ec_range(capsys, tmp_path):
    code, out = run_cli(capsys, "blocklist", "generate", "--curve", "p256", "--platforms", "le64",
                        "--variants", "rnd", "--pid-start", "0", "--pid-stop", "2", "--workers", "1",
                        "--blocklists", str(tmp_path))
    assert code == 0 and "complete=False" in out
    assert main(["blocklist", "generate", "--curve", "p256", "--variants", "ssh-keygen",
                 "--blocklists", str(tmp_path)]) == 2


def test_run_reports_every_check_and_can_run_one(capsys, moto_server, server_iot):
    register(server_iot, (DATA / "roca" / "cert04.pem").read_text())
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--format", "json", "--no-progress")
    details = json.loads(out)["auditTask"]["auditDetails"]
    assert code == 3 and set(details) == {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
                                          "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK",
                                          "CA_CERTIFICATE_KEY_QUALITY_CHECK", "CA_CERTIFICATE_KEY_FACTORABLE_CHECK"}
    # No CA certificate: nothing to check, which is compliant.
    assert details["CA_CERTIFICATE_KEY_QUALITY_CHECK"]["checkRunStatus"] == "COMPLETED_COMPLIANT"
    code, out = run_cli(capsys, "run", "--endpoint-url", moto_server, "--no-progress",
                        "--checks", "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK")
    assert "Check DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK" in out and "KEY_QUALITY_CHECK" not in out
    code, out = run_cli(capsys, "list-audits")
    assert code == 0


def test_an_empty_region_is_a_missing_region_not_a_traceback(capsys, monkeypatch, tmp_path):
    """AWS_DEFAULT_REGION= made botocore build https://iot..amazonaws.com (ValueError traceback)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "s.sqlite3"))
    assert main(["run", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: You must specify a region") and "Traceback" not in err
    assert main(["list-audits"]) == 2  # needs no region: what it lacks is an audit
    assert capsys.readouterr().err.startswith("error: no store at ")


def test_check_runs_the_factorable_checks_per_key_tests_as_the_audit_does(capsys, tmp_path, iot):
    """A certificate whose primes are close, one with a small factor and an RSA-1024 one:
    `check` said CLEAN (exit 0) for keys the audit reports; now both agree, and
    `--checks DEVICE_CERTIFICATE_KEY_QUALITY_CHECK` is the two CVEs alone."""
    import random

    import gmpy2
    from conftest import register, run_audit
    from test_factorable_audit import key, prime

    from devicedefender_audit.checks import make_checks
    from devicedefender_audit.demo import issue_certificate
    from devicedefender_audit.detectors import default_detectors

    rng = random.Random(7)
    p = prime(rng)
    close = issue_certificate(key(p, int(gmpy2.next_prime(p + 1000))), "close")
    small = issue_certificate(key(65521, prime(rng, 2032)), "small")  # the largest prime below 2**16
    paths = []
    for name, pem in (("close.pem", close), ("small.pem", small)):
        (tmp_path / name).write_text(pem)
        paths.append(str(tmp_path / name))
    paths.append(str(DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"))
    code, out = run_cli(capsys, "check", "--format", "json", *paths)
    flagged = {(c["file"].rsplit("/", 1)[-1], r["reasonCode"]) for c in json.loads(out) for r in c["results"]
               if r["verdict"] == "VULNERABLE"}
    assert code == 3
    assert flagged == {("close.pem", "CERTIFICATE_KEY_FERMAT_FACTORABLE"), ("small.pem", "CERTIFICATE_KEY_SMALL_FACTOR"),
                       ("rsa1024-ssl-le32-pid1-rnd.key", "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"),
                       ("rsa1024-ssl-le32-pid1-rnd.key", "CERTIFICATE_KEY_INSECURE_PARAMETERS")}
    for pem in (close, small):
        register(iot, pem)
    audited = run_audit(iot, [], checks=make_checks(["DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"], default_detectors()))
    assert sorted(f.reason_for_non_compliance_code for f in audited.findings) == [
        "CERTIFICATE_KEY_FERMAT_FACTORABLE", "CERTIFICATE_KEY_SMALL_FACTOR"]

    code, out = run_cli(capsys, "check", paths[0], paths[1], "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
    assert code == 0 and "fermat" not in out and "roca: CLEAN" in out
