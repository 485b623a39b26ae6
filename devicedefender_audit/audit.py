"""One run of ``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``: scan, check every key, record findings.

The audit never stops for one certificate: fetch failures, unparsable PEM, oversized keys and
detector crashes all become :class:`ResourceError` entries and count as failed resources. Only
a failure to list the certificates at all fails the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from devicedefender_audit.detectors import Detector, DetectorResult, Verdict
from devicedefender_audit.key_material import KeyMaterialError, PublicKeyInfo, certificate_public_key
from devicedefender_audit.models import (
    AuditFinding,
    AuditTask,
    AuditTaskStatus,
    NonCompliantResource,
    ResourceError,
    ResourceIdentifier,
)
from devicedefender_audit.progress import ProgressBar
from devicedefender_audit.scanner import CertificateScanner, ScannedCertificate


@dataclass
class AuditResult:
    task: AuditTask
    findings: list[AuditFinding] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)


def check_key(key: PublicKeyInfo, detectors: Sequence[Detector]) -> list[DetectorResult]:
    """Run every detector on one key."""
    return [detector.check(key) for detector in detectors]


class Auditor:
    def __init__(self, scanner: CertificateScanner, detectors: Sequence[Detector]) -> None:
        self.scanner = scanner
        self.detectors = detectors

    def run(self, progress: ProgressBar | None = None) -> AuditResult:
        result = AuditResult(task=AuditTask())
        details = result.task.details
        try:
            summaries = self.scanner.list_in_scope()
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, NoCredentialsError):
                raise  # not an audit result: the caller must say how to configure access
            result.task.task_status = AuditTaskStatus.FAILED
            details.check_run_status = "FAILED"
            details.error_code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            details.message = f"could not list certificates: {exc}"
            result.task.task_statistics.failed_checks = 1
            return result
        if progress:
            progress.set_total(len(summaries))
        details.total_resources_count = 0
        for item in self.scanner.scan(summaries, on_done=progress.advance if progress else None):
            details.total_resources_count += 1
            if isinstance(item, ResourceError):
                result.errors.append(item)
                continue
            self._check_certificate(item, result)
        if progress:
            progress.close()
        self._finish(result)
        return result

    def _check_certificate(self, cert: ScannedCertificate, result: AuditResult) -> None:
        details = result.task.details
        try:
            key = certificate_public_key(cert.certificate_pem)
            verdicts = check_key(key, self.detectors)
        except KeyMaterialError as exc:
            result.errors.append(
                ResourceError(certificate_id=cert.certificate_id, error_code=exc.error_code, message=str(exc))
            )
            return
        except Exception as exc:  # noqa: BLE001 - a detector bug must not end the audit; it is reported
            result.errors.append(
                ResourceError(
                    certificate_id=cert.certificate_id,
                    error_code="CHECK_FAILED",
                    message=f"{type(exc).__name__}: {exc}",
                )
            )
            return
        vulnerable = [v for v in verdicts if v.verdict is Verdict.VULNERABLE]
        things = self._things_note(cert) if vulnerable else ""
        for verdict in vulnerable:
            result.findings.append(
                AuditFinding(
                    task_id=result.task.task_id,
                    task_start_time=result.task.task_start_time,
                    non_compliant_resource=NonCompliantResource(
                        resource_identifier=ResourceIdentifier(
                            device_certificate_id=cert.certificate_id,
                            device_certificate_arn=cert.certificate_arn,
                        ),
                        additional_info={
                            "keyAlgorithm": key.algorithm,
                            "keySize": str(key.bits),
                            "certificateStatus": cert.status,
                            "things": things,
                        },
                    ),
                    reason_for_non_compliance=verdict.detail,
                    reason_for_non_compliance_code=verdict.reason_code or "",
                )
            )
        if vulnerable:
            details.non_compliant_resources_count += 1
        elif all(v.verdict is Verdict.NOT_APPLICABLE for v in verdicts):
            details.not_applicable_resources_count += 1
        elif any(v.verdict is Verdict.NOT_COVERED for v in verdicts):
            details.not_covered_resources_count += 1

    def _things_note(self, cert: ScannedCertificate) -> str:
        """Comma-separated attached things, or why they are unknown (never fails the audit)."""
        try:
            return ",".join(self.scanner.attached_things(cert.certificate_arn))
        except (ClientError, BotoCoreError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            return f"unknown ({code})"

    @staticmethod
    def _finish(result: AuditResult) -> None:
        details = result.task.details
        details.failed_resources_count = len(result.errors)
        details.check_run_status = (
            "COMPLETED_NON_COMPLIANT" if details.non_compliant_resources_count else "COMPLETED_COMPLIANT"
        )
        details.check_compliant = details.non_compliant_resources_count == 0
        stats = result.task.task_statistics
        stats.in_progress_checks = 0
        if details.check_compliant:
            stats.compliant_checks = 1
        else:
            stats.non_compliant_checks = 1
        result.task.task_status = AuditTaskStatus.COMPLETED
