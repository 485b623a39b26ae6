"""What every operation runs against: the store, the account, AWS clients, detectors, a clock.

Operations are plain functions ``operation(ctx, **request) -> response``; the context carries
what a real service has around a request. The clock is injectable so that tests (and
``run-due``) can move time; AWS clients and detectors are made on demand because most
operations read the store only.

Roles: with ``role_client`` set, the service acts as Device Defender does, with the role the
account configured for each purpose (the audit configuration's ``roleArn`` for the audit's IoT
calls, the SNS target's ``roleArn`` for notifications, each mitigation action's ``roleArn`` for
its calls), and a purpose with no role configured is refused. Without it (a front's explicit
choice, e.g. ``serve --own-credentials``, or the CLI), every call uses the service's own
credentials and role ARNs are only recorded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any

from devicedefender_audit.service.errors import InvalidRequest, ServiceError
from devicedefender_audit.store import Store
from devicedefender_audit.time_budget import TimeBudget

#: The account id used when the context is given none (moto's and the demo account's).
DEFAULT_ACCOUNT = "123456789012"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ServiceContext:
    """The state and collaborators of one Device Defender emulation.

    ``background`` makes ``StartOnDemandAuditTask`` return at once while the audit runs in a
    thread with its own store connection (as the API does); the CLI runs audits in the
    foreground so that the process does not exit under them.
    """

    store: Store
    iot_client: Callable[[], Any]
    detectors: Callable[[], Sequence[Any]]
    region: str = "us-east-1"
    account_id: str = DEFAULT_ACCOUNT
    clock: Callable[[], datetime] = utc_now
    background: bool = False
    open_worker_store: Callable[[], Store] | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    #: SNS for audit notifications and PUBLISH_FINDING_TO_SNS; made on demand like the IoT client.
    sns_client: Callable[[], Any] | None = None
    #: ``(service, role_arn, purpose) -> client`` acting as that role; None: act with own credentials.
    role_client: Callable[[str, str, str], Any] | None = None
    #: An outside time limit (the scheduled Lambda's): audits stop before it, and ``run_due``
    #: starts no schedule once it is spent (their slots stay free for the next run).
    budget: TimeBudget | None = None

    def __post_init__(self) -> None:
        if self.background and self.open_worker_store is None:
            raise ValueError("background audits need open_worker_store (one store connection per thread)")

    def worker_store(self) -> Store:
        """The store an audit started now writes to: its own connection when it runs in a thread."""
        if self.background and self.open_worker_store is not None:
            return self.open_worker_store()
        return self.store

    def sns(self) -> Any:
        """An SNS client, or a clear error where this service was given none."""
        if self.sns_client is None:
            raise ServiceError("this service was started without an SNS client; it cannot publish to SNS")
        return self.sns_client()

    def client_for(self, service: str, role_arn: str | None, purpose: str) -> Any:
        """The ``iot`` or ``sns`` client for one purpose: acting as ``role_arn`` when this context
        assumes roles (a clear error when none is configured), else with own credentials."""
        if self.role_client is None:
            return self.iot_client() if service == "iot" else self.sns()
        if not role_arn:
            raise InvalidRequest(f"no roleArn is configured for the {purpose}: this service acts with the role "
                                 "the account configured (or run it with its own credentials, "
                                 "serve --own-credentials)")
        return self.role_client(service, role_arn, purpose)

    def audit_iot_client(self) -> Any:
        """The IoT client an audit reads the account with: the account audit configuration's role."""
        from devicedefender_audit.service.configuration import CONFIGURATION_KEY, CONFIGURATION_KIND

        configuration = self.store.get_record(CONFIGURATION_KIND, CONFIGURATION_KEY) or {}
        return self.client_for("iot", configuration.get("roleArn"), "audit")

    def now(self) -> datetime:
        return self.clock()

    def arn(self, resource: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:{resource}"

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the audits this context started in the background (tests, shutdown)."""
        for thread in list(self.threads):
            thread.join(timeout)


def as_utc(value: datetime | str | float) -> datetime:
    """A request timestamp as an aware UTC datetime (boto3 accepts datetimes, ISO 8601, epoch)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    try:
        return as_utc(float(value))
    except ValueError:
        pass
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise InvalidRequest(f"{value!r} is not a timestamp (ISO 8601 or epoch seconds)") from exc


def page(items: Iterable[Any], operation: str, request: Mapping[str, Any], default: int = 25) -> dict:
    """One page of ``items`` for ``operation``'s ``request`` (its ``nextToken`` and
    ``maxResults``, else ``default`` items), as ``{"items": [...], "nextToken": ...}`` (the token
    only when more follow). Tokens are opaque offsets into the operation's stable ordering.

    A token names the query it continues (the operation's name and request), and a token of
    another query (other filters, or another operation) is refused with
    ``InvalidRequestException`` as AWS refuses it, rather than read as an offset into the wrong
    list. ``nextToken`` and ``maxResults`` are not part of the query: a later page may change its
    size."""
    scope = _query_digest({"operation": operation, **request})
    offset = _offset(request.get("nextToken"), scope)
    size = request.get("maxResults") or default
    window = list(islice(iter(items), offset, offset + size + 1))
    result: dict[str, Any] = {"items": window[:size]}
    if len(window) > size:
        body = {"offset": offset + size, "query": scope}
        result["nextToken"] = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    return result


def _query_digest(query: Mapping[str, Any]) -> str:
    members = {k: v for k, v in query.items() if k not in ("nextToken", "maxResults")}
    text = json.dumps(members, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _offset(token: str | None, scope: str) -> int:
    if not token:
        return 0
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = body["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("the nextToken is not one this service issued") from exc
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidRequest("the nextToken is not one this service issued")
    if body.get("query") != scope:
        raise InvalidRequest("the nextToken belongs to another query: repeat the request that returned it, "
                             "with the same parameters")
    return offset


def drop_none(value: dict) -> dict:
    """Members that are set, as boto3 omits absent ones."""
    return {k: v for k, v in value.items() if v is not None}


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)
