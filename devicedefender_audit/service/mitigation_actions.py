"""Mitigation action definitions: ``CreateMitigationAction``, ``DescribeMitigationAction``,
``UpdateMitigationAction``, ``DeleteMitigationAction``, ``ListMitigationActions``.

An action has a user-defined ``actionName``, a generated ``actionId``, a ``roleArn`` (assumed for the
action's calls when the service assumes roles, see :mod:`~devicedefender_audit.service.context`) and ``actionParams`` with exactly one
member, which fixes its type; an update may change the parameters but not the type.

Every type of the model is accepted, as Device Defender defines an action apart from any check
("Only certain types of mitigation actions can be applied to specific check names"): an
account's setup script that also creates ``REPLACE_DEFAULT_POLICY_VERSION`` or
``ENABLE_IOT_LOGGING`` actions runs here unchanged. Only ``UPDATE_DEVICE_CERTIFICATE``,
``UPDATE_CA_CERTIFICATE``, ``ADD_THINGS_TO_THING_GROUP`` and ``PUBLISH_FINDING_TO_SNS`` act on the
checks this service runs, so a task that maps another type to one of them is refused
(:mod:`~devicedefender_audit.service.mitigation_tasks`). An account holds at most
:data:`MAX_ACTIONS` actions (Device Defender's quota, not adjustable): one more is
``LimitExceededException``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.mitigation import PARAMS_MEMBER, ActionDefinition
from devicedefender_audit.service.context import ServiceContext, drop_none, page
from devicedefender_audit.service.errors import InvalidRequest, LimitExceeded, ResourceAlreadyExists, ResourceNotFound
from devicedefender_audit.service.shapes import check_request
from devicedefender_audit.store import Store

ACTION_KIND = "mitigation_action"
#: Device Defender's "Mitigation actions" quota (L-1A084077): 100, not adjustable.
MAX_ACTIONS = 100
#: Every member of the model's ``MitigationActionParams`` and the ``MitigationActionType`` it defines.
ACTION_TYPE_OF_MEMBER = {
    **{member: kind.value for kind, member in PARAMS_MEMBER.items()},  # the types the Mitigator applies
    "replaceDefaultPolicyVersionParams": "REPLACE_DEFAULT_POLICY_VERSION",
    "enableIoTLoggingParams": "ENABLE_IOT_LOGGING",
}
#: The types that act on a finding of the checks this service runs (the Mitigator applies them).
APPLICABLE_TYPES = frozenset(kind.value for kind in PARAMS_MEMBER)


def _typed_params(name: str, action_id: str, action_params: dict, role_arn: str | None) -> tuple[str, dict]:
    """The action's type and its ``actionParams`` as stored: through :class:`ActionDefinition` for
    the types this service applies, as given (already checked against the model) for the others."""
    members = [member for member, value in action_params.items() if value is not None]
    if len(members) != 1:
        raise InvalidRequest(f"actionParams must set exactly one member, not {members or 'none'}")
    action_type = ACTION_TYPE_OF_MEMBER[members[0]]  # check_request refused members the model lacks
    if action_type == "ENABLE_IOT_LOGGING" and action_params[members[0]].get("logLevel") == "DISABLED":
        raise InvalidRequest("ENABLE_IOT_LOGGING: \"You cannot specify a logging level of DISABLED\"")
    if action_type not in APPLICABLE_TYPES:
        return action_type, {members[0]: dict(action_params[members[0]])}
    try:
        definition = ActionDefinition.from_action_params(name, action_id, action_params, role_arn)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return action_type, definition.action_params


def stored_action(store: Store, name: str) -> dict | None:
    """The stored body of the action called ``name``, if any."""
    return store.get_record(ACTION_KIND, name)


def definition_of(body: dict) -> ActionDefinition:
    """A stored action as the :class:`ActionDefinition` the Mitigator applies (its type is one of
    :data:`APPLICABLE_TYPES`)."""
    return ActionDefinition.from_action_params(body["actionName"], body["actionId"], body["actionParams"],
                                               body.get("roleArn"))


def create_mitigation_action(ctx: ServiceContext, **request: Any) -> dict:
    check_request("CreateMitigationAction", request)
    name, action_id = request["actionName"], str(uuid.uuid4())
    action_type, params = _typed_params(name, action_id, request["actionParams"], request["roleArn"])
    if stored_action(ctx.store, name) is not None:
        raise ResourceAlreadyExists(f"mitigation action {name} exists")
    if len(ctx.store.records(ACTION_KIND)) >= MAX_ACTIONS:
        raise LimitExceeded(f"the account has {MAX_ACTIONS} mitigation actions, Device Defender's limit: "
                            "delete one first")
    now = ctx.now().timestamp()
    body = drop_none({
        "actionName": name,
        "actionType": action_type,
        "actionArn": ctx.arn(f"mitigationaction/{name}"),
        "actionId": action_id,
        "roleArn": request["roleArn"],
        "actionParams": params,
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
    action_type, params = _typed_params(body["actionName"], body["actionId"], params, role)
    if action_type != body["actionType"]:
        raise InvalidRequest(f"mitigation action {body['actionName']} is {body['actionType']}; its type cannot "
                             f"change to {action_type} (create another action)")
    body.update(roleArn=role, actionParams=params, lastModifiedDate=ctx.now().timestamp())
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
    result = page(bodies, "ListMitigationActions", request)
    return drop_none({
        "actionIdentifiers": [
            {"actionName": b["actionName"], "actionArn": b["actionArn"], "creationDate": _moment(b["creationDate"])}
            for b in result["items"]
        ],
        "nextToken": result.get("nextToken"),
    })
