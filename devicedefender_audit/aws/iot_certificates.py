"""The IoT calls the inventory makes: list certificates page by page, describe one, list its things.

``ListCertificates`` is paged with the boto3 paginator at the API's maximum page size (250) and
handed on page by page, so memory does not grow with the fleet. Listing gives id, ARN, status and
creation date; only ``DescribeCertificate`` gives the PEM, which never changes for an id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PAGE_SIZE = 250


@dataclass(frozen=True)
class ListedCertificate:
    """One row of ``ListCertificates``."""

    certificate_id: str
    certificate_arn: str
    status: str
    creation_date: datetime | None


def list_certificate_pages(iot: Any, page_size: int = PAGE_SIZE) -> Iterator[list[ListedCertificate]]:
    """Every certificate of the account and region, one page at a time."""
    paginator = iot.get_paginator("list_certificates")
    for page in paginator.paginate(PaginationConfig={"PageSize": page_size}):
        yield [
            ListedCertificate(
                certificate_id=cert["certificateId"],
                certificate_arn=cert["certificateArn"],
                status=cert.get("status", ""),
                creation_date=cert.get("creationDate"),
            )
            for cert in page.get("certificates", [])
        ]


def describe_certificate_pem(iot: Any, certificate_id: str) -> tuple[str, str]:
    """(status, PEM) of one certificate; raises what boto3 raises, ``KeyError`` if incomplete."""
    description = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    return description.get("status", ""), description["certificatePem"]


def attached_things(iot: Any, certificate_arn: str) -> list[str]:
    """Things the certificate is attached to, so a finding names the devices to act on."""
    paginator = iot.get_paginator("list_principal_things")
    return [t for page in paginator.paginate(principal=certificate_arn) for t in page.get("things", [])]
