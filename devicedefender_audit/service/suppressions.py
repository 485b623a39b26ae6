"""Audit suppressions: create, describe, update, delete, list.

A suppression is stored once per (check, resource) (:func:`~devicedefender_audit.suppressions.
suppression_key`) and applied by the audit engine to the audits that start while it is active:
their findings on that resource are ``isSuppressed`` and counted in
``suppressedNonCompliantResourcesCount``. An expired suppression stays visible here (with its
past ``expirationDate``) but no longer applies. ``clientRequestToken`` makes a repeated create
with the same token and the same request a no-op, as the API promises; the same token for another
suppression is refused ("each audit suppression must have a unique client request token"). The
check must be one this service runs (a misspelt name would suppress nothing, silently).
"""

from __future__ import annotations

from typing import Any

from devicedefender_audit.service.configuration import require_supported
from devicedefender_audit.service.context import ServiceContext, as_utc, drop_none, from_epoch, page
from devicedefender_audit.service.errors import (
    InvalidRequest,
    ResourceAlreadyExists,
    ResourceNotFound,
    ServiceError,
)
from devicedefender_audit.service.shapes import check_request, fill_idempotency_tokens
from devicedefender_audit.suppressions import SUPPRESSION_KIND, resource_key, suppression_key


def _lifetime(ctx: ServiceContext, request: dict, stored: dict | None = None) -> dict:
    """``expirationDate`` (epoch seconds) and ``suppressIndefinitely`` after this request."""
    indefinitely, expiration = request.get("suppressIndefinitely"), request.get("expirationDate")
    if indefinitely and expiration is not None:
        raise InvalidRequest("give expirationDate or suppressIndefinitely, not both")
    if expiration is not None:
        moment = as_utc(expiration)
        if moment <= ctx.now():
            raise InvalidRequest("expirationDate must be in the future")
        return {"expirationDate": moment.timestamp(), "suppressIndefinitely": False}
    if indefinitely:
        return {"expirationDate": None, "suppressIndefinitely": True}
    if indefinitely is not None:
        if not (stored or {}).get("expirationDate"):
            raise InvalidRequest("a suppression that is not indefinite needs an expirationDate")
        return {"suppressIndefinitely": False}
    if stored is None:
        raise InvalidRequest("give expirationDate or suppressIndefinitely")
    return {}


def _shape(body: dict) -> dict:
    return drop_none({
        "checkName": body["checkName"],
        "resourceIdentifier": body["resourceIdentifier"],
        "expirationDate": from_epoch(body.get("expirationDate")),
        "suppressIndefinitely": body.get("suppressIndefinitely"),
        "description": body.get("description"),
    })


def _stored(ctx: ServiceContext, request: dict,
            missing: type[ServiceError] = ResourceNotFound) -> tuple[str, dict]:
    key = suppression_key(request["checkName"], request["resourceIdentifier"])
    body = ctx.store.get_record(SUPPRESSION_KIND, key)
    if body is None:
        raise missing(f"no suppression of {request['checkName']} for "
                               f"{resource_key(request['resourceIdentifier'])}")
    return key, body


def create_audit_suppression(ctx: ServiceContext, **request: Any) -> dict:
    fill_idempotency_tokens("CreateAuditSuppression", request)
    check_request("CreateAuditSuppression", request)
    require_supported([request["checkName"]])
    key = suppression_key(request["checkName"], request["resourceIdentifier"])
    token = request["clientRequestToken"]
    if any(k != key and b.get("clientRequestToken") == token for k, b in ctx.store.records(SUPPRESSION_KIND)):
        raise InvalidRequest(f"clientRequestToken {token} was given for another suppression; "
                             "each suppression needs its own token")
    body = {
        "checkName": request["checkName"],
        "resourceIdentifier": dict(request["resourceIdentifier"]),
        "description": request.get("description"),
        "clientRequestToken": request["clientRequestToken"],
        **_lifetime(ctx, request),
    }
    if ctx.store.insert_record(SUPPRESSION_KIND, key, body):
        return {}
    existing = ctx.store.get_record(SUPPRESSION_KIND, key) or {}
    if existing == body:  # the same request again, same token: the API's idempotent retry
        return {}
    raise ResourceAlreadyExists(f"a suppression of {request['checkName']} for "
                                f"{resource_key(request['resourceIdentifier'])} exists")


def describe_audit_suppression(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DescribeAuditSuppression", request)
    return _shape(_stored(ctx, request)[1])


def update_audit_suppression(ctx: ServiceContext, **request: Any) -> dict:
    check_request("UpdateAuditSuppression", request)
    key, body = _stored(ctx, request)
    body.update(_lifetime(ctx, request, body))
    if "description" in request:
        body["description"] = request["description"]
    ctx.store.put_record(SUPPRESSION_KIND, key, body)
    return {}


def delete_audit_suppression(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DeleteAuditSuppression", request)
    key, _ = _stored(ctx, request, missing=InvalidRequest)  # the operation declares no ResourceNotFoundException
    ctx.store.delete_record(SUPPRESSION_KIND, key)
    return {}


def list_audit_suppressions(ctx: ServiceContext, **request: Any) -> dict:
    """Ordered by expiration date (indefinite ones after every dated one), ascending unless
    ``ascendingOrder`` is false."""
    check_request("ListAuditSuppressions", request)
    wanted = resource_key(request["resourceIdentifier"]) if "resourceIdentifier" in request else None
    bodies = [
        body for _, body in ctx.store.records(SUPPRESSION_KIND)
        if request.get("checkName") in (None, body["checkName"])
        and wanted in (None, resource_key(body["resourceIdentifier"]))
    ]
    bodies.sort(key=lambda b: b.get("expirationDate") or float("inf"),
                reverse=request.get("ascendingOrder") is False)
    result = page(bodies, "ListAuditSuppressions", request)
    return drop_none({"suppressions": [_shape(b) for b in result["items"]], "nextToken": result.get("nextToken")})
