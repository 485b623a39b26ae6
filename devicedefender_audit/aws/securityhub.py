"""Sending ASFF findings to AWS Security Hub with ``BatchImportFindings``.

The API takes at most 100 findings per call and reports per-finding failures in
``FailedFindings`` rather than failing the call, so failures are collected and returned for the
caller to report: one rejected finding neither stops the others nor passes unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

#: ``BatchImportFindings`` accepts 1..100 findings per request.
BATCH_SIZE = 100


@dataclass
class ImportResult:
    success_count: int = 0
    #: ``FailedFindings`` entries as AWS returns them: ``Id``, ``ErrorCode``, ``ErrorMessage``.
    failed: list[dict[str, str]] = field(default_factory=list)
    batches: int = 0


def import_findings(securityhub: Any, findings: Sequence[dict[str, Any]]) -> ImportResult:
    """Import ``findings`` in batches of :data:`BATCH_SIZE`; per-finding failures are returned."""
    result = ImportResult()
    for start in range(0, len(findings), BATCH_SIZE):
        response = securityhub.batch_import_findings(Findings=list(findings[start:start + BATCH_SIZE]))
        result.batches += 1
        result.success_count += response.get("SuccessCount", 0)
        result.failed += response.get("FailedFindings", [])
    return result


def active_findings(securityhub: Any, product_arn: str, account_id: str, id_prefix: str) -> Iterator[dict[str, Any]]:
    """The ``ACTIVE`` findings of one product and account whose ``Id`` starts with
    ``id_prefix`` (``GetFindings``, 100 a page; the caller checks each again, as a filter that
    an endpoint ignores must not widen what it archives)."""
    filters = {"ProductArn": [{"Value": product_arn, "Comparison": "EQUALS"}],
               "AwsAccountId": [{"Value": account_id, "Comparison": "EQUALS"}],
               "Id": [{"Value": id_prefix, "Comparison": "PREFIX"}],
               "RecordState": [{"Value": "ACTIVE", "Comparison": "EQUALS"}]}
    for page in securityhub.get_paginator("get_findings").paginate(Filters=filters,
                                                                   PaginationConfig={"PageSize": 100}):
        yield from page.get("Findings", [])
