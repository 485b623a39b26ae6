"""A ``serve`` that cannot start (no credentials, an unauthenticated non-loopback address, a port
in use) binds no store to its region, as a ``run`` that cannot start binds nothing: it bound the
default store to the region it never served, and the next ``run`` in the right region was refused
with "holds the audits of region ..."; one that does start binds the store as before."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from devicedefender_audit.cli import main
from devicedefender_audit.store import StoreError, open_store

SERVED = "eu-west-1"
OTHER = "us-east-1"


def bound_to(path: str, region: str) -> bool:
    """Whether the store at ``path`` refuses every region but ``region`` (is bound to it)."""
    try:
        open_store(path, region=OTHER if region == SERVED else SERVED, bind=False).close()
    except StoreError:
        return True
    return False


@pytest.fixture
def store(aws_env, tmp_path) -> str:
    return str(tmp_path / "audits.sqlite3")


def test_an_unauthenticated_public_address_binds_nothing(store, capsys):
    assert main(["serve", "--no-auth", "--host", "0.0.0.0", "--region", SERVED, "--store", store]) == 2
    assert "without authentication" in capsys.readouterr().err
    assert not bound_to(store, SERVED)


def test_no_credentials_binds_nothing(store, monkeypatch, tmp_path, capsys):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["serve", "--region", SERVED, "--store", store]) == 1
    assert "credentials" in capsys.readouterr().err
    assert not bound_to(store, SERVED)


def test_a_port_in_use_binds_nothing(store, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--region", SERVED, "--store", store, "--port", port, "--no-scheduler"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not bound_to(store, SERVED)


def test_a_server_that_starts_binds_its_store(store):
    process = subprocess.Popen([sys.executable, "-m", "devicedefender_audit", "serve", "--port", "0", "--region",
                                SERVED, "--store", store, "--no-scheduler"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert "serving the Device Defender audit API" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    assert bound_to(store, SERVED)
