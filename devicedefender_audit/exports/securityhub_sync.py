"""Bringing Security Hub up to date with one audit: its findings imported, and this tool's
findings that the audit shows resolved archived.

Both fronts that send findings to Security Hub (``export --to-securityhub`` and the scheduled
Lambda) call :func:`sync_audit`, so that a deactivated or replaced certificate's finding is
archived wherever the audits are sent from, and an audit with no findings left still archives
the ones it resolved. What may be archived is decided by :func:`.asff.resolved_findings`; the
import and the lookup are :mod:`~devicedefender_audit.aws.securityhub`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message
from devicedefender_audit.aws.securityhub import ImportResult, active_findings, import_findings
from devicedefender_audit.exports.asff import AsffContext, id_prefix, resolved_findings
from devicedefender_audit.exports.coverage import complete_checks
from devicedefender_audit.models import AuditTask, ResourceError, unchecked


@dataclass
class SyncResult:
    """What one sync did: the import of the audit's findings, and the archiving of resolved ones."""

    imported: ImportResult
    #: The archiving import (``RecordState`` ``ARCHIVED``); empty when nothing was resolved.
    archived: ImportResult
    #: Why resolved findings could not be looked up (``GetFindings`` refused), else None.
    archive_error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.imported.failed or self.archived.failed or self.archive_error)

    def to_json(self) -> dict[str, Any]:
        """The Lambda report's ``securityHub`` member."""
        report: dict[str, Any] = {"imported": self.imported.success_count, "failed": self.imported.failed,
                                  "archived": self.archived.success_count, "archiveFailed": self.archived.failed}
        if self.archive_error:
            report["archiveError"] = self.archive_error
        return report


def sync_audit(hub: Any, task: AuditTask, findings: Sequence[dict[str, Any]], errors: Sequence[ResourceError],
               context: AsffContext) -> SyncResult:
    """Import ``findings`` (the task's, as ASFF) into ``hub`` (a ``securityhub`` client), then
    archive this tool's active findings there that ``task`` shows resolved. An audit that did
    not complete every check archives nothing, and looks nothing up (``GetFindings`` is needed
    only when something could be resolved)."""
    result = SyncResult(imported=import_findings(hub, findings), archived=ImportResult())
    if not complete_checks(task):
        return result
    try:
        active = list(active_findings(hub, context.product_arn, context.account_id,
                                      id_prefix(context.account_id, task.region or context.region)))
    except AWS_ERRORS as exc:
        result.archive_error = f"securityhub:GetFindings: {aws_error_code(exc)}: {aws_error_message(exc)}"
        return result
    resolved = resolved_findings(active, task, {f["Id"] for f in findings},
                                 {e.certificate_id for e in unchecked(errors)}, context)
    if resolved:
        result.archived = import_findings(hub, resolved)
    return result
