"""Audit mitigation actions tasks: ``StartAuditMitigationActionsTask``,
``DescribeAuditMitigationActionsTask``, ``ListAuditMitigationActionsTasks``,
``CancelAuditMitigationActionsTask``, ``ListAuditMitigationActionsExecutions``.

A task applies, through the one :class:`~devicedefender_audit.mitigation.Mitigator`, the actions
``auditCheckToActionsMapping`` names for each finding's check to the findings of its target:
``findingIds``, or the findings of ``auditTaskId``, optionally narrowed by
``auditCheckToReasonCodeFilter`` (the filter selects findings "from the audit", so it needs
``auditTaskId``). Suppressed findings are left out, named or not: "Mitigation actions won't be
performed on suppressed audit findings" (suppressed in their audit, or by a suppression in force
when the task starts). The findings and the action definitions are fixed when
the task starts, so editing or deleting an action later does not change a task. A retry with the same ``taskId``
and ``clientRequestToken`` returns the existing task (``ThrottlingException``, which the SDKs retry,
while the first attempt is still being checked: it may yet be refused); another token for that id is
``TaskAlreadyExistsException``, and a token already used for another task is refused. A request
without a token gets a fresh one, as boto3 and the AWS CLI fill in the model's idempotency token.
Each mapped action must be defined and of a type that acts on its check's findings.

At most :data:`MAX_RUNNING_TASKS` tasks run at the same time (Device Defender's limit): one more
is ``LimitExceededException``. A task records the process that runs it (host, pid, heartbeat at
each finding); a task whose process is gone, or silent for
:data:`~devicedefender_audit.liveness.STALE_AFTER_S`, is ``FAILED`` when next read
(Describe, List, Cancel, Start), so a script polling for its end sees one and it stops counting
against the limit.

Statistics count findings per check: a finding failed when one of its actions failed, was
skipped when all of them were (nothing to do, already applied, or a dry run), else succeeded.
As the Device Defender guide has it, "actions are applied in the order in which they are
specified"; "if ... one of those actions failed, the subsequent actions are skipped for that
finding (but are still applied to other findings)" (recorded ``SKIPPED``, naming the failed one),
and "the taskStatus is set to failed if one or more of the actions failed". An action another
running task is applying is waited for (:mod:`~devicedefender_audit.mitigation`), so the order
holds across tasks too. A task ends
``FAILED`` when a finding failed, ``CANCELED`` when canceled, else ``COMPLETED``.
A cancel request is seen between findings; the actions not run are recorded ``CANCELED``.

Extension: ``dry_run=True`` (a Python keyword, ``--dry-run`` on the CLI; not a request member)
runs the task without any mutating AWS call: every execution is ``SKIPPED`` with a message that
says what it would have done. ``DescribeAuditMitigationActionsTask`` with ``extensions=True``
shows ``dryRun`` under :data:`~devicedefender_audit.service.tasks.EXTENSIONS_MEMBER`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from devicedefender_audit.check_names import RESOURCE_TYPE_OF
from devicedefender_audit.liveness import owner_gone, this_process
from devicedefender_audit.mitigation import ACTIONS_FOR_RESOURCE, ActionDefinition, Mitigator
from devicedefender_audit.mitigation_effects import RunEffects
from devicedefender_audit.models import (
    AuditFinding,
    MitigationActionType,
    MitigationExecution,
    MitigationStatus,
    utcnow,
)
from devicedefender_audit.service.configuration import SUPPORTED_CHECKS
from devicedefender_audit.service.context import ServiceContext, as_utc, drop_none, from_epoch, page
from devicedefender_audit.service.errors import (
    InvalidRequest,
    LimitExceeded,
    ResourceNotFound,
    TaskAlreadyExists,
    Throttled,
)
from devicedefender_audit.service.mitigation_actions import APPLICABLE_TYPES, definition_of, stored_action
from devicedefender_audit.service.shapes import check_request, fill_idempotency_tokens
from devicedefender_audit.service.tasks import EXTENSIONS_MEMBER
from devicedefender_audit.store import Store
from devicedefender_audit.suppressions import ActiveSuppressions

TASK_KIND, TOKEN_KIND, CANCEL_KIND = "mitigation_task", "mitigation_task_token", "mitigation_task_cancel"
IN_PROGRESS = "IN_PROGRESS"
#: Device Defender's "audit mitigation action tasks running at the same time" limit.
MAX_RUNNING_TASKS = 10
#: A task's background thread is named this and its id (:func:`running_task_ids`).
_THREAD_PREFIX = "mitigation-"
log = logging.getLogger(__name__)


def _owner() -> dict:
    """This process, as the runner of a task started now."""
    host, pid = this_process()
    return {"host": host, "pid": pid, "heartbeat": time.time()}


def _ended_if_abandoned(ctx: ServiceContext, body: dict) -> dict:
    """``body``, set ``FAILED`` (and stored) when it is IN_PROGRESS and its runner is gone
    (:mod:`~devicedefender_audit.liveness`, the rule of audit tasks and mitigation claims). A
    task this process runs is left to its thread, as an audit's is (``recover_interrupted``):
    only slow, it would otherwise be failed here and written back IN_PROGRESS at its next finding."""
    owner = body.get("owner", {})
    if body["taskStatus"] != IN_PROGRESS or (owner.get("host"), owner.get("pid")) == this_process():
        return body
    why = owner_gone(owner.get("host"), owner.get("pid"), owner.get("heartbeat"), "finishing the task")
    if why is None:
        return body
    body.update(taskStatus="FAILED", endTime=ctx.now().timestamp(), failure=f"interrupted: {why}")
    ctx.store.put_record(TASK_KIND, body["taskId"], body)
    log.warning("mitigation actions task %s ended FAILED: %s", body["taskId"], why)
    return body


def _tasks(ctx: ServiceContext) -> list[dict]:
    """Every stored task, the abandoned ones ended."""
    return [_ended_if_abandoned(ctx, body) for _, body in ctx.store.records(TASK_KIND)]


def _resolve_findings(store: Store, target: Mapping[str, Any], checks: Sequence[str],
                      now: datetime) -> list[AuditFinding]:
    finding_ids, audit_task_id = target.get("findingIds"), target.get("auditTaskId")
    reason_filter = target.get("auditCheckToReasonCodeFilter")
    if bool(finding_ids) == bool(audit_task_id):
        raise InvalidRequest("target names either findingIds or auditTaskId (optionally narrowed by "
                             "auditCheckToReasonCodeFilter)")
    if reason_filter and not audit_task_id:
        raise InvalidRequest("auditCheckToReasonCodeFilter selects findings of the audit named by auditTaskId")
    if finding_ids:
        found = {i: store.get_finding(i) for i in dict.fromkeys(finding_ids)}
        missing = [i for i, f in found.items() if f is None]
        if missing:
            raise InvalidRequest(f"no audit finding(s) {missing}")
        findings = [f for f in found.values() if f is not None]
    else:
        if store.get_task(audit_task_id) is None:
            raise InvalidRequest(f"no audit task {audit_task_id}")
        findings = list(store.findings(audit_task_id))
    if reason_filter:
        findings = [f for f in findings if f.reason_for_non_compliance_code in reason_filter.get(f.check_name, ())]
    # "Mitigation actions won't be performed on suppressed audit findings" (Device Defender guide):
    # suppressed when the audit ran, or by a suppression in force now (made since: the user's
    # word that the finding is accepted).
    active = ActiveSuppressions(store, now)
    return [f for f in findings if f.check_name in checks and not f.is_suppressed and not active.covers(f)]


def _check_mapping(mapping: Mapping[str, Sequence[str]], definitions: Mapping[str, ActionDefinition]) -> None:
    unsupported = [check for check in mapping if check not in SUPPORTED_CHECKS]
    if unsupported:
        raise InvalidRequest(f"unsupported audit check(s) {unsupported}; this service runs {list(SUPPORTED_CHECKS)}")
    for check, names in mapping.items():
        if not names:
            raise InvalidRequest(f"auditCheckToActionsMapping names no action for {check}")
        for name in names:
            if definitions[name].action_type not in ACTIONS_FOR_RESOURCE[RESOURCE_TYPE_OF[check]]:
                raise InvalidRequest(f"mitigation action {name} ({definitions[name].action_type.value}) does not "
                                     f"apply to {check}")


def start_mitigation_task(ctx: ServiceContext, task_id: str, target: Mapping[str, Any],
                          mapping: Mapping[str, Sequence[str]], definitions: Mapping[str, ActionDefinition],
                          client_request_token: str, dry_run: bool = False) -> str:
    """Validate, record the task IN_PROGRESS and run it (in a thread when ``ctx.background``).

    ``definitions`` holds every action ``mapping`` names: stored ones for the API, unstored ones
    for ``mitigate``. Returns the task id (the existing one for a retried request).
    """
    _check_mapping(mapping, definitions)
    findings = _resolve_findings(ctx.store, target, list(mapping), ctx.now())
    used = [definitions[name] for name in dict.fromkeys(n for names in mapping.values() for n in names)]
    clients = _clients_by_role(ctx, used)
    statistics = {check: {"totalFindingsCount": sum(f.check_name == check for f in findings),
                          "failedFindingsCount": 0, "succeededFindingsCount": 0, "skippedFindingsCount": 0,
                          "canceledFindingsCount": 0}
                  for check in mapping}
    body = {
        "taskId": task_id,
        "taskStatus": IN_PROGRESS,
        "startTime": ctx.now().timestamp(),
        "target": dict(target),
        "auditCheckToActionsMapping": {check: list(names) for check, names in mapping.items()},
        "actionsDefinition": [drop_none({"name": d.name, "id": d.action_id, "roleArn": d.role_arn,
                                         "actionParams": d.action_params}) for d in used],
        "taskStatistics": statistics,
        "clientRequestToken": client_request_token,
        "dryRun": dry_run,
        "findingIds": [f.finding_id for f in findings],
        # The audits it was applied to: its target's, even when no finding matched, and its findings'.
        "auditTaskIds": sorted({f.task_id for f in findings} | ({target["auditTaskId"]} if "auditTaskId" in target
                                                                  else set())),
        "owner": _owner(),
        # Until the limit and token checks below pass: a retry meanwhile is not told the task started.
        "starting": True,
    }
    if not ctx.store.insert_record(TASK_KIND, task_id, body):
        existing = ctx.store.get_record(TASK_KIND, task_id) or {}
        if existing.get("clientRequestToken") != client_request_token:
            raise TaskAlreadyExists(f"mitigation actions task {task_id} exists (started with another clientRequestToken)")
        request = ("dryRun", "target", "auditCheckToActionsMapping")
        if any(existing.get(member) != body[member] for member in request):
            # Not a retry: answering with the old task would make a real run after a dry run of
            # the same id and token silently change nothing.
            was = "a dry run" if existing.get("dryRun") else "a real run"
            raise TaskAlreadyExists(f"mitigation actions task {task_id} exists ({was} with this clientRequestToken, "
                                    "another target, mapping or dry-run setting): give a new task id and token")
        if existing.get("starting") and _ended_if_abandoned(ctx, existing)["taskStatus"] == IN_PROGRESS:
            raise Throttled(f"mitigation actions task {task_id} is being started by this request's first attempt: "
                            "retry in a moment")
        return task_id  # a retry of the request that started it
    try:
        _admit(ctx, task_id, client_request_token)
    except BaseException:  # refused, or the store failed: no task is left behind for retries to find
        ctx.store.delete_record(TASK_KIND, task_id)
        raise
    del body["starting"]
    ctx.store.put_record(TASK_KIND, task_id, body)
    store = ctx.worker_store()
    effects = RunEffects()  # one task, one record of its changes, whichever role made them
    mitigators = {role: Mitigator(iot, sns, store, dry_run=dry_run, effects=effects)
                  for role, (iot, sns) in clients.items()}
    if not ctx.background:
        _run(ctx, store, mitigators, task_id)
        return task_id
    thread = threading.Thread(target=_run_in_background, args=(ctx, store, mitigators, task_id),
                              name=f"{_THREAD_PREFIX}{task_id}", daemon=True)
    ctx.threads.append(thread)
    thread.start()
    return task_id


def _admit(ctx: ServiceContext, task_id: str, client_request_token: str) -> None:
    """Device Defender's limit on running tasks, then the token taken for this task."""
    running = [b["taskId"] for b in _tasks(ctx) if b["taskStatus"] == IN_PROGRESS and b["taskId"] != task_id]
    if len(running) >= MAX_RUNNING_TASKS:
        # Counted after this task is stored: of two started at once past the limit, neither runs.
        raise LimitExceeded(f"{len(running)} mitigation actions tasks are running, Device Defender's limit is "
                            f"{MAX_RUNNING_TASKS}: wait for one to end, or cancel one")
    if not ctx.store.insert_record(TOKEN_KIND, client_request_token, {"taskId": task_id}):
        holder = (ctx.store.get_record(TOKEN_KIND, client_request_token) or {}).get("taskId")
        raise InvalidRequest(f"clientRequestToken {client_request_token} was used for task {holder}")


def running_task_ids(ctx: ServiceContext) -> list[str]:
    """The tasks this process is running in the background now (``serve`` cancels them when it stops)."""
    return [thread.name.removeprefix(_THREAD_PREFIX) for thread in list(ctx.threads)
            if thread.is_alive() and thread.name.startswith(_THREAD_PREFIX)]


def _clients_by_role(ctx: ServiceContext, used: Sequence[ActionDefinition]) -> dict[str | None, tuple[Any, Any]]:
    """The (iot, sns) clients each action's ``roleArn`` acts with (see
    :meth:`ServiceContext.client_for`), made before the task is recorded so that a service
    without SNS, or a missing role, refuses the task instead of failing each finding. A role
    that cannot be assumed fails its actions' executions, with STS's reason, when they run."""
    clients: dict[str | None, tuple[Any, Any]] = {}
    for role in dict.fromkeys(d.role_arn for d in used):
        needs_sns = any(d.role_arn == role and d.action_type is MitigationActionType.PUBLISH_FINDING_TO_SNS
                        for d in used)
        clients[role] = (ctx.client_for("iot", role, "mitigation"),
                         ctx.client_for("sns", role, "mitigation") if needs_sns else None)
    return clients


def _run_in_background(ctx: ServiceContext, store: Store, mitigators: Mapping[str | None, Mitigator],
                       task_id: str) -> None:
    try:
        _run(ctx, store, mitigators, task_id)
    except Exception:  # recorded as FAILED by _run; the thread only reports it
        log.exception("mitigation actions task %s failed", task_id)
    finally:
        if store is not ctx.store:
            store.close()


def _run(ctx: ServiceContext, store: Store, mitigators: Mapping[str | None, Mitigator], task_id: str) -> None:
    """Apply the task's actions finding by finding (each through the Mitigator of its role),
    saving the statistics as it goes."""
    body = store.get_record(TASK_KIND, task_id) or {}
    definitions = {d["name"]: ActionDefinition.from_action_params(d["name"], d["id"], d["actionParams"],
                                                                  d.get("roleArn"))
                   for d in body["actionsDefinition"]}
    canceled = False
    try:
        for finding_id in body["findingIds"]:
            finding = store.get_finding(finding_id)
            if finding is None:
                continue  # its audit was deleted from the store since the task started
            actions = [definitions[name] for name in body["auditCheckToActionsMapping"][finding.check_name]]
            stats = body["taskStatistics"][finding.check_name]
            canceled = canceled or store.get_record(CANCEL_KIND, task_id) is not None
            if canceled:
                for action in actions:
                    store.record_execution(_not_run(task_id, finding, action, MitigationStatus.CANCELED,
                                                    "the task was canceled before this action ran",
                                                    body.get("dryRun", False)))
                stats["canceledFindingsCount"] += 1
            else:
                statuses = _apply_in_order(store, mitigators, finding, actions, task_id)
                if MitigationStatus.FAILED in statuses:
                    stats["failedFindingsCount"] += 1
                elif statuses == {MitigationStatus.SKIPPED}:
                    stats["skippedFindingsCount"] += 1
                else:
                    stats["succeededFindingsCount"] += 1
            body["owner"]["heartbeat"] = time.time()
            store.put_record(TASK_KIND, task_id, body)
        failed = any(stats["failedFindingsCount"] for stats in body["taskStatistics"].values())
        body["taskStatus"] = "CANCELED" if canceled else "FAILED" if failed else "COMPLETED"
    except Exception:
        body["taskStatus"] = "FAILED"
        raise
    except BaseException:  # interrupted (Ctrl-C): ended, as an interrupted audit is, not left IN_PROGRESS
        body["taskStatus"] = "CANCELED"
        raise
    finally:
        body["endTime"] = ctx.now().timestamp()
        store.put_record(TASK_KIND, task_id, body)


def _apply_in_order(store: Store, mitigators: Mapping[str | None, Mitigator], finding: AuditFinding,
                    actions: Sequence[ActionDefinition], task_id: str) -> set[MitigationStatus]:
    """The finding's actions in their mapping's order, those after a failed one skipped; the
    statuses of its executions."""
    statuses: set[MitigationStatus] = set()
    failed: str | None = None
    for action in actions:
        if failed is not None:
            store.record_execution(_not_run(task_id, finding, action, MitigationStatus.SKIPPED,
                                            f"skipped: action {failed} failed for this finding",
                                            mitigators[action.role_arn].dry_run))
            continue
        status = mitigators[action.role_arn].execute(finding, action, task_id).status
        statuses.add(status)
        if status is MitigationStatus.FAILED:
            failed = action.name
    return statuses


def _not_run(task_id: str, finding: AuditFinding, action: ActionDefinition, status: MitigationStatus,
             message: str, dry_run: bool) -> MitigationExecution:
    now = utcnow()
    return MitigationExecution(task_id=task_id, finding_id=finding.finding_id, action_name=action.name,
                               action_id=action.action_id, action_type=action.action_type,
                               status=status, start_time=now, end_time=now, message=message, dry_run=dry_run)


def start_audit_mitigation_actions_task(ctx: ServiceContext, *, dry_run: bool = False, **request: Any) -> dict:
    fill_idempotency_tokens("StartAuditMitigationActionsTask", request)
    check_request("StartAuditMitigationActionsTask", request)
    mapping = request["auditCheckToActionsMapping"]
    definitions = {}
    for check, names in mapping.items():
        for name in names:
            body = stored_action(ctx.store, name)
            if body is None:
                raise InvalidRequest(f"no mitigation action {name}")
            if body["actionType"] not in APPLICABLE_TYPES:
                raise InvalidRequest(f"mitigation action {name} ({body['actionType']}) does not apply to {check}")
            definitions[name] = definition_of(body)
    task_id = start_mitigation_task(ctx, request["taskId"], request["target"], mapping, definitions,
                                    request["clientRequestToken"], dry_run=dry_run)
    return {"taskId": task_id}


def _task(ctx: ServiceContext, task_id: str) -> dict:
    body = ctx.store.get_record(TASK_KIND, task_id)
    if body is None:
        raise ResourceNotFound(f"no mitigation actions task {task_id}")
    return body


def describe_audit_mitigation_actions_task(ctx: ServiceContext, *, extensions: bool = False,
                                           **request: Any) -> dict:
    check_request("DescribeAuditMitigationActionsTask", request)
    body = _ended_if_abandoned(ctx, _task(ctx, request["taskId"]))
    response = drop_none({
        "taskStatus": body["taskStatus"],
        "startTime": from_epoch(body["startTime"]),
        "endTime": from_epoch(body.get("endTime")),
        "taskStatistics": body["taskStatistics"],
        "target": body["target"],
        "auditCheckToActionsMapping": body["auditCheckToActionsMapping"],
        "actionsDefinition": body["actionsDefinition"],
    })
    if extensions:
        response[EXTENSIONS_MEMBER] = drop_none({"dryRun": body["dryRun"], "failure": body.get("failure")})
    return response


def list_audit_mitigation_actions_tasks(ctx: ServiceContext, **request: Any) -> dict:
    check_request("ListAuditMitigationActionsTasks", request)
    start, end = as_utc(request["startTime"]), as_utc(request["endTime"])
    if start > end:
        raise InvalidRequest("startTime is after endTime")
    bodies = sorted(_tasks(ctx), key=lambda b: (b["startTime"], b["taskId"]))
    matching = (
        b for b in bodies
        if start.timestamp() <= b["startTime"] <= end.timestamp()
        and request.get("taskStatus") in (None, b["taskStatus"])
        and request.get("auditTaskId") in (None, *b["auditTaskIds"])
        and request.get("findingId") in (None, *b["findingIds"])
    )
    result = page(matching, "ListAuditMitigationActionsTasks", request)
    return drop_none({
        "tasks": [{"taskId": b["taskId"], "startTime": from_epoch(b["startTime"]), "taskStatus": b["taskStatus"]}
                  for b in result["items"]],
        "nextToken": result.get("nextToken"),
    })


def cancel_audit_mitigation_actions_task(ctx: ServiceContext, **request: Any) -> dict:
    """Ask the task's runner to stop; the findings it has not reached are recorded CANCELED."""
    check_request("CancelAuditMitigationActionsTask", request)
    body = _ended_if_abandoned(ctx, _task(ctx, request["taskId"]))
    if body["taskStatus"] != IN_PROGRESS:
        raise InvalidRequest(f"mitigation actions task {body['taskId']} is {body['taskStatus']}; only an "
                             "IN_PROGRESS task can be canceled")
    ctx.store.put_record(CANCEL_KIND, body["taskId"], {"taskId": body["taskId"]})
    return {}


def list_audit_mitigation_actions_executions(ctx: ServiceContext, **request: Any) -> dict:
    """An unknown task has no executions (the model declares no not-found error here)."""
    check_request("ListAuditMitigationActionsExecutions", request)
    executions = (
        e for e in ctx.store.executions(request["taskId"])
        if e.finding_id == request["findingId"] and request.get("actionStatus") in (None, e.status.value)
    )
    result = page(executions, "ListAuditMitigationActionsExecutions", request)
    return drop_none({"actionsExecutions": [e.to_api() for e in result["items"]],
                      "nextToken": result.get("nextToken")})


def executions_for_audit(store: Store, audit_task_id: str) -> list[MitigationExecution]:
    """Every execution of the mitigation tasks that acted on findings of one audit, oldest task
    first (``list-mitigations``)."""
    bodies = sorted((b for _, b in store.records(TASK_KIND) if audit_task_id in b["auditTaskIds"]),
                    key=lambda b: b["startTime"])
    return [e for b in bodies for e in store.executions(b["taskId"])]
