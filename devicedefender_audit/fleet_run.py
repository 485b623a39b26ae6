"""Audits of many account-regions at once, into one consolidated report.

Each account-region is audited by the ordinary :class:`~devicedefender_audit.audit.Audit`
engine, with its own :class:`~devicedefender_audit.aws.clients.AwsTarget` (so its own pacer:
AWS IoT's quotas are per account and region) and its own store partition (see
:func:`~devicedefender_audit.store.partition_location`: inventories and tasks are per
account-region). A bounded pool runs several at once; every one of them ends with a result, so
one that fails (a role that cannot be assumed, a disabled region, throttling to the end) is
reported against that account-region and never hides the others, nor passes for compliant.

The consolidated exit code is the worst of the account-regions', worst first: canceled (130 /
143), failed (1), non-compliant (3), not every certificate checked or covered (4), compliant (0).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from devicedefender_audit.accounts import AccountCredentials, AccountRegion, SkippedAccount
from devicedefender_audit.audit import Audit, AuditInterrupted
from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message
from devicedefender_audit.checks import KeyCheck
from devicedefender_audit.detectors import Detector
from devicedefender_audit.exit_codes import EXIT_FAILED, EXIT_NON_COMPLIANT, EXIT_OK, task_exit_code, worst
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError
from devicedefender_audit.store import Store, StoreError
from devicedefender_audit.text_table import table

#: Worst first: what the consolidated exit code picks among the account-regions' codes.


@dataclass
class AccountRegionResult:
    """How one account-region's audit ended: its task (when one started) or why none could."""

    target: AccountRegion
    store: str
    task: AuditTask | None = None
    findings: list[AuditFinding] = field(default_factory=list)
    resource_errors: list[ResourceError] = field(default_factory=list)
    error_code: str | None = None
    message: str | None = None

    @property
    def exit_code(self) -> int:
        if self.task is None or self.error_code is not None:
            return EXIT_FAILED
        return task_exit_code(self.task)

    @property
    def status(self) -> str:
        return self.task.task_status.value if self.task else "FAILED"

    def to_json(self) -> dict[str, Any]:
        task = self.task.to_aws() if self.task else {}
        where = {"accountId": self.target.account_id, "region": self.target.region}
        return {
            **where,
            "roleArn": self.target.role_arn,
            "store": self.store,
            "taskId": task.get("taskId"),
            "taskStatus": self.status,
            "exitCode": self.exit_code,
            "errorCode": self.error_code,
            "message": self.message,
            "taskStatistics": task.get("taskStatistics"),
            "auditDetails": task.get("auditDetails"),
            "findings": [{**where, **f.to_aws()} for f in self.findings],
            "resourceErrors": [{**where, **e.to_aws()} for e in self.resource_errors],
        }


@dataclass
class FleetReport:
    results: list[AccountRegionResult]
    skipped: list[SkippedAccount] = field(default_factory=list)
    #: 130 or 143 when the run was interrupted by SIGINT or SIGTERM.
    interrupted: int | None = None

    @property
    def exit_code(self) -> int:
        return worst([r.exit_code for r in self.results] + ([self.interrupted] if self.interrupted else []))

    def to_json(self) -> str:
        return json.dumps({
            "exitCode": self.exit_code,
            "accountRegions": [r.to_json() for r in self.results],
            "skippedAccounts": [{"accountId": s.account_id, "name": s.name, "state": s.state} for s in self.skipped],
        }, indent=2, default=str)

    def to_text(self) -> str:
        rows = []
        for r in self.results:
            details = r.task.audit_details.values() if r.task else []
            rows.append((r.target.account_id, r.target.region, r.task.task_id if r.task else "-", r.status,
                         ",".join(sorted({d.check_run_status for d in details})) or "-",
                         max((d.total_resources_count for d in details), default=0),
                         sum(d.non_compliant_resources_count for d in details),
                         max((d.failed_resources_count for d in details), default=0),
                         max((d.not_covered_resources_count for d in details), default=0), r.exit_code))
        out = [table(("ACCOUNT", "REGION", "TASK ID", "STATUS", "CHECKS", "IN SCOPE", "NON-COMPLIANT", "FAILED",
                      "NOT COVERED", "EXIT"), rows)]
        problems = [(r.target.account_id, r.target.region, r.error_code or _task_error(r.task),
                     r.message or _task_message(r.task)) for r in self.results if r.exit_code in (1, 4)]
        if problems:
            out += ["", "Not audited in full:", table(("ACCOUNT", "REGION", "ERROR", "MESSAGE"), problems)]
        findings = [(r.target.account_id, r.target.region, f.severity, f.certificate_id,
                     f.non_compliant_resource.additional_info.get("things") or "-", f.reason_for_non_compliance_code)
                    for r in self.results for f in r.findings]
        if findings:
            out += ["", "Findings:", table(("ACCOUNT", "REGION", "SEVERITY", "CERTIFICATE", "THINGS", "REASON CODE"),
                                           findings)]
        if self.skipped:
            out += ["", "Accounts not audited (not ACTIVE): " + ", ".join(
                f"{s.account_id} ({s.state})" for s in self.skipped)]
        audited = sum(1 for r in self.results if r.exit_code == EXIT_OK)
        non_compliant = sum(1 for r in self.results if r.exit_code == EXIT_NON_COMPLIANT)
        incomplete = len(self.results) - audited - non_compliant
        out += ["", (f"{len(self.results)} account-region(s): {audited} compliant, {non_compliant} non-compliant, "
                    f"{incomplete} not audited in full.")]
        return "\n".join(out)


def _task_error(task: AuditTask | None) -> str:
    return next((d.error_code for d in task.audit_details.values() if d.error_code), "-") if task else "-"


def _task_message(task: AuditTask | None) -> str:
    return next((d.message for d in task.audit_details.values() if d.message), "") if task else ""


def account_region_failure(exc: Exception) -> tuple[str, str]:
    """(errorCode, message) of what ended one account-region's audit, as every front that audits
    several (``run --regions``/``--organization``, the scheduled Lambda) reports it: AWS's code and
    message, ``STORE_ERROR`` with the store's own message (its partition failed in use: locked,
    throttled past retries, disk full), else ``INTERNAL_ERROR`` naming the exception (a bug)."""
    if isinstance(exc, AWS_ERRORS):
        return aws_error_code(exc), aws_error_message(exc)
    if isinstance(exc, StoreError):
        return "STORE_ERROR", str(exc)
    return "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"


@dataclass
class FleetRun:
    """What every account-region's audit shares: the credentials, detectors, checks and settings."""

    credentials: AccountCredentials
    open_store: Callable[[AccountRegion], tuple[str, Store]]
    detectors: Sequence[Detector]
    checks: Sequence[KeyCheck] | None = None
    workers: int = 8
    parallel: int = 4
    max_attempts: int = 10
    rates: dict[str, float] = field(default_factory=dict)
    #: Called with each result as it ends (progress lines); from the worker threads.
    on_result: Callable[[AccountRegionResult], None] | None = None
    _running: dict[AccountRegion, tuple[Store, str]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    #: Set by :meth:`cancel_running`: an audit that registers later (it was still assuming its
    #: role or opening its store) is canceled as it starts.
    _stopping: bool = field(default=False, init=False)

    def audit(self, item: AccountRegion) -> AccountRegionResult:
        """One account-region, start to end; every failure becomes part of the result."""
        try:
            location, store = self.open_store(item)
        except StoreError as exc:
            return AccountRegionResult(item, "-", error_code="STORE_ERROR", message=str(exc))
        result = AccountRegionResult(item, location)
        try:
            target = self.credentials.target(item, self.max_attempts, self.rates)
            if item.role_arn:  # a role that cannot be assumed fails here, as this account-region's error
                target.role_session(item.role_arn, "audit").get_credentials().get_frozen_credentials()
            audit = Audit(target.client("iot", role_arn=item.role_arn), store, self.detectors, workers=self.workers,
                          region=item.region, checks=self.checks)
            audit.task.account = item.account_id
            result.task = audit.task
            with self._lock:
                self._running[item] = (store, audit.task.task_id)
                if self._stopping:
                    store.request_cancel(audit.task.task_id)
            try:
                result.task = audit.run()
            finally:
                with self._lock:
                    self._running.pop(item, None)
            result.findings = list(store.findings(result.task.task_id))
            result.resource_errors = list(store.errors(result.task.task_id))
        except Exception as exc:  # noqa: BLE001 - one account-region's failure must not end the others
            result.error_code, result.message = account_region_failure(exc)
        finally:
            store.close()
        if self.on_result:
            self.on_result(result)
        return result

    def cancel_running(self) -> None:
        """Ask every running audit to stop (``CancelAuditTask``'s path: seen between pages and
        batches, recorded ``CANCELED``)."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for store, task_id in running:
            store.request_cancel(task_id)

    def run(self, items: Sequence[AccountRegion], skipped: Sequence[SkippedAccount] = ()) -> FleetReport:
        """Every account-region, ``parallel`` at a time, in ``items``' order in the report.

        A ``KeyboardInterrupt`` (exit 130), or :class:`AuditInterrupted` from the caller's SIGTERM handler (143),
        cancels the running audits, waits for them to record it, and reports what ended; audits
        not started yet are reported as not run.
        """
        report = FleetReport([], list(skipped))
        futures: dict[Future, AccountRegion] = {}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="account-region") as pool:
            futures = {pool.submit(self.audit, item): item for item in items}
            pending = set(futures)
            try:
                while pending:
                    _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            except (KeyboardInterrupt, AuditInterrupted) as exc:
                report.interrupted = 130 if isinstance(exc, KeyboardInterrupt) else 143
                for future in pending:
                    future.cancel()
                self.cancel_running()
        for future, item in futures.items():
            if future.cancelled():
                report.results.append(AccountRegionResult(item, "-", error_code="NOT_RUN",
                                                          message="the run was interrupted before this audit began"))
            else:
                report.results.append(future.result())
        return report
