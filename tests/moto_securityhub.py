"""Security Hub's finding workflow, as AWS documents it, for moto 5 (which differs on two points).

- ``BatchImportFindings`` cannot update a finding's ``Note``, ``UserDefinedFields``,
  ``VerificationState`` or ``Workflow`` once the finding exists (the API reference: "After a
  finding is created, BatchImportFindings cannot be used to update" them), and a finding created
  without a workflow is ``NEW``. moto overwrote them with each import, so a test could not see
  that a finding suppressed after its import stayed ``NEW``.
- ``BatchUpdateFindings`` (``PATCH /findings/batchupdate``), the customer's way to set them, is
  not in moto: here it sets ``Workflow`` and ``Note`` (stamped ``UpdatedAt``) of the findings
  named by ``Id`` and ``ProductArn``, and answers one it does not hold as unprocessed.

:func:`install` is called by ``conftest`` before any mock starts, as moto reads its URL paths then.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

#: What only a customer may change once a finding exists.
_CUSTOMER_MEMBERS = ("Note", "UserDefinedFields", "VerificationState", "Workflow")


def install() -> None:
    """Patch moto's Security Hub backend and responses (idempotent)."""
    from moto.securityhub import urls
    from moto.securityhub.models import SecurityHubBackend
    from moto.securityhub.responses import SecurityHubResponse

    if getattr(SecurityHubBackend, "_workflow_as_documented", False):
        return
    original_import = SecurityHubBackend.batch_import_findings

    def batch_import_findings(self: Any, findings: list[dict[str, Any]]) -> Any:
        existing = {finding.id: finding.data for finding in self.findings}
        kept = {data["Id"]: {key: existing[data["Id"]][key] for key in _CUSTOMER_MEMBERS if key in existing[data["Id"]]}
                for data in findings if isinstance(data, dict) and data.get("Id") in existing}
        answer = original_import(self, findings)
        for finding in self.findings:
            if finding.id in kept:
                for key in _CUSTOMER_MEMBERS:
                    finding.data.pop(key, None)
                finding.data.update(kept[finding.id])
            finding.data.setdefault("Workflow", {"Status": "NEW"})
        return answer

    def batch_update_findings(self: Any, identifiers: list[dict[str, str]], workflow: dict[str, str] | None,
                              note: dict[str, str] | None) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        processed, unprocessed = [], []
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for identifier in identifiers:
            finding = next((f for f in self.findings if f.id == identifier.get("Id")
                            and f.data.get("ProductArn") == identifier.get("ProductArn")), None)
            if finding is None:
                unprocessed.append({"FindingIdentifier": identifier, "ErrorCode": "FindingNotFound",
                                    "ErrorMessage": "Finding Not Found"})
                continue
            if workflow:
                finding.data["Workflow"] = dict(workflow)
            if note:
                finding.data["Note"] = {**note, "UpdatedAt": now}
            processed.append(identifier)
        return processed, unprocessed

    def respond(self: Any) -> str:
        body = json.loads(self.body or "{}")
        processed, unprocessed = self.securityhub_backend.batch_update_findings(
            body.get("FindingIdentifiers", []), body.get("Workflow"), body.get("Note"))
        return json.dumps({"ProcessedFindings": processed, "UnprocessedFindings": unprocessed})

    SecurityHubBackend.batch_import_findings = batch_import_findings  # type: ignore[method-assign]
    SecurityHubBackend.batch_update_findings = batch_update_findings  # type: ignore[attr-defined]
    SecurityHubResponse.batch_update_findings = respond  # type: ignore[attr-defined]
    urls.url_paths["{0}/findings/batchupdate$"] = SecurityHubResponse.dispatch
    SecurityHubBackend._workflow_as_documented = True  # type: ignore[attr-defined]
