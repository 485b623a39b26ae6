"""Findings in the AWS Security Finding Format (ASFF), for Security Hub's ``BatchImportFindings``.

Every required top-level attribute is set (``SchemaVersion``, ``Id``, ``ProductArn``,
``GeneratorId``, ``AwsAccountId``, ``Types``, ``CreatedAt``, ``UpdatedAt``, ``Severity``,
``Title``, ``Description``, ``Resources``). ``ProductArn`` is the importing account's default
product for custom findings. ``Id`` is stable per account, region, certificate and flaw -- not per
audit task -- so a scheduled audit that finds the same weak key again updates one Security Hub
finding (its ``UpdatedAt``) instead of adding a duplicate every day. A finding suppressed in the
audit is created with ``Workflow.Status`` ``SUPPRESSED`` and a note of this tool's. Security Hub
takes a provider's workflow and note only when it creates a finding, so a suppression made or
ended after the import is carried over as a customer carries it, with ``BatchUpdateFindings``
(:func:`workflow_changes`). :func:`resolved_findings` archives what a later complete check no
longer reports (a certificate deactivated or replaced), so Security Hub's active findings are the
fleet's current ones.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.exports.coverage import complete_checks
from devicedefender_audit.exports.safety import exported_info, safe_text
from devicedefender_audit.models import AuditFinding, AuditTask

SCHEMA_VERSION = "2018-10-08"
PRODUCT = "devicedefender-audit"
#: ASFF length limits (AwsSecurityFinding in the Security Hub API reference).
MAX_TITLE, MAX_DESCRIPTION, MAX_RECOMMENDATION = 256, 1024, 512
#: ``Resources[].Details.Other`` values must have fewer than 1,024 characters.
MAX_OTHER_VALUE = 1023
RECOMMENDATION = (
    "Deactivate the certificate (UpdateCertificate to INACTIVE) or quarantine its things, have the "
    "device generate a new key pair with a sound random number generator, and register a new "
    "certificate for it. Anyone can derive the private key of this certificate."
)
#: A weak CA key lets anyone sign device certificates the account trusts: the CA itself must go.
CA_RECOMMENDATION = (
    "Deactivate the CA certificate (UpdateCACertificate to INACTIVE) so that it registers no more "
    "devices, generate a new CA key pair with a sound random number generator, register the new CA, "
    "and re-issue the device certificates it signed. Anyone can derive the private key of this CA."
)

#: ``Note.UpdatedBy`` of the notes this tool writes: with the status a note names, it tells a
#: workflow this tool set from one a person set after it (:func:`workflow_changes`).
NOTE_AUTHOR = PRODUCT
SUPPRESSED_NOTE = ("Accepted with an audit suppression in devicedefender-audit (CreateAuditSuppression); "
                   "the tool reopens the finding when the suppression ends.")
REOPENED_NOTE = "The audit suppression in devicedefender-audit ended: the finding is open again."
#: The product field that records the audit's suppression of a finding as last carried over.
_SUPPRESSED_FIELD = f"{PRODUCT}/Suppressed"
#: The workflow status each of this tool's notes is written with.
_NOTE_STATUS = {SUPPRESSED_NOTE: "SUPPRESSED", REOPENED_NOTE: "NEW"}

#: A device certificate's ARN (``cert/``) or a CA certificate's (``cacert/``).
_CERT_ARN = re.compile(r"arn:(?P<partition>[\w-]+):iot:(?P<region>[\w-]+):(?P<account>\d{12}):(?:ca)?cert/[0-9a-fA-F]+")
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")


@dataclass(frozen=True)
class ArnParts:
    partition: str
    region: str
    account: str


def certificate_arn_parts(arn: str | None) -> ArnParts | None:
    """Partition, region and account of an IoT certificate ARN (None if it is not one)."""
    match = _CERT_ARN.fullmatch(arn or "")
    return ArnParts(match["partition"], match["region"], match["account"]) if match else None


def region_partition(region: str) -> str:
    """The partition of ``region`` (``aws-cn``, ``aws-us-gov``, ...), by botocore's endpoint
    data: the product ARN must name it, or Security Hub refuses every finding there; ``aws``
    for a region botocore does not know."""
    import boto3
    from botocore.exceptions import UnknownRegionError

    try:
        return boto3.session.Session().get_partition_for_region(region)
    except UnknownRegionError:
        return "aws"


@dataclass(frozen=True)
class AsffContext:
    """Who imports the findings, where, and when (the product ARN and ``UpdatedAt``)."""

    account_id: str
    region: str
    partition: str = "aws"
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def product_arn(self) -> str:
        return (f"arn:{self.partition}:securityhub:{self.region}:{self.account_id}:"
                f"product/{self.account_id}/default")


def asff_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as ASFF's examples write it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _other_value(value: str) -> str:
    """``value`` within :data:`MAX_OTHER_VALUE`: a certificate shared by many things lists them
    all, and one value over the limit makes Security Hub reject the whole finding. A
    comma-separated list keeps whole names and says how many were left out."""
    if len(value) <= MAX_OTHER_VALUE:
        return value
    names = value.split(",")
    kept: list[str] = []
    for name in names:
        suffix = f" (+{len(names) - len(kept) - 1} more)"
        if len(",".join([*kept, name])) + len(suffix) > MAX_OTHER_VALUE:
            break
        kept.append(name)
    return ",".join(kept) + f" (+{len(names) - len(kept)} more)" if kept else value[:MAX_OTHER_VALUE]


def _account_region(finding: AuditFinding, context: AsffContext) -> tuple[str, str]:
    """The account and region a finding is about: its certificate ARN's, else the context's."""
    parts = certificate_arn_parts(finding.certificate_arn)
    return (parts.account, parts.region) if parts else (context.account_id, context.region)


def asff_id(finding: AuditFinding, context: AsffContext) -> str:
    """The finding's ``Id``: one per account, region, check, certificate and flaw."""
    account, region = _account_region(finding, context)
    return (f"{PRODUCT}/{account}/{region}/{finding.check_name}/{finding.certificate_id}/"
            f"{finding.reason_for_non_compliance_code}")


def asff_finding(finding: AuditFinding, context: AsffContext) -> dict[str, Any]:
    """One ``AwsSecurityFinding`` for one audit finding."""
    parts = certificate_arn_parts(finding.certificate_arn)
    account, region = _account_region(finding, context)
    code = finding.reason_for_non_compliance_code
    cve = _CVE.search(code)
    ca = finding.resource_type == "CA_CERTIFICATE"
    details = {"caCertificateId" if ca else "deviceCertificateId": finding.certificate_id,
               **{key: _other_value(value)
                  for key, value in exported_info(finding.non_compliant_resource.additional_info).items()}}
    document: dict[str, Any] = {
        "SchemaVersion": SCHEMA_VERSION,
        "Id": asff_id(finding, context),
        "ProductArn": context.product_arn,
        "GeneratorId": f"{PRODUCT}/{finding.check_name}",
        "AwsAccountId": account,
        "Types": ["Software and Configuration Checks/Vulnerabilities/CVE" if cve
                  else "Software and Configuration Checks/Vulnerabilities"],
        "CreatedAt": asff_timestamp(finding.finding_time),
        "UpdatedAt": asff_timestamp(max(context.generated_at, finding.finding_time)),
        "Severity": {"Label": finding.severity, "Original": finding.severity},
        "Title": f"Weak key in AWS IoT {'CA' if ca else 'device'} certificate: {code}"[:MAX_TITLE],
        "Description": safe_text(finding.reason_for_non_compliance)[:MAX_DESCRIPTION] or code,
        "Remediation": {"Recommendation": {"Text": (CA_RECOMMENDATION if ca else RECOMMENDATION)[:MAX_RECOMMENDATION]}},
        "ProductFields": {
            f"{PRODUCT}/CheckName": finding.check_name,
            f"{PRODUCT}/ReasonCode": code,
            f"{PRODUCT}/TaskId": finding.task_id,
            f"{PRODUCT}/FindingId": finding.finding_id,
            _SUPPRESSED_FIELD: str(finding.is_suppressed).lower(),
        },
        "Resources": [{
            "Type": "Other",
            "Id": finding.certificate_arn or finding.certificate_id,
            "Partition": parts.partition if parts else context.partition,
            "Region": region,
            "Details": {"Other": details},
        }],
        "RecordState": "ACTIVE",
    }
    if finding.is_suppressed:
        document["Workflow"] = {"Status": "SUPPRESSED"}
        document["Note"] = {"Text": SUPPRESSED_NOTE, "UpdatedBy": NOTE_AUTHOR, "UpdatedAt": document["UpdatedAt"]}
    if cve:
        document["Vulnerabilities"] = [{"Id": cve.group(),
                                        "ReferenceUrls": [f"https://nvd.nist.gov/vuln/detail/{cve.group()}"]}]
    return document


def asff_findings(findings: Iterable[AuditFinding], context: AsffContext) -> list[dict[str, Any]]:
    return [asff_finding(finding, context) for finding in findings]


#: The members :func:`asff_finding` writes: an archived finding is sent back with these only, as
#: Security Hub adds others to what it returns (``aws/securityhub/...`` product fields, workflow,
#: company and product names) that a provider may not set.
_PROVIDER_MEMBERS = ("SchemaVersion", "Id", "ProductArn", "GeneratorId", "AwsAccountId", "Types", "CreatedAt",
                     "UpdatedAt", "Severity", "Title", "Description", "Remediation", "ProductFields", "Resources",
                     "Vulnerabilities")


def id_prefix(account_id: str, region: str) -> str:
    """The start of every finding ``Id`` of one account and region (see :func:`asff_finding`)."""
    return f"{PRODUCT}/{account_id}/{region}/"


def _ours(finding: dict[str, Any], context: AsffContext, prefix: str) -> bool:
    """Whether a finding ``GetFindings`` returned is one of this tool, account and region
    (checked again here, as a filter that an endpoint ignores must not widen what a sync
    changes)."""
    return (finding.get("ProductArn") == context.product_arn and finding.get("AwsAccountId") == context.account_id
            and finding.get("Id", "").startswith(prefix))


def suppressed_at_import(finding: dict[str, Any]) -> str | None:
    """The audit's suppression of a Security Hub finding as last carried over (its
    ``Suppressed`` product field: ``"true"`` or ``"false"``; None for a finding without it)."""
    return (finding.get("ProductFields") or {}).get(_SUPPRESSED_FIELD)


def keep_suppressed_at_import(document: dict[str, Any], value: str | None) -> dict[str, Any]:
    """``document`` (an ASFF finding to import) recording the suppression ``value`` (as
    :func:`suppressed_at_import` read it) instead of the audit's: a finding whose workflow
    change did not go through, so that the next sync still sees the decision to carry over."""
    fields = document["ProductFields"]
    if value is None:
        fields.pop(_SUPPRESSED_FIELD, None)
    else:
        fields[_SUPPRESSED_FIELD] = value
    return document


def workflow_changes(found: Iterable[dict[str, Any]], suppressed: Mapping[str, bool], region: str,
                     context: AsffContext) -> dict[str, list[dict[str, Any]]]:
    """The Security Hub findings (``found``, active or archived, as ``GetFindings`` returns them
    before this sync's import) whose workflow status must change for the audit's findings
    (``suppressed``: whether each is suppressed in the audit, by ``Id``), by the status to set.

    A suppression made or ended in the audit since it was last carried over
    (:func:`suppressed_at_import`; a sync whose change did not go through imports the finding
    with the old value, so that the decision stays to be carried) is carried over whatever the
    finding's note: ``SUPPRESSED`` for a finding open in Security Hub (``NEW`` or ``NOTIFIED``),
    ``NEW`` for one it shows ``SUPPRESSED``. Between decisions, a workflow is still brought in
    line where it is this tool's to set: an untouched ``NEW`` (no note) of a suppressed finding,
    and a status of this tool's own (its note names it). A status someone set after this tool's
    note (the console writes no note: this tool's note then names another status), or a
    finding resolved or suppressed by hand, is a person's decision and stays.
    """
    prefix = id_prefix(context.account_id, region)
    changes: dict[str, list[dict[str, Any]]] = {"SUPPRESSED": [], "NEW": []}
    for finding in found:
        if not _ours(finding, context, prefix) or finding["Id"] not in suppressed:
            continue
        status = (finding.get("Workflow") or {}).get("Status", "NEW")
        note = finding.get("Note") or {}
        noted = _NOTE_STATUS.get(note.get("Text", "")) if note.get("UpdatedBy") == NOTE_AUTHOR else None
        before = suppressed_at_import(finding)
        if suppressed[finding["Id"]]:
            if (status in ("NEW", "NOTIFIED") and noted != "SUPPRESSED"
                    and (before == "false" or (status == "NEW" and (not note or noted == "NEW")))):
                changes["SUPPRESSED"].append(finding)
        elif status == "SUPPRESSED" and noted != "NEW" and (before == "true" or noted == "SUPPRESSED"):
            changes["NEW"].append(finding)
        elif status == "NEW" and noted == "SUPPRESSED" and before == "true":
            # Ended after someone reopened it: this tool's note, which still names SUPPRESSED,
            # is brought up to date, or it would read as a hand edit and block the next decision.
            changes["NEW"].append(finding)
    return {status: findings for status, findings in changes.items() if findings}


def _found_after(created_at: str, moment: datetime) -> bool:
    """Whether an imported finding was found after ``moment`` (by a later audit); a timestamp
    that cannot be read counts as later, so that the finding is left alone."""
    try:  # Python before 3.11 does not read a "Z" offset, which Security Hub writes
        found = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    utc = timezone.utc
    return (found if found.tzinfo else found.replace(tzinfo=utc)) > (moment if moment.tzinfo else moment.replace(tzinfo=utc))


def resolved_findings(found: Iterable[dict[str, Any]], task: AuditTask, reported_ids: Container[str],
                      unchecked_ids: Container[str], context: AsffContext) -> list[dict[str, Any]]:
    """The active Security Hub findings of this tool (in ``found``, as ``GetFindings`` returns
    them) that ``task`` shows resolved, sent back ``ARCHIVED``. Only a check that ran over every certificate
    resolves anything, and only for certificates it checked: a finding of a certificate that
    could not be checked, of a check that failed, was canceled or could not cover some keys, of
    a task that did not complete, or found after ``task`` started (a later audit's), stays."""
    complete = complete_checks(task)
    prefix = id_prefix(context.account_id, task.region or context.region)
    resolved = []
    for finding in found:
        other = (finding.get("Resources") or [{}])[0].get("Details", {}).get("Other", {})
        certificate = other.get("deviceCertificateId") or other.get("caCertificateId")
        if (finding.get("RecordState") != "ACTIVE" or not _ours(finding, context, prefix)
                or finding["Id"] in reported_ids or not certificate or certificate in unchecked_ids
                or finding.get("ProductFields", {}).get(f"{PRODUCT}/CheckName") not in complete
                or _found_after(finding.get("CreatedAt", ""), task.task_start_time)):
            continue
        archived = {key: finding[key] for key in _PROVIDER_MEMBERS if key in finding}
        archived["ProductFields"] = {key: value for key, value in archived.get("ProductFields", {}).items()
                                     if key.startswith(f"{PRODUCT}/")}
        archived["UpdatedAt"] = asff_timestamp(context.generated_at)
        archived["RecordState"] = "ARCHIVED"
        resolved.append(archived)
    return resolved
