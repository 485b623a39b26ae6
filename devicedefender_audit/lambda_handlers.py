"""AWS Lambda entry points; each maps an event to an operation and returns its JSON result.

``scheduled_audit`` is invoked by EventBridge Scheduler (a full audit, or the due scheduled
audits), ``registration_gate`` by the AWS IoT rule on certificate registration events and the
EventBridge rule on API registrations (``infra/template.yaml``). Configuration is in the
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
    """The stack's schedules: ``{}`` audits every configured region (``{"audits": [summary per
    region]}``), ``{"action": "run-due"}`` starts the due scheduled audits of every configured
    region (``{"runDue": [result per region]}``); see :mod:`~devicedefender_audit.lambda_audit`."""
    from devicedefender_audit.lambda_audit import handle

    return handle(event or {}, os.environ, _detectors)


def registration_gate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Check the certificate of one registration event (a JITR message from the IoT rule, or a
    CloudTrail record of an API registration from EventBridge) and apply the configured
    mitigations; an event naming no certificate is an outcome saying so, logged, not an error."""
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.registration_gate import GateSettings, gate_event

    settings = GateSettings.from_env(os.environ)
    target = AwsTarget()
    return gate_event(event, target.client("iot"), target.client("sns"), _detectors(), settings).to_json()
