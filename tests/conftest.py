"""Shared fixtures: test vectors, a mocked AWS account, certificate builders."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import moto_securityhub
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devicedefender_audit import moto_ca_listing
from devicedefender_audit.audit import Audit
from devicedefender_audit.demo import issue_certificate
from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError
from devicedefender_audit.store import Store, open_store

# moto lacks ListCACertificates, which the CA checks need: every test's moto has it.
moto_ca_listing.install()
# moto lets BatchImportFindings overwrite a finding's workflow and lacks BatchUpdateFindings.
moto_securityhub.install()

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
REGION = "us-east-1"

DEBIAN_VECTOR = re.compile(
    r"rsa(?P<bits>\d+)-(?P<tool>ssl|ssh)-(?P<platform>\w+)-pid(?P<pid>\d+)(-(?P<variant>[\w-]+))?\.key"
)


def debian_vectors() -> list[Path]:
    """The real CVE-2008-0166 keys whose generating parameters are known."""
    return sorted(p for p in (DATA / "debian").glob("rsa*-ss[lh]-*.key"))


def vector_params(path: Path) -> tuple[int, str, str, int]:
    """(bits, platform, variant, pid) from a vector's file name; ssh keys are ``ssh-keygen``."""
    m = DEBIAN_VECTOR.fullmatch(path.name)
    assert m, path.name
    variant = "ssh-keygen" if m["tool"] == "ssh" else m["variant"]
    return int(m["bits"]), m["platform"], variant, int(m["pid"])


def load_private_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


@pytest.fixture(scope="session")
def fresh_rsa_key():
    """One freshly generated (good) RSA key, shared: generation is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ec_certificate() -> str:
    return issue_certificate(ec.generate_private_key(ec.SECP256R1()), "ec-device")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
        ("DDA_STORE", str(tmp_path / "audits.sqlite3")),
    ):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(aws_env) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def moto_server(aws_env) -> Iterator[str]:
    """A moto server on loopback, with a fresh account: moto's backends are process-wide, so
    what an earlier test left behind is reset first."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()
    yield url
    server.stop()


@pytest.fixture
def sns_queue(aws):
    """An SNS topic delivered raw to an SQS queue; ``drain()`` returns every message body."""
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="findings")["TopicArn"]
    queue = sqs.create_queue(QueueName="findings")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})

    def drain() -> list[str]:
        bodies = []
        while True:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(message["Body"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])

    return {"sns": sns, "sqs": sqs, "topic": topic, "queue": queue, "drain": drain}


@pytest.fixture
def topic_arn(aws) -> str:
    """An SNS topic in the mocked account, read back with :func:`sns_notifications`."""
    return boto3.client("sns", region_name=REGION).create_topic(Name="dda-findings")["TopicArn"]


def sns_notifications(topic: str) -> list[tuple[str, str]]:
    """(subject, message) of everything published to ``topic`` in moto's default account."""
    from moto.sns.models import sns_backends

    sent = sns_backends["123456789012"][REGION].topics[topic].sent_notifications
    return [(subject, message) for _, message, subject, *_ in sent]


@pytest.fixture
def iot(aws):
    return boto3.client("iot", region_name=REGION)


def register(iot, pem: str, status: str = "ACTIVE", thing: str | None = None) -> dict:
    """Register a certificate (and optionally attach it to a new thing) in the mocked account."""
    cert = iot.register_certificate_without_ca(certificatePem=pem, status=status)
    if thing:
        iot.create_thing(thingName=thing)
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
    return cert


class RawBody:
    """An HTTP body as botocore reads one (``stream``/``read``), for a test that answers a call
    itself (``before-send``) with bytes of its choosing."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_):
        yield self._body

    def read(self, *_):
        return self._body


@dataclass
class Audited:
    """An audit run through the engine, with what it stored."""

    task: AuditTask
    findings: list[AuditFinding]
    errors: list[ResourceError]
    store: Store


def run_audit(iot, detectors, store: Store | None = None, workers: int = 8, checks=None) -> Audited:
    """Run one audit task against ``iot`` into ``store`` (a fresh in-memory one by default)."""
    store = store or open_store(":memory:")
    task = Audit(iot, store, detectors, workers=workers, checks=checks).run()
    return Audited(task, list(store.findings(task.task_id)), list(store.errors(task.task_id)), store)


@pytest.fixture
def server_iot(moto_server):
    """An IoT client of the moto server the CLI under test talks to (``--endpoint-url``)."""
    return boto3.client("iot", region_name=REGION, endpoint_url=moto_server)


@pytest.fixture
def account(iot, tmp_path, sns_queue):
    """For the mitigation tests: two ROCA certificates on things (meter-1 and meter-1b share the
    first, meter-2 has the second), audited and stored; an SNS topic drained by SQS."""
    from devicedefender_audit.detectors.roca import RocaDetector

    certs = [
        register(iot, (DATA / "roca" / "cert04.pem").read_text(), thing="meter-1"),
        register(iot, (DATA / "roca" / "cert05.pem").read_text(), thing="meter-2"),
    ]
    iot.create_thing(thingName="meter-1b")
    iot.attach_thing_principal(thingName="meter-1b", principal=certs[0]["certificateArn"])
    store = open_store(tmp_path / "audits.sqlite3")
    result = run_audit(iot, [RocaDetector()], store)
    yield {"iot": iot, **sns_queue, "store": store, "findings": result.findings, "certs": certs}
    store.close()
