"""One audit task (``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK`` and the other key checks over device
and CA certificates), written as it happens.

The task is stored ``IN_PROGRESS`` before the first AWS call, with its owner (host, pid) and a
heartbeat; progress, unchecked resources and findings are committed batch by batch. A task ends
``COMPLETED``, ``FAILED`` (the certificates could not be listed, or the connection was lost) or
``CANCELED`` (SIGINT/SIGTERM, or a cancel request in the store from ``CancelAuditTask``, seen
between pages and batches); a task whose process died is marked ``FAILED`` ("interrupted") by
the next start (:func:`recover_interrupted`).

Outcomes are honest: a certificate that could not be checked, or whose key no detector data
covers, never lets the check report ``COMPLETED_COMPLIANT``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code
from devicedefender_audit.aws.iot_certificates import attached_things
from devicedefender_audit.ca_inventory import (
    CA_RESOURCE_TYPE,
    CaSync,
    save_ca_description,
    sync_ca_certificates,
)
from devicedefender_audit.checks import CA_CERTIFICATE, KeyCheck, KeyOutcome, key_quality_check, severity_of
from devicedefender_audit.detectors import Detector, DetectorResult
from devicedefender_audit.factoring.known import KnownValues
from devicedefender_audit.inventory import IN_SCOPE_STATUSES, InventorySync, SyncAborted, SyncResult
from devicedefender_audit.liveness import owner_gone, this_process
from devicedefender_audit.models import (
    AuditCheckDetails,
    AuditFinding,
    AuditTask,
    AuditTaskStatus,
    NonCompliantResource,
    ResourceError,
    ResourceIdentifier,
    unchecked,
    utcnow,
)
from devicedefender_audit.store import Store, StoreError
from devicedefender_audit.store.base import InventoryRecord, StoredVerdict, TaskOwner
from devicedefender_audit.suppressions import ActiveSuppressions
from devicedefender_audit.time_budget import TimeBudget

if TYPE_CHECKING:  # imported only when a fleet check runs: it loads numpy
    from devicedefender_audit.factoring.fleet_audit import FleetComparison

#: In-scope certificates checked and committed together.
CHECK_BATCH = 500


class AuditInterrupted(BaseException):
    """SIGTERM during an audit (SIGINT arrives as ``KeyboardInterrupt``)."""


class _ComparisonDoesNotFit(Exception):
    """The full fleet comparison would outlast the time budget: not started (the message says why)."""


class AuditCanceled(Exception):
    """``CancelAuditTask`` asked this task to stop, or its time budget is spent: it ends
    ``CANCELED`` (with the budget's reason as message), and ``run`` returns."""


def recover_interrupted(store: Store, now: float | None = None) -> list[str]:
    """Mark ``FAILED`` the in-progress tasks whose process is gone (:mod:`.liveness`); return
    their ids. This process's own tasks are passed over: they run in its threads, or recorded
    their end (a store that failed under one is recovered by the next process)."""
    recovered = []
    for task, owner in store.in_progress_tasks():
        if owner is not None and (owner.host, owner.pid) == this_process():
            continue
        host, pid, heartbeat = (owner.host, owner.pid, owner.heartbeat) if owner else (None, None, None)
        why = owner_gone(host, pid, heartbeat, "finishing the task", now)
        if why is None:
            continue
        task.task_status = AuditTaskStatus.FAILED
        for details in task.audit_details.values():  # every check the task ran, CA checks included
            details.check_run_status, details.check_compliant = "FAILED", False
            details.error_code = "INTERRUPTED"
            details.message = why  # errorCode INTERRUPTED says what happened
        task.task_statistics.in_progress_checks = 0
        task.task_statistics.failed_checks = len(task.audit_details)
        store.save_task(task)
        recovered.append(task.task_id)
    return recovered


@dataclass
class AuditCounts:
    non_compliant: int = 0
    failed: int = 0
    not_applicable: int = 0
    not_covered: int = 0
    suppressed: int = 0


def _rsa_keys(records: Iterable[InventoryRecord]) -> Iterator[tuple[str, int]]:
    """(certificate id, modulus) of the records' readable RSA keys; unreadable ones are reported
    by the per-key pass."""
    from devicedefender_audit.factoring.fleet_audit import rsa_modulus

    for record in records:
        modulus = rsa_modulus(record)
        if modulus is not None:
            yield record.certificate_id, modulus


class Audit:
    """Runs one audit task against an IoT client, recording everything in ``store``."""

    def __init__(
        self,
        iot: Any,
        store: Store,
        detectors: Sequence[Detector],
        workers: int = 8,
        region: str | None = None,
        on_phase: Callable[[str, int | None], None] | None = None,
        on_advance: Callable[[int], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        checks: Sequence[KeyCheck] | None = None,
        budget: TimeBudget | None = None,
    ) -> None:
        self.iot = iot
        self.store = store
        #: The checks this task runs; by default Device Defender's key-quality check alone.
        self.checks = list(checks) if checks else [key_quality_check(detectors)]
        self.workers = workers
        self.on_phase = on_phase
        self.on_advance = on_advance
        self.clock = clock
        #: An outside time limit (a Lambda function's): seen where a cancel request is.
        self.budget = budget
        self.task = AuditTask(region=region, task_start_time=clock())
        self.task.audit_details = {check.name: AuditCheckDetails() for check in self.checks}
        self._suppressions: ActiveSuppressions | None = None
        self.task.task_statistics.total_checks = len(self.checks)
        self.task.task_statistics.in_progress_checks = len(self.checks)
        self.counts = {check.name: AuditCounts() for check in self.checks}
        self.device_checks = [check for check in self.checks if check.resource_type != CA_CERTIFICATE]
        self.ca_checks = [check for check in self.checks if check.resource_type == CA_CERTIFICATE]
        #: Checks that could not run at all: (error code, message), e.g. CA certificates not listed.
        self.unrunnable: dict[str, tuple[str, str]] = {}
        #: Checks that ran, but compared their keys with only part of what they should: why.
        self.partial: dict[str, str] = {}
        self.left_scope = 0
        self._owner = TaskOwner(*this_process(), time.time())

    def run(self) -> AuditTask:
        recover_interrupted(self.store)
        self._suppressions = ActiveSuppressions(self.store, self.clock())
        self._save()
        try:
            # The CA factorable check compares CA keys with the device fleet: it needs the inventory.
            sync = self._sync() if self.device_checks or any(check.fleet for check in self.ca_checks) else None
            # Listed before the device keys are checked: the device fleet is compared with the CA keys
            # too, also when no CA check runs (a device key sharing a prime with a CA is broken).
            ca = self._sync_ca() if self.ca_checks or any(check.fleet for check in self.device_checks) else None
            partners = self._check(sync, ca) if sync is not None else []
            self._check_ca(ca, partners)
            self._finish()
        except SyncAborted as exc:
            self._fail(exc.error_code, str(exc))
        except AuditCanceled as exc:
            self._cancel(str(exc) or "canceled by CancelAuditTask")
        except (KeyboardInterrupt, AuditInterrupted):
            self._record_end(self._cancel)
            raise
        except StoreError as exc:
            # Recorded if the store takes it now (another's lock released); if not, the next start or
            # list-audits marks the task FAILED (INTERRUPTED) once this process is gone.
            reason = str(exc)
            self._record_end(lambda: self._fail("STORE_ERROR", reason))
            raise
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._record_end(lambda: self._fail("INTERNAL_ERROR", message))
            raise
        return self.task

    @staticmethod
    def _record_end(record: Callable[[], None]) -> None:
        """Record how the task ended, without hiding the exception that ended it."""
        with contextlib.suppress(Exception):  # the store may be what failed; the caller reports that
            record()

    # phases --------------------------------------------------------------------------------

    def _sync(self) -> SyncResult:
        self._phase("Syncing certificate inventory", None)
        listed = 0

        def progress(result: SyncResult) -> None:
            nonlocal listed
            self._raise_if_canceled()
            self.task.progress.listed_certificates = result.listed
            self.task.progress.described_certificates = result.described
            if self.on_advance and result.listed > listed:
                self.on_advance(result.listed - listed)
            listed = result.listed
            self._save()

        def error(err: ResourceError) -> None:
            if err.left_scope:
                self.left_scope += 1
            else:
                for check in self.device_checks:
                    self.counts[check.name].failed += 1
            self.store.add_errors(self.task.task_id, [err])

        return InventorySync(self.iot, self.store, self.workers, on_progress=progress, on_error=error).run()

    def _check(self, sync: SyncResult, ca: CaSync | None) -> list[tuple[str, int]]:
        """The device keys checked; returns the keys the fleet comparison matched with a known
        entry or a CA key, the only device keys the CA comparison needs."""
        if sync.undescribed:
            # The CA keys are compared with the device keys that could be read, not with these.
            for check in self.ca_checks:
                if check.fleet:
                    self.partial[check.name] = (f"the CA keys were not compared with {len(sync.undescribed)} "
                                                "device certificates that could not be read")
        # A certificate listed with a status the model does not know is counted as not checked.
        total = self.store.count_in_scope(sync.started, IN_SCOPE_STATUSES) + sync.unknown_status
        for check in self.device_checks:
            self.task.audit_details[check.name].total_resources_count = total
        comparison = self._fleet_scan(sync, ca) if any(check.fleet for check in self.checks) else None
        if self.device_checks:
            fleet = comparison.results if comparison else {}
            self._phase("Checking keys", total)
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="things") as pool:
                for records in self.store.in_scope(sync.started, IN_SCOPE_STATUSES, CHECK_BATCH):
                    self._check_batch(records, sync.undescribed, pool, fleet, self.device_checks)
        return comparison.known_partners if comparison else []

    def _known(self) -> KnownValues | None:
        """The user's known moduli or primes (``run --known-moduli``), shared by the fleet checks."""
        return next((check.known for check in self.checks if check.known), None)

    def _fleet_known(self, ca: CaSync | None) -> KnownValues | None:
        """What the device fleet is compared with besides itself: the user's known moduli or
        primes, and the account's CA keys (a device key sharing a prime with a CA is broken too)."""
        known = self._known()
        cas = [(f"CA certificate {cid}", modulus) for cid, modulus in _rsa_keys(ca.records)] if ca else []
        return KnownValues.combined(known, cas)

    def _sync_ca(self) -> CaSync | None:
        """The CA certificates in scope; ``None`` (the CA checks marked unrunnable) if not listed."""
        self._phase("Listing CA certificates", None)
        self._raise_if_canceled()
        try:
            ca = sync_ca_certificates(self.iot, self.store)
        except SyncAborted as exc:  # the CA checks cannot run; the device checks can
            for check in self.ca_checks:
                self.unrunnable[check.name] = (exc.error_code, str(exc))
            self._device_fleet_partial(f"the device keys were not compared with the CA keys: {exc}")
            return None
        self.store.add_errors(self.task.task_id, ca.errors)
        not_checked = unchecked(ca.errors)
        if not_checked:
            self._device_fleet_partial(f"the device keys were not compared with {len(not_checked)} CA certificates "
                                       "that could not be read")
        self.left_scope += len(ca.errors) - len(not_checked)
        for check in self.ca_checks:
            self.counts[check.name].failed += len(not_checked)
            self.task.audit_details[check.name].total_resources_count = len(ca.records) + len(not_checked)
        return ca

    def _device_fleet_partial(self, why: str) -> None:
        for check in self.device_checks:
            if check.fleet:
                self.partial[check.name] = why

    def _ca_fleet_scan(self, ca: CaSync, partners: list[tuple[str, int]],
                       ) -> dict[str, tuple[list[DetectorResult], dict[str, str]]]:
        """The CA keys compared with each other and with ``partners``, the device keys that the
        device fleet comparison (:meth:`_fleet_scan`, which takes the CA keys as known values)
        matched: only those can share a prime with a CA key, so the fleet is not read again."""
        from devicedefender_audit.factoring.ca_comparison import compare_ca_keys

        self._phase("Comparing CA keys with the fleet", None)
        return compare_ca_keys(list(_rsa_keys(ca.records)), partners, self._known())

    def _check_ca(self, ca: CaSync | None, partners: list[tuple[str, int]]) -> None:
        if ca is None or not self.ca_checks:  # listed for the device fleet comparison only
            return
        fleet = self._ca_fleet_scan(ca, partners) if any(check.fleet for check in self.ca_checks) else {}
        self._phase("Checking CA keys", len(ca.records))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="things") as pool:
            for start in range(0, len(ca.records), CHECK_BATCH):
                self._check_batch(ca.records[start : start + CHECK_BATCH], set(), pool, fleet, self.ca_checks)

    def _fleet_scan(self, sync: SyncResult, ca: CaSync | None) -> FleetComparison | None:
        """The in-scope RSA moduli compared with each other (batch GCD), with a known list and
        with the CA keys: results and evidence of the keys with a finding (shared prime, or the
        same modulus in another certificate). Incremental against the state the store kept from
        the last audit; recomputed in full, and said so in the phase, when there is none it can trust.
        None when a full comparison does not fit the time budget: the checks that compare are then
        partial (never compliant), and every key is still checked on its own."""
        from devicedefender_audit.factoring.fleet_audit import compare_fleet

        try:
            return compare_fleet(
                self.store, lambda: self.store.in_scope(sync.started, IN_SCOPE_STATUSES, CHECK_BATCH),
                self._fleet_known(ca), on_phase=lambda label: self._phase(label, None),
                between_batches=self._raise_if_canceled, before_full=self._raise_unless_full_comparison_fits,
            )
        except _ComparisonDoesNotFit as exc:
            self._phase(f"Comparing the fleet's moduli: not run ({exc})", None)
            for check in self.checks:
                if check.fleet:
                    self.partial[check.name] = str(exc)
            return None

    def _raise_unless_full_comparison_fits(self, keys: int) -> None:
        """A full fleet comparison is one call that cannot stop midway: killed in it by Lambda's
        time limit, the audit would end unrecorded. It starts only when the time budget holds it."""
        from devicedefender_audit.factoring.fleet_audit import FULL_SECONDS_PER_KEY

        self._raise_if_canceled()
        if self.budget is None:
            return
        needed, left = keys * FULL_SECONDS_PER_KEY / self.budget.cpu, self.budget.left()
        if needed > left:
            raise _ComparisonDoesNotFit(
                f"the full comparison of the fleet's {keys:,} keys (about {needed:.0f} s) was not run, as the "
                f"{left:.0f} s left before the function's time limit cannot hold it; run one audit from a machine "
                "with the same store (run --store; a DynamoDB one with ?fleet-state=s3://...) to save the fleet "
                "state, after which audits compare only what changed")

    def _check_batch(self, records: list[InventoryRecord], undescribed: set[str], pool: ThreadPoolExecutor,
                     fleet: dict[str, tuple[list[DetectorResult], dict[str, str]]],
                     checks: Sequence[KeyCheck]) -> None:
        self._raise_if_canceled()
        stored = self.store.verdicts(r.certificate_id for r in records)
        fresh: list[StoredVerdict] = []
        errors: dict[str, ResourceError] = {}
        weak: list[tuple[KeyCheck, InventoryRecord, KeyOutcome]] = []
        reparsed = {}
        for record in records:
            cid = record.certificate_id
            if cid in undescribed:
                continue  # reported by the sync already
            fleet_results, _ = fleet.get(cid, ((), {}))
            for check in checks:
                counts = self.counts[check.name]
                outcome = check.evaluate(record, stored.get(cid, ()), fleet_results if check.fleet else ())
                fresh += outcome.fresh
                if outcome.reparsed:
                    reparsed[cid] = outcome.reparsed
                if outcome.error:
                    errors[cid] = ResourceError(certificate_id=cid, error_code=outcome.error[0],
                                                message=outcome.error[1],
                                                resource_type=CA_RESOURCE_TYPE if check.resource_type == CA_CERTIFICATE
                                                else None)
                    counts.failed += 1
                elif outcome.vulnerable:
                    weak.append((check, record, outcome))
                    counts.non_compliant += 1
                elif outcome.not_applicable:
                    counts.not_applicable += 1
                elif outcome.not_covered:
                    counts.not_covered += 1
        arns = sorted({record.certificate_arn for check, record, _ in weak if check.resource_type != CA_CERTIFICATE})
        things = dict(zip(arns, pool.map(self._things_note, arns), strict=True))
        findings = [
            finding
            for check, record, outcome in weak
            for finding in self._findings(check, record, outcome, things.get(record.certificate_arn),
                                          fleet.get(record.certificate_id, ((), {}))[1])
        ]
        suppressed = {(f.check_name, f.certificate_id) for f in findings
                      if self._suppressions and self._suppressions.covers(f)}
        for finding in findings:
            finding.is_suppressed = (finding.check_name, finding.certificate_id) in suppressed
        for check_name, _ in suppressed:
            self.counts[check_name].suppressed += 1
        ca = any(check.resource_type == CA_CERTIFICATE for check in checks)
        if not ca:
            self.task.progress.checked_certificates += len(records)
        self._update_details()
        with self.store.batch():
            self.store.save_verdicts(fresh)
            if reparsed and not ca:
                self.store.save_descriptions(list(reparsed.values()))
            for description in reparsed.values() if ca else ():
                save_ca_description(self.store, description)
            self.store.add_errors(self.task.task_id, list(errors.values()))
            self.store.add_findings(findings)
            self._save()
        if self.on_advance:
            self.on_advance(len(records))

    def _findings(self, check: KeyCheck, record: InventoryRecord, outcome: KeyOutcome, things: str | None,
                  fleet_evidence: dict[str, str]) -> list[AuditFinding]:
        description = record.description
        info = {
            "keyAlgorithm": (description.key_algorithm if description else None) or "",
            "keySize": str((description.key_bits if description else None) or ""),
            "certificateStatus": record.status,
        }
        if check.resource_type == CA_CERTIFICATE:
            # The model's ResourceIdentifier has no CA certificate ARN; the finding keeps it here.
            info["caCertificateArn"] = record.certificate_arn
            identifier = ResourceIdentifier(ca_certificate_id=record.certificate_id)
        else:
            info["things"] = things or ""
            identifier = ResourceIdentifier(device_certificate_id=record.certificate_id,
                                            device_certificate_arn=record.certificate_arn)
        if check.fleet:
            info.update(fleet_evidence)  # the other certificates' ids; never a factor
        return [
            AuditFinding(
                task_id=self.task.task_id,
                check_name=check.name,
                severity=severity_of(verdict.reason_code or ""),
                task_start_time=self.task.task_start_time,
                non_compliant_resource=NonCompliantResource(
                    resource_type=check.resource_type,
                    resource_identifier=identifier,
                    additional_info=info,
                ),
                reason_for_non_compliance=verdict.detail,
                reason_for_non_compliance_code=verdict.reason_code or "",
            )
            for verdict in outcome.vulnerable
        ]

    def _things_note(self, certificate_arn: str) -> str:
        """Comma-separated attached things, or why they are unknown (never fails the audit)."""
        try:
            return ",".join(attached_things(self.iot, certificate_arn))
        except AWS_ERRORS as exc:
            return f"unknown ({aws_error_code(exc)})"

    # task state ----------------------------------------------------------------------------

    def _update_details(self) -> None:
        for name, counts in self.counts.items():
            details = self.task.audit_details[name]
            details.non_compliant_resources_count = counts.non_compliant
            details.suppressed_non_compliant_resources_count = counts.suppressed
            details.failed_resources_count = counts.failed
            details.not_applicable_resources_count = counts.not_applicable
            details.not_covered_resources_count = counts.not_covered

    def _finish(self) -> None:
        self._update_details()
        stats = self.task.task_statistics
        for name, counts in self.counts.items():
            details = self.task.audit_details[name]
            if name in self.unrunnable:
                details.check_run_status, details.check_compliant = "FAILED", False
                details.error_code, details.message = self.unrunnable[name]
                stats.failed_checks += 1
                continue
            unchecked = []
            if counts.failed:
                unchecked.append(f"{counts.failed} could not be checked")
            if counts.not_covered:
                unchecked.append(f"{counts.not_covered} have keys no detector data covers yet")
            if name in self.partial:
                unchecked.append(self.partial[name])
            if counts.non_compliant:
                details.check_run_status, details.check_compliant = "COMPLETED_NON_COMPLIANT", False
                stats.non_compliant_checks += 1
                if unchecked:
                    details.message = f"of {details.total_resources_count} certificates, " + " and ".join(unchecked)
            elif unchecked:
                details.check_run_status, details.check_compliant = "FAILED", False
                details.error_code = ("RESOURCES_NOT_CHECKED" if counts.failed or name in self.partial
                                      else "RESOURCES_NOT_COVERED")
                details.message = (f"no finding, but of {details.total_resources_count} certificates "
                                   + " and ".join(unchecked))
                stats.failed_checks += 1
            else:
                details.check_run_status, details.check_compliant = "COMPLETED_COMPLIANT", True
                stats.compliant_checks += 1
        stats.in_progress_checks = 0
        self.task.task_status = AuditTaskStatus.COMPLETED
        self._save()

    def _fail(self, error_code: str, message: str) -> None:
        self._update_details()
        for details in self.task.audit_details.values():
            details.check_run_status, details.check_compliant = "FAILED", False
            details.error_code, details.message = error_code, message
        self.task.task_statistics.in_progress_checks = 0
        self.task.task_statistics.failed_checks = len(self.checks)
        self.task.task_status = AuditTaskStatus.FAILED
        self._save()

    def _raise_if_canceled(self) -> None:
        if self.budget is not None and self.budget.spent():
            raise AuditCanceled(self.budget.why)
        if self.store.cancel_requested(self.task.task_id):
            raise AuditCanceled

    def _cancel(self, message: str = "canceled before it finished") -> None:
        self._update_details()
        for details in self.task.audit_details.values():
            details.check_run_status = "CANCELED"
            details.check_compliant = False
            details.message = message
        self.task.task_statistics.in_progress_checks = 0
        self.task.task_statistics.canceled_checks = len(self.checks)
        self.task.task_status = AuditTaskStatus.CANCELED
        self._save()

    def _save(self) -> None:
        self._owner = TaskOwner(self._owner.host, self._owner.pid, time.time())
        self.store.save_task(self.task, self._owner)

    def _phase(self, label: str, total: int | None) -> None:
        if self.on_phase:
            self.on_phase(label, total)
