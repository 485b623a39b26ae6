"""Audit notifications: when an audit task ends and the account audit configuration's SNS
target is enabled, publish the message Device Defender sends.

The message follows the AWS IoT Developer Guide's audit notification payload (schema
``arn:aws:iot:::schema:auditnotification/1.0``): ``accountId``, ``taskId``, ``taskStatus``,
``taskType``, ``scheduledAuditName`` (scheduled audits only), the five check counts,
``taskStartTime`` in epoch milliseconds and one ``auditDetails`` entry per check with its run
status, resource counts and, when it did not complete, ``message`` and ``errorCode``. Our error
codes (``RESOURCES_NOT_CHECKED``, ...) and ``INSUFFICIENT_PERMISSIONS`` appear there as they do in
``DescribeAuditTask`` (:func:`~devicedefender_audit.service.errors.check_error`).

The message is published as the target's ``roleArn`` when the service assumes roles (see
:mod:`~devicedefender_audit.service.context`), else with the service's own credentials. A
failed publish (a role that cannot be assumed included) is logged with its reason and never
changes the task's outcome.
"""

from __future__ import annotations

import json
import logging

from devicedefender_audit.aws.errors import AWS_ERRORS
from devicedefender_audit.models import AuditTask, AuditTaskStatus
from devicedefender_audit.service.configuration import CONFIGURATION_KEY, CONFIGURATION_KIND
from devicedefender_audit.service.context import ServiceContext, drop_none
from devicedefender_audit.service.errors import ServiceError, check_error
from devicedefender_audit.store import Store

log = logging.getLogger(__name__)


def audit_notification(task: AuditTask, account_id: str) -> dict:
    """The notification payload for a finished task."""
    stats = task.task_statistics
    return drop_none({
        "accountId": account_id,
        "taskId": task.task_id,
        "taskStatus": task.task_status.value,
        "taskType": task.task_type,
        "scheduledAuditName": task.scheduled_audit_name,
        "failedChecksCount": stats.failed_checks,
        "canceledChecksCount": stats.canceled_checks,
        "nonCompliantChecksCount": stats.non_compliant_checks,
        "compliantChecksCount": stats.compliant_checks,
        "totalChecksCount": stats.total_checks,
        "taskStartTime": int(task.task_start_time.timestamp() * 1000),
        "auditDetails": [
            drop_none({
                "checkName": name,
                "checkRunStatus": details.check_run_status,
                "nonCompliantResourcesCount": details.non_compliant_resources_count,
                "totalResourcesCount": details.total_resources_count,
                **check_error(details.error_code, details.message),
            })
            for name, details in task.audit_details.items()
        ],
    })


def notify_audit_finished(ctx: ServiceContext, store: Store, task: AuditTask) -> str | None:
    """Publish ``task``'s notification to the enabled SNS target; the SNS message id, or None
    when nothing was sent (no enabled target, task still running, or the publish failed)."""
    if task.task_status is AuditTaskStatus.IN_PROGRESS:
        return None
    configuration = store.get_record(CONFIGURATION_KIND, CONFIGURATION_KEY) or {}
    target = configuration.get("auditNotificationTargetConfigurations", {}).get("SNS") or {}
    if not target.get("enabled") or not target.get("targetArn"):
        return None
    message = json.dumps(audit_notification(task, ctx.account_id))
    try:
        sns = ctx.client_for("sns", target.get("roleArn"), "notification")
        response = sns.publish(TopicArn=target["targetArn"], Message=message)
    except (ServiceError, *AWS_ERRORS) as exc:
        log.warning("audit %s: notification to %s not sent: %s", task.task_id, target["targetArn"], exc)
        return None
    return response["MessageId"]
