"""The errors the operations raise, named and coded as Device Defender's API names them.

Each carries the error code the ``iot`` model declares for the operation and the HTTP status
that code has in the model, so every front (CLI, HTTP) reports it as AWS would.
"""

from __future__ import annotations


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
