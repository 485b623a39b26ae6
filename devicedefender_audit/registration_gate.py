"""The real-time gate: check a certificate's key the moment AWS IoT registers it.

Fed by an AWS IoT rule on ``$aws/events/certificates/registered/#``, the message AWS IoT
publishes when it registers a device certificate signed by a CA enabled for auto-registration
(just-in-time registration). The payload names the certificate::

    {"certificateId": "...", "caCertificateId": "...", "timestamp": 1234567890123,
     "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": "123456789012",
     "certificateRegistrationTimestamp": "..."}

The certificate is described, its key checked by the same detectors as an audit, and a weak key
gets the configured mitigations through the same :class:`~.mitigation.Mitigator` (so dry run,
skip-if-already-inactive and per-action outcomes are those of ``mitigate``). The registration
leaves the certificate ``PENDING_ACTIVATION``, so a deactivated weak key never connects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.aws.iot_certificates import attached_things
from devicedefender_audit.detectors import Detector, Verdict, check_key
from devicedefender_audit.key_material import KeyMaterialError, certificate_public_key
from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import (
    AuditFinding,
    MitigationActionType,
    MitigationExecution,
    NonCompliantResource,
    ResourceIdentifier,
    new_id,
)

#: ``taskId`` of gate findings: they belong to no audit task.
GATE_TASK_PREFIX = "registration-gate-"


@dataclass(frozen=True)
class GateSettings:
    actions: tuple[ActionDefinition, ...]
    dry_run: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GateSettings:
        """``DDA_GATE_ACTIONS`` (comma-separated mitigation action types), ``DDA_QUARANTINE_GROUP``,
        ``DDA_SNS_TOPIC_ARN``, ``DDA_DRY_RUN`` (on unless ``false``: acting is opted into)."""
        actions = tuple(
            ActionDefinition.for_type(MitigationActionType(a.strip()), thing_group=env.get("DDA_QUARANTINE_GROUP"),
                                      sns_topic_arn=env.get("DDA_SNS_TOPIC_ARN"))
            for a in env.get("DDA_GATE_ACTIONS", "").split(",") if a.strip()
        )
        return cls(actions=actions, dry_run=env.get("DDA_DRY_RUN", "true").strip().lower() != "false")


@dataclass
class GateOutcome:
    certificate_id: str
    #: VULNERABLE, CLEAN, NOT_COVERED (could be weak, no data) or an error code.
    verdict: str
    detail: str = ""
    findings: list[AuditFinding] = field(default_factory=list)
    executions: list[MitigationExecution] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"certificateId": self.certificate_id, "verdict": self.verdict, "detail": self.detail,
                "findings": [f.to_aws() for f in self.findings],
                "actionsExecutions": [e.to_aws() for e in self.executions]}


def registered_certificate_id(event: Mapping[str, Any]) -> str:
    """The certificate a registration event is about; ``ValueError`` for any other message."""
    certificate_id = event.get("certificateId")
    if not isinstance(certificate_id, str) or not certificate_id:
        raise ValueError("not a certificate registration event: no certificateId")
    return certificate_id


def gate_certificate(iot: Any, sns: Any, certificate_id: str, detectors: Sequence[Detector],
                     settings: GateSettings) -> GateOutcome:
    """Check one newly registered certificate and mitigate it if its key is weak."""
    description = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    try:
        key = certificate_public_key(description["certificatePem"])
    except KeyMaterialError as exc:
        return GateOutcome(certificate_id, exc.error_code, str(exc))
    results = check_key(key, detectors)
    weak = [r for r in results if r.verdict is Verdict.VULNERABLE]
    if not weak:
        uncovered = [r for r in results if r.verdict is Verdict.NOT_COVERED]
        verdict = Verdict.NOT_COVERED if uncovered else Verdict.CLEAN
        return GateOutcome(certificate_id, verdict.value, "; ".join(r.detail for r in uncovered))
    arn = description["certificateArn"]
    now = datetime.now(timezone.utc)
    info = {"keyAlgorithm": key.algorithm, "keySize": str(key.bits), "certificateStatus": description["status"],
            "things": ",".join(attached_things(iot, arn))}
    task_id = GATE_TASK_PREFIX + new_id()
    findings = [
        AuditFinding(task_id=task_id, task_start_time=now, finding_time=now,
                     non_compliant_resource=NonCompliantResource(
                         resource_identifier=ResourceIdentifier(device_certificate_id=certificate_id,
                                                                device_certificate_arn=arn),
                         additional_info=info),
                     reason_for_non_compliance=r.detail, reason_for_non_compliance_code=r.reason_code or "")
        for r in weak
    ]
    mitigator = Mitigator(iot, sns, None, dry_run=settings.dry_run)
    # One certificate, one set of actions: act on the first finding (its flaws are listed in all).
    executions = mitigator.apply(findings[:1], settings.actions, task_id)
    return GateOutcome(certificate_id, Verdict.VULNERABLE.value,
                       "; ".join(r.reason_code or r.detector for r in weak), findings, executions)
