"""boto3 clients configured the way a long audit needs them: paced, retried, one session.

Region and credentials come from the standard AWS chain (env, profile, instance role);
``endpoint_url`` points at moto or LocalStack. Every client made from one :class:`AwsTarget`
shares its :class:`~.pacing.Pacer`, so all calls of an operation draw on one bucket, and uses
botocore's ``adaptive`` retry mode for the throttling that pacing cannot prevent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import NoCredentialsError

from devicedefender_audit.aws.pacing import DEFAULT_RATES, Pacer


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

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.rates)

    def session(self) -> boto3.session.Session:
        if self._session is None:
            self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        return self._session

    @property
    def region_name(self) -> str | None:
        return self.region or self.session().region_name

    def require_credentials(self) -> None:
        """Fail once, before any work, when no credentials can be found."""
        if self.session().get_credentials() is None:
            raise NoCredentialsError()

    def client(self, service: str) -> Any:
        config = Config(
            retries={"mode": "adaptive", "max_attempts": self.max_attempts},
            max_pool_connections=self.max_pool_connections,
        )
        client = self.session().client(service, endpoint_url=self.endpoint_url, config=config)
        self.pacer.attach(client)
        return client
