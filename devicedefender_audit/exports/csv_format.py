"""Audit findings as CSV for spreadsheets.

Cells that a spreadsheet would read as a formula (starting ``=``, ``+``, ``-``, ``@``, tab or
carriage return) get a leading apostrophe: thing names and messages come from the fleet, and a
crafted one must not run as a formula in the reader's spreadsheet (CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from devicedefender_audit.exports.safety import exported_info, safe_text
from devicedefender_audit.models import AuditFinding

COLUMNS = ("taskId", "findingId", "findingTime", "checkName", "severity", "certificateId", "certificateArn",
           "certificateStatus", "keyAlgorithm", "keySize", "things", "reasonCode", "reason", "isSuppressed")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    value = safe_text(value)
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def findings_csv(findings: Iterable[AuditFinding]) -> str:
    """A header row and one row per finding."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for f in findings:
        info = exported_info(f.non_compliant_resource.additional_info)
        writer.writerow([_cell(str(value)) for value in (
            f.task_id, f.finding_id, f.finding_time.isoformat(), f.check_name, f.severity, f.certificate_id,
            f.certificate_arn or "", info.get("certificateStatus", ""), info.get("keyAlgorithm", ""),
            info.get("keySize", ""), info.get("things", ""), f.reason_for_non_compliance_code,
            f.reason_for_non_compliance, str(f.is_suppressed).lower(),
        )])
    return out.getvalue()
