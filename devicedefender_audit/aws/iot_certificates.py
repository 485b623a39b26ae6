"""The IoT calls the inventory makes: list certificates page by page, describe one, list its things.

``ListCertificates`` is paged with the boto3 paginator at the API's maximum page size (250) and
handed on page by page, so memory does not grow with the fleet. Listing gives id, ARN, status and
creation date; only ``DescribeCertificate`` gives the PEM, which never changes for an id.

An answer that is not what the ``iot`` model describes (a row without an id, a PEM that is not
text) is raised as :class:`IncompleteListing` / :class:`IncompleteDescription`, never as the
``KeyError`` or ``AttributeError`` it would otherwise become deep inside the audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PAGE_SIZE = 250


class IncompleteListing(Exception):
    """A listing page that is not the model's: no list of certificates, or a row without the
    certificate's id or ARN (nothing to audit it by)."""


class IncompleteDescription(Exception):
    """A describe answer without the certificate's PEM as text."""


@dataclass(frozen=True)
class ListedCertificate:
    """One row of ``ListCertificates``."""

    certificate_id: str
    certificate_arn: str
    status: str
    creation_date: datetime | None


def certificate_statuses(iot: Any, shape: str = "CertificateStatus") -> frozenset[str]:
    """The statuses the client's ``iot`` model knows (``CACertificateStatus`` for CAs): a status
    outside them cannot be placed in or out of an audit's scope."""
    return frozenset(iot.meta.service_model.shape_for(shape).enum)


def listed_rows(page: dict, operation: str) -> Iterator[ListedCertificate]:
    """The rows of one ``ListCertificates``/``ListCACertificates`` page; raises
    :class:`IncompleteListing` for a page or row the model does not describe."""
    rows = page.get("certificates", [])
    if not isinstance(rows, list):
        raise IncompleteListing(f"{operation} answered certificates that are not a list")
    for cert in rows:
        if not isinstance(cert, dict) or not all(
                isinstance(cert.get(name), str) and cert[name] for name in ("certificateId", "certificateArn")):
            raise IncompleteListing(f"{operation} returned a certificate without certificateId or certificateArn")
        status = cert.get("status")
        created = cert.get("creationDate")
        yield ListedCertificate(certificate_id=cert["certificateId"], certificate_arn=cert["certificateArn"],
                                status=status if isinstance(status, str) else "",
                                creation_date=created if isinstance(created, datetime) else None)


def list_certificate_pages(iot: Any, page_size: int = PAGE_SIZE) -> Iterator[list[ListedCertificate]]:
    """Every certificate of the account and region, one page at a time; raises what boto3
    raises (``ValueError`` for a timestamp it cannot parse), and :class:`IncompleteListing`."""
    paginator = iot.get_paginator("list_certificates")
    for page in paginator.paginate(PaginationConfig={"PageSize": page_size}):
        yield list(listed_rows(page, "ListCertificates"))


def described_pem(answer: dict, operation: str) -> tuple[str, str]:
    """(status, PEM) of a ``DescribeCertificate``/``DescribeCACertificate`` answer; raises
    :class:`IncompleteDescription` when it holds no PEM text."""
    description = answer.get("certificateDescription")
    description = description if isinstance(description, dict) else {}
    pem = description.get("certificatePem")
    if not isinstance(pem, str) or not pem:
        raise IncompleteDescription(f"{operation} response lacks certificateDescription.certificatePem as text")
    status = description.get("status")
    return status if isinstance(status, str) else "", pem


def describe_certificate_pem(iot: Any, certificate_id: str) -> tuple[str, str]:
    """(status, PEM) of one certificate; raises what boto3 raises (``ValueError`` for a timestamp
    it cannot parse), and :class:`IncompleteDescription`."""
    return described_pem(iot.describe_certificate(certificateId=certificate_id), "DescribeCertificate")


def attached_things(iot: Any, certificate_arn: str) -> list[str]:
    """Things the certificate is attached to, so a finding names the devices to act on."""
    paginator = iot.get_paginator("list_principal_things")
    return [t for page in paginator.paginate(principal=certificate_arn) for t in page.get("things", [])]
