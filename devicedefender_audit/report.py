"""Human tables and machine JSON for audits, findings, checks and mitigations."""

from __future__ import annotations

import json
from collections.abc import Sequence

from devicedefender_audit.models import AuditFinding, AuditTask, MitigationExecution, ResourceError


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def audit_json(task: AuditTask, findings: Sequence[AuditFinding], errors: Sequence[ResourceError]) -> str:
    return json.dumps(
        {
            "auditTask": task.to_aws(),
            "findings": [f.to_aws() for f in findings],
            "resourceErrors": [e.to_aws() for e in errors],
        },
        indent=2,
    )


def audit_text(task: AuditTask, findings: Sequence[AuditFinding], errors: Sequence[ResourceError]) -> str:
    d = task.details
    out = [
        f"Audit task {task.task_id}  {task.task_status.value}  started {task.task_start_time:%Y-%m-%d %H:%M:%S %Z}",
        f"Check {next(iter(task.audit_details))}: {d.check_run_status}",
        (
            f"  certificates in scope: {d.total_resources_count}   non-compliant: "
            f"{d.non_compliant_resources_count}   failed: {d.failed_resources_count}   "
            f"not applicable: {d.not_applicable_resources_count}   not covered: {d.not_covered_resources_count}"
        ),
    ]
    if d.message:
        out.append(f"  error: {d.error_code}: {d.message}")
    if findings:
        out += ["", "Findings:", table(
            ("SEVERITY", "CERTIFICATE", "THINGS", "REASON CODE", "REASON"),
            [(f.severity, f.certificate_id, f.non_compliant_resource.additional_info.get("things") or "-",
              f.reason_for_non_compliance_code, f.reason_for_non_compliance)
             for f in findings],
        )]
    else:
        out += ["", "No non-compliant certificates."]
    if errors:
        out += ["", "Certificates that could not be checked:", table(
            ("CERTIFICATE", "ERROR", "MESSAGE"), [(e.certificate_id, e.error_code, e.message) for e in errors]
        )]
    return "\n".join(out)


def tasks_text(tasks: Sequence[AuditTask]) -> str:
    if not tasks:
        return "No audits recorded."
    return table(
        ("TASK ID", "STARTED", "STATUS", "CHECK", "IN SCOPE", "NON-COMPLIANT", "FAILED"),
        [
            (t.task_id, f"{t.task_start_time:%Y-%m-%d %H:%M:%S}", t.task_status.value,
             t.details.check_run_status, t.details.total_resources_count,
             t.details.non_compliant_resources_count, t.details.failed_resources_count)
            for t in tasks
        ],
    )


def executions_text(executions: Sequence[MitigationExecution]) -> str:
    if not executions:
        return "No mitigation actions to run."
    rows = []
    for e in executions:
        rows.append((e.finding_id[:12], e.action_name.value, e.status.value, e.message))
        for call in e.calls:
            params = ", ".join(f"{k}={v}" for k, v in call.parameters.items() if k != "Message")
            prefix = "would call" if e.dry_run else "called"
            rows.append(("", "", "", f"  {prefix} {call.service}.{call.operation}({params})"))
    return table(("FINDING", "ACTION", "STATUS", "DETAIL"), rows)
