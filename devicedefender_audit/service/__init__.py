"""Device Defender's audit operations, one plain function each, over the store.

Every operation is ``operation(ctx, **request) -> response``: the request is what boto3's
``iot`` client takes (camelCase members, checked against botocore's model) and the response is
the model's output shape, timestamps as datetimes as boto3 returns them. The CLI
(:mod:`devicedefender_audit.cli_api`) and the other fronts call these and hold no logic of their
own. :data:`OPERATIONS` maps each implemented operation's model name to its function.
"""

from __future__ import annotations

from collections.abc import Callable

from devicedefender_audit.service import (
    configuration,
    findings,
    mitigation_actions,
    mitigation_tasks,
    scheduled,
    suppressions,
    tasks,
)
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.errors import (
    InvalidRequest,
    ResourceAlreadyExists,
    ResourceNotFound,
    ServiceError,
    TaskAlreadyExists,
)

OPERATIONS: dict[str, Callable[..., dict]] = {
    "DescribeAccountAuditConfiguration": configuration.describe_account_audit_configuration,
    "UpdateAccountAuditConfiguration": configuration.update_account_audit_configuration,
    "DeleteAccountAuditConfiguration": configuration.delete_account_audit_configuration,
    "StartOnDemandAuditTask": tasks.start_on_demand_audit_task,
    "DescribeAuditTask": tasks.describe_audit_task,
    "ListAuditTasks": tasks.list_audit_tasks,
    "CancelAuditTask": tasks.cancel_audit_task,
    "ListAuditFindings": findings.list_audit_findings,
    "DescribeAuditFinding": findings.describe_audit_finding,
    "ListRelatedResourcesForAuditFinding": findings.list_related_resources_for_audit_finding,
    "CreateAuditSuppression": suppressions.create_audit_suppression,
    "DescribeAuditSuppression": suppressions.describe_audit_suppression,
    "UpdateAuditSuppression": suppressions.update_audit_suppression,
    "DeleteAuditSuppression": suppressions.delete_audit_suppression,
    "ListAuditSuppressions": suppressions.list_audit_suppressions,
    "CreateScheduledAudit": scheduled.create_scheduled_audit,
    "DescribeScheduledAudit": scheduled.describe_scheduled_audit,
    "UpdateScheduledAudit": scheduled.update_scheduled_audit,
    "DeleteScheduledAudit": scheduled.delete_scheduled_audit,
    "ListScheduledAudits": scheduled.list_scheduled_audits,
    "CreateMitigationAction": mitigation_actions.create_mitigation_action,
    "DescribeMitigationAction": mitigation_actions.describe_mitigation_action,
    "UpdateMitigationAction": mitigation_actions.update_mitigation_action,
    "DeleteMitigationAction": mitigation_actions.delete_mitigation_action,
    "ListMitigationActions": mitigation_actions.list_mitigation_actions,
    "StartAuditMitigationActionsTask": mitigation_tasks.start_audit_mitigation_actions_task,
    "DescribeAuditMitigationActionsTask": mitigation_tasks.describe_audit_mitigation_actions_task,
    "ListAuditMitigationActionsTasks": mitigation_tasks.list_audit_mitigation_actions_tasks,
    "CancelAuditMitigationActionsTask": mitigation_tasks.cancel_audit_mitigation_actions_task,
    "ListAuditMitigationActionsExecutions": mitigation_tasks.list_audit_mitigation_actions_executions,
}

__all__ = ["OPERATIONS", "InvalidRequest", "ResourceAlreadyExists", "ResourceNotFound", "ServiceContext",
           "ServiceError", "TaskAlreadyExists"]
