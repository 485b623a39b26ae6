"""boto3 clients configured the way a long audit needs them: paced, retried, one session.

Region and credentials come from the standard AWS chain (env, profile, instance role);
``endpoint_url`` points at moto or LocalStack. Every client made from one :class:`AwsTarget`
shares its :class:`~.pacing.Pacer`, so all calls of an operation draw on one bucket, and uses
botocore's ``adaptive`` retry mode for the throttling that pacing cannot prevent.

Acting as a role (:meth:`AwsTarget.client` with ``role_arn``): Device Defender performs an audit,
a notification and each mitigation action with the role the account configured for it, so the
service does too. The role is assumed with STS ``AssumeRole`` from the target's own credentials
(at ``endpoint_url`` when one is given: moto and LocalStack serve STS there), under a session name
that says which part of this service acts (``devicedefender-audit-audit``, ...); botocore's
refreshable credentials assume it again before the temporary credentials expire (from 15 minutes
before). The role is assumed on the first call, so a client is cheap to make; a role that cannot
be assumed fails that call with a ``ClientError`` that names the role, where the caller records it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

from devicedefender_audit.aws.pacing import DEFAULT_RATES, Pacer

#: Prefix of the STS session names, so CloudTrail shows which calls this service made as a role.
SESSION_NAME_PREFIX = "devicedefender-audit"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _Given(CredentialProvider):
    """Hands a botocore session credentials made elsewhere (the assumed role's)."""

    METHOD = "assume-role"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self.credentials = credentials

    def load(self) -> Credentials:
        return self.credentials


def assume_role_session(source: boto3.session.Session, role_arn: str, session_name: str,
                        endpoint_url: str | None, region: str | None,
                        time_fetcher: Callable[[], datetime] = _utc_now) -> boto3.session.Session:
    """A session whose credentials are ``role_arn`` assumed from ``source``'s, refreshed by
    assuming it again before they expire (``time_fetcher`` is the clock that decides when)."""
    source_credentials = source.get_credentials()
    if source_credentials is None:
        raise NoCredentialsError()

    def fetch() -> dict[str, Any]:
        frozen = source_credentials.get_frozen_credentials()
        sts = boto3.session.Session(region_name=region).client(
            "sts", endpoint_url=endpoint_url, aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key, aws_session_token=frozen.token)
        try:
            granted = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        except ClientError as exc:
            error = exc.response.get("Error") or {}
            raise ClientError({"Error": {"Code": error.get("Code") or "AccessDenied",
                                         "Message": f"cannot assume role {role_arn} (session {session_name}): "
                                                    f"{error.get('Message') or exc}"},
                               "ResponseMetadata": exc.response.get("ResponseMetadata", {})},
                              "AssumeRole") from exc
        return {"access_key": granted["AccessKeyId"], "secret_key": granted["SecretAccessKey"],
                "token": granted["SessionToken"], "expiry_time": granted["Expiration"].isoformat()}

    credentials = DeferredRefreshableCredentials(refresh_using=fetch, method="assume-role",
                                                 time_fetcher=time_fetcher)
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_Given(credentials)]))
    return boto3.session.Session(botocore_session=core, region_name=region)


@dataclass
class AwsTarget:
    """Where to audit: the usual AWS chain, optionally overridden."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    max_attempts: int = 10
    max_pool_connections: int = 16
    rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    pacer: Pacer = field(init=False)
    _session: boto3.session.Session | None = field(default=None, init=False, repr=False)
    _roles: dict[tuple[str, str], boto3.session.Session] = field(default_factory=dict, init=False, repr=False)
    _roles_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.rates)

    def session(self) -> boto3.session.Session:
        if self._session is None:
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            if session.region_name == "":  # AWS_DEFAULT_REGION= : botocore would build https://iot..amazonaws.com
                raise NoRegionError()
            self._session = session
        return self._session

    @property
    def region_name(self) -> str | None:
        return self.region or self.session().region_name

    def require_credentials(self) -> None:
        """Fail once, before any work, when no credentials can be found."""
        if self.session().get_credentials() is None:
            raise NoCredentialsError()

    def role_session(self, role_arn: str, purpose: str) -> boto3.session.Session:
        """The session acting as ``role_arn`` for ``purpose`` (``audit``, ``notification``,
        ``mitigation``): one per pair, so its clients share one set of temporary credentials."""
        key = (role_arn, purpose)
        with self._roles_lock:
            if key not in self._roles:
                self._roles[key] = assume_role_session(self.session(), role_arn, f"{SESSION_NAME_PREFIX}-{purpose}",
                                                       self.endpoint_url, self.region_name)
            return self._roles[key]

    def client(self, service: str, role_arn: str | None = None, purpose: str = "audit") -> Any:
        """A paced client with the target's credentials, or acting as ``role_arn`` when given."""
        config = Config(
            # total_max_attempts counts the first attempt too; botocore's max_attempts counts only retries
            retries={"mode": "adaptive", "total_max_attempts": self.max_attempts},
            max_pool_connections=self.max_pool_connections,
        )
        session = self.session() if role_arn is None else self.role_session(role_arn, purpose)
        client = session.client(service, endpoint_url=self.endpoint_url, config=config)
        self.pacer.attach(client)
        return client
