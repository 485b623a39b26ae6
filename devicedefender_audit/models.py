"""Audit records shaped like AWS IoT Device Defender's API objects.

Field names are snake_case in Python and serialise (``model_dump(by_alias=True)``) to the exact
camelCase names of ``AuditFinding``, ``DescribeAuditTask`` and ``AuditMitigationActionExecution``
so findings can be fed to anything that already reads Device Defender output.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

CHECK_NAME = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"


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
    device_certificate_id: str
    device_certificate_arn: str | None = None


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
        return self.non_compliant_resource.resource_identifier.device_certificate_id

    @property
    def certificate_arn(self) -> str | None:
        return self.non_compliant_resource.resource_identifier.device_certificate_arn


class ResourceError(AwsModel):
    """A certificate the audit could not check, and why. Reported, never dropped.

    ``leftScope`` (our extension) marks a certificate that stopped existing during the scan
    (``DELETED_DURING_SCAN``): reported, but not an unchecked certificate of the account.
    """

    certificate_id: str
    error_code: str  # DELETED_DURING_SCAN, MALFORMED_CERTIFICATE, KEY_TOO_LARGE, THROTTLED, ...
    message: str
    left_scope: bool = False


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
        return self.audit_details[CHECK_NAME]


class MitigationActionType(str, Enum):
    UPDATE_DEVICE_CERTIFICATE = "UPDATE_DEVICE_CERTIFICATE"
    ADD_THINGS_TO_THING_GROUP = "ADD_THINGS_TO_THING_GROUP"
    PUBLISH_FINDINGS_TO_SNS = "PUBLISH_FINDINGS_TO_SNS"


class MitigationStatus(str, Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class PlannedCall(AwsModel):
    """One AWS call a mitigation makes (or, in a dry run, would make)."""

    service: str
    operation: str
    parameters: dict


class MitigationExecution(AwsModel):
    """``AuditMitigationActionExecutionMetadata`` for one finding and one action."""

    task_id: str
    finding_id: str
    action_name: MitigationActionType
    status: MitigationStatus
    start_time: datetime = Field(default_factory=utcnow)
    end_time: datetime | None = None
    error_code: str | None = None
    message: str = ""
    dry_run: bool = False
    calls: list[PlannedCall] = Field(default_factory=list)
