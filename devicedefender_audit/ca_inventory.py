"""The account's CA certificates, for ``CA_CERTIFICATE_KEY_QUALITY_CHECK`` and its factorable twin.

An account holds few CA certificates (tens, rarely hundreds), so they are listed in full at each
audit rather than kept in the certificate inventory's tables; only what is expensive and never
changes is kept: the key read from ``DescribeCACertificate``, one store record per certificate
id (the id is the certificate's SHA-256, so its PEM never changes). ``ACTIVE`` CA certificates
are in scope, as in Device Defender: an ``INACTIVE`` CA cannot register devices.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message
from devicedefender_audit.aws.iot_ca_certificates import (
    describe_ca_certificate_pem,
    list_ca_certificate_pages,
)
from devicedefender_audit.aws.iot_certificates import certificate_statuses
from devicedefender_audit.inventory import (
    SyncAborted,
    certificate_id_matches,
    describe,
    describe_error,
    unknown_status,
    unreadable,
)
from devicedefender_audit.key_material import public_key_from_spki
from devicedefender_audit.models import ResourceError
from devicedefender_audit.store import Store
from devicedefender_audit.store.base import Description, InventoryRecord

CA_RESOURCE_TYPE = "CA_CERTIFICATE"
CA_IN_SCOPE_STATUSES = frozenset({"ACTIVE"})
#: Store records holding the key of each described CA certificate, keyed by certificate id.
CA_KEY_KIND = "ca_certificate_key"


@dataclass
class CaSync:
    """The in-scope CA certificates with their keys, and those that could not be described."""

    records: list[InventoryRecord] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)
    described: int = 0


def _to_body(description: Description) -> dict:
    return {
        "spki": base64.b64encode(description.spki).decode() if description.spki else None,
        "keyAlgorithm": description.key_algorithm,
        "keyBits": description.key_bits,
        "unparsedPem": description.unparsed_pem,
        "errorCode": description.error_code,
        "errorMessage": description.error_message,
    }


class _DamagedRecord(ValueError):
    """A stored CA key record that is not one :func:`save_ca_description` wrote."""


def _from_body(certificate_id: str, body: object) -> Description:
    """The description a record holds; ``ValueError`` if the record is damaged."""
    if not isinstance(body, dict):
        raise _DamagedRecord("not an object")
    texts = ("spki", "keyAlgorithm", "unparsedPem", "errorCode", "errorMessage")
    if any(not isinstance(body.get(name), (str, type(None))) for name in texts):
        raise _DamagedRecord("a text member is not text")
    bits = body.get("keyBits")
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool)):
        raise _DamagedRecord("keyBits is not an integer")
    spki = base64.b64decode(body["spki"], validate=True) if body.get("spki") else None
    if spki is None and body.get("unparsedPem") is None:
        raise _DamagedRecord("neither a key nor a PEM")
    if spki is not None:
        public_key_from_spki(spki)  # raises KeyMaterialError (a ValueError) if it is not a key
    return Description(certificate_id, spki=spki, key_algorithm=body.get("keyAlgorithm"), key_bits=bits,
                       unparsed_pem=body.get("unparsedPem"), error_code=body.get("errorCode"),
                       error_message=body.get("errorMessage"))


def _stored_description(store: Store, certificate_id: str) -> Description | None:
    """The key kept for ``certificate_id``; None when there is none, or when the record is
    damaged (unreadable JSON, wrong members, not a key): the CA is then described again and the
    record rewritten, rather than the audit failing or the CA staying unchecked for ever."""
    try:
        body = store.get_record(CA_KEY_KIND, certificate_id)
        return None if body is None else _from_body(certificate_id, body)
    except ValueError:  # json.JSONDecodeError, binascii.Error and KeyMaterialError among them
        return None


def save_ca_description(store: Store, description: Description) -> None:
    """Keep a CA certificate's key (or a PEM today's parser cannot read) for later audits."""
    store.put_record(CA_KEY_KIND, description.certificate_id, _to_body(description))


def sync_ca_certificates(iot: Any, store: Store) -> CaSync:
    """List the CA certificates; describe, once per id ever, those in scope.

    Raises :class:`.SyncAborted` when the listing fails, on any page (a partial listing would
    be a false all-clear for the CAs left out); a CA certificate that cannot be
    described is an error against it, and one deleted meanwhile has left scope.
    """
    now = time.time()
    sync = CaSync()
    try:
        # By id: a certificate registered while the pages were read can appear on two of them.
        listed = {cert.certificate_id: cert for page in list_ca_certificate_pages(iot) for cert in page}
    except AWS_ERRORS as exc:
        raise SyncAborted(aws_error_code(exc),
                          f"could not list CA certificates: {aws_error_message(exc)}") from exc
    except Exception as exc:  # an answer the model does not describe (botocore parser errors too)
        raise SyncAborted("MALFORMED_RESPONSE", f"could not list CA certificates: {unreadable(exc)}") from exc
    statuses = certificate_statuses(iot, "CACertificateStatus")
    for cert in listed.values():
        if cert.status not in statuses:  # neither in scope nor out of it: not checked, said so
            sync.errors.append(unknown_status(cert, "ListCACertificates", statuses, resource_type=CA_RESOURCE_TYPE))
            continue
        if cert.status not in CA_IN_SCOPE_STATUSES:
            continue
        cid = cert.certificate_id
        stored = _stored_description(store, cid)
        if stored is not None:
            description = stored
        else:
            description, error = _describe(iot, cid)
            if error is not None:
                error = error.model_copy(update={"resource_type": CA_RESOURCE_TYPE})
                sync.errors.append(error)
                continue
            save_ca_description(store, description)
            sync.described += 1
        created = cert.creation_date.isoformat() if cert.creation_date else None
        sync.records.append(InventoryRecord(cid, cert.certificate_arn, cert.status, created, now, now, None,
                                            description))
    return sync


def _describe(iot: Any, certificate_id: str) -> tuple[Description, None] | tuple[None, ResourceError]:
    try:
        _, pem = describe_ca_certificate_pem(iot, certificate_id)
    except AWS_ERRORS as exc:
        return None, describe_error(certificate_id, exc)
    except Exception as exc:  # noqa: BLE001 - an answer the model does not describe is this CA's error
        return None, ResourceError(certificate_id=certificate_id, error_code="MALFORMED_RESPONSE",
                                   message=f"DescribeCACertificate: {unreadable(exc)}")
    if not certificate_id_matches(certificate_id, pem):
        return None, ResourceError(
            certificate_id=certificate_id, error_code="CERTIFICATE_ID_MISMATCH",
            message="the PEM that DescribeCACertificate returned does not hash to the certificate id")
    try:
        return describe(certificate_id, pem), None
    except Exception as exc:  # noqa: BLE001 - a parser bug must not end the audit; it is reported
        return None, ResourceError(certificate_id=certificate_id, error_code="CHECK_FAILED",
                                   message=f"{type(exc).__name__}: {exc}")
