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
    assert "NOT_STARTED" in subject and f"2 of 2 regions not started ({REGION}, {WEST})" in message


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
    assert sum("NOT_STARTED" in s for s in subjects) == 2  # each region left out was said


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
