"""Shared fixtures: test vectors, a mocked AWS account, certificate builders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws

from devicedefender_audit.demo import issue_certificate

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
def iot(aws):
    return boto3.client("iot", region_name=REGION)


def register(iot, pem: str, status: str = "ACTIVE", thing: str | None = None) -> dict:
    """Register a certificate (and optionally attach it to a new thing) in the mocked account."""
    cert = iot.register_certificate_without_ca(certificatePem=pem, status=status)
    if thing:
        iot.create_thing(thingName=thing)
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
    return cert
