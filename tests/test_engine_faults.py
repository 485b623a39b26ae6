"""The audit as a process meets faults: killed, terminated, dropped connections, closed pipes.

A moto server runs in this process; the audit runs as ``python -m devicedefender_audit`` in a
child process, as a scheduler would start it. The fleet is put straight into moto's backend
(registering 1,500 certificates over HTTP would take most of the test's time).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import DATA, REGION, REPO, issue_certificate, load_private_key
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iot.models import FakeCertificate, iot_backends

ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"
DEBIAN = "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"


@pytest.fixture
def server(moto_server):
    return moto_server


def seed(count: int, good_pem: str) -> set[str]:
    """``count`` certificates in moto's backend, every 100th weak; return the weak ids."""
    backend = iot_backends[DEFAULT_ACCOUNT_ID][REGION]
    weak_pems = [(DATA / "roca" / "cert04.pem").read_text(), (DATA / "roca" / "cert05.pem").read_text(),
                 issue_certificate(load_private_key(DATA / "debian" / "rsa1024-ssl-le32-pid1-rnd.key"), "w")]
    weak = set()
    for i in range(count):
        base = weak_pems[(i // 100) % 3] if i % 100 == 0 else good_pem
        cert = FakeCertificate(f"# device {i}\n{base}", "ACTIVE", DEFAULT_ACCOUNT_ID, REGION)
        backend.certificates[cert.certificate_id] = cert
        if i % 100 == 0:
            weak.add(cert.certificate_id)
    return weak


def audit_process(endpoint: str, store: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, DDA_STORE=str(store))
    return subprocess.Popen(
        [sys.executable, "-m", "devicedefender_audit", "run", "--endpoint-url", endpoint, "--region", REGION,
         "--no-progress", "--format", "json",
         # the fleet is one certificate under many ids (moto hashes the PEM text, comments and all),
         # which the factorable check would rightly report as one key in many places
         "--checks", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def described(store: Path) -> int:
    try:
        with sqlite3.connect(store) as db:
            return db.execute("SELECT COUNT(*) FROM certificates WHERE described = 1").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_killed_sync_is_continued_by_the_next_run(server, tmp_path, fresh_rsa_key):
    weak = seed(1500, issue_certificate(fresh_rsa_key, "good"))
    store = tmp_path / "audits.sqlite3"
    # paced slowly enough that the kill lands in the middle of the sync
    first = audit_process(server, store, "--rate", "DescribeCertificate=400")
    wait_until(lambda: described(store) >= 300)
    first.kill()
    first.wait()
    done_before = described(store)
    assert 300 <= done_before < 1500

    second = audit_process(server, store, "--rate", "DescribeCertificate=2000")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 3, err
    report = json.loads(out)
    # only what the killed run had not committed was described again
    assert report["auditTask"]["progress"]["describedCertificates"] == 1500 - done_before
    found = {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"] for f in report["findings"]}
    assert found == weak
    assert report["auditTask"]["auditDetails"]["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]["totalResourcesCount"] == 1500

    listing = subprocess.run([sys.executable, "-m", "devicedefender_audit", "list-audits", "--format", "json",
                              "--store", str(store)], cwd=REPO, capture_output=True, text=True, check=True)
    statuses = {t["taskId"]: t["taskStatus"] for t in json.loads(listing.stdout)["tasks"]}
    assert sorted(statuses.values()) == ["COMPLETED", "FAILED"]  # the killed task: interrupted


def test_sigterm_cancels_and_records_the_task(server, tmp_path, fresh_rsa_key):
    seed(400, issue_certificate(fresh_rsa_key, "good"))
    store = tmp_path / "audits.sqlite3"
    proc = audit_process(server, store, "--rate", "DescribeCertificate=200")
    wait_until(lambda: described(store) >= 50)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and "canceled" in err
    with sqlite3.connect(store) as db:
        (status,) = db.execute("SELECT status FROM audit_tasks").fetchone()
    assert status == "CANCELED"


def test_listener_that_drops_connections_gives_a_clean_failure(aws_env, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def drop_all() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=drop_all, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        proc = audit_process(f"http://127.0.0.1:{port}", tmp_path / "a.sqlite3", "--max-attempts", "2")
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert proc.returncode == 1 and "Traceback" not in err
    details = json.loads(out)["auditTask"]["auditDetails"]["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]
    assert details["checkRunStatus"] == "FAILED" and details["errorCode"] == "CONNECTION_ERROR"
    shown = subprocess.run([sys.executable, "-m", "devicedefender_audit", "show-findings", "--store",
                            str(tmp_path / "a.sqlite3")], cwd=REPO, capture_output=True, text=True, timeout=60,
                           check=False)
    assert shown.returncode == 1  # was 0: no finding, from an audit that listed nothing


def test_closed_pipe_is_quiet(server, tmp_path):
    # 2,000 unparsable certificates: a report far larger than a pipe's buffer
    seed(2000, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    store = tmp_path / "audits.sqlite3"
    proc = audit_process(server, store, "--rate", "DescribeCertificate=5000")
    proc.communicate(timeout=300)
    shell = subprocess.run(
        f"{sys.executable} -m devicedefender_audit show-findings --store {store} | head -n 1",
        shell=True, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert shell.stdout.startswith("Audit task") and "Traceback" not in shell.stderr


def test_show_findings_of_a_killed_audit_is_a_failure_not_an_all_clear(server, tmp_path, fresh_rsa_key):
    """show-findings printed the dead task IN_PROGRESS and exited 0 ("no finding"), also once
    list-audits had marked it FAILED: a script reading its exit code took the audit as clean."""
    seed(400, issue_certificate(fresh_rsa_key, "good"))
    store = tmp_path / "audits.sqlite3"
    proc = audit_process(server, store, "--rate", "DescribeCertificate=200")
    wait_until(lambda: described(store) >= 50)
    proc.kill()
    proc.wait()
    shown = subprocess.run([sys.executable, "-m", "devicedefender_audit", "show-findings", "--store", str(store)],
                           cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "FAILED" in shown.stdout.splitlines()[0] and "INTERRUPTED" in shown.stdout
    # a finished audit's exit code is the one show-findings gives for it later
    done = audit_process(server, store, "--rate", "DescribeCertificate=5000")
    out, err = done.communicate(timeout=300)
    task_id = json.loads(out)["auditTask"]["taskId"]
    assert done.returncode == 3, err  # every 100th certificate of the seeded fleet is weak
    again = subprocess.run([sys.executable, "-m", "devicedefender_audit", "show-findings", task_id,
                            "--store", str(store)], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 3
