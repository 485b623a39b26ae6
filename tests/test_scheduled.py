"""Scheduled audits: day rules per frequency, ``run-due`` and the scheduler of ``serve``, with a clock the
test moves."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from conftest import DATA, register
from service_helpers import call
from test_service_api import Clock, enable

from devicedefender_audit.cli import main
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import InvalidRequest, ResourceAlreadyExists, ServiceContext, scheduled
from devicedefender_audit.service.configuration import CONFIGURATION_KEY, CONFIGURATION_KIND
from devicedefender_audit.service.scheduled import RUN_KIND, Scheduler, latest_slot, run_due
from devicedefender_audit.store import StoreError, open_store
from devicedefender_audit.time_budget import RESERVE_S, TimeBudget

UTC = timezone.utc
CREATED = datetime(2024, 1, 10, 15, 0, tzinfo=UTC)  # a Wednesday


def slot(now: datetime, **schedule: str) -> datetime | None:
    return latest_slot({**schedule, "createdAt": CREATED.timestamp()}, now)


def test_slots_per_frequency():
    at = datetime(2024, 3, 20, 12, 0, tzinfo=UTC)  # a Wednesday
    assert slot(at, frequency="DAILY") == datetime(2024, 3, 20, tzinfo=UTC)
    assert slot(at, frequency="WEEKLY", dayOfWeek="MON") == datetime(2024, 3, 18, tzinfo=UTC)
    # BIWEEKLY counts from the first Monday after creation, 2024-01-15: every 14 days from there
    assert slot(at, frequency="BIWEEKLY", dayOfWeek="MON") == datetime(2024, 3, 11, tzinfo=UTC)
    assert slot(at, frequency="MONTHLY", dayOfMonth="15") == datetime(2024, 3, 15, tzinfo=UTC)
    assert slot(datetime(2024, 3, 2, tzinfo=UTC), frequency="MONTHLY", dayOfMonth="LAST") == datetime(
        2024, 2, 29, tzinfo=UTC)
    assert slot(datetime(2024, 5, 1, tzinfo=UTC), frequency="MONTHLY", dayOfMonth="31") == datetime(
        2024, 4, 30, tzinfo=UTC)  # April lacks a 31st: its last day
    assert slot(CREATED + timedelta(hours=1), frequency="DAILY") is None  # nothing before creation
    assert slot(datetime(2024, 1, 11, 0, 0, tzinfo=UTC), frequency="DAILY") == datetime(2024, 1, 11, tzinfo=UTC)


@pytest.fixture
def ctx(iot, tmp_path):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    store = open_store(tmp_path / "audits.sqlite3")
    clock = Clock()
    clock.now = CREATED
    context = ServiceContext(store=store, iot_client=lambda: iot, detectors=lambda: [RocaDetector()], clock=clock)
    enable(context)
    yield context
    store.close()


def test_run_due_starts_each_slot_once_as_a_scheduled_task(ctx):
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    with pytest.raises(ResourceAlreadyExists):
        call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    assert run_due(ctx)["startedTasks"] == []  # created after today's slot
    ctx.clock.now = CREATED + timedelta(days=3)  # two slots missed: one run catches up
    started = run_due(ctx)["startedTasks"]
    assert [s["scheduledAuditName"] for s in started] == ["daily"]
    assert run_due(ctx)["startedTasks"] == []  # the slot has run
    task = call(ctx, "DescribeAuditTask", taskId=started[0]["taskId"])
    assert task["taskType"] == "SCHEDULED_AUDIT_TASK" and task["scheduledAuditName"] == "daily"
    assert task["taskStartTime"] == ctx.clock.now
    window = {"startTime": CREATED, "endTime": ctx.clock.now}
    assert call(ctx, "ListAuditTasks", taskType="SCHEDULED_AUDIT_TASK", **window)["tasks"][0]["taskId"] == \
        started[0]["taskId"]
    ctx.clock.now += timedelta(days=1)
    assert len(run_due(ctx)["startedTasks"]) == 1


def test_run_due_leaves_unclaimed_the_slots_its_budget_did_not_reach(ctx):
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    ctx.clock.now = CREATED + timedelta(days=1)
    ctx.budget = TimeBudget.from_remaining(RESERVE_S - 1)  # spent already

    deferred = run_due(ctx)
    assert deferred["startedTasks"] == [] and [d["scheduledAuditName"] for d in deferred["deferredSchedules"]] == [
        "daily"]
    assert ctx.store.records(RUN_KIND) == []  # the slot is not taken

    ctx.budget = None
    [started] = run_due(ctx)["startedTasks"]
    assert started["slot"] == deferred["deferredSchedules"][0]["slot"]


def test_a_slot_whose_audit_the_budget_stopped_runs_again_at_the_next_run(ctx, monkeypatch):
    """Claimed, then CANCELED by the time budget: the slot is released (deferred, naming the
    canceled task), so a monthly schedule is not skipped for a month."""
    from devicedefender_audit import audit, time_budget

    call(ctx, "CreateScheduledAudit", scheduledAuditName="monthly", frequency="MONTHLY", dayOfMonth="11",
         targetCheckNames=[CHECK_NAME])
    ctx.clock.now = CREATED + timedelta(days=1, hours=1)
    moment = [1000.0]
    monkeypatch.setattr(time_budget.time, "monotonic", lambda: moment[0])
    ctx.budget = TimeBudget.from_remaining(900)
    check = audit.Audit._check

    def the_time_runs_out(self, *args, **kwargs):
        moment[0] += 900
        return check(self, *args, **kwargs)

    monkeypatch.setattr(audit.Audit, "_check", the_time_runs_out)
    first = run_due(ctx)
    [canceled] = first["startedTasks"]
    [deferred] = first["deferredSchedules"]
    assert ctx.store.get_task(canceled["taskId"]).task_status.value == "CANCELED"
    assert (deferred["scheduledAuditName"], deferred["canceledTaskId"]) == ("monthly", canceled["taskId"])

    monkeypatch.undo()
    ctx.budget, ctx.clock.now = None, ctx.clock.now + timedelta(hours=1)
    [again] = run_due(ctx)["startedTasks"]
    assert again["slot"] == canceled["slot"] and ctx.store.get_task(again["taskId"]).task_status.value == "COMPLETED"
    assert run_due(ctx)["startedTasks"] == []  # completed: the slot stays claimed


def test_a_slot_whose_audit_was_canceled_on_request_stays_claimed(ctx, monkeypatch):
    """CancelAuditTask is the user's word: that slot is not run again."""
    from devicedefender_audit import audit

    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    ctx.clock.now = CREATED + timedelta(days=1)
    ctx.budget = TimeBudget.from_remaining(900)
    check = audit.Audit._check

    def canceled_meanwhile(self, *args, **kwargs):
        call(ctx, "CancelAuditTask", taskId=self.task.task_id)
        return check(self, *args, **kwargs)

    monkeypatch.setattr(audit.Audit, "_check", canceled_meanwhile)
    first = run_due(ctx)
    assert ctx.store.get_task(first["startedTasks"][0]["taskId"]).task_status.value == "CANCELED"
    assert first["deferredSchedules"] == [] and run_due(ctx)["startedTasks"] == []


def disable_under_schedules(ctx: ServiceContext) -> None:
    """Disable the check behind the API's back: UpdateAccountAuditConfiguration refuses to disable a
    check a scheduled audit uses (as AWS does), but a store can still hold that state (written
    before the rule, or by hand), and the scheduler must report it, not stop."""
    config = ctx.store.get_record(CONFIGURATION_KIND, CONFIGURATION_KEY)
    config["auditCheckConfigurations"][CHECK_NAME] = {"enabled": False}
    ctx.store.put_record(CONFIGURATION_KIND, CONFIGURATION_KEY, config)


def test_disabled_check_is_reported_not_raised(ctx):
    call(ctx, "CreateScheduledAudit", scheduledAuditName="weekly", frequency="WEEKLY", dayOfWeek="FRI",
         targetCheckNames=[CHECK_NAME])
    disable_under_schedules(ctx)
    ctx.clock.now = CREATED + timedelta(days=2)  # Friday
    result = run_due(ctx)
    assert result["startedTasks"] == [] and result["failedSchedules"][0]["errorCode"] == "InvalidRequestException"


def test_timing_rules(ctx):
    base = {"scheduledAuditName": "s", "targetCheckNames": [CHECK_NAME]}
    for bad, match in (({"frequency": "WEEKLY"}, "needs dayOfWeek"),
                       ({"frequency": "MONTHLY"}, "needs dayOfMonth"),
                       ({"frequency": "MONTHLY", "dayOfMonth": "32"}, "1..31|pattern"),
                       ({"frequency": "DAILY", "dayOfWeek": "MON"}, "WEEKLY and BIWEEKLY audits only"),
                       ({"frequency": "WEEKLY", "dayOfWeek": "MON", "dayOfMonth": "1"}, "MONTHLY audits only")):
        with pytest.raises(InvalidRequest, match=match):
            call(ctx, "CreateScheduledAudit", **base, **bad)
    with pytest.raises(InvalidRequest, match="DayOfWeek|SUN"):
        call(ctx, "CreateScheduledAudit", **base, frequency="WEEKLY", dayOfWeek="MONDAY")


def test_run_due_command_with_a_given_now(ctx, capsys, monkeypatch):
    monkeypatch.setenv("DDA_STORE", ctx.store.path)
    assert main(["create-scheduled-audit", "--scheduled-audit-name", "monthly", "--frequency", "MONTHLY",
                 "--day-of-month", "LAST", "--target-check-names", CHECK_NAME]) == 0
    assert json.loads(capsys.readouterr().out)["scheduledAuditArn"].endswith(":scheduledaudit/monthly")
    assert main(["run-due", "--now", "2099-01-31T00:30:00Z"]) == 0
    started = json.loads(capsys.readouterr().out)["startedTasks"]
    assert [(s["scheduledAuditName"], s["slot"]) for s in started] == [("monthly", "2099-01-31T00:00:00+00:00")]


@pytest.fixture
def scheduler(ctx):
    """The scheduler ``serve`` runs, over the fixture's context and clock (audits in its thread)."""
    worker = replace(ctx, open_worker_store=lambda: open_store(ctx.store.path))
    running = Scheduler(worker, interval=3600)  # the test moves the clock and checks at once
    running.start()
    running.check_now()  # its first check is done: none runs late against a clock the test moved
    yield running
    running.stop()
    assert not running.running


def test_the_scheduler_starts_what_falls_due_as_its_clock_moves(ctx, scheduler):
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    assert scheduler.check_now()["startedTasks"] == []
    ctx.clock.now = CREATED + timedelta(days=5)  # the server was down for four slots: one run, not four
    [started] = scheduler.check_now()["startedTasks"]
    assert started["slot"] == datetime(2024, 1, 15, tzinfo=UTC)
    assert call(ctx, "DescribeAuditTask", taskId=started["taskId"])["taskStatus"] == "COMPLETED"
    assert scheduler.check_now()["startedTasks"] == []
    ctx.clock.now += timedelta(days=1)
    assert len(scheduler.check_now()["startedTasks"]) == 1


def test_a_failing_schedule_is_reported_and_the_scheduler_goes_on(ctx, scheduler, caplog, monkeypatch):
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    disable_under_schedules(ctx)
    ctx.clock.now = CREATED + timedelta(days=1)
    with caplog.at_level(logging.WARNING, logger="devicedefender_audit.service.scheduled"):
        [failed] = scheduler.check_now()["failedSchedules"]
    assert failed["scheduledAuditName"] == "daily" and "could not start" in caplog.text
    assert scheduler.check_now()["failedSchedules"] == []  # that slot is spent, not retried each interval

    def store_failure(_ctx):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(scheduled, "run_due", store_failure)
    assert scheduler.check_now() == {"startedTasks": [], "failedSchedules": [], "deferredSchedules": []}
    assert scheduler.running and "could not check what is due" in caplog.text
    monkeypatch.undo()
    call(ctx, "UpdateAccountAuditConfiguration", auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    ctx.clock.now += timedelta(days=1)
    assert len(scheduler.check_now()["startedTasks"]) == 1


def test_a_store_that_cannot_open_for_a_moment_does_not_end_the_scheduler(ctx, caplog):
    """The scheduler's own connection is opened in its thread; a failure there (a busy or
    unreachable store) is logged and tried again at the next check, not the end of the thread."""
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    failures = [StoreError("store is locked")]

    def open_worker_store():
        if failures:
            raise failures.pop()
        return open_store(ctx.store.path)

    running = Scheduler(replace(ctx, open_worker_store=open_worker_store), interval=3600)
    with caplog.at_level(logging.ERROR, logger="devicedefender_audit.service.scheduled"):
        running.start()
        try:
            assert running.check_now() == {"startedTasks": [], "failedSchedules": [], "deferredSchedules": []}
            ctx.clock.now = CREATED + timedelta(days=1)
            assert running.running and "could not open the store" in caplog.text
            assert len(running.check_now()["startedTasks"]) == 1
        finally:
            running.stop()
