"""Audit findings as CSV for spreadsheets.

One row per finding (``recordType`` ``FINDING``), then one per certificate the audit could not
check (``RESOURCE_NOT_CHECKED``) and one per check that did not cover every certificate
(``CHECK_INCOMPLETE``, e.g. a CA listing that was denied): a spreadsheet of findings alone reads
as "everything else is fine", which an incomplete audit has not shown.

Cells that a spreadsheet would read as a formula (starting ``=``, ``+``, ``-``, ``@``, tab or
carriage return) get a leading apostrophe: thing names and messages come from the fleet, and a
crafted one must not run as a formula in the reader's spreadsheet (CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from devicedefender_audit.exports.coverage import incomplete_checks
from devicedefender_audit.exports.safety import EVIDENCE_KEYS, exported_info, safe_text
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError, unchecked

COLUMNS = ("taskId", "findingId", "findingTime", "checkName", "severity", "certificateId", "certificateArn",
           "certificateStatus", "keyAlgorithm", "keySize", "things", "reasonCode", "reason", "isSuppressed",
           "evidence", "recordType")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    value = safe_text(value)
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def _row(**values: str) -> list[str]:
    return [_cell(values.get(column, "")) for column in COLUMNS]


def _evidence(info: dict[str, str]) -> str:
    """A factorable key's evidence in one cell (``sharedPrimeWith=ID,ID; sharedPrimeCount=2``); the
    CA's ARN has the ``certificateArn`` column."""
    return "; ".join(f"{key}={info[key]}" for key in EVIDENCE_KEYS if key in info and key != "caCertificateArn")


def findings_csv(task: AuditTask, findings: Iterable[AuditFinding], errors: Iterable[ResourceError]) -> str:
    """A header row, one row per finding, then what the audit did not cover."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for f in findings:
        info = exported_info(f.non_compliant_resource.additional_info)
        writer.writerow(_row(
            taskId=f.task_id, findingId=f.finding_id, findingTime=f.finding_time.isoformat(), checkName=f.check_name,
            severity=f.severity, certificateId=f.certificate_id, certificateArn=f.certificate_arn or "",
            certificateStatus=info.get("certificateStatus", ""), keyAlgorithm=info.get("keyAlgorithm", ""),
            keySize=info.get("keySize", ""), things=info.get("things", ""),
            reasonCode=f.reason_for_non_compliance_code, reason=f.reason_for_non_compliance,
            isSuppressed=str(f.is_suppressed).lower(), evidence=_evidence(info), recordType="FINDING"))
    for error in unchecked(errors):
        writer.writerow(_row(taskId=task.task_id, certificateId=error.certificate_id, reasonCode=error.error_code,
                             reason=error.message, recordType="RESOURCE_NOT_CHECKED"))
    for check in incomplete_checks(task):
        writer.writerow(_row(taskId=task.task_id, checkName=check.check_name, reasonCode=check.code,
                             reason=check.message, recordType="CHECK_INCOMPLETE"))
    return out.getvalue()
