"""An embedded AWS IoT account to audit without credentials: a local moto server and a fleet.

The fleet is built from real key material shipped in ``demo_fleet/``: public certificates with
good keys, real ROCA certificates from the ROCA authors' test set, and certificates issued at
start-up for real CVE-2008-0166 weak private keys. It also holds a fresh EC certificate (not
applicable to the RSA checks), a revoked and an inactive weak certificate (out of scope, so
not reported) and one corrupt PEM (reported as a failed resource), so one run shows every
path of the audit. Two CA certificates are registered: a fresh one, and one whose key is a real
Debian weak P-256 key (``CA_CERTIFICATE_KEY_QUALITY_CHECK`` reports it). moto has no
``ListCACertificates``; :mod:`.moto_ca_listing` adds it to the embedded server.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devicedefender_audit.aws.clients import AwsTarget

DEMO_REGION = "us-east-1"
QUARANTINE_GROUP = "quarantine-weak-keys"


@dataclass(frozen=True)
class DemoDevice:
    thing: str
    source: str  # file in demo_fleet/ (a certificate, or a private key to issue one for)
    status: str = "ACTIVE"


FLEET = (
    DemoDevice("gateway-001", "good-cert01.pem"),
    DemoDevice("gateway-002", "good-cert02.pem"),
    DemoDevice("sensor-003", "good-cert03.pem"),
    DemoDevice("sensor-004", "good-cert06.pem", status="PENDING_TRANSFER"),
    DemoDevice("sensor-005", "ec"),
    DemoDevice("meter-roca-006", "roca-cert04.pem"),
    DemoDevice("meter-roca-007", "roca-cert05.pem"),
    DemoDevice("legacy-deb-008", "debian-rsa1024-ssl-le32-pid1-rnd.key"),
    DemoDevice("legacy-deb-009", "debian-rsa1024-ssl-be32-pid77-rnd.key"),
    DemoDevice("legacy-deb-010", "debian-rsa1024-ssl-le32-pid1-nornd-old.key"),
    DemoDevice("legacy-deb-011", "debian-rsa1024-ssl-le64-pid4242-nornd-new.key"),
    DemoDevice("legacy-deb-012", "debian-rsa2048-ssl-be32-pid1000-rnd.key"),
    DemoDevice("legacy-ssh-016", "debian-rsa1024-ssh-le64-pid1.key"),
    DemoDevice("retired-013", "debian-rsa1024-ssl-le32-pid1-rnd.key", status="REVOKED"),
    DemoDevice("spare-014", "debian-rsa1024-ssl-be32-pid77-rnd.key", status="INACTIVE"),
    DemoDevice("broken-015", "corrupt"),
)

#: CA certificates: (common name, source as for a device).
CA_CERTIFICATES = (
    DemoDevice("demo-root-ca", "ec"),
    DemoDevice("legacy-ca-deb", "debian-ecp256-ssl-le64-pid1-rnd.key"),
)

CORRUPT_PEM = "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def issue_certificate(private_key: Any, common_name: str = "device") -> str:
    """A self-signed device certificate for ``private_key`` (the key is what gets audited),
    valid from yesterday for a year."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def device_certificate(device: DemoDevice) -> str:
    if device.source == "corrupt":
        return CORRUPT_PEM
    if device.source == "ec":
        return issue_certificate(ec.generate_private_key(ec.SECP256R1()), device.thing)
    data = resources.files("devicedefender_audit.demo_fleet").joinpath(device.source).read_bytes()
    if device.source.endswith(".key"):
        key = serialization.load_pem_private_key(data, password=None)
        return issue_certificate(key, device.thing)
    return data.decode()


def seed_fleet(target: AwsTarget) -> dict[str, str]:
    """Register the demo fleet and CA certificates; return thing (or CA) name -> certificate id."""
    iot = target.client("iot")
    registered = {}
    for device in FLEET:
        cert = iot.register_certificate_without_ca(
            certificatePem=device_certificate(device), status=device.status
        )
        iot.create_thing(thingName=device.thing)
        iot.attach_thing_principal(thingName=device.thing, principal=cert["certificateArn"])
        registered[device.thing] = cert["certificateId"]
    for ca in CA_CERTIFICATES:
        cert = iot.register_ca_certificate(caCertificate=device_certificate(ca), setAsActive=True)
        registered[ca.thing] = cert["certificateId"]
    return registered


@contextmanager
def demo_account() -> Iterator[AwsTarget]:
    """A seeded moto server on loopback for the duration of the block."""
    from moto.server import ThreadedMotoServer

    from devicedefender_audit import moto_ca_listing

    moto_ca_listing.install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log
    for variable, value in (
        ("AWS_ACCESS_KEY_ID", "demo"),
        ("AWS_SECRET_ACCESS_KEY", "demo"),
        ("AWS_SESSION_TOKEN", "demo"),
    ):
        os.environ[variable] = value
    os.environ.pop("AWS_PROFILE", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        target = AwsTarget(region=DEMO_REGION, endpoint_url=f"http://{host}:{port}")
        seed_fleet(target)
        yield target
    finally:
        server.stop()
