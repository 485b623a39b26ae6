"""A SQLite store that fails while in use (locked beyond the wait, full, damaged) and a run
interrupted while it prints its report: one clear message and exit code, never a traceback, and
nothing recorded is lost.

The lock wait (120 s in use) is shortened here; the store is a real file, the AWS side moto.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import DATA, REGION, REPO, register, run_audit

from devicedefender_audit import cli
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import AuditTaskStatus
from devicedefender_audit.store import StoreError, StoreUnavailable, open_store
from devicedefender_audit.store import sqlite as sqlite_store

ROCA_PEM = (DATA / "roca" / "cert04.pem").read_text()


@pytest.fixture
def short_lock_wait(monkeypatch):
    monkeypatch.setattr(sqlite_store, "LOCK_TIMEOUT_S", 0.3)


def audited_store(path, iot) -> None:
    store = open_store(path)
    run_audit(iot, [RocaDetector()], store)
    store.close()


def writer(path) -> sqlite3.Connection:
    """Another process's connection holding the store's write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_opening_a_store_waits_for_no_writer(iot, tmp_path, short_lock_wait):
    """Opening wrote the schema version each time, so list-audits during another process's long
    write waited out the lock and then called a sound store 'not a usable SQLite database'."""
    register(iot, ROCA_PEM)
    path = tmp_path / "audits.sqlite3"
    audited_store(path, iot)
    other = writer(path)
    try:
        store = open_store(path, create=False)
        assert len(store.list_tasks()) == 1
        store.close()
    finally:
        other.close()


def test_a_store_locked_past_the_wait_ends_run_with_one_error(server_iot, moto_server, tmp_path, short_lock_wait,
                                                              capsys):
    register(server_iot, ROCA_PEM)
    path = tmp_path / "audits.sqlite3"
    args = ["run", "--endpoint-url", moto_server, "--region", REGION, "--no-progress", "--store", str(path),
            "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]
    assert cli.main(args) == 3
    other = writer(path)
    try:
        assert cli.main(args) == 1  # not 2: the store is fine, another process holds it
    finally:
        other.close()
    err = capsys.readouterr().err
    assert "is locked by another process writing to it (waited 0.3 s)" in err and "Traceback" not in err
    assert cli.main(args) == 3  # once released, a run goes on as before


def test_a_store_locked_mid_audit_is_one_store_error(iot, tmp_path):
    register(iot, ROCA_PEM)
    path = tmp_path / "audits.sqlite3"
    store = sqlite_store.SqliteStore(path, lock_timeout=0.3)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    iot.meta.events.register("after-call.iot.ListCertificates", lambda **_: other.execute("BEGIN IMMEDIATE"))
    try:
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            run_audit(iot, [RocaDetector()], store)
    finally:
        other.close()
    # the failure could not be recorded under the lock either: the task stays IN_PROGRESS until
    # the next start marks it interrupted; the store is intact
    assert [t.task_status for t in store.list_tasks()] == [AuditTaskStatus.IN_PROGRESS]


def test_a_store_failure_is_recorded_when_the_store_takes_it(iot, tmp_path):
    register(iot, ROCA_PEM)
    path = tmp_path / "audits.sqlite3"
    store = sqlite_store.SqliteStore(path, lock_timeout=0.3)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    held = []

    def lock_once(**_):
        if not held:
            held.append(other.execute("BEGIN IMMEDIATE"))
            threading.Timer(0.4, lambda: other.execute("ROLLBACK")).start()  # released while it fails

    iot.meta.events.register("after-call.iot.ListCertificates", lock_once)
    with pytest.raises(StoreUnavailable):
        run_audit(iot, [RocaDetector()], store)
    (task,) = store.list_tasks()
    assert task.task_status is AuditTaskStatus.FAILED
    assert task.details.error_code == "STORE_ERROR"
    assert task.details.message.endswith("is locked by another process writing to it (waited 0.3 s); "
                                         "run again once that one is done")
    other.close()
    store.close()
    store.close()


def test_a_full_store_mid_audit_is_one_error_and_the_store_stays_usable(iot, tmp_path, fresh_rsa_key):
    from conftest import issue_certificate

    good = issue_certificate(fresh_rsa_key, "good")
    for i in range(60):
        register(iot, f"# device {i}\n{good}")
    path = tmp_path / "audits.sqlite3"
    store = open_store(path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages + 3}")  # the disk fills up during the sync
    with pytest.raises(StoreUnavailable, match="full"):
        run_audit(iot, [RocaDetector()], store)
    store._db.execute("PRAGMA max_page_count=1073741823")  # space again: the store was left consistent
    again = run_audit(iot, [RocaDetector()], store)
    assert again.task.task_status is AuditTaskStatus.COMPLETED
    assert again.task.details.total_resources_count == 60
    store.close()


def test_a_store_with_a_damaged_page_is_refused_when_opened(iot, tmp_path, fresh_rsa_key):
    """quick_check reports damage as a row, which was read and ignored: the store opened, and the
    first read of the damaged page was a sqlite3.DatabaseError traceback."""
    from conftest import issue_certificate

    good = issue_certificate(fresh_rsa_key, "good")
    for i in range(200):
        register(iot, f"# device {i}\n{good}")
    path = tmp_path / "audits.sqlite3"
    audited_store(path, iot)
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xa5" * (path.stat().st_size - 8192))
    with pytest.raises(StoreError, match="not a usable SQLite database: damaged"):
        open_store(path)


def test_ctrl_c_while_the_report_prints_is_one_line(server_iot, moto_server, tmp_path):
    """The audit is stored COMPLETED before its report is printed: a Ctrl-C then was a
    KeyboardInterrupt traceback."""
    register(server_iot, ROCA_PEM)
    path = tmp_path / "audits.sqlite3"
    script = textwrap.dedent(f"""
        import sys
        from devicedefender_audit import cli, report

        def interrupted(*_args, **_kwargs):
            raise KeyboardInterrupt
        report.audit_json = interrupted
        sys.exit(cli.main(["run", "--endpoint-url", {moto_server!r}, "--region", {REGION!r}, "--no-progress",
                           "--format", "json", "--store", {str(path)!r},
                           "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "interrupted; what was already recorded stays in the store"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM audit_tasks").fetchall() == [("COMPLETED",)]
