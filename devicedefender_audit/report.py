"""Human tables and machine JSON for audits, findings, checks and mitigations."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from devicedefender_audit.models import AuditFinding, AuditTask, MitigationExecution, ResourceError
from devicedefender_audit.text_table import table


def audit_json(task: AuditTask, findings: Iterable[AuditFinding], errors: Iterable[ResourceError]) -> str:
    return json.dumps(
        {
            "auditTask": task.to_aws(),
            "findings": [f.to_aws() for f in findings],
            "resourceErrors": [e.to_aws() for e in errors],
        },
        indent=2,
    )


def _things_column(finding: AuditFinding) -> str:
    """The things to act on; a CA certificate has none, so the column says what it is."""
    if finding.resource_type == "CA_CERTIFICATE":
        return "(CA certificate)"
    return finding.non_compliant_resource.additional_info.get("things") or "-"


def _suppressed_note(count: int) -> str:
    """`` (N suppressed)`` after the non-compliant count: suppressed findings are among the
    non-compliant ones (as ``suppressedNonCompliantResourcesCount`` is), still listed and still
    counted, so the table says how many of them someone chose to accept."""
    return f" ({count} suppressed)" if count else ""


def _severity_column(finding: AuditFinding) -> str:
    """The severity, marked when an audit suppression covers the finding (``isSuppressed``):
    without the mark a suppressed finding reads exactly like one nobody has looked at."""
    return f"{finding.severity} (suppressed)" if finding.is_suppressed else finding.severity


def audit_text(task: AuditTask, findings: Iterable[AuditFinding], errors: Iterable[ResourceError]) -> str:
    findings, errors = list(findings), list(errors)
    out = [f"Audit task {task.task_id}  {task.task_status.value}  started {task.task_start_time:%Y-%m-%d %H:%M:%S %Z}"]
    for name, d in task.audit_details.items():
        out += [
            f"Check {name}: {d.check_run_status}",
            (f"  certificates in scope: {d.total_resources_count}   non-compliant: "
            f"{d.non_compliant_resources_count}{_suppressed_note(d.suppressed_non_compliant_resources_count)}   "
            f"failed: {d.failed_resources_count}   "
            f"not applicable: {d.not_applicable_resources_count}   not covered: {d.not_covered_resources_count}"),
        ]
        if d.message:
            out.append(f"  {d.error_code or 'note'}: {d.message}")
    if task.task_status.value != "COMPLETED":
        p = task.progress
        out.append(f"  progress: listed {p.listed_certificates}, described {p.described_certificates}, "
                   f"checked {p.checked_certificates}")
    if findings:
        out += ["", "Findings:", table(
            ("SEVERITY", "CERTIFICATE", "THINGS", "REASON CODE", "REASON"),
            [(_severity_column(f), f.certificate_id, _things_column(f),
              f.reason_for_non_compliance_code, f.reason_for_non_compliance)
             for f in findings],
        )]
    elif all(d.check_run_status == "COMPLETED_COMPLIANT" for d in task.audit_details.values()):
        out += ["", "No non-compliant certificates."]
    elif task.task_status.value != "COMPLETED":
        out += ["", (f"No finding, but the audit ended {task.task_status.value}: not every certificate was "
                     "checked (see above).")]
    else:
        out += ["", "No finding, but not every certificate was checked and covered (see above)."]
    if errors:
        out += ["", "Certificates that could not be checked (or left scope during the scan):", table(
            ("CERTIFICATE", "KIND", "ERROR", "MESSAGE"),
            [(e.certificate_id, "CA" if e.resource_type == "CA_CERTIFICATE" else "device", e.error_code, e.message)
             for e in errors]
        )]
    return "\n".join(out)


def tasks_text(tasks: Sequence[AuditTask]) -> str:
    """One row per check of each task: a task runs several (device and CA certificates), and a
    summary of the first alone would hide the others' findings. Each row says where the audit
    ran: its region, and its account where the task records one (``run --regions/--role-arn/
    --organization`` and the Lambda do); otherwise audits of different regions look alike."""
    if not tasks:
        return "No audits recorded."
    accounts = any(t.account for t in tasks)
    return table(
        ("TASK ID", "STARTED", *(("ACCOUNT",) if accounts else ()), "REGION", "STATUS", "CHECK", "RESULT",
         "IN SCOPE", "NON-COMPLIANT", "FAILED"),
        [
            (t.task_id, f"{t.task_start_time:%Y-%m-%d %H:%M:%S}", *((t.account or "-",) if accounts else ()),
             t.region or "-", t.task_status.value, name, d.check_run_status, d.total_resources_count,
             d.non_compliant_resources_count, d.failed_resources_count)
            for t in tasks
            for name, d in t.audit_details.items()
        ],
    )


def executions_text(executions: Sequence[MitigationExecution], empty: str | None = None) -> str:
    """One table per mitigation task, in the order given (``list-mitigations``: oldest task
    first, as its JSON), each under a line naming the task and whether it was a dry run: a dry
    run, the real run and a re-run act on the same findings, and their rows read alike.
    ``empty`` is what is said when there is nothing (``mitigate``: nothing to act on)."""
    if not executions:
        return empty or "No mitigation actions to run."
    by_task: dict[str, list[MitigationExecution]] = {}
    for e in executions:
        by_task.setdefault(e.task_id, []).append(e)
    return "\n\n".join(f"{_task_heading(task_id, group)}\n{_executions_table(group)}"
                        for task_id, group in by_task.items())


def _task_heading(task_id: str, executions: Sequence[MitigationExecution]) -> str:
    started = min(e.start_time for e in executions)
    dry = sum(e.dry_run for e in executions)
    kind = ("dry run: nothing changed" if dry == len(executions)
            else "real run" if not dry else f"{dry} of {len(executions)} rows dry runs")
    return f"Mitigation task {task_id}  {kind}  started {started:%Y-%m-%d %H:%M:%S %Z}"


def _executions_table(executions: Sequence[MitigationExecution]) -> str:
    rows = []
    for e in executions:
        rows.append((e.finding_id[:12], e.action_name, e.status.value, e.message))
        for call in e.calls:
            params = ", ".join(f"{k}={v}" for k, v in call.parameters.items() if k != "Message")
            prefix = "would call" if e.dry_run else "called"
            rows.append(("", "", "", f"  {prefix} {call.service}.{call.operation}({params})"))
    return table(("FINDING", "ACTION", "STATUS", "DETAIL"), rows)
