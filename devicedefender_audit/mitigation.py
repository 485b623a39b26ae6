"""Mitigation actions for key-quality findings, with a dry run that changes nothing.

Every mutating AWS call goes through :meth:`Mitigator._mutate`, which records it and, in a dry
run, returns without calling AWS; read-only calls (Describe/List) still run so the dry run can
say precisely what it *would* do. Each (finding, action) outcome is recorded as SUCCEEDED,
FAILED or SKIPPED; an action that already succeeded for a finding is skipped on a re-run, and
actions check current state first (an INACTIVE certificate is not updated again), so re-running
is idempotent. One failing finding never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, is_not_found
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


@dataclass(frozen=True)
class MitigationConfig:
    actions: tuple[MitigationActionType, ...]
    thing_group: str | None = None
    sns_topic_arn: str | None = None

    def validate(self) -> None:
        if MitigationActionType.ADD_THINGS_TO_THING_GROUP in self.actions and not self.thing_group:
            raise ValueError("ADD_THINGS_TO_THING_GROUP needs a thing group name (--thing-group)")
        if MitigationActionType.PUBLISH_FINDINGS_TO_SNS in self.actions and not self.sns_topic_arn:
            raise ValueError("PUBLISH_FINDINGS_TO_SNS needs a topic ARN (--sns-topic-arn)")


class _Skip(Exception):
    """An action that has nothing to do for this finding."""


class Mitigator:
    def __init__(self, iot: Any, sns: Any, store: Store | None, dry_run: bool) -> None:
        self.iot = iot
        self.sns = sns
        self.store = store
        self.dry_run = dry_run
        self._groups_ready: set[str] = set()
        self._calls: list[PlannedCall] = []

    def apply(self, findings: Sequence[AuditFinding], config: MitigationConfig) -> list[MitigationExecution]:
        config.validate()
        executions = []
        for finding in findings:
            for action in config.actions:
                execution = self._execute(finding, action, config)
                if self.store:
                    self.store.record_execution(execution)
                executions.append(execution)
        return executions

    def _execute(
        self, finding: AuditFinding, action: MitigationActionType, config: MitigationConfig
    ) -> MitigationExecution:
        execution = MitigationExecution(
            task_id=finding.task_id,
            finding_id=finding.finding_id,
            action_name=action,
            status=MitigationStatus.SUCCEEDED,
            dry_run=self.dry_run,
        )
        self._calls = []
        try:
            if self.store and self.store.already_succeeded(finding.finding_id, action.value):
                raise _Skip("already applied by an earlier run")
            handler = {
                MitigationActionType.UPDATE_DEVICE_CERTIFICATE: self._deactivate_certificate,
                MitigationActionType.ADD_THINGS_TO_THING_GROUP: self._quarantine_things,
                MitigationActionType.PUBLISH_FINDINGS_TO_SNS: self._publish,
            }[action]
            execution.message = handler(finding, config)
            if self.dry_run:
                execution.status = MitigationStatus.SKIPPED
                execution.message = f"dry run, nothing changed: would {execution.message}"
        except _Skip as skip:
            execution.status = MitigationStatus.SKIPPED
            execution.message = f"{'dry run: ' if self.dry_run else ''}skipped: {skip}"
        except NoCredentialsError:
            raise  # one clear error for the whole run, not a FAILED record per finding
        except AWS_ERRORS as exc:
            execution.status = MitigationStatus.FAILED
            execution.error_code = aws_error_code(exc)
            execution.message = str(exc)
        execution.calls = self._calls
        execution.end_time = utcnow()
        return execution

    def _mutate(self, client: Any, service: str, operation: str, **params: Any) -> Any:
        """The single gate for calls that change AWS state."""
        self._calls.append(PlannedCall(service=service, operation=operation, parameters=params))
        if self.dry_run:
            return None
        return getattr(client, operation)(**params)

    def _certificate_status(self, certificate_id: str) -> str:
        try:
            response = self.iot.describe_certificate(certificateId=certificate_id)
        except ClientError as exc:
            if is_not_found(exc):
                raise _Skip("certificate no longer exists") from exc
            raise
        return response["certificateDescription"]["status"]

    def _deactivate_certificate(self, finding: AuditFinding, config: MitigationConfig) -> str:
        status = self._certificate_status(finding.certificate_id)
        if status in INACTIVE_STATUSES:
            raise _Skip(f"certificate is already {status}")
        self._mutate(self.iot, "iot", "update_certificate",
                     certificateId=finding.certificate_id, newStatus="INACTIVE")
        return f"set certificate {finding.certificate_id} from {status} to INACTIVE"

    def _certificate_arn(self, finding: AuditFinding) -> str:
        if finding.certificate_arn:
            return finding.certificate_arn
        response = self.iot.describe_certificate(certificateId=finding.certificate_id)
        return response["certificateDescription"]["certificateArn"]

    def _ensure_group(self, name: str) -> None:
        if name in self._groups_ready:
            return
        try:
            self.iot.describe_thing_group(thingGroupName=name)
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            self._mutate(self.iot, "iot", "create_thing_group", thingGroupName=name)
        # In a dry run the group "would exist" from here on, so it is planned only once.
        self._groups_ready.add(name)

    def _quarantine_things(self, finding: AuditFinding, config: MitigationConfig) -> str:
        group = config.thing_group or ""
        arn = self._certificate_arn(finding)
        paginator = self.iot.get_paginator("list_principal_things")
        things = [t for page in paginator.paginate(principal=arn) for t in page.get("things", [])]
        if not things:
            raise _Skip("no things are attached to the certificate")
        self._ensure_group(group)
        for thing in things:
            self._mutate(self.iot, "iot", "add_thing_to_thing_group", thingGroupName=group, thingName=thing)
        return f"add {len(things)} thing(s) ({', '.join(things)}) to thing group {group}"

    def _publish(self, finding: AuditFinding, config: MitigationConfig) -> str:
        topic = config.sns_topic_arn or ""
        self._mutate(
            self.sns,
            "sns",
            "publish",
            TopicArn=topic,
            Subject=f"CRITICAL {finding.check_name}: {finding.reason_for_non_compliance_code}"[:100],
            Message=json.dumps(finding.to_aws(), sort_keys=True),
        )
        return f"publish finding {finding.finding_id} to {topic}"
