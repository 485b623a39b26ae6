"""boto3 clients configured the way a long audit needs them.

botocore's ``adaptive`` retry mode adds client-side rate limiting on top of exponential backoff,
so throttling (``ThrottlingException``) slows a scan down instead of failing it. Region and
credentials come from the standard AWS chain (env, profile, instance role); ``endpoint_url``
points at moto or LocalStack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config


@dataclass(frozen=True)
class AwsTarget:
    """Where to audit: the usual AWS chain, optionally overridden."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    max_attempts: int = 10
    max_pool_connections: int = 16

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def client(self, service: str) -> Any:
        config = Config(
            retries={"mode": "adaptive", "max_attempts": self.max_attempts},
            max_pool_connections=self.max_pool_connections,
        )
        return self.session().client(service, endpoint_url=self.endpoint_url, config=config)
