"""The embedded store: one SQLite file, written as the audit goes.

Opening checks the file before anything else happens (a directory, a path that cannot be
created, a file that is not SQLite or is corrupt gives one :class:`StoreError`), creates a new
file with mode 0600 (it holds the account's inventory), and uses WAL so readers (``list-audits``
during a scan) never block the audit; opening an existing store writes nothing, so a reader does
not wait for a writer either. A database locked by another writer is waited for
(``lock_timeout``) instead of failing the write. A failure while in use (the lock still held after
the wait, a full disk, an I/O error, damage found mid-run) is one :class:`StoreUnavailable` naming
the store, never a bare ``sqlite3`` error.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.models import AuditFinding, AuditTask, MitigationExecution, ResourceError
from devicedefender_audit.store.base import (
    CLOCK_AHEAD_S,
    Description,
    InventoryRecord,
    StoredVerdict,
    StoreError,
    StoreUnavailable,
    TaskOwner,
)

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    certificate_id TEXT PRIMARY KEY,
    certificate_arn TEXT NOT NULL,
    status TEXT NOT NULL,
    creation_date TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    gone_since REAL,
    described INTEGER NOT NULL DEFAULT 0,
    spki BLOB,
    key_algorithm TEXT,
    key_bits INTEGER,
    unparsed_pem TEXT,
    error_code TEXT,
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS certificates_seen ON certificates(last_seen);
CREATE TABLE IF NOT EXISTS verdicts (
    certificate_id TEXT NOT NULL,
    detector TEXT NOT NULL,
    version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason_code TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (certificate_id, detector)
);
CREATE TABLE IF NOT EXISTS audit_tasks (
    task_id TEXT PRIMARY KEY,
    start_time TEXT NOT NULL,
    status TEXT NOT NULL,
    owner_host TEXT,
    owner_pid INTEGER,
    heartbeat REAL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tasks_status ON audit_tasks(status);
CREATE TABLE IF NOT EXISTS findings (
    finding_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_task ON findings(task_id, certificate_id);
CREATE TABLE IF NOT EXISTS resource_errors (
    task_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS resource_errors_task ON resource_errors(task_id, certificate_id);
CREATE TABLE IF NOT EXISTS mitigation_executions (
    finding_id TEXT NOT NULL,
    action_name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    start_time TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_finding ON mitigation_executions(finding_id, action_name);
CREATE TABLE IF NOT EXISTS api_records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

#: The tables and indexes :data:`SCHEMA` makes: a store lacking one is brought up to date.
_SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))
#: How long a write waits for another process's lock before giving up (read when a store opens).
LOCK_TIMEOUT_S = 120.0
#: The fleet state's sidecar: ``<database>`` + this.
FLEET_STATE_SUFFIX = ".fleet-state"


def _create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 unless it exists (the inventory is account data)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _make_parent(file: Path) -> None:
    """Refuse a store path that is a directory and create its parent directory, as one
    :class:`StoreError` naming the path (the user's ``--store`` or ``$DDA_STORE``)."""
    if file.is_dir():
        raise StoreError(f"store {file} is a directory; give a file path (--store or $DDA_STORE)")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"store {file} cannot be created: {exc.strerror or exc}") from exc


def check_partition_directory(path: Path | str) -> None:
    """Check that stores can be created beside ``path`` without creating ``path`` itself.

    ``run --regions/--role-arn/--organization`` keeps each account-region in its own file beside
    the store path (``audits.<account>.<region>.sqlite3``, see
    :func:`~devicedefender_audit.store.partition_location`) and never uses the path's own file, so
    opening it to check the location would leave an empty store behind. Instead the directory is
    created (the partitions need it) and a probe file is created and removed in it: ``os.access``
    is not enough (root, read-only mounts, ACLs). A location that fails is one StoreError, before
    any AWS call.
    """
    file = Path(path)
    _make_parent(file)
    try:
        with tempfile.NamedTemporaryFile(dir=file.parent, prefix=f".{file.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise StoreError(f"store {file}: no store can be created in {file.parent}: {exc.strerror or exc}") from exc


def _ids_param(ids: Sequence[str]) -> str:
    return ",".join("?" * len(ids))


#: Ids per ``certificate_id IN (...)`` lookup. Every such query is prepared at this one size (a
#: short chunk is padded with NULL, which matches nothing), so sqlite3's statement cache keeps one
#: bounded statement per query for as long as the store is open, never one sized by the caller's
#: list: moto lists a whole fleet as one page, and its ids as one statement held ~0.23 KB of
#: SQLite heap per certificate (``benchmarks/bench_scan_memory.py``). Below SQLite's old 999
#: variable limit.
ID_CHUNK = 500
_ID_CHUNK_PARAMS = _ids_param(["?"] * ID_CHUNK)


def _id_chunks(ids: Iterable[str]) -> Iterator[list[str | None]]:
    """The distinct ``ids`` in :data:`ID_CHUNK`-sized lists, the last padded with None (an id in
    two chunks would give its rows twice)."""
    distinct = list(dict.fromkeys(ids))
    for start in range(0, len(distinct), ID_CHUNK):
        chunk: list[str | None] = list(distinct[start : start + ID_CHUNK])
        yield chunk + [None] * (ID_CHUNK - len(chunk))


class _Cursor(sqlite3.Cursor):
    """Rows read as the store is in use: a failure while stepping (damage met mid-read) is
    :class:`StoreUnavailable` too."""

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as exc:
            raise _unavailable(self.connection, exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as exc:
            raise _unavailable(self.connection, exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as exc:
            raise _unavailable(self.connection, exc) from exc


class _Connection(sqlite3.Connection):
    """A connection whose failures are :class:`StoreUnavailable` naming the store and saying
    what to do, rather than a bare ``sqlite3.OperationalError`` (a traceback at the CLI)."""

    store_path = ""
    lock_timeout = 0.0

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, *args: Any) -> Any:
        try:
            return super().execute(*args)
        except sqlite3.Error as exc:
            raise _unavailable(self, exc) from exc

    def executemany(self, *args: Any) -> Any:
        try:
            return super().executemany(*args)
        except sqlite3.Error as exc:
            raise _unavailable(self, exc) from exc


def _locked(exc: BaseException | None) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (``database is locked``)."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _unavailable(db: Any, exc: sqlite3.Error) -> StoreUnavailable:
    """One message for a failed statement: whose lock it waited for, or what SQLite said."""
    if _locked(exc):
        return StoreUnavailable(f"store {db.store_path} is locked by another process writing to it (waited "
                                f"{db.lock_timeout:g} s); run again once that one is done")
    return StoreUnavailable(f"store {db.store_path} cannot be used: {exc}")


class SqliteStore:
    """:class:`~devicedefender_audit.store.base.Store` in one SQLite file."""

    def __init__(self, path: Path | str, lock_timeout: float | None = None) -> None:
        lock_timeout = LOCK_TIMEOUT_S if lock_timeout is None else lock_timeout
        self.path = str(path)
        memory = self.path == ":memory:"
        if not memory:
            file = Path(path)
            _make_parent(file)
            try:
                _create_private(file)
            except OSError as exc:
                raise StoreError(f"store {file} cannot be created: {exc.strerror or exc}") from exc
            if not os.access(file, os.R_OK | os.W_OK):
                raise StoreError(f"store {file} is not readable and writable by this user")
        try:
            self._db = sqlite3.connect(self.path, timeout=lock_timeout, isolation_level=None,
                                       check_same_thread=False, factory=_Connection)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path} is not a usable SQLite database: {exc}") from exc
        self._db.store_path, self._db.lock_timeout = self.path, lock_timeout
        try:
            self._open()
        except StoreUnavailable as exc:
            self._db.close()
            cause = exc.__cause__
            if _locked(cause):
                raise  # a sound store another process is writing: say so, not "not usable"
            raise StoreError(f"store {self.path} is not a usable SQLite database: {cause or exc}") from exc
        self._depth = 0
        self._fleet_state: bytes | None = None  # an in-memory database's (no sidecar file)

    def _open(self) -> None:
        """WAL, the schema, the version and a quick check. Only a new or older store is written
        (SQLite's write lock), so opening never waits for another process's write."""
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        present = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION or not _SCHEMA_NAMES <= present:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        (verdict,) = self._db.execute("PRAGMA quick_check(1)").fetchone()
        if verdict != "ok":  # a damaged page is reported as a row, not raised
            raise StoreUnavailable("damaged: " + " ".join(verdict.split()))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes; nested batches join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite ends some failed transactions itself (a full disk); a failed COMMIT may not.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def _write(self, sql: str, rows: Iterable[Sequence[object]] | None = None) -> None:
        with self.batch():
            if rows is None:
                self._db.execute(sql)
            else:
                self._db.executemany(sql, rows)

    # inventory -----------------------------------------------------------------------------

    def record_listing(self, certificates: Sequence[ListedCertificate], seen_at: float) -> None:
        self._write(
            "INSERT INTO certificates (certificate_id, certificate_arn, status, creation_date, "
            "first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(certificate_id) DO UPDATE SET certificate_arn = excluded.certificate_arn, "
            "status = excluded.status, last_seen = excluded.last_seen, gone_since = NULL "
            "WHERE excluded.last_seen >= certificates.last_seen "
            f"OR certificates.last_seen > excluded.last_seen + {CLOCK_AHEAD_S}",
            [
                (c.certificate_id, c.certificate_arn, c.status,
                 c.creation_date.isoformat() if c.creation_date else None, seen_at, seen_at)
                for c in certificates
            ],
        )

    def ids_without_description(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        described = {
            row[0]
            for chunk in _id_chunks(wanted)
            for row in self._db.execute(
                f"SELECT certificate_id FROM certificates WHERE described = 1 AND certificate_id IN ({_ID_CHUNK_PARAMS})",
                chunk,
            )
        }
        return set(wanted) - described

    def save_descriptions(self, descriptions: Sequence[Description]) -> None:
        self._write(
            "UPDATE certificates SET described = 1, spki = ?, key_algorithm = ?, key_bits = ?, "
            "unparsed_pem = ?, error_code = ?, error_message = ? WHERE certificate_id = ?",
            [
                (d.spki, d.key_algorithm, d.key_bits, d.unparsed_pem, d.error_code, d.error_message,
                 d.certificate_id)
                for d in descriptions
            ],
        )

    def mark_gone(self, listed_before: float, now: float) -> int:
        with self.batch():
            cursor = self._db.execute(
                "UPDATE certificates SET gone_since = ? WHERE (last_seen < ? OR last_seen > ?) AND gone_since IS NULL",
                (now, listed_before, now + CLOCK_AHEAD_S),
            )
        return cursor.rowcount

    def set_gone(self, ids: Sequence[str], now: float) -> None:
        self._write("UPDATE certificates SET gone_since = ? WHERE certificate_id = ?", [(now, i) for i in ids])

    def _scope_where(self, statuses: Iterable[str]) -> tuple[str, list[object]]:
        wanted = list(statuses)
        return f"last_seen >= ? AND gone_since IS NULL AND status IN ({_ids_param(wanted)})", wanted

    def count_in_scope(self, seen_since: float, statuses: Iterable[str]) -> int:
        where, params = self._scope_where(statuses)
        return self._db.execute(f"SELECT COUNT(*) FROM certificates WHERE {where}", [seen_since, *params]).fetchone()[0]

    def in_scope(self, seen_since: float, statuses: Iterable[str], batch: int) -> Iterator[list[InventoryRecord]]:
        """In-scope certificates in id order, ``batch`` at a time (keyset paging: flat memory,
        and writes between batches do not disturb the iteration)."""
        where, params = self._scope_where(statuses)
        after = ""
        while True:
            rows = self._db.execute(
                f"SELECT * FROM certificates WHERE {where} AND certificate_id > ? "
                f"ORDER BY certificate_id LIMIT ?",
                [seen_since, *params, after, batch],
            ).fetchall()
            if not rows:
                return
            yield [self._record(row) for row in rows]
            after = rows[-1][0]

    def inventory_record(self, certificate_id: str) -> InventoryRecord | None:
        row = self._db.execute("SELECT * FROM certificates WHERE certificate_id = ?", (certificate_id,)).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: Sequence[object]) -> InventoryRecord:
        (cid, arn, status, created, first, last, gone, described, spki, algorithm, bits, pem, code,
         message) = row
        description = None
        if described:
            description = Description(cid, spki, algorithm, bits, pem, code, message)  # type: ignore[arg-type]
        return InventoryRecord(cid, arn, status, created, first, last, gone, description)  # type: ignore[arg-type]

    def verdicts(self, ids: Iterable[str]) -> dict[str, list[StoredVerdict]]:
        out: dict[str, list[StoredVerdict]] = {}
        for chunk in _id_chunks(ids):
            for row in self._db.execute(f"SELECT * FROM verdicts WHERE certificate_id IN ({_ID_CHUNK_PARAMS})", chunk):
                out.setdefault(row[0], []).append(StoredVerdict(*row))
        return out

    def save_verdicts(self, verdicts: Sequence[StoredVerdict]) -> None:
        self._write(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
            [(v.certificate_id, v.detector, v.version, v.verdict, v.reason_code, v.detail) for v in verdicts],
        )

    # audit tasks ---------------------------------------------------------------------------

    def save_task(self, task: AuditTask, owner: TaskOwner | None = None) -> None:
        self._write(
            "INSERT INTO audit_tasks VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET "
            "status = excluded.status, body = excluded.body, "
            "owner_host = COALESCE(excluded.owner_host, owner_host), "
            "owner_pid = COALESCE(excluded.owner_pid, owner_pid), "
            "heartbeat = COALESCE(excluded.heartbeat, heartbeat)",
            [(task.task_id, task.task_start_time.isoformat(), task.task_status.value,
              owner.host if owner else None, owner.pid if owner else None,
              owner.heartbeat if owner else None, task.model_dump_json(by_alias=True))],
        )

    def get_task(self, task_id: str) -> AuditTask | None:
        row = self._db.execute("SELECT body FROM audit_tasks WHERE task_id = ?", (task_id,)).fetchone()
        return AuditTask.model_validate_json(row[0]) if row else None

    def list_tasks(self, limit: int = 50) -> list[AuditTask]:
        rows = self._db.execute(
            "SELECT body FROM audit_tasks ORDER BY start_time DESC LIMIT ?", (limit,)
        ).fetchall()
        return [AuditTask.model_validate_json(body) for (body,) in rows]

    def newest_tasks(self) -> Iterator[AuditTask]:
        """Every task, newest first, parsed as the caller goes: one looking for the newest task of
        a kind stops at it (the rows are read at once, so no statement stays open meanwhile)."""
        rows = self._db.execute("SELECT body FROM audit_tasks ORDER BY start_time DESC").fetchall()
        return (AuditTask.model_validate_json(body) for (body,) in rows)

    def latest_task_id(self) -> str | None:
        row = self._db.execute("SELECT task_id FROM audit_tasks ORDER BY start_time DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def in_progress_tasks(self) -> list[tuple[AuditTask, TaskOwner | None]]:
        rows = self._db.execute(
            "SELECT body, owner_host, owner_pid, heartbeat FROM audit_tasks WHERE status = 'IN_PROGRESS'"
        ).fetchall()
        return [
            (AuditTask.model_validate_json(body), TaskOwner(host, pid, beat) if host is not None else None)
            for body, host, pid, beat in rows
        ]

    def tasks_started_between(self, start: datetime, end: datetime) -> list[AuditTask]:
        """Tasks whose start time lies in [start, end], oldest first (exact datetime comparison:
        the stored ISO text only narrows the scan)."""
        rows = self._db.execute(
            "SELECT body FROM audit_tasks WHERE start_time >= ? AND start_time <= ? ORDER BY start_time, task_id",
            (start.astimezone(timezone.utc).isoformat()[:19],
             end.astimezone(timezone.utc).isoformat()[:19] + "\uffff"),
        ).fetchall()
        tasks = [AuditTask.model_validate_json(body) for (body,) in rows]
        return [t for t in tasks if start <= t.task_start_time <= end]

    def request_cancel(self, task_id: str) -> None:
        self.put_record("cancel_request", task_id, {"taskId": task_id})

    def cancel_requested(self, task_id: str) -> bool:
        return self.get_record("cancel_request", task_id) is not None

    def add_findings(self, findings: Sequence[AuditFinding]) -> None:
        self._write(
            "INSERT OR REPLACE INTO findings VALUES (?, ?, ?, ?, ?)",
            [(f.finding_id, f.task_id, f.certificate_id, f.reason_for_non_compliance_code,
              f.model_dump_json(by_alias=True)) for f in findings],
        )

    def findings(self, task_id: str) -> Iterator[AuditFinding]:
        cursor = self._db.execute(
            "SELECT body FROM findings WHERE task_id = ? ORDER BY certificate_id, reason_code", (task_id,)
        )
        for (body,) in cursor:
            yield AuditFinding.model_validate_json(body)

    def add_errors(self, task_id: str, errors: Sequence[ResourceError]) -> None:
        self._write(
            "INSERT INTO resource_errors VALUES (?, ?, ?)",
            [(task_id, e.certificate_id, e.model_dump_json(by_alias=True)) for e in errors],
        )

    def errors(self, task_id: str) -> Iterator[ResourceError]:
        cursor = self._db.execute(
            "SELECT body FROM resource_errors WHERE task_id = ? ORDER BY certificate_id", (task_id,)
        )
        for (body,) in cursor:
            yield ResourceError.model_validate_json(body)

    def get_finding(self, finding_id: str) -> AuditFinding | None:
        row = self._db.execute("SELECT body FROM findings WHERE finding_id = ?", (finding_id,)).fetchone()
        return AuditFinding.model_validate_json(row[0]) if row else None

    # API records (configuration, suppressions, schedules, ...) -----------------------------

    def put_record(self, kind: str, key: str, body: dict) -> None:
        self._write("INSERT OR REPLACE INTO api_records VALUES (?, ?, ?)", [(kind, key, json.dumps(body))])

    def insert_record(self, kind: str, key: str, body: dict) -> bool:
        with self.batch():
            cursor = self._db.execute("INSERT OR IGNORE INTO api_records VALUES (?, ?, ?)",
                                      (kind, key, json.dumps(body)))
        return cursor.rowcount == 1

    def get_record(self, kind: str, key: str) -> dict | None:
        row = self._db.execute("SELECT body FROM api_records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_record(self, kind: str, key: str) -> bool:
        with self.batch():
            cursor = self._db.execute("DELETE FROM api_records WHERE kind = ? AND key = ?", (kind, key))
        return cursor.rowcount == 1

    def records(self, kind: str) -> list[tuple[str, dict]]:
        rows = self._db.execute("SELECT key, body FROM api_records WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return [(key, json.loads(body)) for key, body in rows]

    # mitigation ----------------------------------------------------------------------------

    def record_execution(self, execution: MitigationExecution) -> None:
        self._write(
            "INSERT INTO mitigation_executions VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(execution.finding_id, execution.action_name, execution.task_id, execution.status.value,
              int(execution.dry_run), execution.start_time.isoformat(), execution.model_dump_json(by_alias=True))],
        )

    def executions(self, task_id: str) -> list[MitigationExecution]:
        rows = self._db.execute(
            "SELECT body FROM mitigation_executions WHERE task_id = ? ORDER BY start_time", (task_id,)
        ).fetchall()
        return [MitigationExecution.model_validate_json(body) for (body,) in rows]

    # fleet state -----------------------------------------------------------------------------

    def _fleet_state_file(self) -> Path | None:
        """A sidecar file next to the database (a blob of hundreds of MB does not belong in a
        WAL-journaled table); none for an in-memory database, which keeps it in memory."""
        return None if self.path == ":memory:" else Path(self.path + FLEET_STATE_SUFFIX)

    def load_fleet_state(self) -> bytes | None:
        file = self._fleet_state_file()
        if file is None:
            return self._fleet_state
        try:
            return file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"fleet state {file} cannot be read: {exc.strerror or exc}") from exc

    def save_fleet_state(self, parts: Sequence[bytes]) -> None:
        """Written to a private (0600) temporary file beside the sidecar, synced, then renamed over
        it: a crash leaves the previous state whole, and concurrent audits never interleave."""
        file = self._fleet_state_file()
        if file is None:
            self._fleet_state = b"".join(parts)
            return
        temporary = None
        try:
            fd, temporary = tempfile.mkstemp(dir=file.parent, prefix=file.name + ".", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.writelines(parts)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, file)
            temporary = None
        except OSError as exc:
            raise StoreError(f"fleet state {file} cannot be written: {exc.strerror or exc}") from exc
        finally:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
