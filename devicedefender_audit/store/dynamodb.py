"""The store in one DynamoDB table, for deployments in AWS (``--store dynamodb://TABLE``).

Single-table design. Every item has a string partition key ``PK`` and sort key ``SK``; one global
secondary index, ``GSI1`` (``GSI1PK``/``GSI1SK``, projecting ``status``), orders the audit tasks.
Record bodies (tasks, findings, errors, executions, API records) are the same camelCase JSON text
SQLite keeps, in a ``body`` string attribute, so both backends round-trip the same documents.

======================================  ==========================  =====================================
item                                    PK / SK                     access patterns
======================================  ==========================  =====================================
certificate (inventory)                 ``INV#<h>`` / ``<cert id>`` by id (GetItem, BatchGetItem); in-scope
                                                                    and mark-gone: Query of each of the 16
                                                                    shards in id order, filtered on
                                                                    ``last_seen``, ``status``, not
                                                                    ``gone_since`` (strongly consistent,
                                                                    keyset paging by LastEvaluatedKey)
verdicts of one certificate             ``VERDICT#<cert id>`` /     BatchGetItem by ids; one attribute
                                        ``VERDICT``                 ``verdict:<detector>`` per detector
audit task                              ``TASK#<task id>`` / ``TASK`` by id (GetItem); GSI1 ``TASKS`` /
                                                                    ``<start UTC ISO>#<task id>``: list
                                                                    newest first, latest, started between,
                                                                    in progress (then re-read consistently)
finding (in its task)                   ``TASK#<id>`` /             per task ordered by certificate, then
                                        ``FINDING#<cert>#<reason>#  reason (Query, begins_with)
                                        <finding id>``
finding (by id)                         ``FINDING#<id>`` /          GetItem
                                        ``FINDING``
resource error                          ``TASK#<id>`` /             per task ordered by certificate
                                        ``ERROR#<cert>#<uuid>``
mitigation execution                    ``TASK#<id>`` /             per task ordered by start time
                                        ``EXEC#<start ISO>#<uuid>``
API record (configuration, suppression, ``REC#<kind>`` / ``<key>``  by (kind, key); per kind in key order;
schedule, cancel request, mitigation                                insert-if-absent (the claim that keeps
action, task and claim, ...)                                        an action from being applied twice) is
                                                                    a conditional PutItem
======================================  ==========================  =====================================

``<h>`` is the first hex digit of SHA-256(certificate id): 16 shards spread an account's inventory
over partitions (each takes ~1,000 writes/s), and reading the in-scope set is 16 ordered Queries
on the base table, so unlike a GSI it is strongly consistent: a certificate listed a moment ago is
never missed by the check that follows. Gone certificates stay in the shards (filtered out); the
inventory is kept forever, as in SQLite.

Writes. Whole records written once (findings, errors, executions) go through ``BatchWriteItem``,
25 items per call, retrying ``UnprocessedItems`` with backoff. Records merged with what is stored
(a listing keeps ``first_seen`` and only moves ``last_seen`` forward; a description or a verdict
must not erase the other attributes) are ``UpdateItem`` expressions, atomic per item, run
concurrently. There are no multi-item transactions here, so :meth:`DynamoStore.batch` buffers
the writes made inside it and sends them when the outermost batch exits, in the order they were
made, and drops them if it exits with an exception (SQLite's rollback). A process killed during a
flush leaves part of one batch written: every write is idempotent (an upsert of the same values)
and each batch ends with the task's progress, so progress never counts writes that were lost and
a re-run redoes at most that one batch. ``insert_record`` and ``delete_record`` answer whether
they wrote, so they run at once even inside a batch.

No item can reach DynamoDB's 400 KB limit: the largest is a certificate whose PEM could not be
parsed, and AWS IoT's ``certificatePem`` is at most 65,536 characters (its API model); keys are
parsed from that PEM, task, finding and execution bodies are a few KB (one check, one resource,
a handful of calls), and API records are bounded by the Device Defender request shapes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice
from typing import Any, TypeVar

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.models import AuditFinding, AuditTask, MitigationExecution, ResourceError
from devicedefender_audit.store.base import (
    CLOCK_AHEAD_S,
    Description,
    InventoryRecord,
    StoredVerdict,
    StoreError,
    TaskOwner,
)
from devicedefender_audit.store.s3_fleet_state import S3FleetState, S3Location

SCHEME = "dynamodb://"
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
SHARDS = "0123456789abcdef"
TASKS = "TASKS"
VERDICT_PREFIX = "verdict:"
#: BatchWriteItem and BatchGetItem limits.
WRITE_BATCH = 25
GET_BATCH = 100
#: Concurrent UpdateItem calls during a flush (AwsTarget's default connection pool is 16).
WRITERS = 16
#: Attempts at a batch's unprocessed items before giving up (backoff doubles, capped at 5 s).
UNPROCESSED_ATTEMPTS = 12

LISTING_NAMES = {"#arn": "certificate_arn", "#status": "status", "#first": "first_seen",
                 "#last": "last_seen", "#gone": "gone_since"}

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
T = TypeVar("T")


def _av(value: object) -> dict:
    """A DynamoDB attribute value; floats go through their shortest repr, so they round-trip."""
    return _serializer.serialize(Decimal(repr(value)) if isinstance(value, float) else value)


def _item(**attributes: object) -> dict[str, dict]:
    """An item from keyword attributes, leaving out the ``None`` ones (absent, not NULL)."""
    return {name: _av(value) for name, value in attributes.items() if value is not None}


def _plain(item: dict[str, dict]) -> dict[str, Any]:
    values = {name: _deserializer.deserialize(value) for name, value in item.items()}
    return {name: bytes(v.value) if isinstance(v, Binary) else v for name, v in values.items()}


def _shard(certificate_id: str) -> str:
    return hashlib.sha256(certificate_id.encode()).hexdigest()[0]


def _inventory_key(certificate_id: str) -> dict[str, dict]:
    return _item(PK=f"INV#{_shard(certificate_id)}", SK=certificate_id)


def _verdict_key(certificate_id: str) -> dict[str, dict]:
    return _item(PK=f"VERDICT#{certificate_id}", SK="VERDICT")


def _task_key(task_id: str) -> dict[str, dict]:
    return _item(PK=f"TASK#{task_id}", SK="TASK")


def _utc_iso(moment: datetime) -> str:
    """Sortable text of a moment (fixed width, UTC), for sort keys."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def table_name(location: str) -> str:
    """The table of a ``dynamodb://TABLE`` location.

    A :class:`pathlib.Path` collapses ``//``, so ``dynamodb:/TABLE`` (what ``--store`` and
    ``$DDA_STORE`` give once they went through ``Path``) is read the same way.
    """
    rest = location.removeprefix("dynamodb:")
    if not rest.startswith("/") or not TABLE_NAME.fullmatch(rest.lstrip("/")):
        raise StoreError(f"store {location}: write a DynamoDB store as dynamodb://TABLE, a table name "
                         "being 3 to 255 of A-Z a-z 0-9 _ . -")
    return rest.lstrip("/")


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoStore:
    """:class:`~devicedefender_audit.store.base.Store` in one DynamoDB table (see the module doc)."""

    def __init__(self, table: str, target: AwsTarget | None = None, partition: str | None = None,
                 fleet_state: S3Location | None = None, create: bool = True) -> None:
        """``partition`` (``<account>/<region>``) keeps this store to one account-region's share of
        the table (:mod:`.dynamodb_partition`); ``None`` is the whole, unpartitioned store.
        ``fleet_state`` is where the factorable check's fleet state is kept between audits (one
        object per store under it, :mod:`.s3_fleet_state`); ``None`` keeps none. Without
        ``create`` (a command that only reads audits) a missing table is a :class:`StoreError`:
        a mistyped name must not read as "no audits" and create a table in the account."""
        self.table = table
        self.path = f"{SCHEME}{table}" + (f"/{partition}" if partition else "")
        self._target = target or AwsTarget()
        self._fleet_state = (S3FleetState(self._target, fleet_state, fleet_state.key_for(table, partition))
                             if fleet_state else None)
        try:
            self._db = self._target.client("dynamodb")
            self._ensure_table(create)
            if partition:
                from devicedefender_audit.store.dynamodb_partition import PartitionedClient

                self._db = PartitionedClient(self._db, partition)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"store {self.path} cannot be opened: {exc}") from exc
        self._pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="dynamodb")
        self._depth = 0
        self._buffer: list[Callable[[], object]] = []

    # table -------------------------------------------------------------------------------------

    def _ensure_table(self, create: bool) -> None:
        """Use the table if it has our key layout; create it (on-demand billing) if missing and
        ``create``."""
        try:
            description = self._db.describe_table(TableName=self.table)["Table"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            if not create:
                raise StoreError(f"no store at {self.path}: there is no table {self.table} in "
                                 f"{self._target.region_name}; run an audit first (or check --store / "
                                 "$DDA_STORE, and --region: the table's)") from None
            description = self._create_table()
        keys = {k["AttributeName"]: k["KeyType"] for k in description["KeySchema"]}
        indexes = {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", [])}
        if keys != {"PK": "HASH", "SK": "RANGE"} or "GSI1" not in indexes:
            raise StoreError(f"store {self.path} is not a devicedefender-audit table "
                             "(wants key PK/SK and index GSI1; see infra/template.yaml)")
        if description.get("TableStatus") != "ACTIVE":
            self._db.get_waiter("table_exists").wait(TableName=self.table,
                                                     WaiterConfig={"Delay": 2, "MaxAttempts": 150})

    def _create_table(self) -> dict:
        attribute = [{"AttributeName": n, "AttributeType": "S"} for n in ("PK", "SK", "GSI1PK", "GSI1SK")]
        try:
            return self._db.create_table(
                TableName=self.table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=attribute,
                KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
                GlobalSecondaryIndexes=[{
                    "IndexName": "GSI1",
                    "KeySchema": [{"AttributeName": "GSI1PK", "KeyType": "HASH"},
                                  {"AttributeName": "GSI1SK", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status"]},
                }],
            )["TableDescription"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
            # Another process created it a moment ago.
            return self._db.describe_table(TableName=self.table)["Table"]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # low-level reads and writes ------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Buffer the writes made inside; send them in order when the outermost batch exits
        (dropped if it exits with an exception). Nested batches join the outer one."""
        self._depth += 1
        try:
            yield
        except BaseException:
            if self._depth == 1:
                self._buffer.clear()
            raise
        finally:
            self._depth -= 1
        if self._depth == 0:
            steps, self._buffer = self._buffer, []
            for step in steps:
                step()

    def _submit(self, step: Callable[[], object]) -> None:
        if self._depth:
            self._buffer.append(step)
        else:
            step()

    def _put(self, items: Sequence[dict[str, dict]]) -> None:
        if items:
            self._submit(lambda: self._write_items(items))

    def _write_items(self, items: Sequence[dict[str, dict]]) -> None:
        """BatchWriteItem, 25 at a time; a key written twice keeps its last item (a batch may not
        name one key twice)."""
        unique = {(item["PK"]["S"], item["SK"]["S"]): item for item in items}
        for chunk in _chunks(list(unique.values()), WRITE_BATCH):
            request = {self.table: [{"PutRequest": {"Item": item}} for item in chunk]}
            for attempt in range(UNPROCESSED_ATTEMPTS):
                request = self._db.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
                self._backoff(attempt)
            else:
                raise StoreError(f"store {self.path}: DynamoDB left writes unprocessed after "
                                 f"{UNPROCESSED_ATTEMPTS} attempts (throttled)")

    @staticmethod
    def _backoff(attempt: int) -> None:
        time.sleep(min(5.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))

    def _concurrently(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Independent single-item calls, in parallel (the first failure is raised)."""
        if len(calls) <= 1:
            return [call() for call in calls]
        return list(self._pool.map(lambda call: call(), calls))

    def _update(self, key: dict[str, dict], expression: str, names: dict[str, str],
                values: dict[str, object], condition: str | None = None) -> bool:
        """One UpdateItem; ``False`` when its condition did not hold."""
        params: dict[str, Any] = {"TableName": self.table, "Key": key, "UpdateExpression": expression,
                                  "ExpressionAttributeNames": names}
        if values:
            params["ExpressionAttributeValues"] = {name: _av(value) for name, value in values.items()}
        if condition:
            params["ConditionExpression"] = condition
        try:
            self._db.update_item(**params)
        except ClientError as exc:
            if condition and _is_conditional_failure(exc):
                return False
            raise
        return True

    def _get(self, key: dict[str, dict]) -> dict[str, Any] | None:
        item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def _get_many(self, keys: Iterable[dict[str, dict]], projection: str | None = None,
                  names: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """BatchGetItem, 100 keys a call, strongly consistent, unprocessed keys retried."""
        unique = list({(k["PK"]["S"], k["SK"]["S"]): k for k in keys}.values())
        for chunk in _chunks(unique, GET_BATCH):
            spec: dict[str, Any] = {"Keys": list(chunk), "ConsistentRead": True}
            if projection:
                spec["ProjectionExpression"] = projection
            if names:
                spec["ExpressionAttributeNames"] = names
            request = {self.table: spec}
            for attempt in range(UNPROCESSED_ATTEMPTS):
                response = self._db.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    yield _plain(item)
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._backoff(attempt)
            else:
                raise StoreError(f"store {self.path}: DynamoDB left reads unprocessed after "
                                 f"{UNPROCESSED_ATTEMPTS} attempts (throttled)")

    def _query(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a Query, page by page (one page, at most 1 MB, in memory at a time)."""
        params["TableName"] = self.table
        while True:
            page = self._db.query(**params)
            for item in page.get("Items", []):
                yield _plain(item)
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _partition(self, pk: str, prefix: str | None = None) -> Iterator[dict[str, Any]]:
        """A partition's items in sort-key order, or those whose sort key starts with ``prefix``."""
        condition, values = "PK = :pk", {":pk": _av(pk)}
        if prefix:
            condition += " AND begins_with(SK, :prefix)"
            values[":prefix"] = _av(prefix)
        return self._query(KeyConditionExpression=condition, ExpressionAttributeValues=values, ConsistentRead=True)

    # inventory -----------------------------------------------------------------------------------

    def record_listing(self, certificates: Sequence[ListedCertificate], seen_at: float) -> None:
        """Upsert each listed certificate seen at ``seen_at``: ``first_seen`` kept, status and
        ``last_seen`` set, no longer gone; nothing is changed by an observation older than the one
        recorded (an overlapping audit's). The description and verdicts are left as they are."""
        def listed(certificate: ListedCertificate) -> None:
            key = _inventory_key(certificate.certificate_id)
            values: dict[str, object] = {":arn": certificate.certificate_arn, ":status": certificate.status}
            names = dict(LISTING_NAMES)
            created = ""
            if certificate.creation_date is not None:
                names["#created"] = "creation_date"
                values[":created"] = certificate.creation_date.isoformat()
                created = ", #created = if_not_exists(#created, :created)"
            self._update(
                key, f"SET #arn = :arn, #status = :status{created}, #first = if_not_exists(#first, :t), "
                "#last = :t REMOVE #gone", names, {**values, ":t": seen_at, ":ahead": seen_at + CLOCK_AHEAD_S},
                condition="attribute_not_exists(#last) OR #last <= :t OR #last > :ahead")

        self._submit(lambda: self._concurrently([lambda c=c: listed(c) for c in certificates]))

    def ids_without_description(self, ids: Iterable[str]) -> set[str]:
        wanted = set(ids)
        described = {
            item["SK"]
            for item in self._get_many((_inventory_key(i) for i in wanted), "SK, described")
            if item.get("described")
        }
        return wanted - described

    def save_descriptions(self, descriptions: Sequence[Description]) -> None:
        """Set each certificate's description (a re-parse replaces it whole); certificates not in
        the inventory are left out, as SQLite's UPDATE leaves them."""
        fields = ("spki", "key_algorithm", "key_bits", "unparsed_pem", "error_code", "error_message")

        def describe(description: Description) -> None:
            values = {f: getattr(description, f) for f in fields}
            present = [f for f in fields if values[f] is not None]
            absent = [f for f in fields if values[f] is None]
            expression = "SET #described = :true" + "".join(f", #{f} = :{f}" for f in present)
            if absent:
                expression += " REMOVE " + ", ".join(f"#{f}" for f in absent)
            self._update(_inventory_key(description.certificate_id), expression,
                         {"#pk": "PK", "#described": "described", **{f"#{f}": f for f in fields}},
                         {":true": True, **{f":{f}": values[f] for f in present}},
                         condition="attribute_exists(#pk)")

        self._submit(lambda: self._concurrently([lambda d=d: describe(d) for d in descriptions]))

    def _scope_filter(self, seen_since: float, statuses: Iterable[str]) -> tuple[str, dict[str, str],
                                                                                   dict[str, object]]:
        wanted = list(dict.fromkeys(statuses))
        placeholders = ", ".join(f":s{i}" for i in range(len(wanted)))
        return (f"#last >= :since AND attribute_not_exists(#gone) AND #status IN ({placeholders})",
                {"#last": "last_seen", "#gone": "gone_since", "#status": "status"},
                {":since": seen_since, **{f":s{i}": s for i, s in enumerate(wanted)}})

    def _shard_query(self, shard: str, condition: str, names: dict[str, str], values: dict[str, object],
                     **extra: Any) -> dict[str, Any]:
        return {"KeyConditionExpression": "PK = :pk", "FilterExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {":pk": _av(f"INV#{shard}"),
                                              **{k: _av(v) for k, v in values.items()}},
                "ConsistentRead": True, **extra}

    def mark_gone(self, listed_before: float, now: float) -> int:
        """Mark gone the certificates not listed since ``listed_before`` (or stamped implausibly far
        ahead of ``now``: :data:`~.base.CLOCK_AHEAD_S`); how many were marked."""
        condition = "(#last < :before OR #last > :ahead) AND attribute_not_exists(#gone)"
        names = {"#last": "last_seen", "#gone": "gone_since"}
        bounds = {":before": listed_before, ":ahead": now + CLOCK_AHEAD_S}
        stale = [
            item["SK"]
            for shard in SHARDS
            for item in self._query(**self._shard_query(shard, condition, names, bounds, ProjectionExpression="SK"))
        ]
        marked = self._concurrently([
            lambda cid=cid: self._update(_inventory_key(cid), "SET #gone = :now", names, {":now": now, **bounds},
                                         condition=condition)
            for cid in stale
        ])
        return sum(marked)

    def set_gone(self, ids: Sequence[str], now: float) -> None:
        def gone(cid: str) -> None:
            self._update(_inventory_key(cid), "SET #gone = :now", {"#gone": "gone_since", "#pk": "PK"},
                         {":now": now}, condition="attribute_exists(#pk)")

        self._submit(lambda: self._concurrently([lambda c=c: gone(c) for c in ids]))

    def count_in_scope(self, seen_since: float, statuses: Iterable[str]) -> int:
        condition, names, values = self._scope_filter(seen_since, statuses)
        if ":s0" not in values:
            return 0
        total = 0
        for shard in SHARDS:
            params = self._shard_query(shard, condition, names, values, Select="COUNT")
            params["TableName"] = self.table
            while True:
                page = self._db.query(**params)
                total += page["Count"]
                if "LastEvaluatedKey" not in page:
                    break
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return total

    def in_scope(self, seen_since: float, statuses: Iterable[str], batch: int) -> Iterator[list[InventoryRecord]]:
        """In-scope certificates ``batch`` at a time, shard by shard in id order (keyset paging by
        DynamoDB's LastEvaluatedKey: flat memory, and writes between batches do not disturb it)."""
        condition, names, values = self._scope_filter(seen_since, statuses)
        if ":s0" not in values:
            return
        records: list[InventoryRecord] = []
        for shard in SHARDS:
            for item in self._query(**self._shard_query(shard, condition, names, values)):
                records.append(self._record(item))
                if len(records) == batch:
                    yield records
                    records = []
        if records:
            yield records

    def inventory_record(self, certificate_id: str) -> InventoryRecord | None:
        item = self._get(_inventory_key(certificate_id))
        return self._record(item) if item else None

    @staticmethod
    def _record(item: dict[str, Any]) -> InventoryRecord:
        cid = item["SK"]
        description = None
        if item.get("described"):
            bits = item.get("key_bits")
            description = Description(cid, item.get("spki"), item.get("key_algorithm"),
                                      int(bits) if bits is not None else None, item.get("unparsed_pem"),
                                      item.get("error_code"), item.get("error_message"))
        gone = item.get("gone_since")
        return InventoryRecord(cid, item["certificate_arn"], item["status"], item.get("creation_date"),
                               float(item["first_seen"]), float(item["last_seen"]),
                               float(gone) if gone is not None else None, description)

    def verdicts(self, ids: Iterable[str]) -> dict[str, list[StoredVerdict]]:
        out: dict[str, list[StoredVerdict]] = {}
        for item in self._get_many(_verdict_key(i) for i in ids):
            cid = item["PK"].removeprefix("VERDICT#")
            for name, value in sorted(item.items()):
                if name.startswith(VERDICT_PREFIX):
                    out.setdefault(cid, []).append(StoredVerdict(
                        cid, name.removeprefix(VERDICT_PREFIX), value["version"], value["verdict"],
                        value.get("reason_code"), value["detail"]))
        return out

    def save_verdicts(self, verdicts: Sequence[StoredVerdict]) -> None:
        """One UpdateItem per certificate, setting each detector's attribute (the others kept)."""
        by_certificate: dict[str, dict[str, StoredVerdict]] = {}
        for verdict in verdicts:
            by_certificate.setdefault(verdict.certificate_id, {})[verdict.detector] = verdict

        def save(cid: str, detectors: dict[str, StoredVerdict]) -> None:
            names = {f"#d{i}": VERDICT_PREFIX + name for i, name in enumerate(detectors)}
            values = {f":d{i}": {"version": v.version, "verdict": v.verdict, "detail": v.detail,
                                 **({"reason_code": v.reason_code} if v.reason_code is not None else {})}
                      for i, v in enumerate(detectors.values())}
            self._update(_verdict_key(cid), "SET " + ", ".join(f"#d{i} = :d{i}" for i in range(len(detectors))),
                         names, values)

        self._submit(lambda: self._concurrently(
            [lambda c=c, d=d: save(c, d) for c, d in by_certificate.items()]))

    # audit tasks ---------------------------------------------------------------------------------

    def save_task(self, task: AuditTask, owner: TaskOwner | None = None) -> None:
        """Upsert the task; its owner is kept when this save names none (as SQLite's COALESCE)."""
        names = {"#status": "status", "#body": "body", "#gpk": "GSI1PK", "#gsk": "GSI1SK"}
        values: dict[str, object] = {
            ":body": task.model_dump_json(by_alias=True), ":status": task.task_status.value, ":gpk": TASKS,
            ":gsk": f"{_utc_iso(task.task_start_time)}#{task.task_id}",
        }
        expression = "SET #body = :body, #status = :status, #gpk = :gpk, #gsk = :gsk"
        if owner is not None:
            expression += ", #host = :host, #pid = :pid, #beat = :beat"
            names.update({"#host": "owner_host", "#pid": "owner_pid", "#beat": "heartbeat"})
            values.update({":host": owner.host, ":pid": owner.pid, ":beat": owner.heartbeat})
        self._submit(lambda: self._update(_task_key(task.task_id), expression, names, values))

    def get_task(self, task_id: str) -> AuditTask | None:
        item = self._get(_task_key(task_id))
        return AuditTask.model_validate_json(item["body"]) if item else None

    def _task_index(self, forward: bool, limit: int | None = None, between: tuple[str, str] | None = None,
                    ) -> Iterator[dict[str, Any]]:
        condition = "GSI1PK = :gpk"
        values = {":gpk": _av(TASKS)}
        if between:
            condition += " AND GSI1SK BETWEEN :low AND :high"
            values.update({":low": _av(between[0]), ":high": _av(between[1])})
        params: dict[str, Any] = {"IndexName": "GSI1", "KeyConditionExpression": condition,
                                  "ExpressionAttributeValues": values, "ScanIndexForward": forward}
        if limit is not None:
            params["Limit"] = limit
        items = self._query(**params)
        return items if limit is None else (item for _, item in zip(range(limit), items))

    def _tasks(self, index_items: Iterable[dict[str, Any]]) -> list[tuple[AuditTask, dict[str, Any]]]:
        """The tasks the index named, re-read from the table (the index lags by a moment), in
        the index's order."""
        order = [item["PK"] for item in index_items]
        found = {item["PK"]: item for item in self._get_many(_item(PK=pk, SK="TASK") for pk in order)}
        return [(AuditTask.model_validate_json(found[pk]["body"]), found[pk]) for pk in order if pk in found]

    def list_tasks(self, limit: int = 50) -> list[AuditTask]:
        return [task for task, _ in self._tasks(self._task_index(forward=False, limit=limit))]

    def newest_tasks(self) -> Iterator[AuditTask]:
        """Every task, newest first, read a batch at a time as the caller goes: one looking for
        the newest task of a kind stops at it."""
        index = self._task_index(forward=False)
        while batch := list(islice(index, GET_BATCH)):
            yield from (task for task, _ in self._tasks(batch))

    def latest_task_id(self) -> str | None:
        latest = next(self._task_index(forward=False, limit=1), None)
        return latest["PK"].removeprefix("TASK#") if latest else None

    def in_progress_tasks(self) -> list[tuple[AuditTask, TaskOwner | None]]:
        candidates = (item for item in self._task_index(forward=True) if item.get("status") == "IN_PROGRESS")
        return [
            (task, TaskOwner(item["owner_host"], int(item["owner_pid"]), float(item["heartbeat"]))
             if "owner_host" in item else None)
            for task, item in self._tasks(candidates)
            if item["status"] == "IN_PROGRESS"
        ]

    def tasks_started_between(self, start: datetime, end: datetime) -> list[AuditTask]:
        """Tasks whose start time lies in [start, end], oldest first."""
        between = (_utc_iso(start), _utc_iso(end) + "#\uffff")
        tasks = [task for task, _ in self._tasks(self._task_index(forward=True, between=between))]
        return sorted((t for t in tasks if start <= t.task_start_time <= end),
                      key=lambda t: (t.task_start_time, t.task_id))

    def request_cancel(self, task_id: str) -> None:
        self.put_record("cancel_request", task_id, {"taskId": task_id})

    def cancel_requested(self, task_id: str) -> bool:
        return self.get_record("cancel_request", task_id) is not None

    def add_findings(self, findings: Sequence[AuditFinding]) -> None:
        items = []
        for finding in findings:
            body = finding.model_dump_json(by_alias=True)
            items.append(_item(PK=f"TASK#{finding.task_id}", body=body, SK=(
                f"FINDING#{finding.certificate_id}#{finding.reason_for_non_compliance_code}#{finding.finding_id}")))
            items.append(_item(PK=f"FINDING#{finding.finding_id}", SK="FINDING", body=body))
        self._put(items)

    def findings(self, task_id: str) -> Iterator[AuditFinding]:
        for item in self._partition(f"TASK#{task_id}", "FINDING#"):
            yield AuditFinding.model_validate_json(item["body"])

    def get_finding(self, finding_id: str) -> AuditFinding | None:
        item = self._get(_item(PK=f"FINDING#{finding_id}", SK="FINDING"))
        return AuditFinding.model_validate_json(item["body"]) if item else None

    def add_errors(self, task_id: str, errors: Sequence[ResourceError]) -> None:
        self._put([_item(PK=f"TASK#{task_id}", SK=f"ERROR#{e.certificate_id}#{uuid.uuid4().hex}",
                         body=e.model_dump_json(by_alias=True)) for e in errors])

    def errors(self, task_id: str) -> Iterator[ResourceError]:
        for item in self._partition(f"TASK#{task_id}", "ERROR#"):
            yield ResourceError.model_validate_json(item["body"])

    # API records ---------------------------------------------------------------------------------

    def put_record(self, kind: str, key: str, body: dict) -> None:
        self._put([_item(PK=f"REC#{kind}", SK=key, body=json.dumps(body))])

    def insert_record(self, kind: str, key: str, body: dict) -> bool:
        try:
            self._db.put_item(TableName=self.table, Item=_item(PK=f"REC#{kind}", SK=key, body=json.dumps(body)),
                              ConditionExpression="attribute_not_exists(PK)")
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def get_record(self, kind: str, key: str) -> dict | None:
        item = self._get(_item(PK=f"REC#{kind}", SK=key))
        return json.loads(item["body"]) if item else None

    def delete_record(self, kind: str, key: str) -> bool:
        response = self._db.delete_item(TableName=self.table, Key=_item(PK=f"REC#{kind}", SK=key),
                                        ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))

    def records(self, kind: str) -> list[tuple[str, dict]]:
        return [(item["SK"], json.loads(item["body"])) for item in self._partition(f"REC#{kind}")]

    # mitigation ----------------------------------------------------------------------------------

    def record_execution(self, execution: MitigationExecution) -> None:
        self._put([_item(PK=f"TASK#{execution.task_id}",
                         SK=f"EXEC#{_utc_iso(execution.start_time)}#{uuid.uuid4().hex}",
                         body=execution.model_dump_json(by_alias=True))])

    def executions(self, task_id: str) -> list[MitigationExecution]:
        return [MitigationExecution.model_validate_json(item["body"])
                for item in self._partition(f"TASK#{task_id}", "EXEC#")]

    # fleet state ---------------------------------------------------------------------------------

    def load_fleet_state(self) -> bytes | None:
        """The state kept in S3 (``?fleet-state=s3://...``), or None when none is configured or
        saved yet; an S3 failure is a StoreError (the engine then compares in full and says why).

        Not in the table: the state is the product of the fleet's moduli and its members (305 MB
        at a million keys), which would be hundreds of 400 KB items written and read back at each
        audit, and a Lambda's ``/tmp`` does not outlive its instance. Without S3, every audit
        compares the fleet in full: about a minute at 100,000 keys, 17 minutes at a million.
        """
        return self._fleet_state.load() if self._fleet_state else None

    def save_fleet_state(self, parts: Sequence[bytes]) -> None:
        """Replace the S3 object with the parts, streamed; nothing is kept without S3."""
        if self._fleet_state:
            self._fleet_state.save(parts)
