"""What an audit did not cover, for every export to show beside its findings.

A list of findings reads as "everything else is fine". That holds only when the task completed
and every check ran over every in-scope certificate; otherwise an export must say which checks
fell short and which certificates were not checked, or an unchecked certificate looks compliant
(the README's rule: never a false all-clear).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from devicedefender_audit.models import AuditTask, AuditTaskStatus, ResourceError, unchecked

#: The check run statuses of a check that ran over every in-scope certificate.
_COMPLETED = frozenset({"COMPLETED_COMPLIANT", "COMPLETED_NON_COMPLIANT"})


@dataclass(frozen=True)
class IncompleteCheck:
    """A check that did not run to the end, or ran but could not judge some keys."""

    check_name: str
    #: The check's ``errorCode`` (AWS's, or ``RESOURCES_NOT_COVERED`` ...), else its run status.
    code: str
    message: str


def incomplete_checks(task: AuditTask) -> list[IncompleteCheck]:
    """The task's checks that did not complete, or completed with keys no detector data covers
    (``COMPLETED_NON_COMPLIANT`` still counts them in ``notCoveredResourcesCount``)."""
    incomplete = []
    for name, details in task.audit_details.items():
        if details.check_run_status not in _COMPLETED:
            incomplete.append(IncompleteCheck(name, details.error_code or details.check_run_status,
                                              details.message or f"check {details.check_run_status}"))
        elif details.not_covered_resources_count:
            incomplete.append(IncompleteCheck(name, "RESOURCES_NOT_COVERED",
                                              f"{details.not_covered_resources_count} key(s) of a kind no "
                                              "detector data covers"))
    return incomplete


def complete_checks(task: AuditTask) -> set[str]:
    """The checks of a completed task that ran over every in-scope certificate and covered
    every key: the only ones whose silence about a certificate means it is no longer weak."""
    if task.task_status is not AuditTaskStatus.COMPLETED:
        return set()
    incomplete = {check.check_name for check in incomplete_checks(task)}
    return {name for name in task.audit_details if name not in incomplete}


def shortfalls(task: AuditTask, errors: Iterable[ResourceError]) -> list[str]:
    """One line per way the audit fell short, empty when it covered the whole account."""
    lines = []
    if task.task_status is not AuditTaskStatus.COMPLETED:
        lines.append(f"audit {task.task_id} is {task.task_status.value}: its findings are those recorded so far")
    for check in incomplete_checks(task):
        lines.append(f"check {check.check_name} did not cover every certificate: {check.code}: {check.message}")
    not_checked = unchecked(errors)
    if not_checked:
        lines.append(f"{len(not_checked)} certificate(s) could not be checked (export --format json lists them)")
    return lines
