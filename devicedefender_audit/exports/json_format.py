"""An audit as one JSON document in Device Defender's shapes (``auditTask``, ``findings``,
``resourceErrors``), the same shape ``show-findings --format json`` prints, passed through the
export safety guard and with only the listed ``additionalInfo`` members."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from devicedefender_audit.exports.safety import exported_info, safe_value
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError


def _finding(finding: AuditFinding) -> dict[str, Any]:
    document = finding.to_aws()
    resource = document["nonCompliantResource"]
    resource["additionalInfo"] = exported_info(finding.non_compliant_resource.additional_info)
    return document


def audit_document(task: AuditTask, findings: Iterable[AuditFinding], errors: Iterable[ResourceError]) -> dict[str, Any]:
    return safe_value({
        "auditTask": task.to_aws(),
        "findings": [_finding(f) for f in findings],
        "resourceErrors": [e.to_aws() for e in errors],
    })
