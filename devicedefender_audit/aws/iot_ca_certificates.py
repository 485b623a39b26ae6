"""The IoT calls the CA checks make: list CA certificates page by page, describe one.

``ListCACertificates`` is paged with the boto3 paginator (``marker``/``nextMarker``, at most 250
per page) and gives id, ARN, status and creation date; only ``DescribeCACertificate`` gives the
PEM, which never changes for an id (the id is the certificate's SHA-256). Malformed answers are
raised as the device calls raise them (:mod:`.iot_certificates`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from devicedefender_audit.aws.iot_certificates import PAGE_SIZE, ListedCertificate, described_pem, listed_rows


def list_ca_certificate_pages(iot: Any, page_size: int = PAGE_SIZE) -> Iterator[list[ListedCertificate]]:
    """Every CA certificate of the account and region, one page at a time; raises what boto3
    raises, and :class:`~.iot_certificates.IncompleteListing` for a row without an id or ARN."""
    paginator = iot.get_paginator("list_ca_certificates")
    for page in paginator.paginate(PaginationConfig={"PageSize": page_size}):
        yield list(listed_rows(page, "ListCACertificates"))


def describe_ca_certificate_pem(iot: Any, certificate_id: str) -> tuple[str, str]:
    """(status, PEM) of one CA certificate; raises what boto3 raises, and
    :class:`~.iot_certificates.IncompleteDescription` for a response without a PEM as text."""
    return described_pem(iot.describe_ca_certificate(certificateId=certificate_id), "DescribeCACertificate")
