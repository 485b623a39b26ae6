"""``ListCACertificates`` for moto, which implements the other CA certificate operations but not this one.

The embedded demo account and the tests run on moto; without a listing there, the CA checks
could only ever report that they could not list anything. This adds the operation to moto's
IoT responses, answered from moto's own store of registered CA certificates, in the model's
output shape. It installs only where moto lacks the operation, so a moto that implements it
is used as it is.
"""

from __future__ import annotations

from typing import Any


def _list_ca_certificates(self: Any) -> Any:
    from moto.core.responses import ActionResult

    certificates = [
        {"certificateArn": cert.arn, "certificateId": cert.certificate_id, "status": cert.status,
         "creationDate": cert.creation_date}
        for cert in self.iot_backend.ca_certificates.values()
    ]
    return ActionResult({"certificates": certificates})


def install() -> None:
    """Teach moto's IoT responses ``ListCACertificates`` (idempotent)."""
    from moto.iot.responses import IoTResponse

    if not hasattr(IoTResponse, "list_ca_certificates"):
        IoTResponse.list_ca_certificates = _list_ca_certificates  # type: ignore[attr-defined]
