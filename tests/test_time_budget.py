"""The scheduled Lambda's time limit: work stops before it, recorded and notified, and the regions
the function did not reach go first the next time (against moto, with a clock the test moves)."""

from __future__ import annotations

import boto3
import pytest
from conftest import DATA, REGION, register, sns_notifications

from devicedefender_audit import lambda_audit, time_budget
from devicedefender_audit.audit import Audit
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.exit_codes import EXIT_FAILED
from devicedefender_audit.lambda_handlers import scheduled_audit
from devicedefender_audit.models import CHECK_NAME, AuditTaskStatus
from devicedefender_audit.store import open_store
from devicedefender_audit.time_budget import RESERVE_S, TimeBudget

WEST = "eu-west-1"


class Clock:
    """``time.monotonic`` as the budget reads it, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LambdaContext:
    """What the handler reads of Lambda's context object."""

    def __init__(self, remaining_s: float) -> None:
        self.remaining_s = remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_s * 1000)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time_budget.time, "monotonic", clock)
    return clock


@pytest.fixture
def two_regions(monkeypatch, aws, topic_arn, tmp_path) -> dict[str, str]:
    """A ROCA certificate in each of two regions, and the audit function's settings for both."""
    ids = {region: boto3.client("iot", region_name=region).register_certificate_without_ca(
        certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")["certificateId"]
        for region in (REGION, WEST)}
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", f"{REGION},{WEST}"),
                        ("DDA_STORE", str(tmp_path / "lambda.sqlite3")), ("DDA_SNS_TOPIC_ARN", topic_arn)):
        monkeypatch.setenv(name, value)
    return ids


def test_an_audit_whose_budget_is_spent_ends_canceled_and_says_why(iot, clock):
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    budget = TimeBudget.from_remaining(900)
    clock.now += 900 - RESERVE_S  # the moment work must stop
    store = open_store(":memory:")
    task = Audit(iot, store, [RocaDetector()], budget=budget).run()
    assert task.task_status is AuditTaskStatus.CANCELED
    details = task.audit_details[CHECK_NAME]
    assert (details.check_run_status, details.check_compliant) == ("CANCELED", False)
    assert details.message == budget.why and "time limit" in budget.why
    assert store.get_task(task.task_id).task_status is AuditTaskStatus.CANCELED  # recorded, not left IN_PROGRESS


def test_a_budget_spent_before_the_start_audits_nothing_and_notifies_once(two_regions, clock, topic_arn, monkeypatch):
    audited: list[str] = []
    monkeypatch.setattr(lambda_audit, "audit_region", lambda region, *_: audited.append(region))

    reports = scheduled_audit({}, LambdaContext(RESERVE_S - 1))["audits"]

    assert audited == []
    assert [(r["region"], r["errorCode"], r["exitCode"]) for r in reports] == [
        (REGION, "NOT_STARTED", EXIT_FAILED), (WEST, "NOT_STARTED", EXIT_FAILED)]
    [(subject, message)] = sns_notifications(topic_arn)
    assert "TIME_LIMIT_REACHED" in subject and f"2 of 2 regions not started ({REGION}, {WEST})" in message


def test_regions_the_time_did_not_reach_go_first_the_next_time(two_regions, clock, topic_arn, monkeypatch):
    """The budget runs out after one region each time: the two invocations audit one region each,
    so neither region waits for the other to become quick."""
    audit_region = lambda_audit.audit_region

    def one_region_per_invocation(*args, **kwargs):
        report = audit_region(*args, **kwargs)
        clock.now += 900  # that audit took the function's whole time
        return report

    monkeypatch.setattr(lambda_audit, "audit_region", one_region_per_invocation)

    first = scheduled_audit({}, LambdaContext(900))["audits"]
    second = scheduled_audit({}, LambdaContext(900))["audits"]

    # Reported in the configured order, whatever ran first.
    assert [r["region"] for r in first] == [r["region"] for r in second] == [REGION, WEST]
    assert [r.get("errorCode") for r in first] == [None, "NOT_STARTED"]
    assert [r.get("errorCode") for r in second] == ["NOT_STARTED", None]
    assert second[1]["findings"][0]["certificateId"] == two_regions[WEST]
    subjects = [subject for subject, _ in sns_notifications(topic_arn)]
    assert sum("TIME_LIMIT_REACHED" in s for s in subjects) == 2  # each region left out was said


def test_an_audit_stopped_by_the_function_time_is_notified(two_regions, clock, topic_arn, monkeypatch):
    """The budget runs out during the first region's audit: the audit ends CANCELED with the
    reason, its report is notified, and the other region is reported not started."""
    from moto.iot.responses import IoTResponse

    describe = IoTResponse.describe_certificate

    def slow(self):
        clock.now += 900
        return describe(self)

    monkeypatch.setattr(IoTResponse, "describe_certificate", slow)

    east, west = scheduled_audit({}, LambdaContext(900))["audits"]

    assert (east["taskStatus"], east["exitCode"]) == ("CANCELED", EXIT_FAILED)
    assert "time limit" in east["checks"][CHECK_NAME]["message"]
    assert west["errorCode"] == "NOT_STARTED"
    subjects = [subject for subject, _ in sns_notifications(topic_arn)]
    assert any(REGION in s and "CANCELED" in s for s in subjects)


def test_a_region_that_never_fits_does_not_starve_the_others(two_regions, clock, topic_arn, monkeypatch):
    """us-east-1's listing alone takes the function's time, every time: it is canceled each time,
    and the regions go in turn (ordered by last completed audit it would go first forever)."""
    from moto.iot.responses import IoTResponse

    listing = IoTResponse.list_certificates

    def slow_in_east(self):
        if self.region == REGION:
            clock.now += 900
        return listing(self)

    monkeypatch.setattr(IoTResponse, "list_certificates", slow_in_east)
    runs = [scheduled_audit({}, LambdaContext(900))["audits"] for _ in range(3)]
    east = [run[0].get("taskStatus") if run[0].get("errorCode") != "NOT_STARTED" else "NOT_STARTED" for run in runs]
    west = [run[1].get("taskStatus") if run[1].get("errorCode") != "NOT_STARTED" else "NOT_STARTED" for run in runs]
    # The second time, eu-west-1 (never audited) goes first and completes; us-east-1 is canceled again.
    assert east == ["CANCELED"] * 3
    assert west == ["NOT_STARTED", "COMPLETED", "COMPLETED"]


def test_regions_go_by_their_last_audit_of_the_kind_however_many_came_after_it(two_regions):
    """eu-west-1's last full audit is older than us-east-1's, which 60 scheduled audits followed:
    eu-west-1 goes first. Read from the 50 newest tasks, us-east-1 counted as never audited."""
    import os
    from datetime import datetime, timedelta, timezone

    from devicedefender_audit.models import AuditTask
    from devicedefender_audit.service.tasks import SCHEDULED

    settings = lambda_audit.AuditSettings.from_env(os.environ)
    account_id = boto3.client("sts", region_name=REGION).get_caller_identity()["Account"]
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for region, full_at, scheduled in ((REGION, t0 + timedelta(days=1), 60), (WEST, t0, 0)):
        _, store = lambda_audit._open_partition(settings, account_id, region)
        store.save_task(AuditTask(task_start_time=full_at))
        for hour in range(scheduled):
            store.save_task(AuditTask(task_start_time=full_at + timedelta(hours=hour + 1), task_type=SCHEDULED))
        store.close()
    assert lambda_audit._least_recently_audited(settings, account_id, scheduled=False) == [WEST, REGION]
    assert lambda_audit._least_recently_audited(settings, account_id, scheduled=True) == [WEST, REGION]


def test_a_full_fleet_comparison_the_budget_cannot_hold_is_not_started(iot, clock, monkeypatch):
    """The batch GCD over the whole fleet is one call that cannot stop midway: started just before
    the stop, the function would be killed in it with the task IN_PROGRESS. It starts only when the
    budget holds it at the measured rate (scaled to the budget's share of a core); else the
    comparing checks are partial, never compliant, and every key is still checked on its own."""
    from devicedefender_audit.checks import make_checks
    from devicedefender_audit.detectors import default_detectors
    from devicedefender_audit.factoring import fleet_audit, fleet_state

    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    built = []
    monkeypatch.setattr(fleet_state.FleetState, "build", lambda *args, **kwargs: built.append(args))
    monkeypatch.setattr(fleet_audit, "FULL_SECONDS_PER_KEY", 500.0)  # 1000 s at half a core: more than is left
    store = open_store(":memory:")
    detectors = default_detectors()
    checks = make_checks([CHECK_NAME, "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"], detectors)
    task = Audit(iot, store, detectors, checks=checks, budget=TimeBudget.from_remaining(900, cpu=0.5)).run()
    assert built == [] and task.task_status is AuditTaskStatus.COMPLETED
    quality, factorable = task.audit_details[CHECK_NAME], task.audit_details["DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"]
    assert quality.check_run_status == "COMPLETED_NON_COMPLIANT"  # the ROCA key was checked all the same
    assert (factorable.check_run_status, factorable.check_compliant) == ("FAILED", False)
    assert "full comparison of the fleet's 1 keys (about 1000 s) was not run" in factorable.message
    assert "780 s left" in factorable.message


def test_the_vcpu_share_of_a_lambda_follows_its_memory():
    assert TimeBudget.lambda_cpu({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}) == pytest.approx(1024 / 1769)
    assert TimeBudget.lambda_cpu({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "4096"}) == 1.0  # one thread: one vCPU
    assert TimeBudget.lambda_cpu({}) == TimeBudget.lambda_cpu({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "x"}) == 1.0


def test_once_the_time_is_spent_the_security_hub_sync_waits_for_the_next_audit(two_regions, clock, topic_arn,
                                                                               monkeypatch):
    """The sync reads every active finding of the product (minutes at scale): after the stop it is
    skipped and said so, and the notification of the regions not started goes out in time."""
    from moto.iot.responses import IoTResponse

    start = clock.now
    monkeypatch.setenv("DDA_SECURITYHUB", "true")
    describe = IoTResponse.describe_certificate

    def reaches_the_stop(self):
        clock.now = max(clock.now, start + 900 - RESERVE_S)
        return describe(self)

    synced = []
    monkeypatch.setattr(IoTResponse, "describe_certificate", reaches_the_stop)
    monkeypatch.setattr(lambda_audit, "_to_securityhub", lambda *args: synced.append(args))
    east, west = scheduled_audit({}, LambdaContext(900))["audits"]
    assert synced == [] and "next audit's sync" in east["securityHub"]["skipped"]
    assert west["errorCode"] == "NOT_STARTED"


def two_daily_schedules(monkeypatch) -> None:
    """Scheduled audits a and b, daily, in us-east-1's partition of the function's store, the one
    region it audits."""
    import os

    from service_helpers import call
    from test_service_api import enable

    from devicedefender_audit.service import ServiceContext

    monkeypatch.setenv("DDA_REGIONS", REGION)
    store = open_store(lambda_audit.partition_location(os.environ["DDA_STORE"], "123456789012", REGION))
    ctx = ServiceContext(store=store, iot_client=lambda: boto3.client("iot", region_name=REGION),
                         detectors=list, region=REGION)
    enable(ctx)
    for name in ("a", "b"):
        call(ctx, "CreateScheduledAudit", scheduledAuditName=name, frequency="DAILY", targetCheckNames=[CHECK_NAME])
    store.close()


def test_scheduled_audits_deferred_in_a_region_reached_are_notified(two_regions, clock, topic_arn, monkeypatch):
    """run-due: the time runs out after the first of two due schedules; the second is deferred,
    and the one notification of what was left undone names it."""
    from devicedefender_audit.service import scheduled as scheduled_module

    two_daily_schedules(monkeypatch)
    start_audit = scheduled_module.start_audit

    def then_the_time_runs_out(*args, **kwargs):
        task_id = start_audit(*args, **kwargs)
        clock.now += 900
        return task_id

    monkeypatch.setattr(scheduled_module, "start_audit", then_the_time_runs_out)
    [result] = scheduled_audit({"action": "run-due", "now": "2099-01-01T01:00:00Z"}, LambdaContext(900))["runDue"]
    assert [s["scheduledAuditName"] for s in result["startedTasks"]] == ["a"]
    assert [s["scheduledAuditName"] for s in result["deferredSchedules"]] == ["b"]
    undone = [message for subject, message in sns_notifications(topic_arn) if "TIME_LIMIT_REACHED" in subject]
    assert len(undone) == 1 and f"1 scheduled audit(s) deferred (b in {REGION})" in undone[0]


def test_each_scheduled_audit_is_reported_and_synced_as_it_ends(two_regions, clock, topic_arn, monkeypatch):
    """run-due: schedule a completes, then b runs out of the time. a's Security Hub sync runs when a
    ends (not after b, when the time is gone); b's is skipped, and the one notification of what
    was left undone names b's slot, given back, and its skipped sync."""
    from devicedefender_audit.exports.securityhub_sync import BatchResult, SyncResult
    from devicedefender_audit.service import scheduled as scheduled_module

    monkeypatch.setenv("DDA_SECURITYHUB", "true")
    two_daily_schedules(monkeypatch)
    start_audit, started = scheduled_module.start_audit, []

    def b_runs_out_of_time(*args, **kwargs):
        started.append(args[2:])
        if len(started) == 2:
            clock.now += 900
        return start_audit(*args, **kwargs)

    synced = []
    monkeypatch.setattr(scheduled_module, "start_audit", b_runs_out_of_time)
    monkeypatch.setattr(lambda_audit, "_to_securityhub",
                        lambda target, account, task, *rest: synced.append(task.task_id) or SyncResult(BatchResult()))
    [result] = scheduled_audit({"action": "run-due", "now": "2099-01-01T01:00:00Z"}, LambdaContext(900))["runDue"]
    a, b = result["audits"]
    assert (a["taskStatus"], b["taskStatus"]) == ("COMPLETED", "CANCELED")
    assert synced == [a["taskId"]] and "skipped" in b["securityHub"]
    assert [(d["scheduledAuditName"], d["canceledTaskId"]) for d in result["deferredSchedules"]] == [("b", b["taskId"])]
    [undone] = [message for subject, message in sns_notifications(topic_arn) if "TIME_LIMIT_REACHED" in subject]
    assert f"1 scheduled audit(s) deferred (b in {REGION})" in undone
    assert f"the Security Hub sync of 1 audit(s) skipped ({REGION})" in undone
