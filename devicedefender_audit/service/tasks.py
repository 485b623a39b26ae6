"""Audit tasks: ``StartOnDemandAuditTask``, ``DescribeAuditTask``, ``ListAuditTasks``,
``CancelAuditTask``, over the audit engine (:class:`~devicedefender_audit.audit.Audit`).

``DescribeAuditTask`` returns exactly the model's shape. Our extensions (resources that failed,
are not applicable or not covered, the audit's progress, account and region) are left out unless
asked for (``extensions=True``, a Python keyword, not a request member), and then they sit under
one member, :data:`EXTENSIONS_MEMBER`, that no AWS client reads.

A check denied permission reads ``errorCode`` ``INSUFFICIENT_PERMISSIONS``
(:func:`~devicedefender_audit.service.errors.check_error`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from devicedefender_audit.audit import Audit, recover_interrupted
from devicedefender_audit.checks import make_checks
from devicedefender_audit.liveness import this_process
from devicedefender_audit.models import AuditTask
from devicedefender_audit.service.configuration import require_enabled
from devicedefender_audit.service.context import ServiceContext, as_utc, drop_none, page
from devicedefender_audit.service.errors import InvalidRequest, ResourceNotFound, check_error
from devicedefender_audit.service.notifications import notify_audit_finished
from devicedefender_audit.service.shapes import check_request
from devicedefender_audit.store import Store
from devicedefender_audit.store.base import TaskOwner

EXTENSIONS_MEMBER = "devicedefenderAuditExtensions"
ON_DEMAND, SCHEDULED = "ON_DEMAND_AUDIT_TASK", "SCHEDULED_AUDIT_TASK"
log = logging.getLogger(__name__)


def start_audit(ctx: ServiceContext, check_names: list[str], task_type: str = ON_DEMAND,
                scheduled_audit_name: str | None = None) -> str:
    """Record a new IN_PROGRESS task and run it (in a thread when ``ctx.background``); its id."""
    require_enabled(ctx.store, check_names)
    store = ctx.worker_store()
    detectors = ctx.detectors()
    audit = Audit(ctx.audit_iot_client(), store, detectors, region=ctx.region, clock=ctx.clock,
                  checks=make_checks(check_names, detectors), budget=ctx.budget)
    audit.task.task_type = task_type
    audit.task.scheduled_audit_name = scheduled_audit_name
    # Stored before returning, owned by this process, so the id can be described at once.
    store.save_task(audit.task, TaskOwner(*this_process(), time.time()))
    if not ctx.background:
        _run_and_notify(ctx, audit)
        return audit.task.task_id
    thread = threading.Thread(target=_run_in_background, args=(ctx, audit, store is not ctx.store),
                              name=f"audit-{audit.task.task_id}", daemon=True)
    ctx.threads.append(thread)
    thread.start()
    return audit.task.task_id


def _run_and_notify(ctx: ServiceContext, audit: Audit) -> None:
    """Run the audit; however it ends (completed, failed, canceled), send the SNS notification."""
    try:
        audit.run()
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed: report the original error
            notify_audit_finished(ctx, audit.store, audit.task)
        raise
    notify_audit_finished(ctx, audit.store, audit.task)


def _run_in_background(ctx: ServiceContext, audit: Audit, own_store: bool) -> None:
    try:
        _run_and_notify(ctx, audit)
    except Exception:  # the engine recorded the task as FAILED; the thread only reports it
        log.exception("audit %s failed", audit.task.task_id)
    finally:
        if own_store:
            audit.store.close()


def start_on_demand_audit_task(ctx: ServiceContext, **request: Any) -> dict:
    check_request("StartOnDemandAuditTask", request)
    return {"taskId": start_audit(ctx, list(request["targetCheckNames"]))}


def _task(store: Store, task_id: str) -> AuditTask:
    task = store.get_task(task_id)
    if task is None:
        raise ResourceNotFound(f"no audit task {task_id}")
    return task


def describe_audit_task(ctx: ServiceContext, *, extensions: bool = False, **request: Any) -> dict:
    check_request("DescribeAuditTask", request)
    recover_interrupted(ctx.store)
    task = _task(ctx.store, request["taskId"])
    response = drop_none({
        "taskStatus": task.task_status.value,
        "taskType": task.task_type,
        "taskStartTime": task.task_start_time,
        "taskStatistics": task.task_statistics.to_aws(),
        "scheduledAuditName": task.scheduled_audit_name,
        "auditDetails": {
            name: drop_none({
                "checkRunStatus": d.check_run_status,
                "checkCompliant": d.check_compliant,
                "totalResourcesCount": d.total_resources_count,
                "nonCompliantResourcesCount": d.non_compliant_resources_count,
                "suppressedNonCompliantResourcesCount": d.suppressed_non_compliant_resources_count,
                **check_error(d.error_code, d.message),
            })
            for name, d in task.audit_details.items()
        },
    })
    if extensions:
        response[EXTENSIONS_MEMBER] = drop_none({
            "taskId": task.task_id,
            "account": task.account,
            "region": task.region,
            "progress": task.progress.to_aws(),
            "auditDetails": {
                name: {
                    "failedResourcesCount": d.failed_resources_count,
                    "notApplicableResourcesCount": d.not_applicable_resources_count,
                    "notCoveredResourcesCount": d.not_covered_resources_count,
                }
                for name, d in task.audit_details.items()
            },
        })
    return response


def list_audit_tasks(ctx: ServiceContext, **request: Any) -> dict:
    check_request("ListAuditTasks", request)
    recover_interrupted(ctx.store)
    start, end = as_utc(request["startTime"]), as_utc(request["endTime"])
    if start > end:
        raise InvalidRequest("startTime is after endTime")
    tasks = (
        t for t in ctx.store.tasks_started_between(start, end)
        if request.get("taskType") in (None, t.task_type)
        and request.get("taskStatus") in (None, t.task_status.value)
    )
    result = page(tasks, "ListAuditTasks", request)
    return drop_none({
        "tasks": [{"taskId": t.task_id, "taskStatus": t.task_status.value, "taskType": t.task_type}
                  for t in result["items"]],
        "nextToken": result.get("nextToken"),
    })


def cancel_audit_task(ctx: ServiceContext, **request: Any) -> dict:
    """Ask the task's runner to stop; it ends CANCELED at its next page or batch."""
    check_request("CancelAuditTask", request)
    recover_interrupted(ctx.store)
    task = _task(ctx.store, request["taskId"])
    if task.task_status.value != "IN_PROGRESS":
        raise InvalidRequest(f"audit task {task.task_id} is {task.task_status.value}; only an "
                             "IN_PROGRESS task can be canceled")
    ctx.store.request_cancel(task.task_id)
    return {}
