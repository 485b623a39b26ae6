"""The real-time gate: check a certificate's key the moment it enters the account.

Two feeds reach the same check (``infra/template.yaml``):

* **Just-in-time registration** (JITR): an AWS IoT rule on ``$aws/events/certificates/registered/#``,
  the message AWS IoT publishes when it registers a device certificate signed by a CA enabled for
  auto-registration. The payload names the certificate::

      {"certificateId": "...", "caCertificateId": "...", "timestamp": 1234567890123,
       "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": "123456789012",
       "certificateRegistrationTimestamp": "..."}

  The certificate stays ``PENDING_ACTIVATION`` until something activates it, so a deactivated
  weak key never connects.
* **Registration through the API**: an EventBridge rule on the CloudTrail records ("AWS API Call
  via CloudTrail", source ``aws.iot``) of the calls in :data:`API_REGISTRATIONS`. The record
  names the certificate in ``detail.responseElements`` (``certificateId``, ``certificateArn``;
  the CA's for ``RegisterCACertificate``) or, for ``AcceptCertificateTransfer``, in
  ``detail.requestParameters.certificateId``; a call that failed (``detail.errorCode``)
  registered nothing and is skipped. CloudTrail delivers these in minutes, not seconds, so such
  a certificate may connect before the gate acts: this feed shortens the exposure to the next
  scheduled audit, JITR alone prevents it. ``CreateKeysAndCertificate`` is not gated: AWS
  generates that key.

The certificate is described, its key checked by the same detectors as an audit, and a weak key
gets the configured mitigations through the same :class:`~.mitigation.Mitigator` (so dry run,
skip-if-already-inactive, per-action outcomes and the actions each resource type takes are those
of ``mitigate``: a CA gets ``UPDATE_CA_CERTIFICATE`` and SNS, never the device actions). An event
that is no registration, one about another account or region, or a certificate deleted before
the gate ran, is one log line and an outcome saying so, never a traceback and never ``CLEAN``.
A registration the gate could not check or mitigate for a reason that may pass (throttling, a
5xx, a denied call, no connection, a FAILED action) or whose record names no certificate is an
outcome to retry (:attr:`GateOutcome.retry`): the Lambda handler fails the invocation
(:class:`GateUnfinished`), so that Lambda runs it again and then keeps it in a dead-letter
queue. Nothing is stored: a repeated event finds the certificate INACTIVE already and only
notifies again.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message, is_not_found
from devicedefender_audit.aws.iot_certificates import attached_things
from devicedefender_audit.check_names import (
    CA_CERTIFICATE,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.detectors import Detector, Verdict, check_key
from devicedefender_audit.key_material import KeyMaterialError, certificate_public_key
from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import (
    AuditFinding,
    MitigationActionType,
    MitigationExecution,
    MitigationStatus,
    NonCompliantResource,
    ResourceIdentifier,
    new_id,
)

LOG = logging.getLogger(__name__)

#: ``taskId`` of gate findings: they belong to no audit task.
GATE_TASK_PREFIX = "registration-gate-"
#: How a certificate registered by just-in-time registration arrived (``via`` of the outcome).
JITR = "JITR"
#: The AWS IoT calls (CloudTrail ``eventName``) that bring a certificate whose key someone else
#: generated into the account, and the kind of certificate each brings. CreateKeysAndCertificate
#: is left out on purpose: AWS IoT generates that key itself.
API_REGISTRATIONS: Mapping[str, str] = {
    "RegisterCertificate": DEVICE_CERTIFICATE,
    "RegisterCertificateWithoutCA": DEVICE_CERTIFICATE,
    "CreateCertificateFromCsr": DEVICE_CERTIFICATE,
    "AcceptCertificateTransfer": DEVICE_CERTIFICATE,
    "RegisterCACertificate": CA_CERTIFICATE,
}
CLOUDTRAIL_DETAIL_TYPE = "AWS API Call via CloudTrail"
IOT_EVENT_SOURCE = "iot.amazonaws.com"
#: Verdicts of events that name no certificate to check: the event is not a registration, the
#: call it records failed (nothing registered), or its record lacks the certificate's id.
UNRECOGNIZED_EVENT = "UNRECOGNIZED_EVENT"
CALL_FAILED = "CALL_FAILED"
NO_CERTIFICATE_ID = "NO_CERTIFICATE_ID"
#: A certificate description without its PEM or ARN: nothing to check.
MALFORMED_RESPONSE = "MALFORMED_RESPONSE"
#: Verdicts of an event about a certificate of another account or region than the gate's: it is
#: not looked up here (the same certificate can be registered in several accounts).
OTHER_ACCOUNT = "OTHER_ACCOUNT"
OTHER_REGION = "OTHER_REGION"
#: The model's ``CertificateId``: 64 hex digits (the certificate's SHA-256).
_CERTIFICATE_ID = re.compile(r"[0-9a-fA-F]{64}")
_CHECK_OF = {DEVICE_CERTIFICATE: DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, CA_CERTIFICATE: CA_CERTIFICATE_KEY_QUALITY_CHECK}


#: The environment the gate reads (``infra/template.yaml`` sets each one).
GATE_VARIABLES = ("DDA_GATE_ACTIONS", "DDA_QUARANTINE_GROUP", "DDA_SNS_TOPIC_ARN", "DDA_DRY_RUN")
#: The variable each action type needs, and the ActionDefinition.for_type argument it fills.
_ACTION_VARIABLE = {
    MitigationActionType.ADD_THINGS_TO_THING_GROUP: ("DDA_QUARANTINE_GROUP", "thing_group", "the quarantine thing group"),
    MitigationActionType.PUBLISH_FINDING_TO_SNS: ("DDA_SNS_TOPIC_ARN", "sns_topic_arn", "the topic's ARN"),
}


class GateConfigurationError(ValueError):
    """The gate's environment is wrong. Raised for every event, so the invocation fails (Lambda's
    ``Errors`` metric) rather than letting weak keys through a gate that was meant to act."""


@dataclass(frozen=True)
class GateSettings:
    actions: tuple[ActionDefinition, ...]
    dry_run: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GateSettings:
        """``DDA_GATE_ACTIONS`` (comma-separated mitigation action types; required, empty to only
        report), ``DDA_QUARANTINE_GROUP``, ``DDA_SNS_TOPIC_ARN``, ``DDA_DRY_RUN`` (``true`` or
        ``false``; unset: a dry run, acting is opted into). Anything mistyped (a value, an action
        type, a variable's name) is :class:`GateConfigurationError`: a typo must not turn the
        gate into one that only reports."""
        _refuse_misspelt_variables(env)
        if "DDA_GATE_ACTIONS" not in env:
            raise GateConfigurationError(
                "DDA_GATE_ACTIONS is not set: name the mitigations for a weak key (comma-separated: "
                f"{', '.join(t.value for t in MitigationActionType)}), or set it empty to only report")
        names = [name.strip() for name in env["DDA_GATE_ACTIONS"].split(",") if name.strip()]
        return cls(actions=tuple(_action(name, env) for name in names), dry_run=_dry_run(env.get("DDA_DRY_RUN")))


def _action(name: str, env: Mapping[str, str]) -> ActionDefinition:
    try:
        action_type = MitigationActionType(name.upper())
    except ValueError:
        raise GateConfigurationError(
            f"DDA_GATE_ACTIONS: {name!r} is not a mitigation action type (comma-separated: "
            f"{', '.join(t.value for t in MitigationActionType)})") from None
    if action_type not in _ACTION_VARIABLE:
        return ActionDefinition.for_type(action_type)
    variable, argument, what = _ACTION_VARIABLE[action_type]
    value = env.get(variable, "").strip()
    if not value:
        raise GateConfigurationError(f"DDA_GATE_ACTIONS: {action_type.value} needs {variable} ({what}), "
                                     "which is not set")
    try:
        return ActionDefinition.for_type(action_type, **{argument: value})
    except ValueError as exc:  # a value AWS would refuse
        raise GateConfigurationError(f"{variable}: {exc}") from None


def _dry_run(value: str | None) -> bool:
    if value is None:
        return True
    if value.strip().lower() not in ("true", "false"):
        raise GateConfigurationError(f"DDA_DRY_RUN must be true or false, not {value!r}")
    return value.strip().lower() == "true"


def _refuse_misspelt_variables(env: Mapping[str, str]) -> None:
    """A variable named like one of :data:`GATE_VARIABLES` but not exactly it (``DDA_DRYRUN``,
    ``dda_dry_run``) would leave the real one unset: its default (a dry run) would hide the typo.
    The project's other ``DDA_`` variables are no closer to these than 0.67."""
    for name in env:
        if name in GATE_VARIABLES or not name.upper().startswith("DDA"):
            continue
        close = difflib.get_close_matches(name.upper(), GATE_VARIABLES, n=1, cutoff=0.8)
        if close:
            raise GateConfigurationError(f"{name} is not a setting of the gate: did you mean {close[0]}?")


@dataclass(frozen=True)
class Registration:
    """A certificate that entered the account, and how."""

    certificate_id: str
    resource_type: str = DEVICE_CERTIFICATE
    #: :data:`JITR`, or the API call (CloudTrail ``eventName``) that registered it.
    via: str = JITR


class NotARegistration(ValueError):
    """An event that names no certificate to check; ``code`` is the gate's verdict on it."""

    def __init__(self, code: str, message: str, via: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.via = via


@dataclass
class GateOutcome:
    #: None when the event named no certificate.
    certificate_id: str | None
    #: VULNERABLE, CLEAN, NOT_COVERED (could be weak, no data), a skipped event's code
    #: (UNRECOGNIZED_EVENT, CALL_FAILED, NO_CERTIFICATE_ID) or an error code.
    verdict: str
    detail: str = ""
    resource_type: str = DEVICE_CERTIFICATE
    via: str | None = JITR
    findings: list[AuditFinding] = field(default_factory=list)
    executions: list[MitigationExecution] = field(default_factory=list)
    #: The certificate was not checked, or a mitigation of its weak key failed, for a reason that
    #: may pass (throttling, a lost connection, a denied call): the invocation must fail so that
    #: Lambda runs it again, never end as if the key had been gated.
    retry: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"certificateId": self.certificate_id, "resourceType": self.resource_type, "via": self.via,
                "verdict": self.verdict, "detail": self.detail,
                "findings": [f.to_aws() for f in self.findings],
                "actionsExecutions": [e.to_aws() for e in self.executions]}

    def log_line(self) -> str:
        """One line for the function's log: what arrived, the verdict, what was done."""
        actions = [f"{e.action_name}:{e.status.value}" for e in self.executions]
        return json.dumps({"gate": self.verdict, "certificateId": self.certificate_id,
                           "resourceType": self.resource_type, "via": self.via, "detail": self.detail,
                           "actions": actions, "retry": self.retry})


class GateUnfinished(RuntimeError):
    """An event whose certificate the gate could not check or mitigate (:attr:`GateOutcome.retry`):
    raised by the Lambda handler so that the invocation fails and is retried."""

    def __init__(self, outcome: GateOutcome) -> None:
        actions = ", ".join(f"{e.action_name}:{e.status.value}" for e in outcome.executions)
        which = outcome.certificate_id or f"registered by {outcome.via}"
        super().__init__(f"certificate {which} not gated: {outcome.verdict} {outcome.detail}"
                         + (f" (actions {actions})" if actions else "")
                         + "; failing the invocation so that Lambda retries it")
        self.outcome = outcome


def _is_certificate_id(value: object) -> bool:
    return isinstance(value, str) and _CERTIFICATE_ID.fullmatch(value) is not None


def registration_from_event(event: object) -> Registration:
    """The certificate a JITR message or a CloudTrail record of an API registration is about;
    :class:`NotARegistration` for anything else, a failed call, or a record without the id."""
    if not isinstance(event, Mapping):
        raise NotARegistration(UNRECOGNIZED_EVENT,
                               f"not a certificate registration event: a {type(event).__name__}, not a JSON object")
    if "detail" in event or "detail-type" in event:
        return _api_registration(event)
    certificate_id = event.get("certificateId")
    if not _is_certificate_id(certificate_id):
        raise NotARegistration(UNRECOGNIZED_EVENT, "not a certificate registration event: no certificateId of 64 "
                                                   "hex digits and no CloudTrail detail")
    return Registration(str(certificate_id))


def _api_registration(event: Mapping[str, Any]) -> Registration:
    detail = event.get("detail")
    if (event.get("detail-type") != CLOUDTRAIL_DETAIL_TYPE or not isinstance(detail, Mapping)
            or detail.get("eventSource") != IOT_EVENT_SOURCE):
        raise NotARegistration(UNRECOGNIZED_EVENT, f"not a CloudTrail record of an AWS IoT call: detail-type "
                                                   f"{event.get('detail-type')!r}, eventSource "
                                                   f"{detail.get('eventSource') if isinstance(detail, Mapping) else None!r}")
    name = detail.get("eventName")
    if name not in API_REGISTRATIONS:
        raise NotARegistration(UNRECOGNIZED_EVENT, f"{name!r} registers no certificate the gate checks "
                                                   f"(it checks {', '.join(API_REGISTRATIONS)})")
    if detail.get("errorCode"):
        raise NotARegistration(CALL_FAILED, f"{name} failed ({detail['errorCode']}): nothing was registered", name)
    certificate_id = _named_certificate(detail)
    if certificate_id is None:
        raise NotARegistration(NO_CERTIFICATE_ID, f"the {name} record names no certificate: no certificateId of 64 "
                                                  "hex digits in responseElements (certificateId, certificateArn) "
                                                  "or requestParameters", name)
    return Registration(certificate_id, API_REGISTRATIONS[name], name)


def _named_certificate(detail: Mapping[str, Any]) -> str | None:
    """The id from the call's response (its ARN ends with the id), else from its request
    (``AcceptCertificateTransfer`` answers nothing: the id is in its request)."""
    candidates: list[object] = []
    response = detail.get("responseElements")
    if isinstance(response, Mapping):
        arn = response.get("certificateArn")
        candidates += [response.get("certificateId"), arn.rpartition("/")[2] if isinstance(arn, str) else None]
    request = detail.get("requestParameters")
    if isinstance(request, Mapping):
        candidates.append(request.get("certificateId"))
    return next((str(c) for c in candidates if _is_certificate_id(c)), None)


class _Undescribed(Exception):
    """A description without the certificate's PEM or ARN."""


def _describe(iot: Any, registration: Registration) -> tuple[str, str, str]:
    """(ARN, status, PEM) from DescribeCertificate, or DescribeCACertificate for a CA."""
    if registration.resource_type == CA_CERTIFICATE:
        response = iot.describe_ca_certificate(certificateId=registration.certificate_id)
    else:
        response = iot.describe_certificate(certificateId=registration.certificate_id)
    description = response.get("certificateDescription") or {}
    arn, pem = description.get("certificateArn"), description.get("certificatePem")
    if not isinstance(arn, str) or not arn or not isinstance(pem, str) or not pem:
        raise _Undescribed("the description lacks certificateArn or certificatePem")
    return arn, str(description.get("status", "")), pem


def gate_certificate(iot: Any, sns: Any, registration: Registration, detectors: Sequence[Detector],
                     settings: GateSettings) -> GateOutcome:
    """Check one newly registered certificate and mitigate it if its key is weak."""
    certificate_id, resource_type = registration.certificate_id, registration.resource_type

    def outcome(verdict: str, detail: str = "", **more: Any) -> GateOutcome:
        return GateOutcome(certificate_id, verdict, detail, resource_type, registration.via, **more)

    try:
        arn, status, pem = _describe(iot, registration)
    except AWS_ERRORS as exc:
        # Gone (deleted before the gate ran): nothing left to gate. Anything else may pass.
        return outcome(aws_error_code(exc), f"cannot describe the certificate: {aws_error_message(exc)}",
                       retry=not is_not_found(exc))
    except _Undescribed as exc:
        return outcome(MALFORMED_RESPONSE, str(exc))
    try:
        key = certificate_public_key(pem)
    except KeyMaterialError as exc:
        return outcome(exc.error_code, str(exc))
    results = check_key(key, detectors)
    weak = [r for r in results if r.verdict is Verdict.VULNERABLE]
    if not weak:
        uncovered = [r for r in results if r.verdict is Verdict.NOT_COVERED]
        verdict = Verdict.NOT_COVERED if uncovered else Verdict.CLEAN
        return outcome(verdict.value, "; ".join(r.detail for r in uncovered))
    now = datetime.now(timezone.utc)
    info = {"keyAlgorithm": key.algorithm, "keySize": str(key.bits), "certificateStatus": status}
    if resource_type == CA_CERTIFICATE:
        # The model's ResourceIdentifier has no CA certificate ARN; the finding keeps it here.
        info["caCertificateArn"] = arn
        identifier = ResourceIdentifier(ca_certificate_id=certificate_id)
    else:
        info["things"] = _things(iot, arn)
        identifier = ResourceIdentifier(device_certificate_id=certificate_id, device_certificate_arn=arn)
    task_id = GATE_TASK_PREFIX + new_id()
    findings = [
        AuditFinding(task_id=task_id, check_name=_CHECK_OF[resource_type], task_start_time=now, finding_time=now,
                     non_compliant_resource=NonCompliantResource(resource_type=resource_type,
                                                                 resource_identifier=identifier, additional_info=info),
                     reason_for_non_compliance=r.detail, reason_for_non_compliance_code=r.reason_code or "")
        for r in weak
    ]
    mitigator = Mitigator(iot, sns, None, dry_run=settings.dry_run)
    # One certificate, one set of actions: act on the first finding (its flaws are listed in all).
    executions = mitigator.apply(findings[:1], settings.actions, task_id)
    return outcome(Verdict.VULNERABLE.value, "; ".join(r.reason_code or r.detector for r in weak),
                   findings=findings, executions=executions,
                   retry=any(e.status is MitigationStatus.FAILED for e in executions))


def _things(iot: Any, arn: str) -> str:
    """Comma-separated attached things, or why they are unknown: a finding is never lost to it."""
    try:
        return ",".join(attached_things(iot, arn))
    except AWS_ERRORS as exc:
        return f"unknown ({aws_error_code(exc)})"


@dataclass(frozen=True)
class Home:
    """The account and region the gate acts in (an unknown one is not compared)."""

    account: str | None = None
    region: str | None = None


def _elsewhere(event: Mapping[str, Any], home: Home) -> tuple[str, str] | None:
    """(verdict, detail) when the event says its certificate is in another account or region:
    a JITR message's ``awsAccountId``; a CloudTrail record's ``account``/``recipientAccountId``
    and ``region``/``awsRegion`` (EventBridge delivers other accounts' events to a bus that
    accepts them)."""
    detail = event.get("detail") if isinstance(event.get("detail"), Mapping) else {}
    accounts = [event.get("awsAccountId"), event.get("account"), detail.get("recipientAccountId")]
    regions = [event.get("region"), detail.get("awsRegion")]
    for verdict, said, ours in ((OTHER_ACCOUNT, accounts, home.account), (OTHER_REGION, regions, home.region)):
        other = next((v for v in said if isinstance(v, str) and v and ours and v != ours), None)
        if other is not None:
            what = "account" if verdict == OTHER_ACCOUNT else "region"
            return verdict, f"the certificate is in {what} {other}, the gate acts in {ours}: not looked up here"
    return None


def gate_event(event: object, iot: Any, sns: Any, detectors: Sequence[Detector], settings: GateSettings,
               home: Home | None = None) -> GateOutcome:
    """One event, one outcome, one log line: the registration's verdict and actions, or why the
    event names nothing to check here. A clean key or a failed call (which registered nothing)
    is INFO, an outcome to retry (:attr:`GateOutcome.retry`) ERROR, anything else WARNING."""
    try:
        registration = registration_from_event(event)
    except NotARegistration as skipped:
        # A registration whose record names no certificate registered one the gate cannot
        # check: whether CloudTrail always records these calls' responseElements is not
        # documented, so such a record fails the invocation (kept, counted), never passes.
        result = GateOutcome(None, skipped.code, str(skipped), via=skipped.via,
                             retry=skipped.code == NO_CERTIFICATE_ID)
        level = logging.INFO if skipped.code == CALL_FAILED else logging.ERROR if result.retry else logging.WARNING
        LOG.log(level, result.log_line())
        return result
    assert isinstance(event, Mapping)  # registration_from_event refuses anything else
    elsewhere = _elsewhere(event, home or Home())
    if elsewhere is not None:
        result = GateOutcome(registration.certificate_id, *elsewhere, registration.resource_type, registration.via)
    else:
        result = gate_certificate(iot, sns, registration, detectors, settings)
    level = logging.ERROR if result.retry else logging.INFO if result.verdict == Verdict.CLEAN.value else logging.WARNING
    LOG.log(level, result.log_line())
    return result
