"""Fetching the account's device certificates that the key-quality check applies to.

``ListCertificates`` is paged with the boto3 paginator (250 per page, the API maximum); only
``ACTIVE`` and ``PENDING_TRANSFER`` certificates are in scope, as in Device Defender. The PEM
of each comes from ``DescribeCertificate``, fetched by a bounded thread pool (boto3 clients are
thread-safe). A certificate that cannot be fetched becomes a :class:`ResourceError`; the scan
goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from devicedefender_audit.models import ResourceError

IN_SCOPE_STATUSES = frozenset({"ACTIVE", "PENDING_TRANSFER"})
PAGE_SIZE = 250
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)


@dataclass(frozen=True)
class CertificateSummary:
    certificate_id: str
    certificate_arn: str
    status: str


@dataclass(frozen=True)
class ScannedCertificate:
    certificate_id: str
    certificate_arn: str
    status: str
    certificate_pem: str


def error_from_exception(certificate_id: str, exc: Exception) -> ResourceError:
    """Classify a failed call against one certificate for the audit report."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code == "ResourceNotFoundException":
            return ResourceError(
                certificate_id=certificate_id,
                error_code="DELETED_DURING_SCAN",
                message=f"certificate was listed but no longer exists: {message}",
            )
        if code in THROTTLING_CODES:
            return ResourceError(
                certificate_id=certificate_id,
                error_code="THROTTLED",
                message=f"still throttled after all retries: {message}",
            )
        return ResourceError(certificate_id=certificate_id, error_code=code, message=message)
    if isinstance(exc, KeyError):
        return ResourceError(
            certificate_id=certificate_id,
            error_code="MALFORMED_RESPONSE",
            message=f"DescribeCertificate response lacks {exc}",
        )
    return ResourceError(certificate_id=certificate_id, error_code=type(exc).__name__, message=str(exc))


class CertificateScanner:
    def __init__(self, iot_client: Any, workers: int = 8, page_size: int = PAGE_SIZE) -> None:
        self.iot = iot_client
        self.workers = workers
        self.page_size = page_size

    def list_in_scope(self) -> list[CertificateSummary]:
        """Every ACTIVE or PENDING_TRANSFER certificate of the account and region."""
        paginator = self.iot.get_paginator("list_certificates")
        found = []
        for page in paginator.paginate(PaginationConfig={"PageSize": self.page_size}):
            for cert in page.get("certificates", []):
                if cert.get("status") in IN_SCOPE_STATUSES:
                    found.append(
                        CertificateSummary(cert["certificateId"], cert["certificateArn"], cert["status"])
                    )
        return found

    def describe(self, summary: CertificateSummary) -> ScannedCertificate | ResourceError | None:
        """The certificate's PEM, an error, or None if it left scope since it was listed."""
        try:
            response = self.iot.describe_certificate(certificateId=summary.certificate_id)
            description = response["certificateDescription"]
        except (ClientError, BotoCoreError, KeyError) as exc:
            return error_from_exception(summary.certificate_id, exc)
        status = description.get("status", summary.status)
        if status not in IN_SCOPE_STATUSES:
            return None
        return ScannedCertificate(
            certificate_id=summary.certificate_id,
            certificate_arn=description.get("certificateArn", summary.certificate_arn),
            status=status,
            certificate_pem=description.get("certificatePem", ""),
        )

    def attached_things(self, certificate_arn: str) -> list[str]:
        """Things the certificate is attached to (for findings a person can act on)."""
        paginator = self.iot.get_paginator("list_principal_things")
        return [t for page in paginator.paginate(principal=certificate_arn) for t in page.get("things", [])]

    def scan(
        self,
        summaries: list[CertificateSummary],
        on_done: Callable[[], None] | None = None,
    ) -> Iterator[ScannedCertificate | ResourceError]:
        """Describe ``summaries`` concurrently, yielding results as they complete."""
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="describe") as pool:
            for result in pool.map(self.describe, summaries):
                if on_done:
                    on_done()
                if result is not None:
                    yield result
