"""The store suite: every Store method, the same behaviour from SQLite and from DynamoDB (moto).

Behaviour tests take the ``store`` fixture and run once per backend; what only one backend has
(DynamoDB's table creation, batch-write retries, the ``dynamodb://`` location, the CLI options)
follows at the end, with one full audit of each backend compared.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from conftest import DATA, REGION, register, run_audit
from moto import mock_aws

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import (
    AuditFinding,
    AuditTask,
    AuditTaskStatus,
    MitigationExecution,
    NonCompliantResource,
    ResourceError,
    ResourceIdentifier,
)
from devicedefender_audit.store import Store, StoreError, open_store
from devicedefender_audit.store.base import Description, StoredVerdict, TaskOwner
from devicedefender_audit.store.dynamodb import DynamoStore
from devicedefender_audit.store.sqlite import SqliteStore

TABLE = "dda-audits"
IN_SCOPE = ("ACTIVE", "PENDING_TRANSFER")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path, aws_env) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(tmp_path / "audits.sqlite3")
        yield opened
        opened.close()
        return
    with mock_aws():
        opened = open_store(f"dynamodb://{TABLE}")
        yield opened
        opened.close()


def cid(n: int) -> str:
    """A certificate id shaped like AWS IoT's (64 hex digits)."""
    return f"{n:064x}"


def listed(n: int, status: str = "ACTIVE") -> ListedCertificate:
    return ListedCertificate(cid(n), f"arn:aws:iot:{REGION}:123456789012:cert/{cid(n)}", status,
                             T0 - timedelta(days=n))


def finding(task_id: str, n: int, reason: str = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361") -> AuditFinding:
    return AuditFinding(task_id=task_id, task_start_time=T0, reason_for_non_compliance="weak key",
                        reason_for_non_compliance_code=reason,
                        non_compliant_resource=NonCompliantResource(
                            resource_identifier=ResourceIdentifier(device_certificate_id=cid(n))))


def execution(task_id: str, finding_id: str, status: str, start: datetime, dry_run: bool = False
              ) -> MitigationExecution:
    return MitigationExecution.model_validate({
        "taskId": task_id, "findingId": finding_id, "actionName": "UPDATE_DEVICE_CERTIFICATE",
        "status": status, "startTime": start.isoformat(), "dryRun": dry_run})


# the protocol ----------------------------------------------------------------------------------


def protocol_methods() -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_"))


@pytest.mark.parametrize("backend", [SqliteStore, DynamoStore], ids=["sqlite", "dynamodb"])
def test_every_protocol_method_is_implemented(backend):
    missing = [name for name in protocol_methods() if not callable(getattr(backend, name, None))]
    assert missing == []


def test_this_suite_exercises_every_protocol_method():
    source = inspect.getsource(inspect.getmodule(test_this_suite_exercises_every_protocol_method))
    assert [name for name in protocol_methods() if f".{name}(" not in source] == []


# inventory -------------------------------------------------------------------------------------


def test_listing_keeps_first_seen_and_an_older_observation_changes_nothing(store):
    """An overlapping audit's older page, written late, neither moves last_seen back nor puts
    back the status it saw (ACTIVE at 150, INACTIVE since 200), nor brings back a gone record."""
    store.record_listing([listed(1)], 100.0)
    store.record_listing([listed(1, "INACTIVE")], 200.0)
    store.record_listing([listed(1, "ACTIVE")], 150.0)
    record = store.inventory_record(cid(1))
    assert (record.certificate_id, record.status, record.first_seen, record.last_seen, record.gone_since) == (
        cid(1), "INACTIVE", 100.0, 200.0, None)
    store.set_gone([cid(1)], 250.0)
    store.record_listing([listed(1, "ACTIVE")], 180.0)
    assert store.inventory_record(cid(1)).gone_since == 250.0
    store.record_listing([listed(1, "ACTIVE")], 300.0)  # listed again since: back, with that status
    record = store.inventory_record(cid(1))
    assert (record.status, record.last_seen, record.gone_since) == ("ACTIVE", 300.0, None)
    assert record.certificate_arn.endswith(cid(1))
    assert record.creation_date == (T0 - timedelta(days=1)).isoformat()
    assert record.description is None
    assert store.inventory_record(cid(2)) is None


def test_an_observation_stamped_by_a_clock_far_ahead_does_not_freeze_the_record(store):
    """A writer whose clock was a day ahead recorded INACTIVE: a later listing (on a right clock,
    so with an earlier time) still replaces it, and a certificate no longer listed is marked gone
    although its last_seen lies in the future."""
    day = 86400.0
    store.record_listing([listed(1, "INACTIVE"), listed(2)], 1000.0 + day)
    store.record_listing([listed(1, "ACTIVE")], 1000.0)
    record = store.inventory_record(cid(1))
    assert (record.status, record.last_seen) == ("ACTIVE", 1000.0)
    assert store.mark_gone(1000.0, 1001.0) == 1  # certificate 2, stamped a day ahead and not listed
    assert store.inventory_record(cid(2)).gone_since == 1001.0 and store.inventory_record(cid(1)).gone_since is None
    store.record_listing([listed(1, "INACTIVE")], 1000.0 - 60)  # an overlapping audit's page, written late
    assert store.inventory_record(cid(1)).status == "ACTIVE"


def test_descriptions_are_kept_and_replaced_whole(store):
    store.record_listing([listed(1), listed(2), listed(3)], 100.0)
    assert store.ids_without_description([cid(1), cid(2), cid(9)]) == {cid(1), cid(2), cid(9)}
    store.save_descriptions([
        Description(cid(1), spki=b"\x30\x82\x01\x22" + bytes(range(256)), key_algorithm="RSA", key_bits=2048),
        Description(cid(2), unparsed_pem="-----BEGIN CERTIFICATE-----\nAAAA\n", error_code="MALFORMED_CERTIFICATE",
                    error_message="cannot parse"),
        Description(cid(9), key_algorithm="RSA"),  # not in the inventory: ignored, as an UPDATE is
    ])
    assert store.ids_without_description([cid(1), cid(2), cid(3)]) == {cid(3)}
    assert store.ids_without_description([]) == set()
    assert store.inventory_record(cid(1)).description == Description(
        cid(1), spki=b"\x30\x82\x01\x22" + bytes(range(256)), key_algorithm="RSA", key_bits=2048)
    assert store.inventory_record(cid(9)) is None
    # a better parser reads the kept PEM later: the description is replaced, the error gone
    store.save_descriptions([Description(cid(2), spki=b"\x30\x59", key_algorithm="EC", key_bits=256)])
    assert store.inventory_record(cid(2)).description == Description(cid(2), b"\x30\x59", "EC", 256)
    # a re-listing leaves the description alone
    store.record_listing([listed(1)], 300.0)
    assert store.inventory_record(cid(1)).description.key_bits == 2048


def test_gone_certificates_leave_scope_until_listed_again(store):
    store.record_listing([listed(n) for n in range(1, 6)], 100.0)
    store.record_listing([listed(1), listed(2), listed(3)], 200.0)
    assert store.mark_gone(200.0, 250.0) == 2
    assert store.mark_gone(200.0, 260.0) == 0  # already gone
    assert store.inventory_record(cid(4)).gone_since == 250.0
    store.set_gone([cid(3), cid(77)], 270.0)  # deleted during the scan; unknown ids are ignored
    assert store.inventory_record(cid(3)).gone_since == 270.0
    assert store.inventory_record(cid(77)) is None
    assert store.count_in_scope(200.0, IN_SCOPE) == 2
    store.record_listing([listed(4)], 300.0)
    assert store.inventory_record(cid(4)).gone_since is None


def test_in_scope_pages_every_certificate_once(store):
    statuses = ["ACTIVE", "PENDING_TRANSFER", "INACTIVE", "REVOKED"]
    store.record_listing([listed(n, statuses[n % 4]) for n in range(1, 41)], 100.0)
    store.record_listing([listed(n, statuses[n % 4]) for n in range(41, 101)], 200.0)
    expected = {cid(n) for n in range(41, 101) if statuses[n % 4] in IN_SCOPE}
    assert store.count_in_scope(200.0, IN_SCOPE) == len(expected) == 30
    assert store.count_in_scope(100.0, ["ACTIVE"]) == 25
    assert store.count_in_scope(100.0, []) == 0
    seen: list[str] = []
    for batch in store.in_scope(200.0, IN_SCOPE, 7):
        assert 1 <= len(batch) <= 7
        seen += [r.certificate_id for r in batch]
        # writes between batches (verdicts, listings, descriptions) do not disturb the iteration
        store.save_verdicts([StoredVerdict(r.certificate_id, "roca", "1", "clean", None, "") for r in batch])
        store.record_listing([listed(2000 + len(seen), "INACTIVE"), listed(1), listed(2)], 100.0)
        store.save_descriptions([Description(r.certificate_id, key_algorithm="RSA") for r in batch])
    assert sorted(seen) == sorted(expected)
    assert list(store.in_scope(200.0, [], 7)) == []


def test_verdicts_merge_per_detector(store):
    store.save_verdicts([
        StoredVerdict(cid(1), "roca", "1", "clean", None, ""),
        StoredVerdict(cid(1), "debian", "lists-a", "vulnerable", "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166",
                      "pid 1234"),
        StoredVerdict(cid(2), "roca", "1", "vulnerable", "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361", "roca"),
    ])
    store.save_verdicts([StoredVerdict(cid(1), "debian", "lists-b", "clean", None, "")])
    got = store.verdicts([cid(1), cid(2), cid(3)])
    assert set(got) == {cid(1), cid(2)}
    assert sorted(got[cid(1)], key=lambda v: v.detector) == [
        StoredVerdict(cid(1), "debian", "lists-b", "clean", None, ""),
        StoredVerdict(cid(1), "roca", "1", "clean", None, ""),
    ]
    assert got[cid(2)] == [StoredVerdict(cid(2), "roca", "1", "vulnerable",
                                         "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361", "roca")]
    assert store.verdicts([]) == {}


# audit tasks -----------------------------------------------------------------------------------


def test_tasks_by_id_start_time_and_status(store):
    tasks = [AuditTask(task_start_time=T0 + timedelta(hours=h)) for h in range(5)]
    for task in tasks:
        store.save_task(task)
    owner = TaskOwner("host-a", 4242, 1000.5)
    tasks[3].task_status = AuditTaskStatus.IN_PROGRESS
    store.save_task(tasks[3], owner)
    tasks[3].progress.checked_certificates = 7
    store.save_task(tasks[3])  # a save without owner keeps the owner
    for task in tasks[:3]:
        task.task_status = AuditTaskStatus.COMPLETED
        store.save_task(task)

    assert store.get_task(tasks[3].task_id) == tasks[3]
    assert store.get_task("nope") is None
    assert [t.task_id for t in store.list_tasks()] == [t.task_id for t in reversed(tasks)]
    assert [t.task_id for t in store.list_tasks(limit=2)] == [tasks[4].task_id, tasks[3].task_id]
    assert store.latest_task_id() == tasks[4].task_id
    assert [t.task_id for t in store.newest_tasks()] == [t.task_id for t in reversed(tasks)]
    in_progress = {task.task_id: who for task, who in store.in_progress_tasks()}
    assert in_progress == {tasks[3].task_id: owner, tasks[4].task_id: None}
    assert [t.task_id for t in store.tasks_started_between(T0 + timedelta(hours=1), T0 + timedelta(hours=3))] == [
        tasks[1].task_id, tasks[2].task_id, tasks[3].task_id]
    assert store.tasks_started_between(T0 - timedelta(days=2), T0 - timedelta(days=1)) == []


def test_no_tasks(store):
    assert store.list_tasks() == [] and store.latest_task_id() is None and store.in_progress_tasks() == []
    assert list(store.newest_tasks()) == []


def test_newest_tasks_reads_past_one_batch(store):
    """DynamoDB reads the tasks' bodies 100 at a time: all 205 come back, newest first."""
    tasks = [AuditTask(task_start_time=T0 + timedelta(minutes=m)) for m in range(205)]
    for task in tasks:
        store.save_task(task)
    assert [t.task_id for t in store.newest_tasks()] == [t.task_id for t in reversed(tasks)]


def test_cancel_requests(store):
    assert not store.cancel_requested("t1")
    store.request_cancel("t1")
    assert store.cancel_requested("t1") and not store.cancel_requested("t2")


def test_findings_per_task_ordered_by_certificate_and_by_id(store):
    found = [finding("t1", 3), finding("t1", 1, "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"),
             finding("t1", 1, "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"), finding("t2", 2)]
    store.add_findings(found)
    assert [(f.certificate_id, f.reason_for_non_compliance_code) for f in store.findings("t1")] == [
        (cid(1), "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"),
        (cid(1), "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"),
        (cid(3), "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"),
    ]
    assert list(store.findings("t2")) == [found[3]]
    assert store.get_finding(found[0].finding_id) == found[0]
    assert store.get_finding("nope") is None
    found[0].is_suppressed = True
    store.add_findings([found[0]])  # re-adding a finding replaces it
    assert store.get_finding(found[0].finding_id).is_suppressed
    assert [f.is_suppressed for f in store.findings("t1")] == [False, False, True]


def test_many_findings_take_several_batch_writes(store):
    store.add_findings([finding("big", n) for n in range(60)])
    assert [f.certificate_id for f in store.findings("big")] == [cid(n) for n in range(60)]


def test_resource_errors_per_task(store):
    store.add_errors("t1", [ResourceError(certificate_id=cid(2), error_code="THROTTLED", message="slow down")])
    store.add_errors("t1", [ResourceError(certificate_id=cid(1), error_code="DELETED_DURING_SCAN", message="gone",
                                          left_scope=True),
                            ResourceError(certificate_id=cid(2), error_code="THROTTLED", message="slow down")])
    store.add_errors("t1", [])
    assert [(e.certificate_id, e.error_code, e.left_scope) for e in store.errors("t1")] == [
        (cid(1), "DELETED_DURING_SCAN", True), (cid(2), "THROTTLED", False), (cid(2), "THROTTLED", False)]
    assert list(store.errors("t2")) == []


# API records and mitigation --------------------------------------------------------------------


def test_records_by_kind_and_key(store):
    body = {"auditCheckConfigurations": {"X": {"enabled": True}}, "ratio": 0.5, "n": 3, "none": None}
    store.put_record("config", "account", body)
    assert store.get_record("config", "account") == body
    store.put_record("config", "account", {"v": 2})
    assert store.get_record("config", "account") == {"v": 2}
    assert store.insert_record("claim", "f1/a1", {"by": "one"}) is True
    assert store.insert_record("claim", "f1/a1", {"by": "two"}) is False
    assert store.get_record("claim", "f1/a1") == {"by": "one"}
    store.put_record("schedule", "weekly", {"n": 2})
    store.put_record("schedule", "daily", {"n": 1})
    assert store.records("schedule") == [("daily", {"n": 1}), ("weekly", {"n": 2})]
    assert store.records("nothing") == []
    assert store.delete_record("schedule", "daily") is True
    assert store.delete_record("schedule", "daily") is False
    assert store.get_record("schedule", "daily") is None


def test_executions_per_task_in_start_order(store):
    store.record_execution(execution("m1", "f1", "SUCCEEDED", T0 + timedelta(seconds=2)))
    store.record_execution(execution("m1", "f2", "FAILED", T0 + timedelta(seconds=1)))
    store.record_execution(execution("m1", "f1", "SKIPPED", T0 + timedelta(seconds=3), dry_run=True))
    store.record_execution(execution("m2", "f1", "SKIPPED", T0))
    got = store.executions("m1")
    assert [(e.finding_id, e.status.name, e.dry_run) for e in got] == [
        ("f2", "FAILED", False), ("f1", got[1].status.name, False), ("f1", "SKIPPED", True)]
    assert got[1] == execution("m1", "f1", "SUCCEEDED", T0 + timedelta(seconds=2))
    assert len(store.executions("m2")) == 1 and store.executions("m3") == []


# batches ---------------------------------------------------------------------------------------


def test_a_batch_writes_at_its_end(store):
    store.record_listing([listed(1)], 100.0)
    task = AuditTask()
    with store.batch():
        store.save_verdicts([StoredVerdict(cid(1), "roca", "1", "clean", None, "")])
        store.save_descriptions([Description(cid(1), spki=b"\x30", key_algorithm="RSA", key_bits=1024)])
        with store.batch():  # nested batches join the outer one
            store.add_findings([finding(task.task_id, 1)])
            store.add_errors(task.task_id, [ResourceError(certificate_id=cid(2), error_code="X", message="")])
        store.record_listing([listed(2)], 100.0)
        store.set_gone([cid(2)], 150.0)
        store.put_record("config", "account", {"v": 1})
        store.save_task(task)
    assert store.verdicts([cid(1)])[cid(1)][0].verdict == "clean"
    assert store.inventory_record(cid(1)).description.key_bits == 1024
    assert store.inventory_record(cid(2)).gone_since == 150.0
    assert len(list(store.findings(task.task_id))) == len(list(store.errors(task.task_id))) == 1
    assert store.get_record("config", "account") == {"v": 1}
    assert store.get_task(task.task_id) == task


def test_a_failed_batch_writes_nothing(store):
    task = AuditTask()
    with pytest.raises(RuntimeError), store.batch():
        store.record_listing([listed(1)], 100.0)
        store.add_findings([finding(task.task_id, 1)])
        store.save_task(task)
        raise RuntimeError("killed mid-batch")
    assert store.inventory_record(cid(1)) is None
    assert list(store.findings(task.task_id)) == [] and store.get_task(task.task_id) is None


def test_fleet_state_is_kept_by_sqlite_and_not_by_dynamodb(store):
    """SQLite keeps it in a sidecar; DynamoDB keeps none (each audit compares the fleet in full)."""
    assert store.load_fleet_state() is None
    store.save_fleet_state([b"DDA-", b"state"])
    store.save_fleet_state([b"DDA-", b"state 2"])
    assert store.load_fleet_state() == (None if isinstance(store, DynamoStore) else b"DDA-state 2")


# DynamoDB only ---------------------------------------------------------------------------------


def test_table_is_created_on_demand_and_reopened(aws):
    first = open_store(f"dynamodb://{TABLE}")
    first.put_record("config", "account", {"v": 1})
    first.close()
    table = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=TABLE)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["GSI1"]
    # $DDA_STORE and --store go through pathlib.Path, which collapses the '//'
    from pathlib import Path

    again = open_store(Path(f"dynamodb://{TABLE}"))
    assert again.path == f"dynamodb://{TABLE}"
    assert again.get_record("config", "account") == {"v": 1}
    again.close()


def test_a_table_of_another_shape_or_a_bad_name_is_refused(aws):
    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName="other", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    with pytest.raises(StoreError, match="not a devicedefender-audit table"):
        open_store("dynamodb://other")
    for bad in ("dynamodb://", "dynamodb://ab", "dynamodb://has space", "dynamodb:table"):
        with pytest.raises(StoreError, match="dynamodb://TABLE"):
            open_store(bad)


def test_an_unreachable_endpoint_is_a_store_error(aws_env):
    target = AwsTarget(region=REGION, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(StoreError, match="cannot be opened"):
        open_store(f"dynamodb://{TABLE}", target)


def test_unprocessed_items_are_retried(aws, monkeypatch):
    store = open_store(f"dynamodb://{TABLE}")
    real = store._db.batch_write_item
    calls: list[int] = []

    def throttled(RequestItems):  # boto3's parameter name
        """DynamoDB under throttling: the first answer leaves the last items unprocessed."""
        items = RequestItems[TABLE]
        calls.append(len(items))
        if len(calls) == 1:
            real(RequestItems={TABLE: items[:-5]})
            return {"UnprocessedItems": {TABLE: items[-5:]}}
        return real(RequestItems=RequestItems)

    monkeypatch.setattr(store._db, "batch_write_item", throttled)
    monkeypatch.setattr("devicedefender_audit.store.dynamodb.DynamoStore._backoff", staticmethod(lambda _: None))
    store.add_findings([finding("t", n) for n in range(20)])  # 40 items: two calls, then the retry
    assert calls == [25, 5, 15]
    assert len(list(store.findings("t"))) == 20
    store.close()


def test_full_audit_round_trips_on_dynamodb(iot, tmp_path):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    register(iot, (DATA / "roca" / "cert05.pem").read_text(), status="INACTIVE")
    register(iot, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    dynamo = open_store(f"dynamodb://{TABLE}")
    on_dynamo = run_audit(iot, [RocaDetector()], store=dynamo)
    on_sqlite = run_audit(iot, [RocaDetector()], store=open_store(tmp_path / "audits.sqlite3"))

    def outcome(audited):
        return ([(f.certificate_id, f.reason_for_non_compliance_code) for f in audited.findings],
                [(e.certificate_id, e.error_code) for e in audited.errors],
                audited.task.details.model_dump(), audited.task.task_status)

    assert outcome(on_dynamo) == outcome(on_sqlite)
    assert on_dynamo.findings and on_dynamo.errors
    assert dynamo.get_task(on_dynamo.task.task_id) == on_dynamo.task
    assert dynamo.latest_task_id() == on_dynamo.task.task_id
    assert dynamo.in_progress_tasks() == []
    assert dynamo.get_finding(on_dynamo.findings[0].finding_id) == on_dynamo.findings[0]

    again = run_audit(iot, [RocaDetector()], store=dynamo)  # describes nothing, reuses the verdicts
    assert outcome(again)[:3] == outcome(on_dynamo)[:3]
    assert [t.task_id for t in dynamo.list_tasks()] == [again.task.task_id, on_dynamo.task.task_id]
    dynamo.close()


def test_cli_store_option_reaches_dynamodb_with_the_aws_options(capsys, moto_server):
    from devicedefender_audit.cli import main

    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_server)
    roca = register(iot, (DATA / "roca" / "cert04.pem").read_text())
    where = ["--store", f"dynamodb://{TABLE}", "--endpoint-url", moto_server, "--region", REGION]
    assert main(["run", *where, "--format", "json", "--no-progress"]) == 3
    task_id = json.loads(capsys.readouterr().out)["auditTask"]["taskId"]
    assert main(["list-audits", *where, "--format", "json"]) == 0
    assert [t["taskId"] for t in json.loads(capsys.readouterr().out)["tasks"]] == [task_id]
    assert main(["show-findings", *where]) == 3
    assert roca["certificateId"] in capsys.readouterr().out
    # the table lives at that endpoint, not in the default SQLite store
    tables = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server).list_tables()["TableNames"]
    assert tables == [TABLE]
