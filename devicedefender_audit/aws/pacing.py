"""Client-side pacing: one token bucket per AWS operation, at the account's request-rate quota.

botocore's adaptive retry mode only slows down after AWS has throttled a call, and it keeps one
budget for all operations. A scan of a large fleet would be throttled from its first second.
Instead every HTTP attempt (retries included, since AWS counts them too) waits for a token of its
own operation's bucket, so a scan runs at the quota; adaptive retries stay on for what slips
through (other clients sharing the account's quota).

Defaults are AWS's documented default quotas (README, "Pacing"); ``--rate OPERATION=TPS``
overrides one of them. Operations without a known quota are not paced.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

#: Default request-rate quotas (requests per second, per account and region).
#: Sources are cited in the README's "Pacing" section.
DEFAULT_RATES: dict[str, float] = {
    "iot.ListCertificates": 10.0,
    "iot.DescribeCertificate": 10.0,
    "iot.UpdateCertificate": 10.0,
    "iot.ListCACertificates": 10.0,
    "iot.DescribeCACertificate": 10.0,
    "iot.UpdateCACertificate": 10.0,
    "iot.ListPrincipalThings": 10.0,
    "iot.ListThingPrincipals": 20.0,
    "iot.CreateThingGroup": 25.0,
    "iot.DescribeThingGroup": 100.0,
    "iot.AddThingToThingGroup": 100.0,
}


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; thread-safe.

    A caller that finds no token reserves the next one (the balance goes negative) and sleeps
    until it is due, so concurrent callers are spaced evenly instead of all retrying at once.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting if needed; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class Pacer:
    """The buckets of one account and region, shared by every client made for it."""

    def __init__(self, rates: Mapping[str, float]) -> None:
        self.rates = dict(rates)
        self._buckets = {name: TokenBucket(rate) for name, rate in self.rates.items()}
        self.waited: dict[str, float] = {}

    def bucket(self, service: str, operation: str) -> TokenBucket | None:
        return self._buckets.get(f"{service}.{operation}")

    def attach(self, client: Any) -> None:
        """Pace every HTTP attempt ``client`` makes (botocore's ``before-send`` event)."""
        service = client.meta.service_model.service_name

        def before_send(event_name: str, **_: Any) -> None:
            operation = event_name.rsplit(".", 1)[-1]
            bucket = self.bucket(service, operation)
            if bucket is not None:
                waited = bucket.acquire()
                if waited:
                    key = f"{service}.{operation}"
                    self.waited[key] = self.waited.get(key, 0.0) + waited

        # Registered first, so it runs before any handler that answers the request itself.
        client.meta.events.register_first(f"before-send.{service}", before_send)


def _spelling(name: str) -> str:
    """``name`` as :func:`parse_rate` compares it: case and the AWS CLI's hyphens ignored."""
    return name.replace("-", "").lower()


#: Every paced operation, by :func:`_spelling` of ``service.Operation`` and of ``Operation`` alone.
_PACED = {_spelling(s): name for name in DEFAULT_RATES for s in (name, name.partition(".")[2])}


#: The slowest pace ``--rate`` takes: one call a minute (a tinier one overflowed the pacer's sleep).
MIN_RATE = 1 / 60


def parse_rate(text: str) -> tuple[str, float]:
    """``DescribeCertificate=5`` -> (``iot.DescribeCertificate``, 5.0), for an operation the pacer
    paces (:data:`DEFAULT_RATES`); any other name is a ValueError listing them, so a typo is not
    silently ignored while the scan runs at the default rate. Names are matched without regard to
    case, with or without ``iot.``, and in the AWS CLI's spelling (``describe-certificate``): no
    two operations differ only in that, so each spelling means one."""
    name, sep, value = text.partition("=")
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not sep or not name.strip() or not MIN_RATE <= rate < math.inf:
        raise ValueError(f"--rate wants OPERATION=REQUESTS_PER_SECOND with a rate of at least {MIN_RATE} "
                         f"(one call a minute) and finite, not {text!r}")
    operation = _PACED.get(_spelling(name.strip()))
    if operation is None:
        names = ", ".join(paced.partition(".")[2] for paced in DEFAULT_RATES)
        raise ValueError(f"{name.strip()!r} in {text!r} is not an operation this tool paces; give one of {names} "
                         "(any case, or as the AWS CLI writes it: describe-certificate)")
    return operation, rate
