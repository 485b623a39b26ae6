"""Mitigation action definitions: ``CreateMitigationAction``, ``DescribeMitigationAction``,
``UpdateMitigationAction``, ``DeleteMitigationAction``, ``ListMitigationActions``.

An action has a user-defined ``actionName``, a generated ``actionId``, a ``roleArn`` (assumed for the
action's calls when the service assumes roles, see :mod:`~devicedefender_audit.service.context`) and ``actionParams`` with exactly one
member, which fixes its type. Only the types that act on this service's findings are accepted
(``UPDATE_DEVICE_CERTIFICATE``, ``UPDATE_CA_CERTIFICATE``, ``ADD_THINGS_TO_THING_GROUP``,
``PUBLISH_FINDING_TO_SNS``); an update may change the parameters but not the type.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.mitigation import ActionDefinition
from devicedefender_audit.service.context import ServiceContext, drop_none, page
from devicedefender_audit.service.errors import InvalidRequest, ResourceAlreadyExists, ResourceNotFound
from devicedefender_audit.service.shapes import check_request
from devicedefender_audit.store import Store

ACTION_KIND = "mitigation_action"


def _definition(name: str, action_id: str, action_params: dict, role_arn: str | None) -> ActionDefinition:
    try:
        return ActionDefinition.from_action_params(name, action_id, action_params, role_arn)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def stored_action(store: Store, name: str) -> dict | None:
    """The stored body of the action called ``name``, if any."""
    return store.get_record(ACTION_KIND, name)


def definition_of(body: dict) -> ActionDefinition:
    """A stored action as the :class:`ActionDefinition` the Mitigator applies."""
    return ActionDefinition.from_action_params(body["actionName"], body["actionId"], body["actionParams"],
                                               body.get("roleArn"))


def create_mitigation_action(ctx: ServiceContext, **request: Any) -> dict:
    check_request("CreateMitigationAction", request)
    name = request["actionName"]
    definition = _definition(name, str(uuid.uuid4()), request["actionParams"], request["roleArn"])
    now = ctx.now().timestamp()
    body = drop_none({
        "actionName": name,
        "actionType": definition.action_type.value,
        "actionArn": ctx.arn(f"mitigationaction/{name}"),
        "actionId": definition.action_id,
        "roleArn": request["roleArn"],
        "actionParams": definition.action_params,
        "tags": request.get("tags"),
        "creationDate": now,
        "lastModifiedDate": now,
    })
    if not ctx.store.insert_record(ACTION_KIND, name, body):
        raise ResourceAlreadyExists(f"mitigation action {name} exists")
    return {"actionArn": body["actionArn"], "actionId": body["actionId"]}


def _existing(ctx: ServiceContext, name: str) -> dict:
    body = stored_action(ctx.store, name)
    if body is None:
        raise ResourceNotFound(f"no mitigation action {name}")
    return body


def _moment(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc)


def describe_mitigation_action(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DescribeMitigationAction", request)
    body = _existing(ctx, request["actionName"])
    return {
        "actionName": body["actionName"],
        "actionType": body["actionType"],
        "actionArn": body["actionArn"],
        "actionId": body["actionId"],
        "roleArn": body["roleArn"],
        "actionParams": body["actionParams"],
        "creationDate": _moment(body["creationDate"]),
        "lastModifiedDate": _moment(body["lastModifiedDate"]),
    }


def update_mitigation_action(ctx: ServiceContext, **request: Any) -> dict:
    check_request("UpdateMitigationAction", request)
    body = _existing(ctx, request["actionName"])
    role = request.get("roleArn", body["roleArn"])
    params = request.get("actionParams", body["actionParams"])
    definition = _definition(body["actionName"], body["actionId"], params, role)
    if definition.action_type.value != body["actionType"]:
        raise InvalidRequest(f"mitigation action {body['actionName']} is {body['actionType']}; its type cannot "
                             f"change to {definition.action_type.value} (create another action)")
    body.update(roleArn=role, actionParams=definition.action_params, lastModifiedDate=ctx.now().timestamp())
    ctx.store.put_record(ACTION_KIND, body["actionName"], body)
    return {"actionArn": body["actionArn"], "actionId": body["actionId"]}


def delete_mitigation_action(ctx: ServiceContext, **request: Any) -> dict:
    """Deleting an action that does not exist succeeds, as the model declares no not-found error;
    tasks already started keep the definition they were started with."""
    check_request("DeleteMitigationAction", request)
    ctx.store.delete_record(ACTION_KIND, request["actionName"])
    return {}


def list_mitigation_actions(ctx: ServiceContext, **request: Any) -> dict:
    check_request("ListMitigationActions", request)
    bodies = [body for _, body in ctx.store.records(ACTION_KIND)
              if request.get("actionType") in (None, body["actionType"])]
    result = page(bodies, request.get("nextToken"), request.get("maxResults"), default=25,
                  query={"operation": "ListMitigationActions", **request})
    return drop_none({
        "actionIdentifiers": [
            {"actionName": b["actionName"], "actionArn": b["actionArn"], "creationDate": _moment(b["creationDate"])}
            for b in result["items"]
        ],
        "nextToken": result.get("nextToken"),
    })
