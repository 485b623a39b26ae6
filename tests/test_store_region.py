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
