"""Exit codes of the audit commands, and an audit task's code (README, "Statuses and exit codes").

One definition for `run`, `run --regions/--organization` (the worst over the account-regions) and
the Lambda handlers, so a pipeline reads the same number whichever front ran the audit. Imports
nothing: the CLI reads these before it knows which command runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devicedefender_audit.models import AuditTask

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NON_COMPLIANT, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_PIPE, EXIT_SIGTERM = 130, 141, 143
#: From worst to best: interrupted, failed, findings, not every certificate checked, compliant.
SEVERITY = (EXIT_SIGTERM, EXIT_SIGINT, EXIT_FAILED, EXIT_NON_COMPLIANT, EXIT_INCOMPLETE, EXIT_OK)


#: The error codes of a check that ran but could not check or cover every certificate.
INCOMPLETE_CHECK_ERRORS = frozenset({"RESOURCES_NOT_CHECKED", "RESOURCES_NOT_COVERED"})


def task_exit_code(task: AuditTask) -> int:
    """Over every check of the task: a task that did not complete is a failure; findings beat a
    check that could not run at all (e.g. its certificates could not be listed), which beats
    unchecked certificates, which beat compliance."""
    if task.task_status.value != "COMPLETED":
        return EXIT_FAILED
    checks = task.audit_details.values()
    if any(d.non_compliant_resources_count for d in checks):
        return EXIT_NON_COMPLIANT
    if any(d.check_run_status == "FAILED" and d.error_code not in INCOMPLETE_CHECK_ERRORS for d in checks):
        return EXIT_FAILED
    return EXIT_OK if all(d.check_compliant for d in checks) else EXIT_INCOMPLETE


def worst(codes: Iterable[int]) -> int:
    """The worst of several audits' codes (0 for none)."""
    return min(codes, key=SEVERITY.index, default=EXIT_OK)
