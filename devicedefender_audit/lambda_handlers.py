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


def scheduled_audit(event: Any, context: Any) -> dict[str, Any]:
    """The stack's schedules: ``{}`` audits every configured region (``{"audits": [summary per
    region]}``), ``{"action": "run-due"}`` starts the due scheduled audits of every configured
    region (``{"runDue": [result per region]}``); see :mod:`~devicedefender_audit.lambda_audit`.
    The work stops, recorded and notified, before the function's time limit.

    The event goes to ``handle`` as it came: Lambda delivers ``{}`` for an invocation without a
    payload, so anything else that is not a JSON object (``null``, ``[]``, ``""``, ``0``) was sent
    on purpose and is refused there, not taken for ``{}`` and run as a full audit."""
    from devicedefender_audit.lambda_audit import handle

    clock = getattr(context, "get_remaining_time_in_millis", None)
    remaining_s = (lambda: clock() / 1000) if callable(clock) else None
    return handle(event, os.environ, _detectors, remaining_s)


def registration_gate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Check the certificate of one registration event (a JITR message from the IoT rule, or a
    CloudTrail record of an API registration from EventBridge) and apply the configured
    mitigations; an event naming no certificate here is an outcome saying so, logged, not an
    error. A mistyped setting (``GateConfigurationError``), or a certificate that could not be
    checked or mitigated for a reason that may pass (``GateUnfinished``), fails the invocation:
    both feeds invoke asynchronously, so Lambda retries it, and its ``Errors`` metric counts it."""
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.registration_gate import GateSettings, GateUnfinished, Home, gate_event

    settings = GateSettings.from_env(os.environ)
    target = AwsTarget()
    # The function's ARN names its account (arn:aws:lambda:REGION:ACCOUNT:function:NAME).
    arn = getattr(context, "invoked_function_arn", None)
    account = arn.split(":")[4] if isinstance(arn, str) and arn.count(":") >= 6 else None
    home = Home(account=account, region=target.region_name)
    outcome = gate_event(event, target.client("iot"), target.client("sns"), _detectors(), settings, home)
    if outcome.retry:
        raise GateUnfinished(outcome)
    return outcome.to_json()
