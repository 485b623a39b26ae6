"""Bringing Security Hub up to date with one audit: its findings imported, the workflow of those
suppressed or no longer suppressed since their import set, and this tool's findings that the
audit shows resolved archived.

Both fronts that send findings to Security Hub (``export --to-securityhub`` and the scheduled
Lambda) call :func:`sync_audit`, so that a suppression reaches Security Hub and a deactivated or
replaced certificate's finding is archived wherever the audits are sent from, and an audit with
no findings left still archives the ones it resolved. What changes is decided by
:func:`.asff.workflow_changes` and :func:`.asff.resolved_findings`; the calls are
:mod:`~devicedefender_audit.aws.securityhub`'s.

A fleet with many weak keys (a ROCA chip in a product line) has as many findings: they are
turned into ASFF and sent a batch at a time, and Security Hub's copies are read a page at a
time, keeping only what is to change (findings to archive are kept whole), so memory does not
grow with them. Nothing is changed while the pages are read, as a finding archived under a
paginator could shift its pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devicedefender_audit.aws.errors import AWS_ERRORS
from devicedefender_audit.aws.securityhub import (
    BatchResult,
    batches,
    call_error,
    import_findings,
    own_findings,
    update_workflow,
)
from devicedefender_audit.exports.asff import (
    NOTE_AUTHOR,
    REOPENED_NOTE,
    SUPPRESSED_NOTE,
    AsffContext,
    asff_finding,
    asff_id,
    id_prefix,
    keep_suppressed_at_import,
    resolved_findings,
    suppressed_at_import,
    workflow_changes,
)
from devicedefender_audit.exports.coverage import complete_checks
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError, unchecked

#: The note each workflow status is set with.
_NOTES = {"SUPPRESSED": SUPPRESSED_NOTE, "NEW": REOPENED_NOTE}


@dataclass
class SyncResult:
    """What one sync did: the import of the audit's findings, the workflow statuses it set, and
    the archiving of resolved findings."""

    imported: BatchResult
    #: ``BatchUpdateFindings`` by the status set: ``SUPPRESSED`` (suppressed since the import)
    #: and ``NEW`` (the audit's suppression ended).
    workflow: dict[str, BatchResult] = field(default_factory=dict)
    #: The archiving import (``RecordState`` ``ARCHIVED``); empty when nothing was resolved.
    archived: BatchResult = field(default_factory=BatchResult)
    #: Why this tool's findings in Security Hub could not be looked up (``GetFindings``), so
    #: that nothing was done: no workflow set, nothing imported or archived.
    lookup_error: str | None = None

    def _parts(self) -> list[BatchResult]:
        return [self.imported, *self.workflow.values(), self.archived]

    @property
    def failures(self) -> list[dict[str, str]]:
        """Every finding refused, by any call."""
        return [failure for part in self._parts() for failure in part.failed]

    @property
    def errors(self) -> list[str]:
        """Every call that failed as a whole."""
        return [e for e in [*(part.error for part in self._parts()), self.lookup_error] if e]

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.errors)

    def to_json(self) -> dict[str, Any]:
        """The Lambda report's ``securityHub`` member."""
        report: dict[str, Any] = {"imported": self.imported.success_count, "failed": self.imported.failed,
                                  "suppressed": self.workflow.get("SUPPRESSED", BatchResult()).success_count,
                                  "reopened": self.workflow.get("NEW", BatchResult()).success_count,
                                  "workflowFailed": [f for part in self.workflow.values() for f in part.failed],
                                  "archived": self.archived.success_count, "archiveFailed": self.archived.failed}
        if self.errors:
            report["errors"] = self.errors
        return report


def sync_audit(hub: Any, task: AuditTask, findings: Sequence[AuditFinding], errors: Sequence[ResourceError],
               context: AsffContext) -> SyncResult:
    """Bring ``hub`` (a ``securityhub`` client) up to date with ``task``: look this tool's
    findings up, set the workflow of those whose suppression changed, import ``findings`` (the
    task's) as ASFF, then archive the findings ``task`` shows resolved.

    The lookup comes first, as the import replaces the suppression each finding had when last
    carried over (:func:`.asff.workflow_changes`); a finding whose workflow change did not go
    through is imported with its old one, so that the next sync carries the decision again. A
    lookup that failed stops the sync before the import, for the same reason: the next sync
    does it all. The workflow is set before the import, which Security Hub may still be
    processing when an update comes (``ConcurrentUpdateError``). An audit with no findings that
    did not complete every check looks nothing up, and only a complete one archives anything.
    """
    complete = complete_checks(task)
    changes: dict[str, list[dict[str, str]]] = {}
    before: dict[str, str | None] = {}
    resolved: list[dict[str, Any]] = []
    if findings or complete:
        region = task.region or context.region
        suppressed = {asff_id(f, context): f.is_suppressed for f in findings}
        unchecked_ids = {e.certificate_id for e in unchecked(errors)}
        try:
            for page in batches(own_findings(hub, context.product_arn, context.account_id,
                                             id_prefix(context.account_id, region))):
                for status, changed in workflow_changes(page, suppressed, region, context).items():
                    changes.setdefault(status, []).extend({"Id": f["Id"], "ProductArn": f["ProductArn"]}
                                                          for f in changed)
                    before.update((f["Id"], suppressed_at_import(f)) for f in changed)
                if complete:
                    resolved += resolved_findings(page, task, suppressed, unchecked_ids, context)
        except AWS_ERRORS as exc:
            return SyncResult(imported=BatchResult(), lookup_error=call_error("GetFindings", exc))
    workflow = {status: update_workflow(hub, changed, status, {"Text": _NOTES[status], "UpdatedBy": NOTE_AUTHOR})
                for status, changed in changes.items()}
    processed = set().union(*(result.processed for result in workflow.values()))
    pending = {finding_id: value for finding_id, value in before.items() if finding_id not in processed}

    def imported(finding: AuditFinding) -> dict[str, Any]:
        document = asff_finding(finding, context)
        if document["Id"] in pending:  # its decision is still to be carried over
            return keep_suppressed_at_import(document, pending[document["Id"]])
        return document

    result = SyncResult(imported=import_findings(hub, (imported(f) for f in findings)), workflow=workflow)
    if resolved:
        result.archived = import_findings(hub, resolved)
    return result
