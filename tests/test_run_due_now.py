"""``run-due --now`` (and the Lambda's ``"now"``) chooses which schedule slots are due; the audits
it starts still happen now. Recording them at the given moment made a test run with a future
``--now`` the "latest audit" of ``show-findings``/``export``/``mitigate`` until that date, and
judged suppressions at that moment (one in force today, expiring before it, was not applied)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from conftest import DATA, REGION, register

from devicedefender_audit.check_names import DEVICE_CERTIFICATE_KEY_QUALITY_CHECK as CHECK_NAME
from devicedefender_audit.cli import main
from devicedefender_audit.store import open_store

FUTURE = "2099-01-02T01:00:00Z"


@pytest.fixture
def scheduled_store(iot, tmp_path, monkeypatch, capsys) -> str:
    """A store with a daily schedule over one ROCA certificate, whose finding a suppression
    covers until next year (in force now, expired by ``FUTURE``)."""
    cert = register(iot, (DATA / "roca" / "cert04.pem").read_text())
    store = str(tmp_path / "audits.sqlite3")
    monkeypatch.setenv("DDA_STORE", store)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    until = (datetime.now(timezone.utc) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for command in (
        ["update-account-audit-configuration", "--role-arn", "arn:aws:iam::123456789012:role/audit",
         "--audit-check-configurations", json.dumps({CHECK_NAME: {"enabled": True}})],
        ["create-scheduled-audit", "--scheduled-audit-name", "daily", "--frequency", "DAILY",
         "--target-check-names", CHECK_NAME],
        ["create-audit-suppression", "--check-name", CHECK_NAME, "--resource-identifier",
         json.dumps({"deviceCertificateId": cert["certificateId"]}), "--expiration-date", until,
         "--client-request-token", "t1"],
    ):
        assert main(command) == 0, command
    capsys.readouterr()
    return store


def test_run_due_now_picks_the_slot_but_the_audit_happens_now(scheduled_store, capsys):
    before = datetime.now(timezone.utc)
    assert main(["run-due", "--now", FUTURE]) == 0
    [started] = json.loads(capsys.readouterr().out)["startedTasks"]
    assert started["slot"] == "2099-01-02T00:00:00+00:00"
    store = open_store(scheduled_store)
    try:
        task = store.get_task(started["taskId"])
        findings = list(store.findings(started["taskId"]))
    finally:
        store.close()
    assert before - timedelta(minutes=5) <= task.task_start_time <= datetime.now(timezone.utc) + timedelta(minutes=5)
    # the suppression in force now applies: it is judged when the audit runs, not in 2099
    assert findings and all(f.is_suppressed for f in findings)


def test_the_latest_audit_stays_the_latest_after_a_future_run_due(scheduled_store, capsys):
    assert main(["run-due", "--now", FUTURE]) == 0
    capsys.readouterr()
    assert main(["start-on-demand-audit-task", "--target-check-names", CHECK_NAME]) == 0
    latest = json.loads(capsys.readouterr().out)["taskId"]
    main(["show-findings", "--format", "json"])
    assert json.loads(capsys.readouterr().out)["auditTask"]["taskId"] == latest
