"""Mitigation actions for key-quality findings, with a dry run that changes nothing.

An action is an :class:`ActionDefinition`: a name, a type and the type's parameters, as
``CreateMitigationAction`` defines it. Every mutating AWS call goes through
:meth:`Mitigator._mutate`, which records it and, in a dry run, returns without calling AWS;
read-only calls (Describe/List) still run so the dry run can say precisely what it *would* do.
Each (finding, action) outcome is recorded as COMPLETED, FAILED or SKIPPED; one failing finding
never stops the others.

Applying an action is idempotent and safe under concurrency: before its first mutating call the
Mitigator claims (finding, definition digest) in the store with one atomic create-if-absent
write. The digest covers the action's type *and parameters*, so the same effect is never applied
twice (a re-run skips it, a second task running at the same time waits for it), while an action with
another SNS topic or thing group is a different action and runs. A claim is released when the
action fails or had nothing to do, so a later run tries again; actions also check current state
first (an INACTIVE certificate is not updated again). A real run that finds the change claimed by
a running task waits for it (up to :data:`HELD_WAIT_S`): applied there, it is skipped and the
finding's next actions go on; released (failed there), this run applies it itself. So a task's
actions keep their order whoever makes each change (its notification never goes out beside a
deactivation that failed in the other task), and none is dropped because the other task's
mapping lacked it. Still claimed after the wait, the action is ``FAILED`` (``CLAIM_HELD``) and
the finding's next actions are skipped, as after any failure.

Within a task, both modes record each mutating call's effect in a
:class:`~devicedefender_audit.mitigation_effects.RunEffects` and consult it before AWS and the
store, so a dry run plans exactly the calls the real run would make
(:mod:`~devicedefender_audit.mitigation_effects` says why).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, is_not_found
from devicedefender_audit.check_names import CA_CERTIFICATE, DEVICE_CERTIFICATE
from devicedefender_audit.liveness import STALE_AFTER_S
from devicedefender_audit.mitigation_claims import abandoned, new_claim, retake
from devicedefender_audit.mitigation_effects import RunEffects
from devicedefender_audit.models import (
    AuditFinding,
    MitigationActionType,
    MitigationExecution,
    MitigationStatus,
    PlannedCall,
    utcnow,
)
from devicedefender_audit.store import Store

INACTIVE_STATUSES = frozenset({"INACTIVE", "REVOKED"})
#: api_records kind of the (finding, action digest) claims.
CLAIM_KIND = "mitigation_claim"

#: How long a real run waits for a change another running task has claimed (one action's calls
#: take seconds), and how often it looks.
HELD_WAIT_S = 60.0
HELD_POLL_S = 0.5

#: The member of the model's ``MitigationActionParams`` that each action type is configured by.
PARAMS_MEMBER = {
    MitigationActionType.UPDATE_DEVICE_CERTIFICATE: "updateDeviceCertificateParams",
    MitigationActionType.UPDATE_CA_CERTIFICATE: "updateCACertificateParams",
    MitigationActionType.ADD_THINGS_TO_THING_GROUP: "addThingsToThingGroupParams",
    MitigationActionType.PUBLISH_FINDING_TO_SNS: "publishFindingToSnsParams",
}
#: The action types that act on each resource type's findings, as Device Defender allows them:
#: a CA certificate has no things, and each certificate kind has its own update action.
ACTIONS_FOR_RESOURCE = {
    DEVICE_CERTIFICATE: frozenset(PARAMS_MEMBER) - {MitigationActionType.UPDATE_CA_CERTIFICATE},
    CA_CERTIFICATE: frozenset({MitigationActionType.UPDATE_CA_CERTIFICATE, MitigationActionType.PUBLISH_FINDING_TO_SNS}),
}


#: A role ARN of the model's form, for checking an unstored definition's options with the model.
_ANY_ROLE = "arn:aws:iam::123456789012:role/mitigation"


@dataclass(frozen=True)
class ActionDefinition:
    """One mitigation action: its user-defined name and id, its type and the type's parameters
    (the content of the one ``MitigationActionParams`` member that the type uses)."""

    name: str
    action_id: str
    action_type: MitigationActionType
    params: Mapping[str, Any] = field(hash=False)
    role_arn: str | None = None

    @classmethod
    def from_action_params(cls, name: str, action_id: str, action_params: Mapping[str, Any],
                           role_arn: str | None = None) -> ActionDefinition:
        """A definition from the model's ``actionParams``; ``ValueError`` unless exactly one
        member this service can apply is set."""
        members = [member for member, value in action_params.items() if value is not None]
        by_member = {member: kind for kind, member in PARAMS_MEMBER.items()}
        if len(members) != 1:
            raise ValueError(f"actionParams must set exactly one member, not {members or 'none'}")
        if members[0] not in by_member:
            raise ValueError(f"{members[0]} acts on no finding of the checks this service runs; "
                             f"use one of {sorted(by_member)}")
        return cls(name, action_id, by_member[members[0]], dict(action_params[members[0]]), role_arn)

    @classmethod
    def for_type(cls, action_type: MitigationActionType, thing_group: str | None = None,
                 sns_topic_arn: str | None = None) -> ActionDefinition:
        """An unstored definition named after its type, for ``mitigate`` and the registration gate;
        its id is derived from its content, so the same options give the same id."""
        if action_type is MitigationActionType.ADD_THINGS_TO_THING_GROUP:
            if not thing_group:
                raise ValueError("ADD_THINGS_TO_THING_GROUP needs a thing group name (--thing-group)")
            params: dict[str, Any] = {"thingGroupNames": [thing_group]}
        elif action_type is MitigationActionType.PUBLISH_FINDING_TO_SNS:
            if not sns_topic_arn:
                raise ValueError("PUBLISH_FINDING_TO_SNS needs a topic ARN (--sns-topic-arn)")
            params = {"topicArn": sns_topic_arn}
        else:  # UPDATE_DEVICE_CERTIFICATE, UPDATE_CA_CERTIFICATE: the model's only action
            params = {"action": "DEACTIVATE"}
        draft = cls(action_type.value, "", action_type, params)
        definition = cls(draft.name, str(uuid.UUID(draft.digest[:32])), action_type, params)
        definition.check_with_model()
        return definition

    def check_with_model(self) -> None:
        """ValueError for options AWS would refuse (a thing group name's length and characters,
        a topic ARN's form): checked with CreateMitigationAction's shape, so that a dry run never
        plans a call AWS refuses (a role ARN of the right form stands in: an unstored definition
        acts with its caller's credentials)."""
        from devicedefender_audit.service.errors import InvalidRequest  # the service imports this module
        from devicedefender_audit.service.shapes import check_request

        try:
            check_request("CreateMitigationAction", {"actionName": self.name, "roleArn": _ANY_ROLE,
                                                     "actionParams": self.action_params})
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @property
    def action_params(self) -> dict[str, Any]:
        """The model's ``MitigationActionParams`` for this definition."""
        return {PARAMS_MEMBER[self.action_type]: dict(self.params)}

    @property
    def digest(self) -> str:
        """What the action does (type and parameters, not its name): the idempotency key."""
        content = json.dumps({"type": self.action_type.value, "params": self.params}, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()


class _Skip(Exception):
    """An action that has nothing to do for this finding."""


class _StillHeld(Exception):
    """A running task still held the change after :data:`HELD_WAIT_S`: not applied here."""


class _ClaimLost(_Skip):
    """Another task retook this task's claim (it took this one for gone: silent for
    :data:`~devicedefender_audit.liveness.STALE_AFTER_S`): the change is now
    that task's to make, so this one stops before its next mutating call."""


class _DoneInThisRun(_Skip):
    """An action whose effect an earlier finding's action of this run already made (or would
    make, in a dry run): the claim of this finding is recorded as applied too, so a later run
    does not make it again."""


class Mitigator:
    """Applies action definitions to findings through one gate for mutating calls.

    ``store`` (optional) records executions and holds the claims that make actions idempotent
    across runs and concurrent tasks; without one (the registration gate) only the current-state
    checks prevent repeats. ``effects`` is the task's record of what it changed: a task that
    acts through several Mitigators (one per role) gives them all the same one, since a change
    made under one role is in the account whichever role looks next.
    """

    def __init__(self, iot: Any, sns: Any, store: Store | None, dry_run: bool,
                 effects: RunEffects | None = None) -> None:
        self.iot = iot
        self.sns = sns
        self.store = store
        self.dry_run = dry_run
        self._calls: list[PlannedCall] = []
        self._effects = RunEffects() if effects is None else effects
        #: (claim, claim id) this execution holds in the store, checked before each mutating call.
        self._holding: tuple[str, str] | None = None
        #: Mutating calls of this execution that AWS answered (a real run's).
        self._answered = 0

    def apply(self, findings: Sequence[AuditFinding], actions: Sequence[ActionDefinition],
              task_id: str) -> list[MitigationExecution]:
        """Every action on every finding it acts on, recorded under ``task_id``."""
        return [self.execute(finding, action, task_id) for finding in findings for action in actions
                if action.action_type in ACTIONS_FOR_RESOURCE[finding.resource_type]]

    def execute(self, finding: AuditFinding, action: ActionDefinition, task_id: str) -> MitigationExecution:
        """Apply one action to one finding and record the outcome (never raises for an AWS error)."""
        execution = MitigationExecution(
            task_id=task_id,
            finding_id=finding.finding_id,
            action_name=action.name,
            action_id=action.action_id,
            action_type=action.action_type,
            status=MitigationStatus.COMPLETED,
            dry_run=self.dry_run,
        )
        self._calls, self._answered = [], 0
        claim = f"{finding.finding_id}/{action.digest}"
        try:
            if action.action_type not in ACTIONS_FOR_RESOURCE[finding.resource_type]:
                raise _Skip(f"{action.action_type.value} does not act on a {finding.resource_type} finding")
            held = self._claim(claim, task_id, action)
            self._holding = (claim, held) if held else None
            handler = {
                MitigationActionType.UPDATE_DEVICE_CERTIFICATE: self._deactivate_certificate,
                MitigationActionType.UPDATE_CA_CERTIFICATE: self._deactivate_ca_certificate,
                MitigationActionType.ADD_THINGS_TO_THING_GROUP: self._quarantine_things,
                MitigationActionType.PUBLISH_FINDING_TO_SNS: self._publish,
            }[action.action_type]
            execution.message = handler(finding, action)
            self._made(claim, action, task_id)
            if self.dry_run:
                execution.status = MitigationStatus.SKIPPED
                execution.message = f"dry run, nothing changed: would {execution.message}"
        except _Skip as skip:
            execution.status = MitigationStatus.SKIPPED
            execution.message = f"{'dry run: ' if self.dry_run else ''}skipped: {skip}"
            if isinstance(skip, _ClaimLost):
                self._holding = None  # the claim is the other task's now: not ours to release
            if isinstance(skip, _DoneInThisRun):
                self._made(claim, action, task_id)
        except _StillHeld as held:
            execution.status, execution.error_code, execution.message = MitigationStatus.FAILED, "CLAIM_HELD", str(held)
        except NoCredentialsError:
            raise  # one clear error for the whole run, not a FAILED record per finding
        except AWS_ERRORS as exc:
            execution.status = MitigationStatus.FAILED
            execution.error_code = aws_error_code(exc)
            execution.message = str(exc)
        except BaseException:  # interrupted (Ctrl-C, a stop): say what was done, then stop
            self._interrupted(execution, claim, action, task_id)
            raise
        finally:
            if self._holding is not None and self.store is not None:
                self.store.delete_record(CLAIM_KIND, claim)  # not applied: a later run tries again
            self._holding = None
        execution.calls = self._calls
        execution.end_time = utcnow()
        if self.store:
            self.store.record_execution(execution)
        return execution

    def _interrupted(self, execution: MitigationExecution, claim: str, action: ActionDefinition,
                     task_id: str) -> None:
        """Record an execution stopped midway, with the calls it made. A notification whose
        publish was made, answered or not, counts as sent (at most once per finding: a later run
        would send it again; the record says it may not have gone out); any other action's claim
        is released as on failure, since repeating its calls is harmless and its state checks
        skip what is done."""
        made = len(self._calls) if not self.dry_run else 0
        if action.action_type is MitigationActionType.PUBLISH_FINDING_TO_SNS and made:
            self._made(claim, action, task_id)
        execution.status, execution.error_code = MitigationStatus.FAILED, "INTERRUPTED"
        execution.message = (f"interrupted: {self._answered} of the {made} mutating call(s) made were answered"
                             + ("; the notification may not have gone out and is not sent again"
                                if action.action_type is MitigationActionType.PUBLISH_FINDING_TO_SNS and made else ""))
        execution.calls, execution.end_time = self._calls, utcnow()
        if self.store is not None:
            self.store.record_execution(execution)

    def _claim(self, key: str, task_id: str, action: ActionDefinition) -> str | None:
        """Take (finding, action digest) for this task, atomically, and return the claim's id;
        :class:`_Skip` when this run already made that change or an earlier run applied it;
        a claim of a running task is waited for (see the module doc), one whose run is gone is
        retaken (:mod:`~devicedefender_audit.mitigation_claims`). A dry run only looks (None),
        and skips what a running task holds without waiting."""
        made_by = self._effects.applied.get(key)
        if made_by is not None:
            raise _Skip(f"action {made_by} {'would already make' if self.dry_run else 'already made'} "
                        "the same change to this finding in this run")
        if self.store is None:
            return None
        body = new_claim(task_id, action.name)
        deadline = time.monotonic() + HELD_WAIT_S
        while True:
            if not self.dry_run and self.store.insert_record(CLAIM_KIND, key, body):
                return body["claimId"]
            holder = self.store.get_record(CLAIM_KIND, key)
            if holder is None:  # released since the insert failed: a real run tries again
                if self.dry_run:
                    return None
                continue
            if holder.get("state") == "APPLIED":
                raise _Skip(f"already applied by an earlier run (task {holder.get('taskId')})")
            if abandoned(holder):
                if self.dry_run:
                    return None  # its owner is gone: this task would apply it
                if retake(self.store, CLAIM_KIND, key, holder, body):
                    return body["claimId"]  # its owner is gone: this task applies it
                # Another retaker won (its claim is a running task's now): waited for as any.
            elif self.dry_run:
                raise _Skip(f"being applied by task {holder.get('taskId')}")
            if time.monotonic() >= deadline:
                raise _StillHeld(f"being applied by task {holder.get('taskId')} for more than {HELD_WAIT_S:.0f} s: "
                                 "not applied by this task (start it again once that task has ended)")
            time.sleep(HELD_POLL_S)

    def _check_still_held(self) -> None:
        """:class:`_ClaimLost` when another task retook the claim this execution holds."""
        if self._holding is None or self.store is None:
            return
        key, claim_id = self._holding
        holder = self.store.get_record(CLAIM_KIND, key)
        if holder is None or holder.get("claimId") != claim_id:
            by = f"task {holder.get('taskId')}" if holder else "another task"
            raise _ClaimLost(f"{by} retook the claim (this task was silent for over "
                             f"{STALE_AFTER_S // 60} minutes) and applies the change instead")

    def _made(self, claim: str, action: ActionDefinition, task_id: str) -> None:
        """The change ``claim`` names is in place (a dry run: would be): a later action of the
        same effect in this run skips it, and, when this run holds the claim, so do later runs."""
        self._effects.applied[claim] = action.name
        if self._holding is not None and self.store is not None:
            self.store.put_record(CLAIM_KIND, claim, {"taskId": task_id, "actionName": action.name,
                                                      "state": "APPLIED"})
            self._holding = None  # applied: nothing left to release

    def _mutate(self, finding: AuditFinding, client: Any, service: str, operation: str, /, **params: Any) -> Any:
        """The single gate for calls that change AWS state; records the call's effect for
        ``finding`` once it is made (a dry run: planned)."""
        if not self.dry_run:
            self._check_still_held()
        self._calls.append(PlannedCall(service=service, operation=operation, parameters=params))
        response = None if self.dry_run else getattr(client, operation)(**params)
        self._answered += not self.dry_run
        self._effects.record_call(operation, params, finding.finding_id)
        return response

    def _certificate_status(self, certificate_id: str) -> str:
        try:
            response = self.iot.describe_certificate(certificateId=certificate_id)
        except ClientError as exc:
            if is_not_found(exc):
                raise _Skip("certificate no longer exists") from exc
            raise
        return response["certificateDescription"]["status"]

    def _deactivate_certificate(self, finding: AuditFinding, action: ActionDefinition) -> str:
        self._skip_if_deactivated_in_this_run(finding.certificate_id, "certificate")
        status = self._certificate_status(finding.certificate_id)
        if status in INACTIVE_STATUSES:
            raise _Skip(f"certificate is already {status}")
        self._mutate(finding, self.iot, "iot", "update_certificate",
                     certificateId=finding.certificate_id, newStatus="INACTIVE")
        return f"set certificate {finding.certificate_id} from {status} to INACTIVE"

    def _deactivate_ca_certificate(self, finding: AuditFinding, action: ActionDefinition) -> str:
        """A deactivated CA registers no more devices; those it registered keep their status."""
        self._skip_if_deactivated_in_this_run(f"ca:{finding.certificate_id}", "CA certificate")
        try:
            status = self.iot.describe_ca_certificate(certificateId=finding.certificate_id)[
                "certificateDescription"]["status"]
        except ClientError as exc:
            if is_not_found(exc):
                raise _Skip("CA certificate no longer exists") from exc
            raise
        if status == "INACTIVE":
            raise _Skip("CA certificate is already INACTIVE")
        self._mutate(finding, self.iot, "iot", "update_ca_certificate",
                     certificateId=finding.certificate_id, newStatus="INACTIVE")
        return f"set CA certificate {finding.certificate_id} from {status} to INACTIVE"

    def _skip_if_deactivated_in_this_run(self, key: str, what: str) -> None:
        """:class:`_DoneInThisRun` when another finding's action of this run set the certificate
        ``key`` INACTIVE (a dry run: would have)."""
        by = self._effects.deactivated.get(key)
        if by is not None:
            raise _DoneInThisRun(f"{what} {'would already be' if self.dry_run else 'was already'} "
                                 f"set INACTIVE for finding {by} in this run")

    def _certificate_arn(self, finding: AuditFinding) -> str:
        if finding.certificate_arn:
            return finding.certificate_arn
        response = self.iot.describe_certificate(certificateId=finding.certificate_id)
        return response["certificateDescription"]["certificateArn"]

    def _ensure_group(self, finding: AuditFinding, name: str) -> None:
        if name in self._effects.groups:
            return
        try:
            self.iot.describe_thing_group(thingGroupName=name)
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            try:
                self._mutate(finding, self.iot, "iot", "create_thing_group", thingGroupName=name)
            except ClientError as exc:  # created meanwhile by a task or gate run beside this one
                if aws_error_code(exc) != "ResourceAlreadyExistsException":
                    raise
        else:
            self._effects.groups.add(name)

    def _quarantine_things(self, finding: AuditFinding, action: ActionDefinition) -> str:
        groups = list(action.params["thingGroupNames"])
        override = action.params.get("overrideDynamicGroups")
        arn = self._certificate_arn(finding)
        paginator = self.iot.get_paginator("list_principal_things")
        things = [t for page in paginator.paginate(principal=arn) for t in page.get("things", [])]
        if not things:
            raise _Skip("no things are attached to the certificate")
        pairs = [(group, thing) for group in groups for thing in things]
        fresh = [pair for pair in pairs if pair not in self._effects.members]
        if not fresh:  # another finding of the same certificate in this task did it
            earlier = sorted({self._effects.members[pair] for pair in pairs})
            raise _DoneInThisRun(f"thing(s) {', '.join(things)} {'would be' if self.dry_run else 'were'} already "
                                 f"added to thing group(s) {', '.join(groups)} for finding(s) {', '.join(earlier)}")
        extra = {} if override is None else {"overrideDynamicGroups": override}
        for group, thing in fresh:
            self._ensure_group(finding, group)
            self._mutate(finding, self.iot, "iot", "add_thing_to_thing_group", thingGroupName=group, thingName=thing,
                         **extra)
        return f"add {len(things)} thing(s) ({', '.join(things)}) to thing group(s) {', '.join(groups)}"

    def _publish(self, finding: AuditFinding, action: ActionDefinition) -> str:
        topic = action.params["topicArn"]
        self._mutate(
            finding,
            self.sns,
            "sns",
            "publish",
            TopicArn=topic,
            Subject=f"{finding.severity} {finding.check_name}: {finding.reason_for_non_compliance_code}"[:100],
            Message=json.dumps(finding.to_aws(), sort_keys=True),
        )
        return f"publish finding {finding.finding_id} to {topic}"
