"""One classification of failed AWS calls, for every caller.

A ``ClientError`` carries AWS's error code. Many failures carry no HTTP response at all (refused,
dropped or timed-out connections, DNS failures): they are classified here too, so no caller
reaches into a response that does not exist.
"""

from __future__ import annotations

import re

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
#: Our code for a call that never got an HTTP response.
CONNECTION_ERROR = "CONNECTION_ERROR"
#: The AWS errors that are not found by another name.
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NotFoundException", "NotFound"})
#: The AWS errors that say the caller was denied (IoT, STS AssumeRole).
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedException"})


def is_connection_error(exc: BaseException) -> bool:
    """True for failures with no HTTP response: nothing was answered, so nothing is known."""
    return isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError))


def aws_error_code(exc: BaseException) -> str:
    """AWS's error code, ``CONNECTION_ERROR`` for a call with no response, else the type name."""
    if isinstance(exc, ClientError):
        error = (exc.response or {}).get("Error") or {}
        return str(error.get("Code") or "ClientError")
    if is_connection_error(exc):
        return CONNECTION_ERROR
    return type(exc).__name__


def aws_error_message(exc: BaseException) -> str:
    """AWS's error message, or, when the endpoint answered with a web page instead of an AWS
    error (an emulator's or proxy's 500), one line saying so instead of the page."""
    if isinstance(exc, ClientError):
        error = (exc.response or {}).get("Error") or {}
        message = str(error.get("Message") or exc)
        if message.lstrip()[:14].lower().startswith(("<!doctype html", "<html")):
            return _web_page(message, (exc.response or {}).get("ResponseMetadata", {}).get("HTTPStatusCode"))
        return message
    return str(exc) or type(exc).__name__


def _web_page(body: str, status: object) -> str:
    title = re.search(r"<title>([^<]{1,200})</title>", body, re.IGNORECASE)
    what = title.group(1).strip() if title else " ".join(body.split())[:100]
    return f"HTTP {status or '?'} answered with a web page, not an AWS error: {what}"


def is_throttling(exc: BaseException) -> bool:
    return aws_error_code(exc) in THROTTLING_CODES


def is_not_found(exc: BaseException) -> bool:
    return aws_error_code(exc) in NOT_FOUND_CODES


#: What callers catch: every error a boto3 call raises.
AWS_ERRORS = (ClientError, BotoCoreError)
