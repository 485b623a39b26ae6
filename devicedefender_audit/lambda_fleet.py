"""AWS Lambda entry points of the organization fan-out (``infra/template.yaml``, ``FleetStateMachine``).

Where an organization outgrows one process, AWS Step Functions runs it: ``list_account_regions``
writes the account-regions to audit (``ListAccounts``, as ``run --organization``) to S3, and a
Distributed Map reads them and invokes ``audit_account_region`` once per account-region, each
audit in its own Lambda, with its own pacing and its own partition of the stack's DynamoDB table
(``dynamodb://TABLE/<account>/<region>``), exactly as ``run`` does in one process. A failure is
returned as that account-region's result (``exitCode`` 1 with the error), so the map's results
say which account-regions were and were not audited; a Lambda that times out is retried by the
state machine, and its audit resumes the inventory where the previous attempt stopped.

Settings, from the template: ``DDA_ORGANIZATION_ROLE`` (the role name in each member account),
``DDA_REGIONS`` (comma-separated or ``all``; default the function's region), ``DDA_FLEET_BUCKET``,
``DDA_FLEET_CONCURRENCY`` (the map's ``MaxConcurrencyPath``: a definition cannot take a number
from a template parameter), ``DDA_STORE`` (with ``?fleet-state=s3://...``, each partition's fleet
state, as for the single-account function), ``DDA_WORKERS``, ``DDA_SNS_TOPIC_ARN``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import boto3

from devicedefender_audit.accounts import (
    AccountCredentials,
    AccountRegion,
    AccountsError,
    parse_regions,
    plan,
    role_account,
)
from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.aws.pacing import DEFAULT_RATES
from devicedefender_audit.checks import make_checks
from devicedefender_audit.detectors import Detector, default_detectors
from devicedefender_audit.fleet_run import AccountRegionResult, FleetRun
from devicedefender_audit.lambda_audit import configured_checks, notify, summary
from devicedefender_audit.store import StoreError, open_store, partition_location


@functools.cache
def _detectors() -> list[Detector]:
    return default_detectors()


def _regions(env: Mapping[str, str]) -> list[str]:
    text = env.get("DDA_REGIONS", "").strip()
    return parse_regions(text, boto3.session.Session()) if text else [env["AWS_REGION"]]


def list_account_regions(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Write the organization's account-regions to S3 for the Distributed Map; where they are.

    The list goes to S3 rather than into the state's input, which Step Functions caps at 256 KB
    (about 2,500 account-regions).
    """
    env = os.environ
    items, skipped = plan(AccountCredentials(), _regions(env), organization_role=env["DDA_ORGANIZATION_ROLE"])
    run = str((event or {}).get("executionName") or "manual")
    key = f"runs/{run}/account-regions.json"
    body = [{"accountId": i.account_id, "region": i.region, "roleArn": i.role_arn} for i in items]
    boto3.client("s3").put_object(Bucket=env["DDA_FLEET_BUCKET"], Key=key, Body=json.dumps(body).encode(),
                                  ContentType="application/json")
    return {"bucket": env["DDA_FLEET_BUCKET"], "key": key, "count": len(items),
            "maxConcurrency": int(env.get("DDA_FLEET_CONCURRENCY", "20")),
            "skippedAccounts": [{"accountId": s.account_id, "state": s.state} for s in skipped]}


def _report(result: AccountRegionResult) -> dict[str, Any]:
    """What the map keeps of one account-region: the audit's summary, where it is kept, and the
    error when it could not run."""
    report: dict[str, Any] = {"taskId": None, "taskStatus": "FAILED", "findings": []}
    if result.task is not None:
        report = summary(result.task, result.findings)
    report.update({"accountId": result.target.account_id, "region": result.target.region,
                   "roleArn": result.target.role_arn, "store": result.store, "exitCode": result.exit_code})
    if result.error_code:
        report.update({"errorCode": result.error_code, "message": result.message})
    return report


def audit_account_region(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Audit one ``{"accountId", "region", "roleArn"}`` (``roleArn`` null: this function's own
    account and credentials); notify the stack's topic when it found something or could not
    finish."""
    env = os.environ
    try:
        item = AccountRegion(str(event["accountId"]), str(event["region"]), event.get("roleArn") or None)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an account-region item ({{accountId, region, roleArn}}): {event!r}") from exc
    try:
        role_owner = role_account(item.role_arn) if item.role_arn else item.account_id
    except AccountsError as exc:
        raise ValueError(str(exc)) from exc
    if role_owner != item.account_id:
        # The audit would read the role's account into this account's partition.
        raise ValueError(f"roleArn {item.role_arn} is not a role of account {item.account_id}")
    where = partition_location(env.get("DDA_STORE", "/tmp/audits.sqlite3"), item.account_id, item.region)
    try:
        store = open_store(where, AwsTarget() if where.startswith("dynamodb:") else None)
    except StoreError as exc:
        report = _report(AccountRegionResult(item, "-", error_code="STORE_ERROR", message=str(exc)))
    else:
        detectors = _detectors()
        # As the single-account Lambda: the checks the partition's audit configuration enables, else all.
        fleet = FleetRun(AccountCredentials(), lambda _: (where, store), detectors,
                         make_checks(configured_checks(store), detectors), workers=int(env.get("DDA_WORKERS", "8")),
                         parallel=1, rates=dict(DEFAULT_RATES))
        report = _report(fleet.audit(item))
    topic = env.get("DDA_SNS_TOPIC_ARN")
    if topic and report["exitCode"] != 0:
        notify(topic, report, f"devicedefender-audit {item.account_id} {item.region}")
    return report
