"""What every store keeps, and the operations the engine needs from it.

The store is an interface: SQLite is the embedded default, and another backend (DynamoDB for
deployments in AWS) implements the same :class:`Store` protocol and passes the same tests.
Three things live in it: the certificate inventory (one record per certificate id ever seen,
with its public key once described, and the detector verdicts on that key), audit tasks with
their findings and unchecked resources, and mitigation executions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.models import AuditFinding, AuditTask, MitigationExecution, ResourceError

#: How far a recorded observation (``last_seen``) may be ahead of a new one and still count as
#: newer. Two audits at once invert their pages only by a page's write delay (seconds), so one
#: further ahead was stamped by a wrong clock (a laptop's, or one stepped back since): the new
#: observation replaces it, and ``mark_gone`` takes it for not listed, instead of a bad clock
#: freezing a certificate's status and presence for as long as it was ahead.
CLOCK_AHEAD_S = 600.0


class StoreError(RuntimeError):
    """The store cannot be opened or written: one clear message, before any AWS call if possible."""


class StoreUnavailable(StoreError):
    """A store that opened fails while in use (locked by another writer beyond the wait, disk
    full, I/O error, damage found mid-run): not a usage error (the CLI exits 1, not 2)."""


@dataclass(frozen=True)
class Description:
    """What ``DescribeCertificate`` taught us about one certificate, kept forever.

    Either the key was read (``spki`` and its facts), or the PEM could not be parsed, in which
    case the PEM itself is kept so that a better parser can read it later without AWS.
    """

    certificate_id: str
    spki: bytes | None = None
    key_algorithm: str | None = None
    key_bits: int | None = None
    unparsed_pem: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class InventoryRecord:
    """One certificate of the inventory as the checks see it."""

    certificate_id: str
    certificate_arn: str
    status: str
    creation_date: str | None
    first_seen: float
    last_seen: float
    gone_since: float | None
    description: Description | None


@dataclass(frozen=True)
class StoredVerdict:
    """A detector's verdict on a certificate's key, and the detector/data version behind it."""

    certificate_id: str
    detector: str
    version: str
    verdict: str
    reason_code: str | None
    detail: str


@dataclass(frozen=True)
class TaskOwner:
    """Which process runs an in-progress task, and when it last showed signs of life."""

    host: str
    pid: int
    heartbeat: float


class Store(Protocol):
    path: str

    def close(self) -> None: ...

    # inventory
    def record_listing(self, certificates: Sequence[ListedCertificate], seen_at: float) -> None: ...
    def ids_without_description(self, ids: Iterable[str]) -> set[str]: ...
    def save_descriptions(self, descriptions: Sequence[Description]) -> None: ...
    def mark_gone(self, listed_before: float, now: float) -> int: ...
    def set_gone(self, ids: Sequence[str], now: float) -> None: ...
    def count_in_scope(self, seen_since: float, statuses: Iterable[str]) -> int: ...
    def in_scope(self, seen_since: float, statuses: Iterable[str], batch: int) -> Iterator[list[InventoryRecord]]: ...
    def inventory_record(self, certificate_id: str) -> InventoryRecord | None: ...
    def verdicts(self, ids: Iterable[str]) -> dict[str, list[StoredVerdict]]: ...
    def save_verdicts(self, verdicts: Sequence[StoredVerdict]) -> None: ...

    # audit tasks
    def save_task(self, task: AuditTask, owner: TaskOwner | None = None) -> None: ...
    def get_task(self, task_id: str) -> AuditTask | None: ...
    def list_tasks(self, limit: int = 50) -> list[AuditTask]: ...
    def newest_tasks(self) -> Iterator[AuditTask]: ...
    def latest_task_id(self) -> str | None: ...
    def in_progress_tasks(self) -> list[tuple[AuditTask, TaskOwner | None]]: ...
    def tasks_started_between(self, start: datetime, end: datetime) -> list[AuditTask]: ...
    def request_cancel(self, task_id: str) -> None: ...
    def cancel_requested(self, task_id: str) -> bool: ...
    def add_findings(self, findings: Sequence[AuditFinding]) -> None: ...
    def findings(self, task_id: str) -> Iterator[AuditFinding]: ...
    def get_finding(self, finding_id: str) -> AuditFinding | None: ...
    def add_errors(self, task_id: str, errors: Sequence[ResourceError]) -> None: ...
    def errors(self, task_id: str) -> Iterator[ResourceError]: ...

    # API records: JSON documents by (kind, key) for the Device Defender operations' own state
    # (account configuration, suppressions, scheduled audits, cancel requests, mitigation actions,
    # tasks and the claims that keep an action from being applied twice). ``insert_record``
    # writes only when the key is new and says whether it did (create-if-absent, atomically).
    def put_record(self, kind: str, key: str, body: dict) -> None: ...
    def insert_record(self, kind: str, key: str, body: dict) -> bool: ...
    def get_record(self, kind: str, key: str) -> dict | None: ...
    def delete_record(self, kind: str, key: str) -> bool: ...
    def records(self, kind: str) -> list[tuple[str, dict]]: ...

    # mitigation
    def record_execution(self, execution: MitigationExecution) -> None: ...
    def executions(self, task_id: str) -> list[MitigationExecution]: ...

    # one transaction around several writes (a batch of progress)
    def batch(self) -> object: ...

    # The factorable check's fleet state between audits (factoring/fleet_audit.py): opaque bytes,
    # up to a few hundred MB at a million keys. ``load`` gives None when none is kept; ``save``
    # writes the parts in order and replaces the previous state atomically, or raises StoreError.
    def load_fleet_state(self) -> bytes | None: ...
    def save_fleet_state(self, parts: Sequence[bytes]) -> None: ...
