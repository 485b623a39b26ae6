"""Findings: ``ListAuditFindings``, ``DescribeAuditFinding``, ``ListRelatedResourcesForAuditFinding``.

Related resources are the things attached to the finding's certificate when the audit ran. The
model has no THING resource type; a device connects with its thing name as MQTT client id
(AWS IoT's convention, which ``iot:Connection.Thing.IsAttached`` policies enforce), so each
attached thing is reported as resource type ``CLIENT_ID`` with ``clientId`` = the thing name and
``additionalInfo.thingName``. When the things could not be read during the audit there is none.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.models import AuditFinding
from devicedefender_audit.service.context import ServiceContext, as_utc, drop_none, page
from devicedefender_audit.service.errors import InvalidRequest, ResourceNotFound
from devicedefender_audit.service.shapes import check_request
from devicedefender_audit.suppressions import resource_key

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def related_resources(finding: AuditFinding) -> list[dict]:
    things = finding.non_compliant_resource.additional_info.get("things", "")
    if not things or things.startswith("unknown"):
        return []
    return [
        {"resourceType": "CLIENT_ID", "resourceIdentifier": {"clientId": thing},
         "additionalInfo": {"thingName": thing}}
        for thing in things.split(",")
    ]


def finding_shape(finding: AuditFinding) -> dict:
    """A stored finding as the model's ``AuditFinding`` (timestamps as datetimes, like boto3)."""
    shape = finding.model_dump(by_alias=True, exclude_none=True)
    related = related_resources(finding)
    if related:
        shape["relatedResources"] = related
    return shape


def _matching(ctx: ServiceContext, request: dict) -> Iterator[AuditFinding]:
    task_id = request.get("taskId")
    timed = "startTime" in request or "endTime" in request
    if bool(task_id) == timed:
        raise InvalidRequest("give either taskId or both startTime and endTime")
    if task_id:
        if ctx.store.get_task(task_id) is None:  # the operation declares no ResourceNotFoundException
            raise InvalidRequest(f"no audit task {task_id}")
        findings: Iterator[AuditFinding] = ctx.store.findings(task_id)
        start, end = _EPOCH, None
    else:
        if "startTime" not in request or "endTime" not in request:
            raise InvalidRequest("startTime and endTime go together")
        start, end = as_utc(request["startTime"]), as_utc(request["endTime"])
        findings = (f for t in ctx.store.tasks_started_between(_EPOCH, end) for f in ctx.store.findings(t.task_id))
    wanted_resource = resource_key(request["resourceIdentifier"]) if "resourceIdentifier" in request else None
    suppressed = request.get("listSuppressedFindings")
    for finding in findings:
        if end is not None and not start <= finding.finding_time <= end:
            continue
        if request.get("checkName") not in (None, finding.check_name):
            continue
        identifier = finding.non_compliant_resource.resource_identifier.to_aws()
        if wanted_resource is not None and resource_key(identifier) != wanted_resource:
            continue
        if suppressed is not None and finding.is_suppressed != suppressed:
            continue
        yield finding


def list_audit_findings(ctx: ServiceContext, **request: Any) -> dict:
    """``listSuppressedFindings`` absent lists both; true only suppressed; false only the others."""
    check_request("ListAuditFindings", request)
    result = page(_matching(ctx, request), "ListAuditFindings", request)
    return drop_none({"findings": [finding_shape(f) for f in result["items"]], "nextToken": result.get("nextToken")})


def _finding(ctx: ServiceContext, finding_id: str) -> AuditFinding:
    finding = ctx.store.get_finding(finding_id)
    if finding is None:
        raise ResourceNotFound(f"no audit finding {finding_id}")
    return finding


def describe_audit_finding(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DescribeAuditFinding", request)
    return {"finding": finding_shape(_finding(ctx, request["findingId"]))}


def list_related_resources_for_audit_finding(ctx: ServiceContext, **request: Any) -> dict:
    check_request("ListRelatedResourcesForAuditFinding", request)
    related = related_resources(_finding(ctx, request["findingId"]))
    result = page(related, "ListRelatedResourcesForAuditFinding", request)
    return drop_none({"relatedResources": result["items"], "nextToken": result.get("nextToken")})
