"""The errors the operations raise, named and coded as Device Defender's API names them.

Each carries the error code the ``iot`` model declares for the operation and the HTTP status
that code has in the model, so every front (CLI, HTTP) reports it as AWS would.
"""

from __future__ import annotations

from devicedefender_audit.aws.errors import DENIED_CODES
from devicedefender_audit.models import error_message

INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"


def check_error(code: str | None, message: str | None) -> dict:
    """A check's ``errorCode`` and ``message`` as ``DescribeAuditTask`` and the audit notification
    give them. A check denied permission (the audit role, or the role that could not be assumed)
    reads ``INSUFFICIENT_PERMISSIONS``, one of the two codes the model documents, so a script that
    alerts on it works here; AWS's own code leads the message. Our other codes
    (``RESOURCES_NOT_CHECKED``, ``CONNECTION_ERROR``, ``INTERRUPTED``, ...) name outcomes Device
    Defender has no code for and are kept. The message is cut to the model's maximum
    (:func:`~devicedefender_audit.models.error_message`)."""
    if code in DENIED_CODES:
        code, message = INSUFFICIENT_PERMISSIONS, f"{code}: {message}" if message else code
    message = error_message(message)
    return {k: v for k, v in (("errorCode", code), ("message", message)) if v is not None}


class ServiceError(Exception):
    """An operation refused the request; ``code`` is the model's exception name."""

    code = "InternalFailureException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    code = "InvalidRequestException"
    status = 400


class ResourceNotFound(ServiceError):
    code = "ResourceNotFoundException"
    status = 404


class ResourceAlreadyExists(ServiceError):
    code = "ResourceAlreadyExistsException"
    status = 409


class TaskAlreadyExists(ServiceError):
    """``StartAuditMitigationActionsTask`` with the id of an existing task and another request token."""

    code = "TaskAlreadyExistsException"
    status = 400


class Throttled(ServiceError):
    """The request cannot be answered yet: the SDKs retry a ``ThrottlingException`` by themselves
    (botocore's retry modes count it as throttling)."""

    code = "ThrottlingException"
    status = 400


class LimitExceeded(ServiceError):
    """One of Device Defender's fixed quotas (not adjustable) would be passed: 5 scheduled audits,
    100 mitigation actions, 10 audit mitigation actions tasks running at the same time."""

    code = "LimitExceededException"
    status = 410
