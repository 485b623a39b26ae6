"""Which accounts and regions to audit, and the credentials to audit each one with.

``run --regions`` names regions (``all``: every region where botocore's endpoint data lists AWS
IoT, in the caller's partition; no network call); ``--role-arn`` audits the account of one role
(STS AssumeRole); ``--organization ROLE_NAME`` audits every ACTIVE account of the AWS
Organization (``ListAccounts``), assuming ``arn:<partition>:iam::<account>:role/ROLE_NAME`` in
each, except the caller's own account, audited with the caller's credentials.

Assumed credentials refresh themselves (:meth:`AwsTarget.client` with ``role_arn``: botocore's
refreshable credentials assume the role again before they expire), since a first audit of a
large fleet outlasts a role session. :mod:`~devicedefender_audit.fleet_run` assumes the role
before it starts an account-region's audit, so that a role that cannot be assumed is one clear
error against that account-region.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import boto3

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message

ACCOUNT_ID = re.compile(r"\d{12}")
ROLE_ARN = re.compile(rf"arn:(aws[a-z-]*):iam::({ACCOUNT_ID.pattern}):role/[\w+=,.@/-]{{1,512}}")
ROLE_NAME = re.compile(r"[\w+=,.@-]+(/[\w+=,.@-]+)*")


class AccountsError(Exception):
    """The accounts or regions to audit cannot be known (bad option, organization not readable)."""


@dataclass(frozen=True)
class AccountRegion:
    """One account in one region, and the role to audit it with (``None``: the caller's credentials)."""

    account_id: str
    region: str
    role_arn: str | None = None

    def __post_init__(self) -> None:
        # The id names the account's store partition; an item from outside (the fan-out's event)
        # with anything else would be audited into a partition no other command finds.
        if not ACCOUNT_ID.fullmatch(self.account_id):
            raise ValueError(f"accountId must be a 12-digit AWS account id, not {self.account_id!r}")


@dataclass(frozen=True)
class SkippedAccount:
    """A member account that is not audited, and why (suspended, closing, ...)."""

    account_id: str
    name: str
    state: str


def iot_regions(session: boto3.session.Session) -> list[str]:
    """Every region of the caller's partition where AWS IoT has an endpoint (botocore's data)."""
    partition = session.get_partition_for_region(session.region_name or "us-east-1")
    return session.get_available_regions("iot", partition_name=partition)


def iot_region_partitions(session: boto3.session.Session) -> dict[str, str]:
    """Every region where AWS IoT has an endpoint, in any partition, with its partition (botocore's
    data; no network call)."""
    return {region: partition for partition in session.get_available_partitions()
            for region in session.get_available_regions("iot", partition_name=partition)}


def parse_regions(text: str, session: boto3.session.Session) -> list[str]:
    """``all`` or a comma-separated list, checked against botocore's endpoint data."""
    if text.strip() == "all":
        return iot_regions(session)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise AccountsError("--regions wants a comma-separated list of regions, or all")
    partition_of = iot_region_partitions(session)
    unknown = [name for name in names if name not in partition_of]
    if unknown:
        raise AccountsError(f"--regions: AWS IoT has no endpoint in {', '.join(unknown)} "
                            "(botocore's endpoint data; --regions all audits every IoT region)")
    partitions = sorted({partition_of[name] for name in names})
    if len(partitions) > 1:
        # One set of credentials belongs to one partition: the other side could only fail.
        raise AccountsError(f"--regions: {', '.join(names)} span the partitions {', '.join(partitions)}; "
                            "audit each partition with its own credentials")
    return names


def role_account(role_arn: str) -> str:
    """The account of an IAM role ARN, or one clear error for something else."""
    match = ROLE_ARN.fullmatch(role_arn)
    if not match:
        raise AccountsError(f"--role-arn wants an IAM role ARN (arn:aws:iam::123456789012:role/NAME), not {role_arn!r}")
    return match.group(2)


def check_role_name(name: str) -> str:
    if not ROLE_NAME.fullmatch(name) or len(name) > 512:
        raise AccountsError(f"--organization wants the name of the role to assume in each account, not {name!r}")
    return name


def caller_identity(session: boto3.session.Session, endpoint_url: str | None) -> tuple[str, str]:
    """(account id, partition) of the caller's credentials."""
    try:
        identity = session.client("sts", endpoint_url=endpoint_url).get_caller_identity()
    except AWS_ERRORS as exc:
        raise AccountsError(f"cannot tell which account the credentials are in (sts:GetCallerIdentity): "
                            f"{aws_error_code(exc)}: {aws_error_message(exc)}") from exc
    return identity["Account"], identity["Arn"].split(":")[1]


def organization_accounts(session: boto3.session.Session, endpoint_url: str | None, role_name: str,
                          ) -> tuple[list[tuple[str, str | None]], list[SkippedAccount]]:
    """([(account id, role ARN or None for the caller's own account)], skipped accounts) of the
    caller's organization: every ACTIVE account by ``ListAccounts`` (paginated)."""
    caller, partition = caller_identity(session, endpoint_url)
    accounts: list[tuple[str, str | None]] = []
    skipped: list[SkippedAccount] = []
    try:
        pages = session.client("organizations", endpoint_url=endpoint_url).get_paginator("list_accounts").paginate()
        for page in pages:
            for account in page["Accounts"]:
                # ``State`` replaces ``Status`` (retired in 2026); both say ACTIVE for an account in use.
                state = account.get("State") or account.get("Status") or "UNKNOWN"
                if state != "ACTIVE":
                    skipped.append(SkippedAccount(account["Id"], account.get("Name", ""), state))
                elif account["Id"] == caller:
                    accounts.append((caller, None))
                else:
                    accounts.append((account["Id"], f"arn:{partition}:iam::{account['Id']}:role/{role_name}"))
    except AWS_ERRORS as exc:
        raise AccountsError(f"cannot list the organization's accounts (organizations:ListAccounts): "
                            f"{aws_error_code(exc)}: {aws_error_message(exc)}") from exc
    return accounts, skipped


@dataclass(frozen=True)
class AccountCredentials:
    """Who audits: the caller's profile, region and endpoint. Every account-region gets a fresh
    :class:`AwsTarget` (its own session and pacer: quotas are per account and region); a member
    account's target acts as its role (:meth:`AwsTarget.client` with ``role_arn``: STS
    AssumeRole, refreshed before the credentials expire)."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def caller_session(self, regions: Sequence[str] = ()) -> boto3.session.Session:
        """The caller's session, in its configured region; with none configured, in one of the
        ``regions`` audited (us-east-1 where listed, never a guess outside them): STS and
        Organizations need one at an ``--endpoint-url``, where botocore has no global endpoint."""
        session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        if session.region_name is None and regions:
            fallback = "us-east-1" if "us-east-1" in regions else regions[0]
            session = boto3.session.Session(profile_name=self.profile, region_name=fallback)
        return session

    def target(self, item: AccountRegion, max_attempts: int, rates: Mapping[str, float]) -> AwsTarget:
        return AwsTarget(region=item.region, profile=self.profile, endpoint_url=self.endpoint_url,
                         max_attempts=max_attempts, rates=rates)


def plan(credentials: AccountCredentials, regions: Sequence[str], role_arn: str | None = None,
         organization_role: str | None = None) -> tuple[list[AccountRegion], list[SkippedAccount]]:
    """The account-regions to audit (accounts in listing order, each with every region)."""
    session = credentials.caller_session(regions)
    if organization_role is not None:
        accounts, skipped = organization_accounts(session, credentials.endpoint_url, check_role_name(organization_role))
    elif role_arn is not None:
        accounts, skipped = [(role_account(role_arn), role_arn)], []
    else:
        accounts, skipped = [(caller_identity(session, credentials.endpoint_url)[0], None)], []
    if not accounts:  # never "0 account-regions, all clear": the caller's own account is always a member
        raise AccountsError("no account to audit: organizations:ListAccounts listed no ACTIVE account"
                            + (f" ({len(skipped)} in another state)" if skipped else
                               " (is the caller the management or a delegated administrator account of an organization?)"))
    try:
        return [AccountRegion(account, region, role) for account, role in accounts for region in regions], skipped
    except ValueError as exc:  # an endpoint that answered with an id AWS never gives
        raise AccountsError(f"cannot audit the accounts listed: {exc}") from exc
