"""Scheduled audits: create, describe, update, delete, list, and :func:`run_due`, the scheduler.

Device Defender picks the time of day of a scheduled audit; this service runs it at 00:00 UTC
on each of its days: every day (DAILY), on ``dayOfWeek`` (WEEKLY), on every other ``dayOfWeek``
counted from the first one after the schedule was created (BIWEEKLY), on ``dayOfMonth`` (MONTHLY;
``LAST``, or a day the month lacks, means the month's last day). Only slots after the schedule's
creation count. :func:`run_due` starts, as ``SCHEDULED_AUDIT_TASK`` with ``scheduledAuditName``,
every schedule whose latest slot has not run yet (missed slots run once, not once each); a slot
is claimed in the store before its audit starts, so two schedulers never run it twice. An
account has at most :data:`MAX_SCHEDULED_AUDITS` schedules (Device Defender's quota, not
adjustable): one more is ``LimitExceededException``.

Two fronts call :func:`run_due`: the ``run-due`` command (cron, EventBridge) and the
:class:`Scheduler` thread inside ``serve``. The scheduler checks when the server starts and
then every ``interval`` seconds; what is due is decided by the context's clock, never by
counting ticks, so a server stopped over several slots runs each schedule once when it comes
back (its latest slot), not a burst, and a test moves the clock to make a schedule due. A
schedule that cannot start (its check disabled since, ...) is reported in ``failedSchedules``
and logged; its slot stays consumed, so it is not retried every interval. Nothing a schedule or
an audit does stops the scheduler or the server.
"""

from __future__ import annotations

import calendar
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from devicedefender_audit.models import AuditTaskStatus
from devicedefender_audit.service.configuration import SCHEDULED_AUDIT_KIND, require_enabled
from devicedefender_audit.service.context import ServiceContext, drop_none, page
from devicedefender_audit.service.errors import (
    InvalidRequest,
    LimitExceeded,
    ResourceAlreadyExists,
    ResourceNotFound,
    ServiceError,
)
from devicedefender_audit.service.shapes import check_request, enum_values
from devicedefender_audit.service.tasks import SCHEDULED, start_audit
from devicedefender_audit.store import Store

RUN_KIND = "scheduled_audit_run"
#: Device Defender's "Scheduled audits" quota (L-0D30EFBA): 5, not adjustable.
MAX_SCHEDULED_AUDITS = 5
log = logging.getLogger(__name__)
_WEEKDAYS = enum_values("DayOfWeek")  # SUN..SAT
_PUBLIC = ("frequency", "dayOfMonth", "dayOfWeek", "targetCheckNames", "scheduledAuditName", "scheduledAuditArn")


def _check_timing(body: dict) -> None:
    frequency, day_of_week, day_of_month = body["frequency"], body.get("dayOfWeek"), body.get("dayOfMonth")
    if frequency in ("WEEKLY", "BIWEEKLY") and not day_of_week:
        raise InvalidRequest(f"a {frequency} audit needs dayOfWeek")
    if frequency != "MONTHLY" and day_of_month:
        raise InvalidRequest(f"dayOfMonth applies to MONTHLY audits only, not {frequency}")
    if frequency not in ("WEEKLY", "BIWEEKLY") and day_of_week:
        raise InvalidRequest(f"dayOfWeek applies to WEEKLY and BIWEEKLY audits only, not {frequency}")
    if frequency == "MONTHLY":
        if not day_of_month:
            raise InvalidRequest("a MONTHLY audit needs dayOfMonth")
        if day_of_month != "LAST" and not (day_of_month.isdigit() and 1 <= int(day_of_month) <= 31):
            raise InvalidRequest(f"dayOfMonth must be 1..31 or LAST, not {day_of_month!r}")


def _stored(ctx: ServiceContext, name: str) -> dict:
    body = ctx.store.get_record(SCHEDULED_AUDIT_KIND, name)
    if body is None:
        raise ResourceNotFound(f"no scheduled audit {name}")
    return body


def create_scheduled_audit(ctx: ServiceContext, **request: Any) -> dict:
    check_request("CreateScheduledAudit", request)
    name = request["scheduledAuditName"]
    require_enabled(ctx.store, list(request["targetCheckNames"]))
    body = drop_none({
        "frequency": request["frequency"],
        "dayOfMonth": request.get("dayOfMonth"),
        "dayOfWeek": request.get("dayOfWeek"),
        "targetCheckNames": list(request["targetCheckNames"]),
        "scheduledAuditName": name,
        "scheduledAuditArn": ctx.arn(f"scheduledaudit/{name}"),
        "tags": request.get("tags"),
        "createdAt": ctx.now().timestamp(),
    })
    _check_timing(body)
    if ctx.store.get_record(SCHEDULED_AUDIT_KIND, name) is not None:
        raise ResourceAlreadyExists(f"scheduled audit {name} exists")
    if len(ctx.store.records(SCHEDULED_AUDIT_KIND)) >= MAX_SCHEDULED_AUDITS:
        raise LimitExceeded(f"the account has {MAX_SCHEDULED_AUDITS} scheduled audits, Device Defender's limit: "
                            "delete one first, or add checks to one (UpdateScheduledAudit)")
    if not ctx.store.insert_record(SCHEDULED_AUDIT_KIND, name, body):
        raise ResourceAlreadyExists(f"scheduled audit {name} exists")
    return {"scheduledAuditArn": body["scheduledAuditArn"]}


def describe_scheduled_audit(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DescribeScheduledAudit", request)
    body = _stored(ctx, request["scheduledAuditName"])
    return {k: body[k] for k in _PUBLIC if k in body}


def update_scheduled_audit(ctx: ServiceContext, **request: Any) -> dict:
    """Changing the frequency drops the day that no longer applies (WEEKLY -> MONTHLY, ...)."""
    check_request("UpdateScheduledAudit", request)
    body = _stored(ctx, request["scheduledAuditName"])
    if "targetCheckNames" in request:
        require_enabled(ctx.store, list(request["targetCheckNames"]))
    if "frequency" in request and request["frequency"] != body["frequency"]:
        body.pop("dayOfWeek", None)
        body.pop("dayOfMonth", None)
    body.update({k: request[k] for k in ("frequency", "dayOfMonth", "dayOfWeek", "targetCheckNames") if k in request})
    _check_timing(body)
    ctx.store.put_record(SCHEDULED_AUDIT_KIND, body["scheduledAuditName"], body)
    return {"scheduledAuditArn": body["scheduledAuditArn"]}


def delete_scheduled_audit(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DeleteScheduledAudit", request)
    if not ctx.store.delete_record(SCHEDULED_AUDIT_KIND, request["scheduledAuditName"]):
        raise ResourceNotFound(f"no scheduled audit {request['scheduledAuditName']}")
    return {}


def list_scheduled_audits(ctx: ServiceContext, **request: Any) -> dict:
    check_request("ListScheduledAudits", request)
    bodies = [body for _, body in ctx.store.records(SCHEDULED_AUDIT_KIND)]
    result = page(bodies, "ListScheduledAudits", request)
    return drop_none({
        "scheduledAudits": [
            {k: b[k] for k in ("scheduledAuditName", "scheduledAuditArn", "frequency", "dayOfMonth", "dayOfWeek")
             if k in b}
            for b in result["items"]
        ],
        "nextToken": result.get("nextToken"),
    })


def _weekday(day: date) -> str:
    return _WEEKDAYS[(day.weekday() + 1) % 7]  # Python's Monday=0; the model's list starts on Sunday


def _runs_on(body: dict, day: date, created: date) -> bool:
    frequency = body["frequency"]
    if frequency == "DAILY":
        return True
    if frequency in ("WEEKLY", "BIWEEKLY"):
        if _weekday(day) != body["dayOfWeek"]:
            return False
        if frequency == "WEEKLY":
            return True
        first = created + timedelta(days=(_WEEKDAYS.index(body["dayOfWeek"]) - _WEEKDAYS.index(_weekday(created))) % 7)
        return (day - first).days % 14 == 0
    last = calendar.monthrange(day.year, day.month)[1]
    wanted = last if body["dayOfMonth"] == "LAST" else min(int(body["dayOfMonth"]), last)
    return day.day == wanted


def latest_slot(body: dict, now: datetime) -> datetime | None:
    """The most recent run time at or before ``now`` and after the schedule's creation."""
    created = datetime.fromtimestamp(body["createdAt"], timezone.utc)
    day = now.astimezone(timezone.utc).date()
    for _ in range(62):  # every frequency runs at least once in any 62 days
        slot = datetime.combine(day, time(0, 0), timezone.utc)
        if slot <= created:
            return None
        if slot <= now and _runs_on(body, day, created.date()):
            return slot
        day -= timedelta(days=1)
    return None


def run_due(ctx: ServiceContext, now: datetime | None = None,
            on_started: Callable[[dict], None] | None = None) -> dict:
    """Start every scheduled audit that is due at ``now`` (default ``ctx.now()``); what started,
    what could not, and what was left for the next run because ``ctx.budget`` was spent
    (``deferredSchedules``: their slots are not claimed, so the next run starts them; a slot whose
    audit the budget stopped is released again, with ``canceledTaskId``).

    ``now`` (``run-due --now``, the Lambda's ``"now"``) only chooses the slots: the audits run at
    ``ctx.now()`` and are recorded so, with the suppressions in force then, so a test with a future
    moment never becomes the "latest audit" until that date.

    ``on_started`` is called with each started entry as soon as its audit returns (at once, run
    inline as the Lambda runs them: reported before the next one can spend the time).

    Not an API operation (Device Defender schedules internally): ``run-due`` for cron/EventBridge.
    """
    moment = now or ctx.now()
    started, failed, deferred = [], [], []
    for name, body in ctx.store.records(SCHEDULED_AUDIT_KIND):
        slot = latest_slot(body, moment)
        if slot is None:
            continue
        run_key = f"{name}@{slot.isoformat()}"
        if ctx.budget is not None and ctx.budget.spent():
            if ctx.store.get_record(RUN_KIND, run_key) is None:
                deferred.append({"scheduledAuditName": name, "slot": slot})
            continue
        if not ctx.store.insert_record(RUN_KIND, run_key, {"scheduledAuditName": name, "slot": slot.timestamp()}):
            continue
        try:
            task_id = start_audit(ctx, body["targetCheckNames"], SCHEDULED, name)
        except ServiceError as exc:
            failed.append({"scheduledAuditName": name, "errorCode": exc.code, "message": exc.message})
            continue
        except Exception as exc:  # noqa: BLE001 - one schedule's failure must not keep the others from starting
            failed.append({"scheduledAuditName": name, "errorCode": "InternalFailure",
                           "message": f"{type(exc).__name__}: {exc}"})
            continue
        started.append({"scheduledAuditName": name, "taskId": task_id, "slot": slot})
        if on_started is not None:
            on_started(started[-1])
        if _stopped_by_budget(ctx, task_id):  # the slot is run again, whole, at the next run
            ctx.store.delete_record(RUN_KIND, run_key)
            deferred.append({"scheduledAuditName": name, "slot": slot, "canceledTaskId": task_id})
    return {"startedTasks": started, "failedSchedules": failed, "deferredSchedules": deferred}


def _stopped_by_budget(ctx: ServiceContext, task_id: str) -> bool:
    """The audit (run inline, as the Lambda runs it) ended CANCELED by the time budget: the only
    other way to end CANCELED, CancelAuditTask, leaves its request in the store."""
    if ctx.budget is None or ctx.background:
        return False
    task = ctx.store.get_task(task_id)
    return (task is not None and task.task_status is AuditTaskStatus.CANCELED
            and not ctx.store.cancel_requested(task_id))


def _nothing_started() -> dict:
    """What a check that could not read the store started (the failure itself is logged)."""
    return {"startedTasks": [], "failedSchedules": [], "deferredSchedules": []}


class Scheduler:
    """:func:`run_due` in a background thread, for ``serve``: at start, then every ``interval``
    seconds, or at once after :meth:`check_now`. It works through its own store connection
    (``ctx.open_worker_store``), opened in its thread; audits it starts run as the context
    runs them (in the background for ``serve``, where ``ctx.wait`` waits for them too)."""

    def __init__(self, ctx: ServiceContext, interval: float = 60.0) -> None:
        if ctx.open_worker_store is None:
            raise ValueError("the scheduler needs open_worker_store (its own store connection)")
        if interval <= 0:
            raise ValueError(f"the scheduler's interval must be positive, not {interval}")
        self.ctx = ctx
        self.interval = interval
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._requested = self._checked = 0
        self._last: dict = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="scheduled-audits", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop checking and wait for the thread (audits it started go on: ``ctx.wait``)."""
        self._stop.set()
        with self._done:
            self._done.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_now(self, timeout: float = 30.0) -> dict:
        """Check at once (not waiting for the interval) and return what that check started."""
        with self._done:
            self._requested += 1
            wanted = self._requested
            self._done.notify_all()
            if not self._done.wait_for(lambda: self._checked >= wanted or not self.running, timeout):
                raise TimeoutError(f"the scheduler did not check within {timeout} s")
            if self._checked < wanted:
                raise RuntimeError("the scheduler is not running")
            return self._last

    def _loop(self) -> None:
        store: Store | None = None
        try:
            while not self._stop.is_set():
                if store is None:
                    store = self._open_store()
                with self._done:
                    serving = self._requested
                result = _nothing_started() if store is None else self._check(replace(self.ctx, store=store))
                with self._done:
                    self._checked, self._last = serving, result
                    self._done.notify_all()
                    # Until the interval is up or a request came that this check did not serve.
                    self._done.wait_for(lambda: self._requested > self._checked or self._stop.is_set(),
                                        self.interval)
        finally:
            if store is not None:
                store.close()
            with self._done:
                self._done.notify_all()

    def _open_store(self) -> Store | None:
        """The thread's own store connection; None (logged, tried again at the next check) where it
        cannot be opened now: a store that is busy or unreachable for a moment must not end the
        scheduler for the life of the server. (The context it makes shares the thread list, so
        ``ctx.wait`` covers the audits it starts.)"""
        assert self.ctx.open_worker_store is not None
        try:
            return self.ctx.open_worker_store()
        except Exception:
            log.exception("scheduled audits: could not open the store; trying again at the next check")
            return None

    @staticmethod
    def _check(ctx: ServiceContext) -> dict:
        try:
            result = run_due(ctx)
        except Exception:  # the store failed under us: report it and try again next interval
            log.exception("scheduled audits: could not check what is due")
            return _nothing_started()
        for started in result["startedTasks"]:
            log.info("scheduled audit %s (slot %s) started as task %s", started["scheduledAuditName"],
                     started["slot"].isoformat(), started["taskId"])
        for failed in result["failedSchedules"]:
            log.warning("scheduled audit %s could not start: %s (%s)", failed["scheduledAuditName"],
                        failed["message"], failed["errorCode"])
        return result
