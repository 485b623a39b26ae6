"""``ListCACertificates`` for moto, which implements the other CA certificate operations but not this one.

The embedded demo account and the tests run on moto; without a listing there, the CA checks
could only ever report that they could not list anything. This adds the operation to moto's
IoT responses, answered from moto's own store of registered CA certificates, in the model's
output shape, paged as AWS pages it (``pageSize`` certificates a page, ``nextMarker`` to go on,
``ascendingOrder`` by creation date), so that the boto3 paginator is exercised page by page. It
installs only where moto lacks the operation, so a moto that implements it is used as it is.
"""

from __future__ import annotations

from typing import Any

#: What AWS IoT returns when ``pageSize`` is not given (the model allows 1 to 250).
DEFAULT_PAGE_SIZE = 25


def _list_ca_certificates(self: Any) -> Any:
    from moto.core.responses import ActionResult

    page_size = self._get_int_param("pageSize", DEFAULT_PAGE_SIZE)
    start = int(self._get_param("marker") or 0)
    # On the wire the member ``ascendingOrder`` is the query parameter ``isAscendingOrder``.
    ascending = self._get_bool_param("isAscendingOrder", self._get_bool_param("ascendingOrder", True))
    # moto keeps certificates in registration order, which is creation order.
    ordered = list(self.iot_backend.ca_certificates.values())
    if not ascending:
        ordered.reverse()
    page = ordered[start : start + page_size]
    certificates = [
        {"certificateArn": cert.arn, "certificateId": cert.certificate_id, "status": cert.status,
         "creationDate": cert.creation_date}
        for cert in page
    ]
    result: dict[str, Any] = {"certificates": certificates}
    if start + page_size < len(ordered):
        result["nextMarker"] = str(start + page_size)
    return ActionResult(result)


def install() -> None:
    """Teach moto's IoT responses ``ListCACertificates`` (idempotent)."""
    from moto.iot.responses import IoTResponse

    if not hasattr(IoTResponse, "list_ca_certificates"):
        IoTResponse.list_ca_certificates = _list_ca_certificates  # type: ignore[attr-defined]
