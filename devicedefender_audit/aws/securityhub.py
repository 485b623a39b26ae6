"""Sending ASFF findings to AWS Security Hub (``BatchImportFindings``), finding this tool's
(``GetFindings``) and setting their workflow as a customer does (``BatchUpdateFindings``).

Both batch APIs take at most 100 findings per call and report per-finding failures in the
answer rather than failing the call, so failures are collected and returned for the caller to
report: one rejected finding neither stops the others nor passes unnoticed. A call that fails as
a whole (denied, throttled past the retries, no connection) ends its series; what the batches
before it did is kept and reported beside the error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message

T = TypeVar("T")

#: ``BatchImportFindings`` and ``BatchUpdateFindings`` accept 1..100 findings per request.
BATCH_SIZE = 100


@dataclass
class BatchResult:
    """What a series of batch calls did."""

    success_count: int = 0
    #: The findings refused, each as ``Id``, ``ErrorCode``, ``ErrorMessage`` (``BatchImportFindings``'
    #: ``FailedFindings`` entries; ``BatchUpdateFindings``' ``UnprocessedFindings`` in that shape,
    #: with the finding's ``ProductArn``).
    failed: list[dict[str, str]] = field(default_factory=list)
    batches: int = 0
    #: Why a call failed as a whole (``securityhub:Operation: Code: message``); the findings of
    #: its batch and of those after it were not sent.
    error: str | None = None
    #: The ``Id`` of each finding a ``BatchUpdateFindings`` call processed.
    processed: set[str] = field(default_factory=set)


def batches(items: Iterable[T], size: int = BATCH_SIZE) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), drawn as they are needed: an audit
    of a fleet with many weak keys never holds all its ASFF findings, or Security Hub's, at once."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def import_findings(securityhub: Any, findings: Iterable[dict[str, Any]]) -> BatchResult:
    """Import ``findings`` in batches of :data:`BATCH_SIZE`; per-finding failures are returned."""
    result = BatchResult()
    for batch in batches(findings):
        try:
            response = securityhub.batch_import_findings(Findings=batch)
        except AWS_ERRORS as exc:
            result.error = call_error("BatchImportFindings", exc)
            break
        result.batches += 1
        result.success_count += response.get("SuccessCount", 0)
        result.failed += response.get("FailedFindings", [])
    return result


def own_findings(securityhub: Any, product_arn: str, account_id: str, id_prefix: str) -> Iterator[dict[str, Any]]:
    """The findings, active and archived, of one product and account whose ``Id`` starts with
    ``id_prefix`` (``GetFindings``, 100 a page; the caller checks each again, as a filter that
    an endpoint ignores must not widen what it changes). Archived ones are wanted too: one that
    an audit reports again comes back with the workflow it had (Security Hub deletes findings 90
    days after their last update, which bounds them)."""
    filters = {"ProductArn": [{"Value": product_arn, "Comparison": "EQUALS"}],
               "AwsAccountId": [{"Value": account_id, "Comparison": "EQUALS"}],
               "Id": [{"Value": id_prefix, "Comparison": "PREFIX"}]}
    for page in securityhub.get_paginator("get_findings").paginate(Filters=filters,
                                                                   PaginationConfig={"PageSize": 100}):
        yield from page.get("Findings", [])


#: ``UnprocessedFindings`` codes a later attempt may not meet: Security Hub answers
#: ``ConcurrentUpdateError`` when an update meets an import still being processed, and the sync
#: updates findings it has just imported. Such findings are sent once more after
#: :data:`RETRY_PAUSE` seconds; a second refusal is reported (the next sync tries again).
TRANSIENT_CODES = frozenset({"ConcurrentUpdateError", "InternalFailure"})
RETRY_PAUSE = 2.0


def update_workflow(securityhub: Any, findings: Iterable[dict[str, Any]], status: str,
                    note: dict[str, str]) -> BatchResult:
    """Set the workflow status of ``findings`` (``Id`` and ``ProductArn``, as ``GetFindings``
    returns them) to ``status`` with ``note`` (``Text`` and ``UpdatedBy``), in batches of
    :data:`BATCH_SIZE`; the findings Security Hub did not process, after one more attempt for
    those refused for a passing reason (:data:`TRANSIENT_CODES`), are returned as failures."""
    result = _update_workflow(securityhub, findings, status, note)
    transient = [failure for failure in result.failed if failure["ErrorCode"] in TRANSIENT_CODES]
    if transient and result.error is None:
        time.sleep(RETRY_PAUSE)
        again = _update_workflow(securityhub, transient, status, note)
        result.failed = [failure for failure in result.failed if failure not in transient] + again.failed
        result.success_count += again.success_count
        result.processed |= again.processed
        result.batches += again.batches
        result.error = again.error
    return result


def _update_workflow(securityhub: Any, findings: Iterable[dict[str, Any]], status: str,
                     note: dict[str, str]) -> BatchResult:
    result = BatchResult()
    for batch in batches(findings):
        identifiers = [{"Id": f["Id"], "ProductArn": f["ProductArn"]} for f in batch]
        try:
            response = securityhub.batch_update_findings(FindingIdentifiers=identifiers, Workflow={"Status": status},
                                                         Note=note)
        except AWS_ERRORS as exc:
            result.error = call_error("BatchUpdateFindings", exc)
            break
        result.batches += 1
        result.success_count += len(response.get("ProcessedFindings", []))
        result.processed.update(f.get("Id", "") for f in response.get("ProcessedFindings", []))
        result.failed += [{**{key: (u.get("FindingIdentifier") or {}).get(key, "") for key in ("Id", "ProductArn")},
                           "ErrorCode": u.get("ErrorCode", ""), "ErrorMessage": u.get("ErrorMessage", "")}
                          for u in response.get("UnprocessedFindings", [])]
    return result


def call_error(operation: str, exc: Exception) -> str:
    """One line for a Security Hub call that failed as a whole, naming the call."""
    return f"securityhub:{operation}: {aws_error_code(exc)}: {aws_error_message(exc)}"
