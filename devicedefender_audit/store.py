"""Audit history in SQLite, so past audits, findings and mitigations survive the process.

Each record is kept as its AWS-shaped JSON plus the few columns we query by. The default file
is ``~/.local/share/devicedefender-audit/audits.sqlite3`` (``$DDA_STORE`` or ``--store``
override it).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devicedefender_audit.audit import AuditResult
from devicedefender_audit.models import (
    AuditFinding,
    AuditTask,
    MitigationActionType,
    MitigationExecution,
    MitigationStatus,
    ResourceError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_tasks (
    task_id TEXT PRIMARY KEY,
    start_time TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS findings (
    finding_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES audit_tasks(task_id),
    certificate_id TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_task ON findings(task_id);
CREATE TABLE IF NOT EXISTS resource_errors (
    task_id TEXT NOT NULL REFERENCES audit_tasks(task_id),
    certificate_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mitigation_executions (
    finding_id TEXT NOT NULL REFERENCES findings(finding_id),
    action_name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    start_time TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_finding ON mitigation_executions(finding_id, action_name);
"""


def default_store_path() -> Path:
    if os.environ.get("DDA_STORE"):
        return Path(os.environ["DDA_STORE"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "devicedefender-audit" / "audits.sqlite3"


class AuditStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    def save_audit(self, result: AuditResult) -> None:
        task = result.task
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO audit_tasks VALUES (?, ?, ?)",
                (task.task_id, task.task_start_time.isoformat(), task.model_dump_json(by_alias=True)),
            )
            db.executemany(
                "INSERT OR REPLACE INTO findings VALUES (?, ?, ?, ?, ?)",
                [
                    (f.finding_id, f.task_id, f.certificate_id, f.reason_for_non_compliance_code,
                     f.model_dump_json(by_alias=True))
                    for f in result.findings
                ],
            )
            db.execute("DELETE FROM resource_errors WHERE task_id = ?", (task.task_id,))
            db.executemany(
                "INSERT INTO resource_errors VALUES (?, ?, ?)",
                [(task.task_id, e.certificate_id, e.model_dump_json(by_alias=True)) for e in result.errors],
            )

    def list_tasks(self, limit: int = 50) -> list[AuditTask]:
        rows = self._db.execute(
            "SELECT body FROM audit_tasks ORDER BY start_time DESC LIMIT ?", (limit,)
        ).fetchall()
        return [AuditTask.model_validate_json(body) for (body,) in rows]

    def get_task(self, task_id: str) -> AuditTask | None:
        row = self._db.execute("SELECT body FROM audit_tasks WHERE task_id = ?", (task_id,)).fetchone()
        return AuditTask.model_validate_json(row[0]) if row else None

    def latest_task_id(self) -> str | None:
        tasks = self.list_tasks(limit=1)
        return tasks[0].task_id if tasks else None

    def findings(self, task_id: str) -> list[AuditFinding]:
        rows = self._db.execute(
            "SELECT body FROM findings WHERE task_id = ? ORDER BY certificate_id, reason_code", (task_id,)
        ).fetchall()
        return [AuditFinding.model_validate_json(body) for (body,) in rows]

    def errors(self, task_id: str) -> list[ResourceError]:
        rows = self._db.execute(
            "SELECT body FROM resource_errors WHERE task_id = ? ORDER BY certificate_id", (task_id,)
        ).fetchall()
        return [ResourceError.model_validate_json(body) for (body,) in rows]

    def record_execution(self, execution: MitigationExecution) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO mitigation_executions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    execution.finding_id,
                    execution.action_name.value,
                    execution.task_id,
                    execution.status.value,
                    int(execution.dry_run),
                    execution.start_time.isoformat(),
                    execution.model_dump_json(by_alias=True),
                ),
            )

    def executions(self, task_id: str) -> list[MitigationExecution]:
        rows = self._db.execute(
            "SELECT body FROM mitigation_executions WHERE task_id = ? ORDER BY start_time", (task_id,)
        ).fetchall()
        return [MitigationExecution.model_validate_json(body) for (body,) in rows]

    def already_succeeded(self, finding_id: str, action: MitigationActionType) -> bool:
        """Whether a real (not dry-run) execution of ``action`` on this finding succeeded."""
        row = self._db.execute(
            "SELECT 1 FROM mitigation_executions WHERE finding_id = ? AND action_name = ? "
            "AND status = ? AND dry_run = 0 LIMIT 1",
            (finding_id, action.value, MitigationStatus.SUCCEEDED.value),
        ).fetchone()
        return row is not None
