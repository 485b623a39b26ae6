"""A store holds one region's audits (store/region_binding.py), and the demo keeps its own."""

from __future__ import annotations

import pytest
from conftest import REGION

from devicedefender_audit.cli import main
from devicedefender_audit.store import open_store
from devicedefender_audit.store.region_binding import BINDING_KEY, BINDING_KIND

CHECK = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"


def test_a_schedule_made_for_one_region_is_not_run_in_another(capsys, aws, tmp_path):
    """A schedule created for eu-west-1 must not be listed, or started by run-due, for us-east-1:
    that would audit us-east-1's fleet under eu-west-1's schedule."""
    store = str(tmp_path / "audits.sqlite3")
    assert main(["update-account-audit-configuration", "--store", store, "--region", "eu-west-1", "--role-arn",
                 "arn:aws:iam::123456789012:role/audit",
                 "--audit-check-configurations", f'{{"{CHECK}": {{"enabled": true}}}}']) == 0
    assert main(["create-scheduled-audit", "--store", store, "--region", "eu-west-1", "--scheduled-audit-name",
                 "eu-daily", "--frequency", "DAILY", "--target-check-names", CHECK]) == 0
    capsys.readouterr()
    for argv in (["list-scheduled-audits"], ["run-due"], ["list-audits"]):
        code = main([*argv, "--store", store, "--region", REGION])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert f"holds the audits of region eu-west-1, not {REGION}" in err and "Traceback" not in err
    assert main(["list-scheduled-audits", "--store", store, "--region", "eu-west-1"]) == 0
    assert "eu-daily" in capsys.readouterr().out


def test_the_first_region_binds_and_a_second_command_agrees(aws, tmp_path):
    location = tmp_path / "audits.sqlite3"
    open_store(location, region="eu-west-1").close()
    store = open_store(location, region="eu-west-1")
    assert store.get_record(BINDING_KIND, BINDING_KEY) == {"region": "eu-west-1"}
    store.close()
    store = open_store(location)  # no region (a local-only use): no binding asked for, none checked
    store.close()


def test_an_account_regions_partition_is_that_regions_by_its_name(aws, tmp_path):
    """run --regions' partitions carry their region in their name: no binding is recorded. A
    SQLite partition is refused for another region; a DynamoDB partition is reached with the
    table's region, not its own, so that one is not compared."""
    from devicedefender_audit.store import partition_location
    from devicedefender_audit.store.base import StoreError

    sqlite_partition = partition_location(str(tmp_path / "audits.sqlite3"), "123456789012", "eu-west-1")
    dynamodb_partition = partition_location("dynamodb://dda-table", "123456789012", "eu-west-1")
    for where, region in ((sqlite_partition, "eu-west-1"), (dynamodb_partition, "eu-west-1"),
                          (dynamodb_partition, REGION)):
        store = open_store(where, region=region)
        assert store.get_record(BINDING_KIND, BINDING_KEY) is None
        store.close()
    with pytest.raises(StoreError, match=f"holds the audits of region eu-west-1, not {REGION}"):
        open_store(sqlite_partition, region=REGION)


def test_the_demo_keeps_its_own_store(capsys, aws_env, tmp_path, monkeypatch):
    """The demo's audits never land in the account's store ($DDA_STORE or the default one), where
    mitigate would take the demo's latest audit for the account's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    account_store = tmp_path / "audits.sqlite3"  # aws_env's $DDA_STORE
    code = main(["run", "--demo", "--no-progress", "--format", "json"])
    out, err = capsys.readouterr()
    assert code in (0, 3, 4), (code, err, out[-2000:])
    assert not account_store.exists()
    demo = tmp_path / "data" / "devicedefender-audit" / "demo.sqlite3"
    store = open_store(demo)
    assert len(store.list_tasks()) == 1
    store.close()



def test_a_store_from_before_the_binding_is_its_latest_audits_region(iot, tmp_path):
    """A store written by a release without the binding holds us-east-1's audits: its first
    command for eu-west-1 must be refused too, not bind it to eu-west-1."""
    from devicedefender_audit.audit import Audit
    from devicedefender_audit.store.base import StoreError

    location = tmp_path / "audits.sqlite3"
    store = open_store(location)  # as before: no region, no binding
    Audit(iot, store, [], region=REGION).run()
    store.close()
    with pytest.raises(StoreError, match=f"holds the audits of region {REGION}, not eu-west-1"):
        open_store(location, region="eu-west-1")
    open_store(location, region=REGION).close()


def test_run_on_a_dynamodb_partition_audits_the_partitions_region(capsys, aws, tmp_path, monkeypatch):
    """`run --store dynamodb://T/ACCOUNT/eu-west-1 --region us-east-1` (the table's region)
    audits eu-west-1's fleet, as the Lambda does; also with the partition in $DDA_STORE."""
    import boto3
    from cryptography.hazmat.primitives.asymmetric import rsa

    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.demo import issue_certificate

    for name in ("eu-1", "eu-2"):
        boto3.client("iot", region_name="eu-west-1").register_certificate_without_ca(
            certificatePem=issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), name),
            status="ACTIVE")
    partition = "dynamodb://dda-regions/123456789012/eu-west-1"
    assert main(["run", "--store", partition, "--region", REGION, "--no-progress", "--format", "json",
                 "--checks", CHECK]) == 0
    monkeypatch.setenv("DDA_STORE", partition)
    assert main(["run", "--region", REGION, "--no-progress", "--format", "json", "--checks", CHECK]) == 0
    capsys.readouterr()
    store = open_store(partition, AwsTarget(region=REGION))
    tasks = store.list_tasks()
    store.close()
    assert [(t.region, t.audit_details[CHECK].total_resources_count) for t in tasks] == [("eu-west-1", 2)] * 2


def test_a_run_without_credentials_binds_nothing(capsys, monkeypatch, tmp_path):
    """No credentials: the run fails before the store is bound, so the user's next run in the
    region they meant is not refused."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = tmp_path / "audits.sqlite3"
    assert main(["run", "--store", str(store), "--region", REGION, "--no-progress"]) == 1
    capsys.readouterr()
    assert not store.exists() or open_store(store).get_record(BINDING_KIND, BINDING_KEY) is None


def test_the_api_reads_another_regions_store_as_list_audits_does(capsys, aws, tmp_path):
    """Describe/List operations compare only with a --region on their command line and bind
    nothing, as the CLI's read commands do; an operation that writes is refused."""
    store = str(tmp_path / "audits.sqlite3")
    open_store(store, region="eu-west-1").close()
    window = ["--start-time", "2024-01-01T00:00:00Z", "--end-time", "2030-01-01T00:00:00Z"]
    assert main(["list-audit-tasks", "--store", store, *window]) == 0  # configured: us-east-1
    assert main(["list-audit-tasks", "--store", store, "--region", REGION, *window]) == 2
    assert main(["create-scheduled-audit", "--store", store, "--scheduled-audit-name", "d", "--frequency", "DAILY",
                 "--target-check-names", CHECK]) == 2
    fresh = str(tmp_path / "fresh.sqlite3")
    assert main(["list-scheduled-audits", "--store", fresh, "--region", "ap-south-1"]) == 0
    assert open_store(fresh).get_record(BINDING_KIND, BINDING_KEY) is None


def test_a_sqlite_partition_is_audited_in_its_region_unless_another_is_named(capsys, aws, tmp_path):
    """`run --store audits.<account>.eu-west-1.sqlite3` with us-east-1 configured audits
    eu-west-1 (the partition's region, as for a DynamoDB one); an explicit other --region is
    refused (exit 2)."""
    import boto3
    from cryptography.hazmat.primitives.asymmetric import rsa

    from devicedefender_audit.demo import issue_certificate

    boto3.client("iot", region_name="eu-west-1").register_certificate_without_ca(
        certificatePem=issue_certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048), "eu"),
        status="ACTIVE")
    partition = str(tmp_path / "audits.123456789012.eu-west-1.sqlite3")
    assert main(["run", "--store", partition, "--no-progress", "--checks", CHECK]) == 0  # configured: us-east-1
    assert main(["run", "--store", partition, "--region", REGION, "--no-progress", "--checks", CHECK]) == 2
    capsys.readouterr()
    store = open_store(partition)
    assert [(t.region, t.audit_details[CHECK].total_resources_count) for t in store.list_tasks()] == [("eu-west-1", 1)]
    store.close()


def test_serve_serves_a_partition_in_its_region_only(capsys, aws_env, tmp_path):
    partition = str(tmp_path / "audits.123456789012.eu-west-1.sqlite3")
    assert main(["serve", "--store", partition, "--region", REGION, "--port", "0"]) == 2
    assert "serve it with --region eu-west-1" in capsys.readouterr().err
