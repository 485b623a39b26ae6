"""Audit records shaped like AWS IoT Device Defender's API objects.

Field names are snake_case in Python and serialise (``model_dump(by_alias=True)``) to the exact
camelCase names of ``AuditFinding``, ``DescribeAuditTask`` and ``AuditMitigationActionExecution``
so findings can be fed to anything that already reads Device Defender output.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from devicedefender_audit.check_names import DEVICE_CERTIFICATE_KEY_QUALITY_CHECK as CHECK_NAME


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class AwsModel(BaseModel):
    """camelCase on the wire, snake_case in code."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_aws(self) -> dict:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


class AuditTaskStatus(str, Enum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class ResourceIdentifier(AwsModel):
    """The model's ``ResourceIdentifier`` for the certificates this service audits: a device
    certificate (id and ARN) or a CA certificate (the model has only its id)."""

    device_certificate_id: str | None = None
    device_certificate_arn: str | None = None
    ca_certificate_id: str | None = None

    @model_validator(mode="after")
    def _names_one_certificate(self) -> ResourceIdentifier:
        if bool(self.device_certificate_id) == bool(self.ca_certificate_id):
            raise ValueError("a resource identifier names a device certificate or a CA certificate")
        return self


class NonCompliantResource(AwsModel):
    resource_type: str = "DEVICE_CERTIFICATE"
    resource_identifier: ResourceIdentifier
    additional_info: dict[str, str] = Field(default_factory=dict)


class AuditFinding(AwsModel):
    finding_id: str = Field(default_factory=new_id)
    task_id: str
    check_name: str = CHECK_NAME
    task_start_time: datetime
    finding_time: datetime = Field(default_factory=utcnow)
    severity: str = "CRITICAL"
    non_compliant_resource: NonCompliantResource
    reason_for_non_compliance: str
    reason_for_non_compliance_code: str
    is_suppressed: bool = False

    @property
    def certificate_id(self) -> str:
        """The device or CA certificate the finding is about."""
        identifier = self.non_compliant_resource.resource_identifier
        return identifier.device_certificate_id or identifier.ca_certificate_id or ""

    @property
    def resource_type(self) -> str:
        return self.non_compliant_resource.resource_type

    @property
    def certificate_arn(self) -> str | None:
        """The certificate's ARN; a CA certificate's is in ``additionalInfo`` (the model's
        ``ResourceIdentifier`` has no member for it)."""
        resource = self.non_compliant_resource
        return (resource.resource_identifier.device_certificate_arn
                or resource.additional_info.get("caCertificateArn"))


class ResourceError(AwsModel):
    """A certificate the audit could not check, and why. Reported, never dropped.

    ``leftScope`` (our extension) marks a certificate that stopped existing during the scan
    (``DELETED_DURING_SCAN``): reported, but not an unchecked certificate of the account.
    """

    certificate_id: str
    error_code: str  # DELETED_DURING_SCAN, MALFORMED_CERTIFICATE, KEY_TOO_LARGE, THROTTLED, ...
    message: str
    left_scope: bool = False
    #: ``CA_CERTIFICATE`` for a CA certificate; absent for device certificates.
    resource_type: str | None = None


def unchecked(errors: Iterable[ResourceError]) -> list[ResourceError]:
    """The certificates the audit could not check (one that left scope during the scan is not
    a certificate of the account any more): what the audit counts failed and every export
    reports as not checked."""
    return [error for error in errors if not error.left_scope]


class TaskStatistics(AwsModel):
    """``DescribeAuditTask.taskStatistics`` (counts of checks)."""

    total_checks: int = 1
    in_progress_checks: int = 0
    waiting_for_data_collection_checks: int = 0
    compliant_checks: int = 0
    non_compliant_checks: int = 0
    failed_checks: int = 0
    canceled_checks: int = 0


class AuditCheckDetails(AwsModel):
    """``DescribeAuditTask.auditDetails[check]`` plus the counts a key audit needs."""

    check_run_status: str = "IN_PROGRESS"
    check_compliant: bool | None = None
    total_resources_count: int = 0
    non_compliant_resources_count: int = 0
    suppressed_non_compliant_resources_count: int = 0
    failed_resources_count: int = 0
    not_applicable_resources_count: int = 0
    not_covered_resources_count: int = 0
    error_code: str | None = None
    message: str | None = None


class AuditProgress(AwsModel):
    """Our extension: how far an audit has got, updated as it runs (``describe-audit-task``
    shows it while the task is ``IN_PROGRESS``)."""

    listed_certificates: int = 0
    described_certificates: int = 0
    checked_certificates: int = 0


class AuditTask(AwsModel):
    task_id: str = Field(default_factory=new_id)
    task_status: AuditTaskStatus = AuditTaskStatus.IN_PROGRESS
    task_type: str = "ON_DEMAND_AUDIT_TASK"
    scheduled_audit_name: str | None = None
    task_start_time: datetime = Field(default_factory=utcnow)
    task_statistics: TaskStatistics = Field(default_factory=TaskStatistics)
    audit_details: dict[str, AuditCheckDetails] = Field(
        default_factory=lambda: {CHECK_NAME: AuditCheckDetails()}
    )
    account: str | None = None
    region: str | None = None
    progress: AuditProgress = Field(default_factory=AuditProgress)

    @property
    def details(self) -> AuditCheckDetails:
        """The key-quality check's details, or the only check's when a task ran another alone."""
        return self.audit_details.get(CHECK_NAME) or next(iter(self.audit_details.values()))


class MitigationActionType(str, Enum):
    """The model's ``MitigationActionType`` values a key-quality finding can be mitigated with
    (``REPLACE_DEFAULT_POLICY_VERSION`` and ``ENABLE_IOT_LOGGING`` act on no such finding)."""

    UPDATE_DEVICE_CERTIFICATE = "UPDATE_DEVICE_CERTIFICATE"
    UPDATE_CA_CERTIFICATE = "UPDATE_CA_CERTIFICATE"
    ADD_THINGS_TO_THING_GROUP = "ADD_THINGS_TO_THING_GROUP"
    PUBLISH_FINDING_TO_SNS = "PUBLISH_FINDING_TO_SNS"

    @classmethod
    def _missing_(cls, value: object) -> MitigationActionType | None:
        # Earlier releases called the SNS action PUBLISH_FINDINGS_TO_SNS; stores and deployed
        # registration gates (DDA_GATE_ACTIONS) still carry that name.
        return cls.PUBLISH_FINDING_TO_SNS if value == "PUBLISH_FINDINGS_TO_SNS" else None


class MitigationStatus(str, Enum):
    """The model's ``AuditMitigationActionsExecutionStatus`` values an execution ends with."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELED = "CANCELED"

    @classmethod
    def _missing_(cls, value: object) -> MitigationStatus | None:
        # Earlier releases recorded a successful action as SUCCEEDED, which the API does not have.
        return cls.COMPLETED if value == "SUCCEEDED" else None


class PlannedCall(AwsModel):
    """One AWS call a mitigation makes (or, in a dry run, would make)."""

    service: str
    operation: str
    parameters: dict


#: The ``iot`` model's ``ErrorMessage`` maximum (``AuditCheckDetails.message``,
#: ``AuditMitigationActionExecutionMetadata.message``).
MESSAGE_LIMIT = 2048


def error_message(text: str | None) -> str | None:
    """``text`` as an ``ErrorMessage`` may carry it: within :data:`MESSAGE_LIMIT`, a cut marked
    with ``...``; None (the member left out) for no text."""
    if not text:
        return None
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 3] + "..."


class MitigationExecution(AwsModel):
    """``AuditMitigationActionExecutionMetadata`` for one finding and one action, plus what only
    this service records: the action's type, whether it was a dry run and the AWS calls made."""

    task_id: str
    finding_id: str
    action_name: str
    action_id: str
    action_type: MitigationActionType
    status: MitigationStatus
    start_time: datetime = Field(default_factory=utcnow)
    end_time: datetime | None = None
    error_code: str | None = None
    message: str = ""
    dry_run: bool = False
    calls: list[PlannedCall] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _named_by_type(cls, data: object) -> object:
        """Executions stored before action definitions existed name the action by its type and
        carry no id; read them as an action named after its type."""
        if isinstance(data, dict) and "actionType" not in data and "action_type" not in data:
            return {**data, "actionType": data.get("actionName"), "actionId": data.get("actionId", "")}
        return data

    def to_api(self) -> dict:
        """The model's ``AuditMitigationActionExecutionMetadata`` (timestamps as datetimes, as boto3 returns them)."""
        shape = {"taskId": self.task_id, "findingId": self.finding_id, "actionName": self.action_name,
                 "actionId": self.action_id, "status": self.status.value, "startTime": self.start_time,
                 "endTime": self.end_time, "errorCode": self.error_code, "message": error_message(self.message)}
        return {k: v for k, v in shape.items() if v is not None}
