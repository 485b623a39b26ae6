"""Client-side pacing: token buckets per operation, on every HTTP attempt."""

from __future__ import annotations

import threading

import pytest

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.pacing import DEFAULT_RATES, Pacer, TokenBucket, parse_rate


class FakeClock:
    """A clock that only moves when someone sleeps: pacing is checked without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now = max(self.now, self.now + seconds)


def test_bucket_spends_its_burst_then_runs_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock.time, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(30)]
    assert waits[:10] == [0.0] * 10  # one second of burst
    # the next 20 calls are spaced 0.1 s apart: 30 calls at 10/s end after 2 s
    assert clock.now == pytest.approx(2.0)


def test_concurrent_callers_share_one_budget():
    bucket = TokenBucket(1000.0, burst=1.0)
    done = []

    def worker() -> None:
        for _ in range(50):
            bucket.acquire()
        done.append(1)

    import time

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 tokens at 1000/s with no burst cannot be taken in under ~0.2 s, whatever the threads do
    assert len(done) == 4 and time.monotonic() - began >= 0.19


def test_unknown_operations_are_not_paced_and_known_ones_are():
    pacer = Pacer({"iot.DescribeCertificate": 5.0})
    assert pacer.bucket("iot", "DescribeCertificate").rate == 5.0
    assert pacer.bucket("iot", "ListThings") is None


def test_defaults_are_the_documented_quotas():
    assert DEFAULT_RATES["iot.DescribeCertificate"] == 10.0
    assert DEFAULT_RATES["iot.ListCertificates"] == 10.0
    assert DEFAULT_RATES["iot.AddThingToThingGroup"] == 100.0


@pytest.mark.parametrize("text", ["DescribeCertificate", "=5", "DescribeCertificate=0", "X=-1", "X=fast",
                                  "DescribeCertificate=1e-300", "DescribeCertificate=inf", "DescribeCertificate=nan"])
def test_bad_rate_options_are_refused(text):
    with pytest.raises(ValueError, match="OPERATION=REQUESTS_PER_SECOND"):
        parse_rate(text)


def test_rate_option_names_an_iot_operation_by_default():
    assert parse_rate("DescribeCertificate=50") == ("iot.DescribeCertificate", 50.0)
    assert parse_rate("iot.ListCertificates=20") == ("iot.ListCertificates", 20.0)


@pytest.mark.parametrize("text", ["describecertificate=5", "IOT.DESCRIBECERTIFICATE=5", "describe-certificate=5",
                                  "iot.describe-certificate=5"])
def test_rate_option_matches_a_paced_operation_in_any_case(text):
    assert parse_rate(text) == ("iot.DescribeCertificate", 5.0)


@pytest.mark.parametrize("text", ["Foo=5", "DescribeCertificates=5", "sns.Publish=300", "iot.ListThings=3",
                                  "sts.DescribeCertificate=5"])
def test_rate_option_refuses_an_operation_that_is_not_paced(text):
    with pytest.raises(ValueError, match="not an operation this tool paces; give one of ListCertificates, "):
        parse_rate(text)


def test_clients_of_one_target_share_buckets(aws):
    target = AwsTarget(region="us-east-1", rates={"iot.ListCertificates": 1000.0})
    first, second = target.client("iot"), target.client("iot")
    bucket = target.pacer.bucket("iot", "ListCertificates")
    taken = []
    real = bucket.acquire
    bucket.acquire = lambda: taken.append(1) or real()
    first.list_certificates()
    second.list_certificates()
    assert len(taken) == 2
