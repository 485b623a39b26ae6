"""A scheduled audit inside AWS Lambda: the existing :class:`~.audit.Audit` engine per region,
then a notification and (optionally) Security Hub findings.

Settings come from the function's environment (set by ``infra/template.yaml``) so that the
schedule's payload can stay empty; an event may narrow ``regions``. The template points
``DDA_STORE`` at its DynamoDB table (``dynamodb://TABLE``), so the inventory and history outlive
the invocation; without it the store is SQLite under ``/tmp`` and only SNS and Security Hub keep
the findings. A region whose audit fails does not stop the others; its failure is notified.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devicedefender_audit.audit import Audit
from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.detectors import Detector
from devicedefender_audit.exports.safety import safe_value
from devicedefender_audit.models import AuditFinding, AuditTask
from devicedefender_audit.store import Store

#: Findings named in one notification; the rest are counted (SNS messages are capped at 256 KB).
NOTIFIED_FINDINGS = 50


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def _region_of_arn(arn: str) -> str:
    return arn.split(":")[3]


@dataclass(frozen=True)
class AuditSettings:
    regions: tuple[str, ...]
    sns_topic_arn: str | None
    to_securityhub: bool
    store: str
    workers: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], event: Mapping[str, Any] | None = None) -> AuditSettings:
        """``DDA_REGIONS`` (comma-separated; default the function's own region), ``DDA_SNS_TOPIC_ARN``,
        ``DDA_SECURITYHUB``, ``DDA_STORE``, ``DDA_WORKERS``; ``event["regions"]`` overrides the regions."""
        regions = (event or {}).get("regions") or [r.strip() for r in env.get("DDA_REGIONS", "").split(",")]
        regions = tuple(r for r in regions if r) or (env["AWS_REGION"],)
        return cls(regions=regions, sns_topic_arn=env.get("DDA_SNS_TOPIC_ARN") or None,
                   to_securityhub=_flag(env.get("DDA_SECURITYHUB")),
                   store=env.get("DDA_STORE", "/tmp/audits.sqlite3"), workers=int(env.get("DDA_WORKERS", "8")))


def summary(task: AuditTask, findings: Sequence[AuditFinding]) -> dict[str, Any]:
    """What a notification and the function's result say about one audit (public facts only)."""
    details = task.details
    return safe_value({
        "taskId": task.task_id, "region": task.region, "taskStatus": task.task_status.value,
        "checkRunStatus": details.check_run_status, "totalResourcesCount": details.total_resources_count,
        "nonCompliantResourcesCount": details.non_compliant_resources_count,
        "failedResourcesCount": details.failed_resources_count,
        "notCoveredResourcesCount": details.not_covered_resources_count,
        "message": details.message,
        "findings": [{"certificateId": f.certificate_id, "reasonCode": f.reason_for_non_compliance_code,
                      "things": f.non_compliant_resource.additional_info.get("things", "")}
                     for f in findings[:NOTIFIED_FINDINGS]],
    })


def notify(topic_arn: str, report: dict[str, Any], title: str) -> None:
    """Publish ``report`` (a :func:`summary`, or an account-region's failure without a task)."""
    sns = AwsTarget(region=_region_of_arn(topic_arn)).client("sns")
    outcome = report.get("checkRunStatus") or report.get("errorCode") or report.get("taskStatus")
    subject = f"{title}: {report.get('nonCompliantResourcesCount', 0)} non-compliant, {outcome}"
    sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=json.dumps(report, indent=2))


def _to_securityhub(target: AwsTarget, findings: Sequence[AuditFinding]) -> dict[str, Any]:
    from devicedefender_audit.aws.securityhub import import_findings
    from devicedefender_audit.exports.asff import AsffContext, asff_findings

    account = target.client("sts").get_caller_identity()["Account"]
    context = AsffContext(account_id=account, region=target.region_name or "")
    result = import_findings(target.client("securityhub"), asff_findings(findings, context))
    return {"imported": result.success_count, "failed": result.failed}


def audit_region(region: str, store: Store, detectors: Sequence[Detector], settings: AuditSettings) -> dict[str, Any]:
    """One audit of ``region``; notified when it found something or could not finish."""
    target = AwsTarget(region=region)
    task = Audit(target.client("iot"), store, detectors, workers=settings.workers, region=region).run()
    findings = list(store.findings(task.task_id))
    report = summary(task, findings)
    if settings.sns_topic_arn and (findings or task.details.check_run_status != "COMPLETED_COMPLIANT"):
        notify(settings.sns_topic_arn, report, f"devicedefender-audit {region}")
    if settings.to_securityhub and findings:
        report["securityHub"] = _to_securityhub(target, findings)
    return report
