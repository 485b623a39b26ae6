"""Sync of the account's certificates into the inventory: list everything, describe only what is new.

A certificate id is the SHA-256 of the certificate, so the PEM (and its key) behind an id never
changes: ``DescribeCertificate`` is called once per id, ever. A sync pages ``ListCertificates``
(status and creation date come from the listing), records every page, describes the in-scope ids
that have no description yet, and commits descriptions in small batches as they arrive, so an
interrupted sync loses at most one batch and the next one goes on from there. Certificates that
are no longer listed are marked gone.

Each page is recorded with the time it was received, not the sync's start, and an older
observation never overwrites a newer one: two audits of one account at once (a scheduled
invocation delivered twice) then cannot mark gone a certificate the other has just listed, nor
store the status an older page saw over the one a newer page saw, either of which would leave a
listed ACTIVE certificate out of both audits (:data:`~.store.base.CLOCK_AHEAD_S` bounds how far
ahead a recorded observation still counts as newer).

Describes run concurrently, paced by the client's token buckets (:mod:`.aws.pacing`), with a
bounded number in flight so memory stays flat in fleet size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from devicedefender_audit.aws.errors import (
    AWS_ERRORS,
    aws_error_code,
    aws_error_message,
    is_connection_error,
    is_not_found,
    is_throttling,
)
from devicedefender_audit.aws.iot_certificates import (
    IncompleteDescription,
    IncompleteListing,
    ListedCertificate,
    certificate_statuses,
    describe_certificate_pem,
    list_certificate_pages,
)
from devicedefender_audit.key_material import KeyMaterialError, certificate_public_key
from devicedefender_audit.models import ResourceError
from devicedefender_audit.store import Store
from devicedefender_audit.store.base import Description

IN_SCOPE_STATUSES = frozenset({"ACTIVE", "PENDING_TRANSFER"})
#: Descriptions committed together: what an interrupted sync can lose at most.
BATCH_SIZE = 50
#: Consecutive calls without any HTTP response after which the endpoint counts as lost; as many
#: in a row still throttled after all retries end the sync too (``THROTTLED``): the endpoint, not
#: the certificates, is failing, and going on would spend hours marking the rest of the fleet
#: unchecked, at the pace adaptive retries fall to under throttling.
CONNECTION_LOSS_LIMIT = 20
#: Per-certificate errors that say the endpoint is failing: what ending the sync says of each.
_SYSTEMIC = {
    "CONNECTION_ERROR": "lost the connection to AWS IoT: {n} calls in a row got no response",
    "THROTTLED": ("AWS IoT throttled {n} DescribeCertificate calls in a row after all retries (the account's "
                  "quota is taken by other callers, or lower than --rate); what was described is kept and the "
                  "next run goes on from there"),
}
def _aborted_because(codes: list[str]) -> str:
    """Why a run of endpoint failures ended the sync: one kind's own words, or both kinds named
    (a run mixing lost connections and throttling is neither alone)."""
    if len(set(codes)) == 1:
        return _SYSTEMIC[codes[0]].format(n=len(codes))
    return (f"AWS IoT failed {len(codes)} calls in a row: {codes.count('CONNECTION_ERROR')} got no response, "
            f"{codes.count('THROTTLED')} were still throttled after all retries; what was described is kept and "
            "the next run goes on from there")


#: The longest ``certificatePem`` the ``iot`` model allows (``CertificatePem``, max 65,536): an
#: unparsable PEM is kept for a later parser only up to this (a 1 MB answer would be kept whole,
#: and is beyond DynamoDB's 400 KB item).
MAX_PEM_CHARS = 65536
#: How a PEM block holding a private key ends its BEGIN line (RSA, EC, PKCS#8, OpenSSH, encrypted).
PRIVATE_KEY_MARK = "PRIVATE KEY-----"


class SyncAborted(RuntimeError):
    """The sync cannot go on (the listing failed, or the connection is lost)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass
class SyncResult:
    started: float
    listed: int = 0
    in_scope: int = 0
    described: int = 0
    gone: int = 0
    #: In-scope certificates this sync could not describe (reported in ``errors``).
    undescribed: set[str] = field(default_factory=set)
    #: Listed certificates whose status is none the model knows: neither in scope nor out of it,
    #: so reported as not checked (``MALFORMED_RESPONSE``) rather than silently left out.
    unknown_status: int = 0


def _pem_der(pem: str) -> bytes | None:
    """The DER inside the first CERTIFICATE block of ``pem``, if it decodes."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start + len(begin)) if start >= 0 else -1
    if stop < 0:
        return None
    try:
        return base64.b64decode("".join(pem[start + len(begin) : stop].split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def certificate_id_matches(certificate_id: str, pem: str) -> bool:
    """Whether ``pem`` is the certificate that ``certificate_id`` names.

    AWS IoT's id is the SHA-256 of the DER certificate; moto (by default) hashes the PEM text.
    Either binds the PEM to the id, which is what makes describing once per id sound.
    """
    if hashlib.sha256(pem.encode("utf-8", "replace")).hexdigest() == certificate_id:
        return True
    der = _pem_der(pem)
    return der is not None and hashlib.sha256(der).hexdigest() == certificate_id


def describe(certificate_id: str, pem: str) -> Description:
    """Read the key of a described certificate; an unparsable PEM is kept for a later parser,
    unless it holds a private key (never stored: the inventory is not a key store) or is longer
    than any certificate AWS IoT holds (no parser will make a certificate of it)."""
    try:
        key = certificate_public_key(pem)
    except KeyMaterialError as exc:
        if PRIVATE_KEY_MARK in pem:
            return Description(certificate_id, error_code=exc.error_code,
                               error_message=f"{exc} (the answer held private key material; it was not stored)")
        if len(pem) > MAX_PEM_CHARS:
            return Description(certificate_id, error_code=exc.error_code,
                               error_message=f"{exc} (a PEM of {len(pem):,} characters, beyond the API's "
                                             f"{MAX_PEM_CHARS:,}; not stored)")
        return Description(certificate_id, unparsed_pem=pem, error_code=exc.error_code, error_message=str(exc))
    return Description(certificate_id, spki=key.spki, key_algorithm=key.algorithm, key_bits=key.bits)


@dataclass(frozen=True)
class _Described:
    listed: ListedCertificate
    status: str
    description: Description | None
    error: ResourceError | None
    #: When DescribeCertificate answered with ``status``; None when it gave none (the listing's
    #: status stands, and is not recorded again with a later time than it was seen).
    seen_at: float | None


class InventorySync:
    """One sync of the account's certificates into ``store``."""

    def __init__(
        self,
        iot: Any,
        store: Store,
        workers: int = 8,
        on_progress: Callable[[SyncResult], None] | None = None,
        on_error: Callable[[ResourceError], None] | None = None,
    ) -> None:
        self.iot = iot
        self.store = store
        self.workers = workers
        self.on_progress = on_progress
        self.on_error = on_error
        self.statuses = certificate_statuses(iot)

    def run(self) -> SyncResult:
        result = SyncResult(started=time.time())
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="describe")
        pending: set[Future[_Described]] = set()
        done: list[_Described] = []
        endpoint_failures: list[str] = []  # the codes of the current run of endpoint failures
        try:
            pages = list_certificate_pages(self.iot)
            while True:
                try:
                    page = next(pages)
                except StopIteration:
                    break
                except AWS_ERRORS as exc:
                    raise SyncAborted(aws_error_code(exc),
                                      f"could not list certificates: {aws_error_message(exc)}") from exc
                except Exception as exc:  # an answer the model does not describe (botocore parser errors too)
                    raise SyncAborted("MALFORMED_RESPONSE", f"could not list certificates: {unreadable(exc)}") from exc
                seen_at = time.time()
                self.store.record_listing(page, seen_at)
                result.listed += len(page)
                for cert in page:
                    if cert.status not in self.statuses:
                        result.unknown_status += 1
                        done.append(_Described(cert, cert.status, None,
                                               unknown_status(cert, "ListCertificates", self.statuses), None))
                in_scope = [c for c in page if c.status in IN_SCOPE_STATUSES]
                result.in_scope += len(in_scope)
                missing = self.store.ids_without_description(c.certificate_id for c in in_scope)
                for cert in in_scope:
                    if cert.certificate_id not in missing:
                        continue
                    while len(pending) >= 4 * self.workers:
                        endpoint_failures = self._drain(pending, done, result, endpoint_failures)
                    pending.add(pool.submit(self._describe, cert))
                if self.on_progress:
                    self.on_progress(result)
            while pending:
                endpoint_failures = self._drain(pending, done, result, endpoint_failures)
            self._commit(done, result)
            result.gone = self.store.mark_gone(result.started, time.time())
            return result
        except BaseException:
            # Interrupted or aborted: keep what was described; nothing in flight is waited for.
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    done.append(future.result())
            self._commit(done, result)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _drain(self, pending: set[Future[_Described]], done: list[_Described], result: SyncResult,
               endpoint_failures: list[str]) -> list[str]:
        finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        for future in finished:
            pending.discard(future)
            item = future.result()
            done.append(item)
            systemic = item.error is not None and item.error.error_code in _SYSTEMIC
            endpoint_failures = [*endpoint_failures, item.error.error_code] if systemic and item.error else []
            if len(endpoint_failures) >= CONNECTION_LOSS_LIMIT:
                self._commit(done, result)
                raise SyncAborted(endpoint_failures[-1], _aborted_because(endpoint_failures)
                                  + f" (last: {item.error.message if item.error else ''})")
        if len(done) >= BATCH_SIZE:
            self._commit(done, result)
        return endpoint_failures

    def _describe(self, cert: ListedCertificate) -> _Described:
        """Runs in a worker thread: one paced DescribeCertificate and the parse of its PEM."""
        cid = cert.certificate_id
        try:
            status, pem = describe_certificate_pem(self.iot, cid)
        except AWS_ERRORS as exc:
            return _Described(cert, cert.status, None, describe_error(cid, exc), None)
        except Exception as exc:  # noqa: BLE001 - an answer the model does not describe is this certificate's error
            return _Described(cert, cert.status, None, ResourceError(
                certificate_id=cid, error_code="MALFORMED_RESPONSE", message=f"DescribeCertificate: {unreadable(exc)}"),
                None)
        seen_at: float | None = time.time()
        if status not in self.statuses:  # missing or unknown: the listing's status stands
            status, seen_at = cert.status, None
        if not certificate_id_matches(cid, pem):
            return _Described(cert, status, None, ResourceError(
                certificate_id=cid, error_code="CERTIFICATE_ID_MISMATCH",
                message="the PEM that DescribeCertificate returned does not hash to the certificate id"), seen_at)
        try:
            description = describe(cid, pem)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not end the audit; it is reported
            return _Described(cert, status, None, ResourceError(
                certificate_id=cid, error_code="CHECK_FAILED", message=f"{type(exc).__name__}: {exc}"), seen_at)
        return _Described(cert, status, description, None, seen_at)

    def _commit(self, done: list[_Described], result: SyncResult) -> None:
        """Write one batch of describe results in one transaction."""
        if not done:
            return
        descriptions = [d.description for d in done if d.description is not None]
        # Every status DescribeCertificate gave, with its time, even one equal to this sync's
        # listing: an overlapping audit may have recorded an older page's other status since.
        observed = [
            (ListedCertificate(d.listed.certificate_id, d.listed.certificate_arn, d.status, d.listed.creation_date),
             d.seen_at)
            for d in done if d.seen_at is not None
        ]
        errors = [d.error for d in done if d.error is not None]
        deleted = [e.certificate_id for e in errors if e.left_scope]
        with self.store.batch():
            self.store.save_descriptions(descriptions)
            for certificate, seen_at in observed:
                self.store.record_listing([certificate], seen_at)
            if deleted:
                self.store.set_gone(deleted, time.time())
        for error in errors:
            if not error.left_scope:
                result.undescribed.add(error.certificate_id)
            if self.on_error:
                self.on_error(error)
        result.described += len(descriptions)
        done.clear()
        if self.on_progress:
            self.on_progress(result)


def unknown_status(cert: ListedCertificate, operation: str, statuses: frozenset[str],
                   resource_type: str | None = None) -> ResourceError:
    """The error of a listed certificate whose status is none of ``statuses`` (the model's): it
    can be placed neither in nor out of the audit's scope, so it is reported as not checked."""
    return ResourceError(certificate_id=cert.certificate_id, error_code="MALFORMED_RESPONSE",
                         message=f"{operation} gave status {cert.status!r}, none of {', '.join(sorted(statuses))}: "
                                 "not known to be out of scope", resource_type=resource_type)


def unreadable(exc: Exception) -> str:
    """Why an answer could not be read: our own message for an answer we checked
    (:class:`IncompleteListing`, :class:`IncompleteDescription`), else the error botocore's parser
    met (a timestamp it cannot parse is a ``ValueError``, a string where the model has an object
    an ``AttributeError``), named, since it says nothing of the answer by itself."""
    if isinstance(exc, (IncompleteListing, IncompleteDescription)):
        return str(exc)
    return f"the answer is not what the iot model describes ({type(exc).__name__}: {exc})"


def describe_error(certificate_id: str, exc: BaseException) -> ResourceError:
    """Classify a failed DescribeCertificate for the audit report."""
    message = aws_error_message(exc)
    if is_not_found(exc):
        return ResourceError(certificate_id=certificate_id, error_code="DELETED_DURING_SCAN",
                             message=f"listed, but deleted before it could be described: {message}",
                             left_scope=True)
    if is_throttling(exc):
        return ResourceError(certificate_id=certificate_id, error_code="THROTTLED",
                             message=f"still throttled after all retries: {message}")
    if is_connection_error(exc):
        return ResourceError(certificate_id=certificate_id, error_code="CONNECTION_ERROR",
                             message=f"no response from AWS IoT: {message}")
    return ResourceError(certificate_id=certificate_id, error_code=aws_error_code(exc), message=message)
