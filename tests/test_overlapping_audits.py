"""Two audits of one partition at once, as a scheduled invocation delivered twice runs them.

Each is a thread with its own store object on the same SQLite file or DynamoDB table; events
force the interleaving in which an older observation reached the store after a newer one. Both
must still check the weak ACTIVE certificate: before, each ended COMPLETED_COMPLIANT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import boto3
import pytest
from conftest import DATA, REGION, issue_certificate, register
from moto import mock_aws

from devicedefender_audit.audit import Audit
from devicedefender_audit.detectors.roca import RocaDetector
from devicedefender_audit.models import CHECK_NAME, AuditTask
from devicedefender_audit.store import Store, open_store

WAIT_S = 30


class HookedListing:
    """The moto client, with ``before`` called as ListCertificates is first asked and ``after``
    once it has answered every page."""

    def __init__(self, iot, before: Callable[[], None] = lambda: None, after: Callable[[], None] = lambda: None,
                 ) -> None:
        self._iot, self._before, self._after = iot, before, after

    def __getattr__(self, name: str):
        return getattr(self._iot, name)

    def get_paginator(self, name: str):
        paginator = self._iot.get_paginator(name)
        if name != "list_certificates":
            return paginator
        hooked = self

        class Paginator:
            def paginate(self, **kwargs):
                hooked._before()
                pages = list(paginator.paginate(**kwargs))
                hooked._after()
                yield from pages

        return Paginator()


def open_same(kind: str, tmp_path) -> Store:
    return open_store(tmp_path / "audits.sqlite3") if kind == "sqlite" else open_store("dynamodb://dda-audits")


def weak_verdicts(task: AuditTask) -> tuple[str, int]:
    details = task.audit_details[CHECK_NAME]
    return details.check_run_status, details.non_compliant_resources_count


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
def test_a_certificate_one_audit_listed_is_not_marked_gone_by_the_other(kind, tmp_path, aws_env, fresh_rsa_key):
    """B lists, a weak certificate is registered, A lists it, then B marks gone what was not
    listed since B started: A's listing is newer than that, so the certificate stays in A's scope."""
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        register(iot, issue_certificate(fresh_rsa_key))
        b_listed, a_recorded, b_marked = threading.Event(), threading.Event(), threading.Event()
        store_a, store_b = open_same(kind, tmp_path), open_same(kind, tmp_path)
        mark_a, mark_b = store_a.mark_gone, store_b.mark_gone

        def a_marks_after_b(*args):
            a_recorded.set()
            b_marked.wait(WAIT_S)
            return mark_a(*args)

        def b_marks_after_a_recorded(*args):
            a_recorded.wait(WAIT_S)
            try:
                return mark_b(*args)
            finally:
                b_marked.set()

        store_a.mark_gone, store_b.mark_gone = a_marks_after_b, b_marks_after_a_recorded
        tasks: dict[str, AuditTask] = {}
        weak_id: list[str] = []

        def audit_b() -> None:
            tasks["B"] = Audit(HookedListing(iot, after=b_listed.set), store_b, [RocaDetector()], workers=2).run()

        b = threading.Thread(target=audit_b)

        def start_b_then_register() -> None:  # B starts after A: its start time is the later one
            b.start()
            b_listed.wait(WAIT_S)
            weak_id.append(register(iot, (DATA / "roca" / "cert04.pem").read_text())["certificateId"])

        tasks["A"] = Audit(HookedListing(iot, before=start_b_then_register), store_a, [RocaDetector()],
                           workers=2).run()
        b.join(WAIT_S)

        assert weak_verdicts(tasks["A"]) == ("COMPLETED_NON_COMPLIANT", 1)
        assert store_a.inventory_record(weak_id[0]).gone_since is None
        # B checks it too: listed (by A) after B started, it is in B's scope as well.
        assert weak_verdicts(tasks["B"]) == ("COMPLETED_NON_COMPLIANT", 1)


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
def test_an_older_listing_written_last_does_not_put_back_the_status_it_saw(kind, tmp_path, aws_env):
    """A lists the weak certificate INACTIVE; it is activated; B lists it ACTIVE and records
    that; A's page is written last. The record keeps ACTIVE, and B finds the weak key."""
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        weak = register(iot, (DATA / "roca" / "cert04.pem").read_text(), status="INACTIVE")["certificateId"]
        a_listed, b_recorded = threading.Event(), threading.Event()
        store_a, store_b = open_same(kind, tmp_path), open_same(kind, tmp_path)
        record_a, record_b = store_a.record_listing, store_b.record_listing

        def a_records_after_b(page, seen_at):
            a_listed.set()
            b_recorded.wait(WAIT_S)
            return record_a(page, seen_at)

        def b_records(page, seen_at):
            try:
                return record_b(page, seen_at)
            finally:
                b_recorded.set()

        store_a.record_listing, store_b.record_listing = a_records_after_b, b_records
        tasks: dict[str, AuditTask] = {}

        def audit_b() -> None:
            a_listed.wait(WAIT_S)
            iot.update_certificate(certificateId=weak, newStatus="ACTIVE")
            tasks["B"] = Audit(iot, store_b, [RocaDetector()], workers=2).run()

        b = threading.Thread(target=audit_b)
        b.start()
        tasks["A"] = Audit(iot, store_a, [RocaDetector()], workers=2).run()
        b.join(WAIT_S)

        assert store_a.inventory_record(weak).status == "ACTIVE"
        assert weak_verdicts(tasks["B"]) == ("COMPLETED_NON_COMPLIANT", 1)


class HookedDescribe:
    """The moto client, with ``before`` called once, as the first DescribeCertificate is asked."""

    def __init__(self, iot, before: Callable[[], None]) -> None:
        self._iot, self._before = iot, before

    def __getattr__(self, name: str):
        return getattr(self._iot, name)

    def describe_certificate(self, **kwargs):
        before, self._before = self._before, lambda: None
        before()
        return self._iot.describe_certificate(**kwargs)


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
def test_a_status_describe_certificate_gives_is_recorded_even_when_the_listing_gave_it_too(kind, tmp_path, aws_env):
    """A lists the weak certificate ACTIVE; it is deactivated, B audits (recording INACTIVE), it
    is activated again; A's DescribeCertificate then says ACTIVE, as A's listing did, and that
    newer observation is what the store keeps: A finds the weak key."""
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        weak = register(iot, (DATA / "roca" / "cert04.pem").read_text())["certificateId"]
        store_a, store_b = open_same(kind, tmp_path), open_same(kind, tmp_path)
        tasks: dict[str, AuditTask] = {}

        def b_audits_while_it_is_inactive() -> None:
            iot.update_certificate(certificateId=weak, newStatus="INACTIVE")
            b = threading.Thread(target=lambda: tasks.update(B=Audit(iot, store_b, [RocaDetector()], workers=1).run()))
            b.start()
            b.join(WAIT_S)
            iot.update_certificate(certificateId=weak, newStatus="ACTIVE")

        tasks["A"] = Audit(HookedDescribe(iot, b_audits_while_it_is_inactive), store_a, [RocaDetector()],
                           workers=1).run()

        assert store_a.inventory_record(weak).status == "ACTIVE"
        assert weak_verdicts(tasks["A"]) == ("COMPLETED_NON_COMPLIANT", 1)
        assert weak_verdicts(tasks["B"]) == ("COMPLETED_COMPLIANT", 0)  # it was INACTIVE throughout B
