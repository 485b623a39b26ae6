"""AWS Lambda entry points; each maps an event to an operation and returns its JSON result.

``scheduled_audit`` is invoked by EventBridge Scheduler, ``registration_gate`` by the AWS IoT
rule on certificate registration events (``infra/template.yaml``). Configuration is in the
environment; detectors are built once per execution environment, so warm invocations reuse the
memory-mapped blocklists.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from devicedefender_audit.detectors import Detector, default_detectors


@functools.cache
def _detectors() -> list[Detector]:
    return default_detectors()


def scheduled_audit(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Audit every configured region; ``{"audits": [summary per region]}``."""
    from devicedefender_audit.lambda_audit import AuditSettings, audit_region
    from devicedefender_audit.store import open_store

    settings = AuditSettings.from_env(os.environ, event)
    store = open_store(settings.store)
    try:
        return {"audits": [audit_region(region, store, _detectors(), settings) for region in settings.regions]}
    finally:
        store.close()


def registration_gate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Check the certificate of one registration event and apply the configured mitigations."""
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.registration_gate import GateSettings, gate_certificate, registered_certificate_id

    settings = GateSettings.from_env(os.environ)
    target = AwsTarget()
    outcome = gate_certificate(target.client("iot"), target.client("sns"), registered_certificate_id(event),
                               _detectors(), settings)
    return outcome.to_json()
