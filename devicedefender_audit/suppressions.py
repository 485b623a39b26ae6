"""Which findings an audit suppression covers, as Device Defender applies them.

A suppression names a check and a resource (``resourceIdentifier``); while it is active (no
``expirationDate``, ``suppressIndefinitely``, or an expiration date still ahead) every finding of
that check on that resource is recorded ``isSuppressed`` and counted in
``suppressedNonCompliantResourcesCount``. The audit engine asks this module, the suppression
operations (:mod:`.service.suppressions`) write what it reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone

from devicedefender_audit.models import AuditFinding
from devicedefender_audit.store import Store

#: The store record kind holding suppressions, keyed by :func:`suppression_key`.
SUPPRESSION_KIND = "audit_suppression"


def resource_key(identifier: Mapping[str, object]) -> str:
    """One string per resource: the certificate id for certificates (an ARN given beside it does
    not make another resource), otherwise the whole identifier."""
    for member in ("deviceCertificateId", "caCertificateId"):
        if identifier.get(member):
            return f"{member}:{identifier[member]}"
    return json.dumps(dict(identifier), sort_keys=True, default=str)


def suppression_key(check_name: str, identifier: Mapping[str, object]) -> str:
    return f"{check_name}|{resource_key(identifier)}"


def is_active(suppression: Mapping[str, object], now: datetime) -> bool:
    """Whether a stored suppression still applies at ``now`` (expired ones stop applying)."""
    if suppression.get("suppressIndefinitely"):
        return True
    expiration = suppression.get("expirationDate")
    return expiration is None or float(expiration) > now.timestamp()  # type: ignore[arg-type]


class ActiveSuppressions:
    """The suppressions active at one moment (an audit's start, a mitigation task's), for a fast
    per-finding lookup."""

    def __init__(self, store: Store, now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        self._keys = {key for key, body in store.records(SUPPRESSION_KIND) if is_active(body, now)}

    def covers(self, finding: AuditFinding) -> bool:
        identifier = finding.non_compliant_resource.resource_identifier.to_aws()
        return suppression_key(finding.check_name, identifier) in self._keys
