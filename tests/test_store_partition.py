"""The store suite again, on one account-region's partition of a DynamoDB table whose other
partitions (and the unpartitioned store) already hold colliding data: the same certificate ids,
task ids, record kinds and keys, executions, cancel requests. Every Store method must read only
its own partition (the imported tests' assertions fail on any leak) and write only there (the
fixture compares every other item of the table before and after). SQLite partitions are files of
their own; their fleet-state sidecars must be too."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from datetime import timedelta

import boto3
import pytest
import test_store
from conftest import REGION
from moto import mock_aws
from test_store import T0, TABLE, cid, execution, finding, listed

from devicedefender_audit.models import AuditTask, AuditTaskStatus, ResourceError
from devicedefender_audit.store import Store, open_store, partition_location
from devicedefender_audit.store.base import StoredVerdict, TaskOwner

ACCOUNT, OTHER_ACCOUNT, WEST = "111111111111", "222222222222", "eu-west-1"
PARTITION = f"dynamodb://{TABLE}/{ACCOUNT}/{REGION}"
NEIGHBOURS = (f"dynamodb://{TABLE}", f"dynamodb://{TABLE}/{OTHER_ACCOUNT}/{REGION}",
              f"dynamodb://{TABLE}/{ACCOUNT}/{WEST}")

# Every behaviour test of the store suite that takes only ``store`` runs here on the partition.
for _name, _test in vars(test_store).items():
    if _name.startswith("test_") and list(inspect.signature(_test).parameters) == ["store"]:
        globals()[_name] = _test


_FRESH = itertools.count(1)


def _fill(neighbour: Store) -> None:
    """What another account-region holds, colliding with everything the suite writes."""
    neighbour.record_listing([listed(n) for n in (*range(1, 6), *range(41, 46))], 200.0)
    neighbour.save_verdicts([StoredVerdict(cid(n), "roca", "1", "vulnerable", "X", "") for n in range(1, 4)])
    for hours in range(2):
        task = AuditTask(task_start_time=T0 + timedelta(hours=hours, minutes=30))
        task.task_status = AuditTaskStatus.IN_PROGRESS
        neighbour.save_task(task, TaskOwner("elsewhere", 1, 1.0))
    with neighbour.batch():
        for task_id in ("t1", "t2", "big", "m1", "m3"):
            neighbour.add_findings([finding(task_id, 2)])
            neighbour.add_errors(task_id, [ResourceError(certificate_id=cid(9), error_code="NEIGHBOUR", message="")])
            neighbour.record_execution(execution(task_id, "f9", "FAILED", T0 - timedelta(days=1)))
        for kind, key in (("config", "account"), ("claim", "f1/a1"), ("schedule", "daily"), ("nothing", "x")):
            neighbour.put_record(kind, key, {"neighbour": True})
    neighbour.request_cancel("t2")
    neighbour.save_fleet_state([b"neighbour"])


def _items() -> list[dict]:
    return boto3.client("dynamodb", region_name=REGION).scan(TableName=TABLE, ConsistentRead=True)["Items"]


def _mine(prefix: str) -> list[dict]:
    return [item for item in _items() if item["PK"]["S"].startswith(prefix)]


def _others(prefix: str) -> list[dict]:
    """Every item of the table outside the partition under test, in a stable order."""
    return sorted((item for item in _items() if not item["PK"]["S"].startswith(prefix)),
                  key=lambda item: (item["PK"]["S"], item["SK"]["S"]))


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Iterator[str]:
    """One moto table for the module, its neighbours filled once; each test gets a partition of
    its own (see ``store``)."""
    with pytest.MonkeyPatch.context() as env:
        for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", REGION)):
            env.setenv(var, value)
        env.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            for location in NEIGHBOURS:
                neighbour = open_store(location)
                _fill(neighbour)
                neighbour.close()
            yield TABLE


@pytest.fixture
def store(table) -> Iterator[Store]:
    account = str(900000000000 + next(_FRESH))  # a fresh partition per test
    prefix = f"{account}/{REGION}|"
    assert account not in (ACCOUNT, OTHER_ACCOUNT) and not _mine(prefix)
    before = _others(prefix)
    opened = open_store(f"dynamodb://{table}/{account}/{REGION}")
    yield opened
    opened.close()
    assert _others(prefix) == before, "a partitioned store wrote outside its partition"


def test_the_fixture_sees_the_neighbours_data(table):
    """The neighbours' data is there to be leaked: the whole table lists it, a partition does not."""
    whole, mine = open_store(NEIGHBOURS[0]), open_store(PARTITION)
    try:
        assert len(whole.list_tasks()) == 2 and whole.cancel_requested("t2")
        assert whole.count_in_scope(200.0, ["ACTIVE"]) == 10 and whole.records("nothing")
        assert mine.list_tasks() == [] and not mine.cancel_requested("t2")
        assert mine.count_in_scope(0.0, ["ACTIVE"]) == 0 and mine.records("config") == []
    finally:
        whole.close()
        mine.close()


def test_sqlite_partitions_keep_fleet_state_sidecars_apart(tmp_path):
    base = tmp_path / "audits.sqlite3"
    one, two = (open_store(partition_location(base, account, REGION)) for account in (ACCOUNT, OTHER_ACCOUNT))
    try:
        one.save_fleet_state([b"DDA-", b"one"])
        assert one.load_fleet_state() == b"DDA-one" and two.load_fleet_state() is None
        two.save_fleet_state([b"DDA-", b"two"])
        assert one.load_fleet_state() == b"DDA-one" and two.load_fleet_state() == b"DDA-two"
    finally:
        one.close()
        two.close()
    assert not (tmp_path / "audits.sqlite3.fleet-state").exists()
