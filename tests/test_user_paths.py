"""What a user meets at the edges: the store's region binding, `check`'s per-key tests and exit
codes, malformed endpoints, and the mitigation task replay (from an adversarial review; each
test failed before its fix, or guards a subtle behaviour)."""

from __future__ import annotations

import json
import sqlite3
import threading

import boto3
import pytest
from conftest import REGION, register
from cryptography.hazmat.primitives.asymmetric import rsa

from devicedefender_audit.cli import main
from devicedefender_audit.demo import issue_certificate
from devicedefender_audit.store import open_store
from devicedefender_audit.store.base import StoreError
from devicedefender_audit.store.region_binding import BINDING_KEY, BINDING_KIND

CHECK = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
FACTORABLE = "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"


def _binding(location) -> dict | None:
    store = open_store(location)
    try:
        return store.get_record(BINDING_KIND, BINDING_KEY)
    finally:
        store.close()


# region binding ---------------------------------------------------------------------------------


def test_a_failed_first_command_with_a_mistyped_region_does_not_bind_the_store(capsys, aws_env, tmp_path):
    """`run --region us-est-1` (a typo) on a fresh store fails to reach AWS (exit 1) and audits
    nothing: it must not bind the store to 'us-est-1' (every later command in the right region
    would be refused, and no command undoes a binding)."""
    store = str(tmp_path / "audits.sqlite3")
    code = main(["run", "--store", store, "--region", "us-est-1", "--endpoint-url", "http://127.0.0.1:9",
                 "--max-attempts", "1", "--no-progress", "--checks", CHECK])
    capsys.readouterr()
    assert code == 1
    code = main(["list-audits", "--store", store, "--region", REGION])
    err = capsys.readouterr().err
    assert code == 0, err


def test_an_api_command_with_no_region_does_not_bind_the_store_to_us_east_1(capsys, aws_env, tmp_path, monkeypatch):
    """The API commands fall back to us-east-1 for their ARNs only: with no region configured,
    list-audit-tasks reads an eu-west-1 store (as list-audits does), and a fresh store is not
    bound to us-east-1 (the user's first `run --region eu-west-1` would be refused)."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    bound = str(tmp_path / "eu.sqlite3")
    open_store(bound, region="eu-west-1").close()
    assert main(["list-audits", "--store", bound]) == 0
    capsys.readouterr()
    code = main(["list-audit-tasks", "--store", bound, "--start-time", "2024-01-01T00:00:00Z",
                 "--end-time", "2030-01-01T00:00:00Z"])
    err = capsys.readouterr().err
    assert code == 0, err

    fresh = str(tmp_path / "fresh.sqlite3")
    assert main(["list-scheduled-audits", "--store", fresh]) == 0
    assert _binding(fresh) is None


def test_a_run_into_a_partition_named_for_another_region_is_refused(capsys, iot, tmp_path):
    """audits.<account>.eu-west-1.sqlite3 is eu-west-1's partition by its name: `run --region
    us-east-1` must not audit us-east-1's fleet into it."""
    register(iot, issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "d1"))
    partition = str(tmp_path / "audits.123456789012.eu-west-1.sqlite3")
    code = main(["run", "--store", partition, "--region", REGION, "--no-progress", "--checks", CHECK])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "eu-west-1" in err and "Traceback" not in err


def test_run_due_on_a_dynamodb_partition_audits_the_partitions_region(capsys, aws, tmp_path):
    """README's flow: schedules are created on dynamodb://TABLE/ACCOUNT/eu-west-1 with --region
    STACK_REGION (where the table is). The CLI's run-due on that partition must audit
    eu-west-1's fleet, not the stack region's, under eu-west-1's schedule."""
    eu = boto3.client("iot", region_name="eu-west-1")
    eu.register_certificate_without_ca(
        certificatePem=issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "eu"),
        status="ACTIVE")
    store = "dynamodb://dda-review/123456789012/eu-west-1"
    assert main(["update-account-audit-configuration", "--store", store, "--region", REGION, "--role-arn",
                 "arn:aws:iam::123456789012:role/audit",
                 "--audit-check-configurations", f'{{"{CHECK}": {{"enabled": true}}}}']) == 0
    assert main(["create-scheduled-audit", "--store", store, "--region", REGION, "--scheduled-audit-name",
                 "eu-daily", "--frequency", "DAILY", "--target-check-names", CHECK]) == 0
    capsys.readouterr()
    code = main(["run-due", "--store", store, "--region", REGION, "--now", "2099-01-02T01:00:00Z"])
    out, err = capsys.readouterr()
    from devicedefender_audit.aws.clients import AwsTarget

    partition = open_store(store, AwsTarget(region=REGION))
    try:
        tasks = partition.list_tasks()
    finally:
        partition.close()
    assert code == 0 and tasks, (code, out, err)
    task = tasks[0]
    assert task.region == "eu-west-1", task.region
    assert task.audit_details[CHECK].total_resources_count == 1


@pytest.mark.parametrize("body", ["{not json", '"eu-west-1"', "null"])
def test_a_damaged_binding_record_is_one_error_line(capsys, aws_env, tmp_path, body):
    """A binding record that is not a JSON object (a torn write, a hand edit) is taken as none
    and replaced: no traceback (JSONDecodeError, AttributeError), no 'region None'."""
    store = tmp_path / "audits.sqlite3"
    open_store(store, region=REGION).close()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE api_records SET body = ? WHERE kind = ? AND key = ?", (body, BINDING_KIND, BINDING_KEY))
    db.close()
    try:
        code = main(["list-audits", "--store", str(store), "--region", REGION])
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{body!r}: traceback {type(exc).__name__}: {exc}")
    err = capsys.readouterr().err
    assert code == 0, (body, err)
    assert "region None" not in err, (body, err)


def test_two_first_commands_of_different_regions_agree_on_one(tmp_path):
    """Guard: create-if-absent, so of two concurrent first binders exactly one region wins and
    the other is refused (never both accepted)."""
    location = tmp_path / "audits.sqlite3"
    open_store(location).close()
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def bind(region: str) -> None:
        barrier.wait()
        try:
            open_store(location, region=region).close()
            results[region] = "bound"
        except StoreError:
            results[region] = "refused"

    threads = [threading.Thread(target=bind, args=(r,)) for r in ("eu-west-1", "us-east-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["bound", "refused"], results


# check: the factorable check's per-key tests by default ------------------------------------------


def _ssh_rsa_line(e: int, n: int) -> str:
    import base64
    import struct

    def mpint(x: int) -> bytes:
        raw = x.to_bytes((x.bit_length() + 8) // 8, "big")
        return struct.pack(">I", len(raw)) + raw

    blob = struct.pack(">I", 7) + b"ssh-rsa" + mpint(e) + mpint(n)
    return f"ssh-rsa {base64.b64encode(blob).decode()} review\n"


def test_check_takes_checks_before_the_files(capsys, tmp_path):
    """`check --checks NAME FILE` (options first, as `check --format sarif certs/*.pem` is
    written): --checks takes one value (repeatable, or comma-separated), not the files after it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "device.pem"
    path.write_text(issue_certificate(key, "device"))
    try:
        code = main(["check", "--checks", CHECK, str(path)])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fermat" not in out and "roca: CLEAN" in out


def test_check_of_an_even_modulus_is_vulnerable_in_every_format(capsys, tmp_path):
    """Guard: an ssh-rsa key with an even modulus (cryptography loads it) is SMALL_FACTOR, exit 3,
    in the table, JSON and SARIF (an error-level result); one with e=1 is an ERROR (exit 4),
    never CLEAN."""
    import gmpy2

    p = int(gmpy2.next_prime(1 << 1023))
    q = int(gmpy2.next_prime(p + (1 << 600)))
    (tmp_path / "even.pub").write_text(_ssh_rsa_line(65537, 2 * p * q))
    (tmp_path / "e1.pub").write_text(_ssh_rsa_line(1, p * q))
    even = str(tmp_path / "even.pub")
    assert main(["check", even]) == 3
    assert "small_factor: VULNERABLE" in capsys.readouterr().out
    assert main(["check", "--format", "json", even]) == 3
    [result] = json.loads(capsys.readouterr().out)
    assert ("small_factor", "VULNERABLE", "CERTIFICATE_KEY_SMALL_FACTOR") in {
        (r["detector"], r["verdict"], r["reasonCode"]) for r in result["results"]}
    assert main(["check", "--format", "sarif", even]) == 3
    sarif = json.loads(capsys.readouterr().out)
    assert ("CERTIFICATE_KEY_SMALL_FACTOR", "error") in {(r["ruleId"], r["level"]) for r in sarif["runs"][0]["results"]}
    assert main(["check", str(tmp_path / "e1.pub")]) == 4
    assert "CLEAN" not in capsys.readouterr().out


def test_check_of_a_key_no_detector_covers_is_not_exit_0(capsys, tmp_path):
    """`run` ends RESOURCES_NOT_COVERED (exit 4) for a key no detector data covers (a DSA key:
    'DSA keys from the Debian bug are not covered'), and so does `check`: exit 0 would be taken
    for clean by a CI gate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa

    key = dsa.generate_private_key(key_size=1024)
    path = tmp_path / "dsa.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    code = main(["check", str(path)])
    out = capsys.readouterr().out
    assert "NOT_COVERED" in out
    assert code == 4, out


def test_check_reads_an_ssh_dss_public_key(capsys, tmp_path):
    """README: check reads `ssh-dss` OpenSSH public keys (load_ssh_public_identity refuses DSA,
    'DSA keys aren't supported in SSH certificates'; the same key's private key file was read)."""
    import warnings

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa

    key = dsa.generate_private_key(key_size=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = tmp_path / "id_dsa.pub"
    path.write_bytes(line + b" review\n")
    main(["check", str(path)])
    out = capsys.readouterr().out
    assert "DSA 1024" in out and "ERROR" not in out, out


# CLI error paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["run", "--endpoint-url", "notaurl", "--no-progress"],
    ["list-audits", "--store", "dynamodb://dda-review", "--endpoint-url", "notaurl"],
])
def test_a_malformed_endpoint_url_is_one_error_line(capsys, aws_env, argv):
    """A malformed --endpoint-url is a usage error, not botocore's ValueError('Invalid endpoint')
    as a traceback at the first client."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except ValueError as exc:
        pytest.fail(f"traceback: {exc}")
    err = capsys.readouterr().err
    assert code == 2 and "notaurl" in err


def test_check_tests_a_repeated_key_once(tmp_path):
    """A file repeating one key (a bundle, or hostile input: the factorable tests cost ~0.4 s
    for a 16384-bit modulus) is tested once per key; every copy is reported with its results."""
    from conftest import DATA

    from devicedefender_audit.detectors.base import DetectorResult, Verdict
    from devicedefender_audit.key_check import check_files

    calls = []

    class Counting:
        name, reason_code, version = "counting", "X", "1"

        def check(self, key):
            calls.append(key.modulus)
            return DetectorResult(self.name, Verdict.CLEAN)

    pem = (DATA / "good" / "cert01.pem").read_text()
    other = (DATA / "roca" / "cert04.pem").read_text()
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(pem * 3 + other)
    checks = check_files([str(bundle), str(bundle)], [Counting()])
    assert len(checks) == 8 and all(c.results[0].verdict is Verdict.CLEAN for c in checks)
    assert len(calls) == 2  # cert01's key and cert04's, once each
