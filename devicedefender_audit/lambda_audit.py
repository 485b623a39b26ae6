"""The scheduled Lambda of the single-account deployment: full audits per region, and the
scheduled audits defined through the API when they are due; then a notification and
(optionally) Security Hub findings.

Two EventBridge Scheduler schedules invoke the function (``infra/template.yaml``):

- the stack's own schedule, payload ``{}``: a full audit of every configured region, running the
  checks enabled in that region's account audit configuration when one was stored through the
  API (``UpdateAccountAuditConfiguration``), else every check (device and CA key quality,
  factorable keys);
- the run-due schedule, payload ``{"action": "run-due"}``: in every region,
  :func:`~devicedefender_audit.service.scheduled.run_due` starts the scheduled audits
  (``CreateScheduledAudit``) whose slot has come, as ``SCHEDULED_AUDIT_TASK``; ``"now"`` (ISO
  8601 or epoch seconds) takes that moment as now, as ``run-due --now`` does.

Inventories, tasks and configurations are per account and region (the same certificate can be
registered in several regions, and a sync of one region must not mark another's certificates
gone), so each region is kept in its own partition of ``DDA_STORE``, exactly as ``run --regions``
and the organization fan-out keep them (:func:`~devicedefender_audit.store.partition_location`:
``dynamodb://TABLE/<account>/<region>``, or ``audits.<account>.<region>.sqlite3`` beside a
SQLite path), with the account from STS ``GetCallerIdentity``. That is also the store to give the
API commands that define the configuration and the schedules of a region.

Settings come from the function's environment so that the payloads stay small; an event may
narrow ``regions``. Without ``DDA_STORE`` the store is SQLite under ``/tmp`` and only SNS and
Security Hub keep the findings. The stack's ``DDA_STORE`` is
``dynamodb://TABLE?fleet-state=s3://BUCKET/fleet-state``: each partition keeps the factorable
check's fleet state in its own S3 object there, so that an audit compares only the keys that
changed (:mod:`~devicedefender_audit.store.s3_fleet_state`). A region that cannot be audited does not stop the others; its
failure is part of the result and notified. The work stops before the function's time limit
(:mod:`~devicedefender_audit.time_budget`), recorded and notified, never cut off in silence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from devicedefender_audit.audit import Audit
from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message
from devicedefender_audit.check_names import AUDIT_CHECKS
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors import Detector
from devicedefender_audit.exit_codes import EXIT_FAILED, EXIT_OK, task_exit_code
from devicedefender_audit.exports.safety import safe_value
from devicedefender_audit.fleet_run import account_region_failure
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError
from devicedefender_audit.service.tasks import SCHEDULED
from devicedefender_audit.store import Store, StoreError, open_store, partition_location
from devicedefender_audit.time_budget import TimeBudget

if TYPE_CHECKING:
    from devicedefender_audit.exports.securityhub_sync import SyncResult

#: Findings named in one notification; the rest are counted (SNS messages are capped at 256 KB).
NOTIFIED_FINDINGS = 50
#: The payload member that picks what an invocation does, and its values.
ACTION, AUDIT, RUN_DUE = "action", "audit", "run-due"
#: Every member a payload may have: a misspelt one (``region``) is refused, not ignored.
PAYLOAD_KEYS = (ACTION, "regions", "now")
#: ``errorCode`` of a region the function's time did not reach.
NOT_STARTED = "NOT_STARTED"
#: The code of the one notification of what the function's time left undone.
TIME_LIMIT_REACHED = "TIME_LIMIT_REACHED"
#: The last audit of a region never audited: the oldest of all.
_NEVER = datetime.min.replace(tzinfo=timezone.utc)
#: A check's run status, worst first: what a summary reports for the whole task.
_WORST_FIRST = ("FAILED", "CANCELED", "IN_PROGRESS", "WAITING_FOR_DATA_COLLECTION", "COMPLETED_NON_COMPLIANT",
                "COMPLETED_COMPLIANT")

Detectors = Callable[[], Sequence[Detector]]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def _region_of_arn(arn: str) -> str:
    return arn.split(":")[3]


@dataclass(frozen=True)
class AuditSettings:
    regions: tuple[str, ...]
    sns_topic_arn: str | None
    to_securityhub: bool
    store: str
    workers: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], event: Mapping[str, Any] | None = None) -> AuditSettings:
        """``DDA_REGIONS`` (comma-separated or ``all``, checked against botocore's endpoint data;
        default the function's own region), ``DDA_SNS_TOPIC_ARN``, ``DDA_SECURITYHUB``,
        ``DDA_STORE``, ``DDA_WORKERS``; ``event["regions"]`` (a list or the same text) overrides them."""
        import boto3

        from devicedefender_audit.accounts import AccountsError, parse_regions

        asked = (event or {}).get("regions") or env.get("DDA_REGIONS", "")
        if not isinstance(asked, str) and not (isinstance(asked, list) and all(isinstance(r, str) for r in asked)):
            raise ValueError(f"regions is a list of region names or one comma-separated text, not {asked!r}")
        text = (asked if isinstance(asked, str) else ",".join(asked)).strip()
        try:
            regions = tuple(parse_regions(text, boto3.session.Session())) if text else (env["AWS_REGION"],)
        except AccountsError as exc:
            raise ValueError(f"regions: {exc}") from exc
        return cls(regions=regions, sns_topic_arn=env.get("DDA_SNS_TOPIC_ARN") or None,
                   to_securityhub=_flag(env.get("DDA_SECURITYHUB")),
                   store=env.get("DDA_STORE", "/tmp/audits.sqlite3"), workers=int(env.get("DDA_WORKERS", "8")))


def summary(task: AuditTask, findings: Sequence[AuditFinding]) -> dict[str, Any]:
    """What a notification and the function's result say about one audit (public facts only).

    ``checks`` has every check's counts; the task-wide figures are those of the ``run`` table:
    the worst run status, non-compliant resources summed over the checks, the other counts the
    largest of any check (device and CA checks count different certificates).
    """
    checks = {name: {"checkRunStatus": d.check_run_status, "totalResourcesCount": d.total_resources_count,
                     "nonCompliantResourcesCount": d.non_compliant_resources_count,
                     "failedResourcesCount": d.failed_resources_count,
                     "notCoveredResourcesCount": d.not_covered_resources_count,
                     **({"errorCode": d.error_code} if d.error_code else {}),
                     **({"message": d.message} if d.message else {})}
              for name, d in task.audit_details.items()}
    details = list(task.audit_details.values())
    worst = min((d.check_run_status for d in details), key=lambda s: _WORST_FIRST.index(s)
                if s in _WORST_FIRST else 0, default="COMPLETED_COMPLIANT")
    return safe_value({
        "taskId": task.task_id, "region": task.region, "taskType": task.task_type,
        "taskStatus": task.task_status.value, "exitCode": task_exit_code(task), "checkRunStatus": worst,
        "totalResourcesCount": max((d.total_resources_count for d in details), default=0),
        "nonCompliantResourcesCount": sum(d.non_compliant_resources_count for d in details),
        "failedResourcesCount": max((d.failed_resources_count for d in details), default=0),
        "notCoveredResourcesCount": max((d.not_covered_resources_count for d in details), default=0),
        "message": next((d.message for d in details if d.message), None),
        "checks": checks,
        "findings": [{"checkName": f.check_name, "certificateId": f.certificate_id,
                      "reasonCode": f.reason_for_non_compliance_code,
                      "things": f.non_compliant_resource.additional_info.get("things", "")}
                     for f in findings[:NOTIFIED_FINDINGS]],
    })


def notify(topic_arn: str, report: dict[str, Any], title: str) -> None:
    """Publish ``report`` (a :func:`summary`, or a failure without a task); a topic that cannot
    be published to is said in the report (``notificationError``), since the audit itself is
    done: raising would stop the other regions, or have the fan-out audit the region again."""
    outcome = report.get("errorCode") or report.get("checkRunStatus") or report.get("taskStatus")
    subject = f"{title}: {report.get('nonCompliantResourcesCount', 0)} non-compliant, {outcome}"
    try:
        sns = AwsTarget(region=_region_of_arn(topic_arn)).client("sns")
        sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=json.dumps(report, indent=2))
    except AWS_ERRORS as exc:
        report["notificationError"] = safe_value(f"sns:Publish to {topic_arn}: {aws_error_code(exc)}: "
                                                 f"{aws_error_message(exc)}")


def _to_securityhub(target: AwsTarget, account_id: str, task: AuditTask, findings: Sequence[AuditFinding],
                    errors: Sequence[ResourceError]) -> SyncResult:
    """Import the audit's findings, carry suppressions over and archive the ones it shows resolved
    (:func:`~devicedefender_audit.exports.securityhub_sync.sync_audit`, as ``export --to-securityhub``)."""
    from devicedefender_audit.exports.asff import AsffContext, region_partition
    from devicedefender_audit.exports.securityhub_sync import sync_audit

    region = target.region_name or ""
    context = AsffContext(account_id=account_id, region=region, partition=region_partition(region))
    return sync_audit(target.client("securityhub"), task, findings, errors, context)


def configured_checks(store: Store) -> list[str]:
    """The checks an audit of this partition runs: those enabled in its account audit
    configuration when one was stored (the API's ``UpdateAccountAuditConfiguration`` on this
    store), else every check."""
    from devicedefender_audit.service.configuration import CONFIGURATION_KEY, CONFIGURATION_KIND, enabled_checks

    if store.get_record(CONFIGURATION_KIND, CONFIGURATION_KEY) is None:
        return list(AUDIT_CHECKS)
    enabled = enabled_checks(store)
    return [name for name in AUDIT_CHECKS if name in enabled]


def _failure(region: str, code: str, message: str, task_id: str | None = None) -> dict[str, Any]:
    return safe_value({"taskId": task_id, "region": region, "taskStatus": "FAILED", "exitCode": EXIT_FAILED,
                       "errorCode": code, "message": message, "findings": []})


def _open_partition(settings: AuditSettings, account_id: str, region: str) -> tuple[str, Store]:
    """The region's partition of the store; a DynamoDB table is reached in the function's own region."""
    location = partition_location(settings.store, account_id, region)
    return location, open_store(location, AwsTarget() if location.startswith("dynamodb:") else None)


def _reported(task: AuditTask, store: Store, target: AwsTarget, account_id: str,
              settings: AuditSettings, budget: TimeBudget | None) -> dict[str, Any]:
    """One finished audit's summary, notified when it found something or could not check
    everything, its findings then imported into Security Hub when asked (the alert goes first:
    a sync that runs out of the function's time never holds it back). A sync that failed (a role
    without a permission it needs) is notified too, even after a clean audit: a scheduled
    invocation's result is read by no one, so Security Hub would otherwise go stale in silence.
    Once ``budget`` is spent the sync is skipped (``securityHub.skipped``): it reads every active
    finding of the product, and the reserve is for the notifications of what was not done."""
    findings = list(store.findings(task.task_id))
    report = summary(task, findings)
    title = f"devicedefender-audit {account_id} {task.region}"
    if settings.sns_topic_arn and report["exitCode"] != EXIT_OK:
        notify(settings.sns_topic_arn, report, title)
    if settings.to_securityhub and budget is not None and budget.spent():
        report["securityHub"] = {"skipped": "the function's time ran out; the next audit's sync imports "
                                            "its findings and archives what it resolved"}
    elif settings.to_securityhub:  # also with no findings: the ones this audit resolved are archived
        sync = _to_securityhub(target, account_id, task, findings, list(store.errors(task.task_id)))
        report["securityHub"] = sync.to_json()
        if settings.sns_topic_arn and sync.failed:
            notify(settings.sns_topic_arn, report, f"{title}: Security Hub sync failed")
    return report


def audit_region(region: str, account_id: str, detectors: Sequence[Detector], settings: AuditSettings,
                 budget: TimeBudget | None = None) -> dict[str, Any]:
    """One full audit of ``region`` in its store partition, with the checks it is configured for,
    stopped (``CANCELED``) when ``budget`` is spent; a region that could not be audited is a report
    with ``errorCode``, notified."""
    try:
        location, store = _open_partition(settings, account_id, region)
    except StoreError as exc:
        report = _failure(region, "STORE_ERROR", str(exc))
    else:
        report = _audit_partition(region, account_id, store, location, detectors, settings, budget)
        report["store"] = location
    if "errorCode" in report:
        _notify_failure(settings, account_id, region, report)
    return report


def _audit_partition(region: str, account_id: str, store: Store, location: str, detectors: Sequence[Detector],
                     settings: AuditSettings, budget: TimeBudget | None) -> dict[str, Any]:
    task_id = None
    try:
        names = configured_checks(store)
        if not names:
            return _failure(region, "NO_CHECKS_ENABLED", f"the account audit configuration in {location} enables "
                            "no check (UpdateAccountAuditConfiguration)")
        target = AwsTarget(region=region)
        audit = Audit(target.client("iot"), store, detectors, workers=settings.workers, region=region,
                      checks=make_checks(names, detectors), budget=budget)
        audit.task.account = account_id
        task_id = audit.task.task_id
        return _reported(audit.run(), store, target, account_id, settings, budget)
    except Exception as exc:  # noqa: BLE001 - one region's failure must not keep the others from being audited
        return _failure(region, *account_region_failure(exc), task_id)
    finally:
        store.close()


def run_due_region(region: str, account_id: str, detectors: Detectors, settings: AuditSettings,
                   now: datetime | None = None, budget: TimeBudget | None = None) -> dict[str, Any]:
    """Start the scheduled audits of ``region``'s partition that are due (at ``now``, default the
    clock), each reported as a full audit is; schedules that could not start are notified, those
    left once ``budget`` was spent are reported (``deferredSchedules``) and start at the next run."""
    from devicedefender_audit.service.context import ServiceContext
    from devicedefender_audit.service.scheduled import run_due

    result: dict[str, Any] = {"region": region, "startedTasks": [], "failedSchedules": [], "deferredSchedules": [],
                              "audits": []}
    try:
        location, store = _open_partition(settings, account_id, region)
    except StoreError as exc:
        result.update(_failure(region, "STORE_ERROR", str(exc)))
    else:
        result["store"] = location
        target = AwsTarget(region=region)
        ctx = ServiceContext(store=store, iot_client=lambda: target.client("iot"), detectors=detectors,
                             region=region, account_id=account_id, sns_client=lambda: target.client("sns"),
                             budget=budget)
        def report(started: dict[str, Any]) -> None:  # each audit as it ends, its sync in its own time
            task = store.get_task(started["taskId"])
            if task is not None:
                result["audits"].append(_reported(task, store, target, account_id, settings, budget))

        try:
            due = run_due(ctx, now, on_started=report)
            result["startedTasks"] = [{**s, "slot": s["slot"].isoformat()} for s in due["startedTasks"]]
            result["failedSchedules"] = due["failedSchedules"]
            result["deferredSchedules"] = [{**s, "slot": s["slot"].isoformat()} for s in due["deferredSchedules"]]
        except Exception as exc:  # noqa: BLE001 - one region's failure must not keep the others from running
            result.update(_failure(region, *account_region_failure(exc)))
        finally:
            store.close()
    if result["failedSchedules"] and "errorCode" not in result:
        result["errorCode"] = "SCHEDULED_AUDITS_NOT_STARTED"
        result["message"] = "; ".join(f"{f['scheduledAuditName']}: {f['message']}" for f in result["failedSchedules"])
    if result.get("errorCode"):
        _notify_failure(settings, account_id, region, result)
    return safe_value(result)


def _notify_failure(settings: AuditSettings, account_id: str, region: str, report: dict[str, Any]) -> None:
    if settings.sns_topic_arn:
        notify(settings.sns_topic_arn, report, f"devicedefender-audit {account_id} {region}")


def _moment(value: Any) -> datetime:
    from devicedefender_audit.service.context import as_utc
    from devicedefender_audit.service.errors import InvalidRequest

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"now is ISO 8601 text or epoch seconds, not {value!r}")  # noqa: TRY004 - a bad payload: ValueError
    try:
        return as_utc(value)
    except InvalidRequest as exc:
        raise ValueError(f"now: {exc.message}") from exc
    except (OverflowError, ValueError, OSError) as exc:
        raise ValueError(f"now: {value!r} is not a time ({exc})") from exc


def handle(event: Mapping[str, Any], env: Mapping[str, str], detectors: Detectors,
           remaining_s: Callable[[], float] | None = None) -> dict[str, Any]:
    """One invocation: ``{"audits": [report per region]}`` for a full audit (the default action),
    ``{"runDue": [result per region]}`` for ``{"action": "run-due"}``, in the configured order.

    ``remaining_s`` is the time left before the function is killed. The work stops
    :data:`~devicedefender_audit.time_budget.RESERVE_S` before that, recorded: the running audit
    ends ``CANCELED``, and the regions not reached are reported ``NOT_STARTED`` and notified once
    (with the scheduled audits deferred). Regions go in the order of their last audit's start,
    oldest first, so the ones not reached go first the next time."""
    if not isinstance(event, Mapping):
        raise ValueError(f"the payload is a JSON object ({{}} or {{\"action\": \"run-due\"}}), not {event!r}")  # noqa: TRY004
    unknown = sorted(set(event) - set(PAYLOAD_KEYS))
    if unknown:
        raise ValueError(f"unknown payload member(s) {', '.join(map(repr, unknown))}: a payload has "
                         f"{', '.join(PAYLOAD_KEYS)}")
    action = event.get(ACTION) or AUDIT
    if action not in (AUDIT, RUN_DUE):
        raise ValueError(f"unknown action {action!r}: the payload's action is {AUDIT!r} (default) or {RUN_DUE!r}")
    if "now" in event and action != RUN_DUE:
        raise ValueError("now applies to the run-due action only")
    now = _moment(event["now"]) if event.get("now") is not None else None
    settings = AuditSettings.from_env(env, event)
    account_id = AwsTarget().client("sts").get_caller_identity()["Account"]
    budget = (TimeBudget.from_remaining(remaining_s(), cpu=TimeBudget.lambda_cpu(env))
              if remaining_s is not None else None)
    results: dict[str, dict[str, Any]] = {}
    for region in _least_recently_audited(settings, account_id, scheduled=action == RUN_DUE):
        if budget is not None and budget.spent():
            results[region] = _not_started(region, budget, action)
        elif action == RUN_DUE:
            results[region] = run_due_region(region, account_id, detectors, settings, now, budget)
        else:
            results[region] = audit_region(region, account_id, detectors(), settings, budget)
    if settings.sns_topic_arn and (undone := _left_undone(results)):
        notify(settings.sns_topic_arn, undone, f"devicedefender-audit {account_id}")
    ordered = [results[region] for region in settings.regions]  # the configured order, whatever ran first
    return {"runDue": ordered} if action == RUN_DUE else {"audits": ordered}


def _left_undone(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """One notification of what the function's time left undone: the regions not started, the
    scheduled audits deferred in regions it reached (each with its slot) and the audits whose
    Security Hub sync was skipped; None when nothing was."""
    left = [region for region, result in results.items() if result.get("errorCode") == NOT_STARTED]
    deferred = [{"region": region, **schedule} for region, result in results.items()
                if result.get("errorCode") != NOT_STARTED for schedule in result.get("deferredSchedules", [])]
    unsynced = [{"region": region, "taskId": report.get("taskId")} for region, result in results.items()
                for report in result.get("audits", [result])
                if isinstance(report.get("securityHub"), dict) and "skipped" in report["securityHub"]]
    said = []
    if left:
        said.append(f"{len(left)} of {len(results)} regions not started ({', '.join(left)}); they go first next time")
    if deferred:
        names = ", ".join(f"{d['scheduledAuditName']} in {d['region']}" for d in deferred)
        said.append(f"{len(deferred)} scheduled audit(s) deferred ({names}); they start at the next run")
    if unsynced:
        said.append(f"the Security Hub sync of {len(unsynced)} audit(s) skipped "
                    f"({', '.join(u['region'] for u in unsynced)}); the next audit's sync catches up")
    if not said:
        return None
    return {"errorCode": TIME_LIMIT_REACHED, "regionsNotStarted": left, "deferredSchedules": deferred,
            "securityHubSyncsSkipped": unsynced, "message": f"the function's time ran out: {'; '.join(said)}"}


def _not_started(region: str, budget: TimeBudget, action: str) -> dict[str, Any]:
    report = _failure(region, NOT_STARTED, f"not started: {budget.why}")
    if action == RUN_DUE:  # its due schedules, unclaimed, start at the next run
        report.update({"startedTasks": [], "failedSchedules": [], "deferredSchedules": [], "audits": []})
    return report


def _least_recently_audited(settings: AuditSettings, account_id: str, scheduled: bool) -> list[str]:
    """The regions, those whose last audit of this kind (scheduled or full) started longest ago
    first; never: first of all, in the configured order. The partition's tasks are read newest
    first down to the newest of that kind, however many of the other kind came after it.
    When the function's time runs out, the regions it did not reach go first the next time, and a
    region whose audit the time stopped goes last: every region is audited in turn, even beside
    one that never fits (ordered by last *completed* audit, that one would go first forever)."""
    def last_started(region: str) -> datetime:
        try:
            _, store = _open_partition(settings, account_id, region)
        except StoreError:
            return _NEVER  # audit_region reports it
        try:
            return next((t.task_start_time for t in store.newest_tasks() if (t.task_type == SCHEDULED) == scheduled),
                        _NEVER)
        except Exception:  # noqa: BLE001 - an unreadable partition only loses its place in the order
            return _NEVER
        finally:
            store.close()

    return sorted(settings.regions, key=last_started)
