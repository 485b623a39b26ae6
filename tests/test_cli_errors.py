"""A first-time user's mistakes and an unreachable AWS: each is one ``error:`` line and an exit
code, never a traceback, and never silently ignored."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from conftest import DATA, REGION, REPO

from devicedefender_audit import cli, cli_api, cli_export
from devicedefender_audit.aws.pacing import DEFAULT_RATES
from devicedefender_audit.cli import main

DEAD = "http://127.0.0.1:9"  # nothing listens: every connection is refused at once


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def usage_error(capsys, argv: list[str]) -> str:
    """argparse's own usage error (exit 2) for ``argv``; its message line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def patch(monkeypatch, command: str, handler) -> None:
    """Run ``handler`` for ``command``: where main finds it (build_parser adds the export, API and
    serve commands to cli.COMMANDS afresh from their modules)."""
    modules = {"export": (cli_export, "cmd_export"), "run-due": (cli_api, "run_due_command")}
    module, name = modules.get(command) or ((cli_api, "run_api_command") if command in cli_api.API_COMMANDS
                                            else (None, None))
    if module is None:
        monkeypatch.setitem(cli.COMMANDS, command, handler)
    else:
        monkeypatch.setattr(module, name, handler)


@pytest.fixture
def failed_audit(capsys, aws_env) -> None:
    """One (FAILED) audit in the test's store: its certificates could not be listed."""
    assert main(["run", "--endpoint-url", DEAD, "--no-progress", "--max-attempts", "1"]) == 1
    capsys.readouterr()


# 1. AWS unreachable -----------------------------------------------------------------------------


def test_export_to_security_hub_without_aws_is_one_error_line(capsys, failed_audit):
    code = main(["export", "--to-securityhub", "--region", "us-east-1", "--endpoint-url", DEAD,
                 "--max-attempts", "1"])
    line = one_error_line(capsys)
    assert code == 1
    assert "Could not connect to the endpoint URL" in line and "--endpoint-url" in line and ".." not in line


@pytest.mark.parametrize("error", [
    EndpointConnectionError(endpoint_url="https://securityhub.eu-west-1.amazonaws.com/"),
    ConnectTimeoutError(endpoint_url="https://sts.eu-west-1.amazonaws.com/"),
    ReadTimeoutError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com/"),
    ConnectionClosedError(endpoint_url="https://iot.eu-west-1.amazonaws.com/"),
], ids=type)
@pytest.mark.parametrize("command", ["run", "mitigate", "export", "run-due", "list-audit-tasks"])
def test_every_aws_command_turns_connection_errors_into_one_line(capsys, monkeypatch, aws_env, error, command):
    """Whatever command's call raises it, after botocore's retries: main's one mapping."""
    def raises(args):
        raise error

    patch(monkeypatch, command, raises)
    argv = [command, "--action", "UPDATE_DEVICE_CERTIFICATE"] if command == "mitigate" else [command]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: no response from AWS: ") and "amazonaws.com" in line


def test_an_aws_refusal_outside_an_audit_is_one_error_line(capsys, monkeypatch, aws_env):
    def raises(args):
        raise ClientError({"Error": {"Code": "InvalidClientTokenId", "Message": "The security token is invalid."}},
                          "GetCallerIdentity")

    patch(monkeypatch, "export", raises)
    assert main(["export"]) == 1
    assert one_error_line(capsys) == ("error: AWS refused GetCallerIdentity: InvalidClientTokenId: "
                                      "The security token is invalid.")


# 2. export --output ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_output", [
    lambda tmp: tmp,  # a directory
    lambda tmp: tmp / "missing" / "x.csv",  # its directory does not exist
    lambda tmp: (tmp / "file", (tmp / "file").write_text("x"))[0] / "x.csv",  # its "directory" is a file
], ids=["directory", "no-directory", "file-as-directory"])
def test_unusable_export_output_is_a_usage_error(capsys, aws_env, tmp_path, make_output):
    code = main(["export", "--format", "csv", "--output", str(make_output(tmp_path))])
    line = one_error_line(capsys)
    assert code == 2 and line.startswith("error: --output ")


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_export_output_on_a_full_disk_is_one_error_not_a_usage_error(capsys, failed_audit):
    """/dev/full answers every write with ENOSPC: the command was right, the disk was not (exit 1)."""
    code = main(["export", "--format", "json", "--output", "/dev/full"])
    line = one_error_line(capsys)
    assert code == 1 and "cannot be written: No space left on device" in line


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["check", str(DATA / "roca" / "cert04.pem")], ["blocklist", "info"]],
                         ids=["check", "blocklist-info"])
def test_standard_output_on_a_full_disk_is_one_error_line(argv):
    """``command > report.txt`` on a full disk: one error line and exit 1, never a traceback (the
    write fails when the buffer is flushed, in the command or at exit)."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "devicedefender_audit", *argv], check=False, stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "error: the output cannot be written: No space left on device\n"


@pytest.mark.parametrize("argv", [
    lambda tmp: ["blocklist", "export", str(tmp), "--bits", "1024"],
    lambda tmp: ["blocklist", "export", str(tmp / "missing" / "list"), "--bits", "1024"],
    lambda tmp: ["blocklist", "import", str(tmp), "--bits", "1024"],
    lambda tmp: ["blocklist", "import", str(tmp / "missing"), "--bits", "1024"],
], ids=["export-to-directory", "export-to-no-directory", "import-directory", "import-missing"])
def test_unusable_blocklist_file_arguments_are_usage_errors(capsys, tmp_path, argv):
    lists = tmp_path / "lists"
    lists.mkdir()
    code = main([*argv(tmp_path), "--blocklists", str(lists)])
    one_error_line(capsys)
    assert code == 2


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "ec-truncated", "ec-orphan"])
def test_an_audit_with_unusable_blocklists_stops_before_any_aws_call(capsys, aws_env, tmp_path, damage):
    """A mistyped --blocklists must not become an audit that reports every key not covered: the
    directory and each list's size are checked before the first AWS call (DEAD would fail it),
    the EC lists' too, though they are opened only for the first EC key."""
    lists = tmp_path / "lists"
    if damage != "missing":
        lists.mkdir()
    names = {"truncated": ["rsa-1024.ddwk", "rsa-1024.json"],
             "ec-truncated": ["rsa-1024.ddwk", "rsa-1024.json", "ec-p256.ddwk", "ec-p256.json"],
             "ec-orphan": ["rsa-1024.ddwk", "rsa-1024.json", "ec-p256.ddwk"]}.get(damage, [])
    for name in names:
        (lists / name).write_bytes((REPO / "blocklists" / name).read_bytes())
    if damage in ("truncated", "ec-truncated"):
        with (lists / names[-2]).open("r+b") as data:
            data.truncate(data.seek(0, 2) - 8)
    code = main(["run", "--endpoint-url", DEAD, "--no-progress", "--max-attempts", "1",
                 "--blocklists", str(lists)])
    line = one_error_line(capsys)
    assert code == 1 and str(lists) in line and "connect" not in line.lower()


# 3. serve --port ------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_port_is_checked_when_parsed(capsys, port):
    assert "0..65535" in usage_error(capsys, ["serve", "--port", port])


# 4. run --rate --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["Foo=5", "DescribeCertificates=100", "iot.ListThings=3", "sns.Publish=300"])
def test_a_rate_for_an_operation_that_is_not_paced_is_a_usage_error(capsys, rate):
    line = usage_error(capsys, ["run", "--rate", rate])
    assert "not an operation this tool paces" in line
    assert all(name.partition(".")[2] in line for name in DEFAULT_RATES)


def test_rate_names_are_matched_regardless_of_case():
    args = cli.build_parser().parse_args(["run", "--rate", "describecertificate=100", "--rate",
                                          "iot.list-certificates=20"])
    assert args.rates == [("iot.DescribeCertificate", 100.0), ("iot.ListCertificates", 20.0)]


# 5. --store locations -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["list-audits"], ["show-findings"], ["export"],
                                     ["list-audit-tasks", "--start-time", "0", "--end-time", "1"]])
@pytest.mark.parametrize("location", ["s3://foo", "https://example.com/audits.sqlite3"])
def test_a_url_store_other_than_dynamodb_is_refused(capsys, monkeypatch, aws_env, tmp_path, command, location):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--store", location]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: store {location}: ") and "dynamodb://TABLE" in line
    assert not list(tmp_path.iterdir())  # no ./s3:/foo SQLite file


def test_a_url_store_in_dda_store_is_refused(capsys, monkeypatch, aws_env, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDA_STORE", "s3://bucket/audits")
    assert main(["list-audits"]) == 2
    assert one_error_line(capsys).startswith("error: store s3://bucket/audits: ")
    assert not list(tmp_path.iterdir())


def test_an_empty_store_location_is_said_to_be_empty(capsys, aws_env):
    assert main(["list-audits", "--store", ""]) == 2
    line = one_error_line(capsys)
    assert "location is empty" in line and "directory" not in line


def test_a_bad_dynamodb_location_is_echoed_as_given(capsys, aws_env):
    assert main(["list-audits", "--store", "dynamodb://bad table"]) == 2
    assert one_error_line(capsys).startswith("error: store dynamodb://bad table: ")


def test_an_empty_region_is_a_usage_error(capsys, aws_env):
    assert "not an AWS region name" in usage_error(capsys, ["run", "--region", ""])


# 6. no region ---------------------------------------------------------------------------------


def test_no_region_message_has_no_double_period(capsys, monkeypatch, tmp_path):
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "s.sqlite3"))
    assert main(["run", "--no-progress"]) == 1
    line = one_error_line(capsys)
    assert "specify a region" in line and ".." not in line


# 7. show-findings TASK_ID ---------------------------------------------------------------------


def test_an_unknown_task_id_is_said_to_be_unknown(capsys, failed_audit):
    for argv in (["show-findings", "nonexistent-task-id"], ["export", "nonexistent-task-id"],
                 ["list-mitigations", "nonexistent-task-id"]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert "unknown audit task id 'nonexistent-task-id'" in line and "run an audit first" not in line


def test_a_store_without_audits_asks_for_one(capsys, aws_env):
    for argv in (["show-findings"], ["show-findings", "nonexistent-task-id"]):
        assert main(argv) == 2
        assert "run an audit first" in one_error_line(capsys)


@pytest.mark.parametrize("command", [["list-audits"], ["show-findings"], ["list-mitigations"], ["export"]])
def test_a_command_that_reads_audits_refuses_a_store_that_does_not_exist(command, tmp_path, capsys):
    """A mistyped --store read as "no audits" and left an empty store file behind."""
    missing = tmp_path / "audtis.sqlite3"
    assert main([*command, "--store", str(missing)]) == 2
    assert f"error: no store at {missing}: no audit has been recorded there" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("command", [["list-audits"], ["show-findings"], ["export"]])
def test_a_command_that_reads_audits_creates_no_dynamodb_table(command, aws, capsys):
    """A mistyped table read as "no audits", exit 0, and created the table in the account."""
    import boto3

    assert main([*command, "--store", "dynamodb://audtis", "--region", REGION]) == 2
    assert (f"error: no store at dynamodb://audtis: there is no table audtis in {REGION}; run an audit first"
            in capsys.readouterr().err)
    assert boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"] == []


def test_another_accounts_partition_is_refused_to_commands_acting_with_these_credentials(capsys, aws, tmp_path):
    """A member account's partition (from run --role-arn) mitigated with the caller's own
    credentials deactivated the caller's certificate of the same id, reported COMPLETED."""
    import boto3

    member = "111111111111"
    pem = (DATA / "roca" / "cert04.pem").read_text()
    issued = boto3.client("sts", region_name=REGION).assume_role(
        RoleArn=f"arn:aws:iam::{member}:role/dda-audit", RoleSessionName="setup")["Credentials"]
    boto3.client("iot", region_name=REGION, aws_access_key_id=issued["AccessKeyId"],
                 aws_secret_access_key=issued["SecretAccessKey"], aws_session_token=issued["SessionToken"]
                 ).register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    own = boto3.client("iot", region_name=REGION)
    mine = own.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")["certificateId"]
    assert main(["run", "--role-arn", f"arn:aws:iam::{member}:role/dda-audit", "--regions", REGION,
                 "--no-progress", "--store", str(tmp_path / "audits.sqlite3")]) == 3
    capsys.readouterr()
    partition = str(tmp_path / f"audits.{member}.{REGION}.sqlite3")
    for argv in (["mitigate", "--store", partition, "--action", "UPDATE_DEVICE_CERTIFICATE"],
                 ["run", "--store", partition, "--no-progress"]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"is account {member}'s, but these credentials act in account 123456789012" in line
    assert own.describe_certificate(certificateId=mine)["certificateDescription"]["status"] == "ACTIVE"


@pytest.mark.parametrize(("group", "says"), [("a/b", "does not match the pattern"), ("x" * 200, "at most 128")])
def test_mitigate_options_are_checked_by_the_model_before_anything_is_planned(capsys, failed_audit, group, says):
    """A thing group AWS would refuse was planned in a dry run, and made by moto in a real one."""
    code = main(["mitigate", "--dry-run", "--action", "ADD_THINGS_TO_THING_GROUP", "--thing-group", group])
    assert code == 2 and says in one_error_line(capsys)
