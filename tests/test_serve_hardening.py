"""``serve`` under attack: what a client on the network (or a web page, for an unauthenticated
server) can send that the unmodified boto3 client never does, and an operator's SIGTERM.

Requests are written byte by byte on raw sockets (signed with botocore's own signer where they
must pass authentication) against a real server on a free loopback port, so what is tested is
what crosses the wire: a body without a usable length, a body bigger than any operation takes,
a client that goes silent, a body other than the one signed, JSON of the wrong shape, a
request-target that is not a path, an extension header added after signing.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import DATA, REGION
from test_serve import NO_RETRIES, error_of, moto_calls, serve, served  # noqa: F401 (fixtures)

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.models import CHECK_NAME
from devicedefender_audit.service import OPERATIONS
from devicedefender_audit.store import open_store

CREDENTIALS = Credentials("testing", "testing", "testing")  # aws_env's, which the server runs with
SUPPRESSION = {"checkName": CHECK_NAME, "resourceIdentifier": {"deviceCertificateId": "a" * 64},
               "suppressIndefinitely": True, "clientRequestToken": "token-1"}


@pytest.fixture
def server(moto_server, tmp_path) -> Iterator[tuple[str, int]]:
    """An authenticating server in front of moto; its (host, port)."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None)
    yield audit_server.server_address[:2]
    audit_server.shutdown()
    audit_server.server_close()
    ctx.wait(30)
    ctx.store.close()


def signed(address: tuple[str, int], method: str, path: str, body: bytes = b"",
           headers: dict[str, str] | None = None) -> AWSRequest:
    """A request signed as boto3 signs it, with the server's credentials."""
    host, port = address
    request = AWSRequest(method=method, url=f"http://{host}:{port}{path}", data=body,
                         headers={"Host": f"{host}:{port}", **(headers or {})})
    SigV4Auth(CREDENTIALS, "iot", REGION).add_auth(request)
    return request


def wire(request: AWSRequest, body: bytes | None = None, target: str | None = None,
         headers: dict[str, str] | None = None) -> bytes:
    """The request's bytes; ``body``, ``target`` and ``headers`` change it after signing."""
    sent = {**dict(request.headers.items()), **(headers or {})}
    data = (request.data or b"") if body is None else body
    path = target or request.url.split(str(sent["Host"]), 1)[1]
    sent.setdefault("Content-Length", str(len(data)))
    head = "".join(f"{name}: {value}\r\n" for name, value in sent.items())
    return f"{request.method} {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode("latin-1") + data


def exchange(address: tuple[str, int], data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_and_error(response: bytes) -> tuple[int, str | None, str]:
    """(status, x-amzn-ErrorType, message) of the one response in ``response``."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("x-amzn-errortype:")),
                None)
    message = json.loads(body).get("message", "") if body.startswith(b"{") else body.decode("latin-1")
    return int(lines[0].split()[1]), code, message


def suppressions(address: tuple[str, int]) -> list[dict]:
    response = exchange(address, wire(signed(address, "POST", "/audit/suppressions/list", b"{}")))
    assert status_and_error(response)[0] == 200, response
    return json.loads(response.partition(b"\r\n\r\n")[2])["suppressions"]


# request framing -------------------------------------------------------------------------------------


def test_a_body_without_a_usable_length_is_refused_with_one_response(server):
    """A Content-Length that is not a number was a traceback and no answer; a negative one held
    the connection reading to its end; a chunked body went unread and its bytes were taken for
    the next request on the connection (request smuggling)."""
    head = "GET /audit/configuration HTTP/1.1\r\nHost: h\r\n"
    for length in ("abc", "-1", "1, 2"):
        response = exchange(server, f"{head}Content-Length: {length}\r\n\r\n".encode(), timeout=10)
        assert status_and_error(response)[:2] == (400, "SerializationException"), response
    smuggled = b"GET /audit/configuration HTTP/1.1\r\nHost: h\r\n\r\n"
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    response = exchange(server, b"POST /audit/suppressions/list HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                                b"\r\n\r\n" + chunk, timeout=10)
    assert status_and_error(response)[0] == 411, response
    assert response.count(b"HTTP/1.1 ") == 1, response  # the chunk was not read as a request


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    """A client announcing gigabytes is answered 413 at once, nothing read (and, with Expect:
    100-continue, not invited to send it)."""
    started = time.monotonic()
    for expect in ("", "Expect: 100-continue\r\n"):
        response = exchange(server, f"POST /audit/suppressions/list HTTP/1.1\r\nHost: h\r\n{expect}"
                                    f"Content-Length: {8 << 30}\r\n\r\n".encode(), timeout=30)
        assert status_and_error(response)[:2] == (413, "RequestEntityTooLargeException"), response
        assert b"100 Continue" not in response
    assert time.monotonic() - started < 20  # answered, not waited out


def test_a_silent_client_is_disconnected_and_blocks_no_one(moto_server, tmp_path):
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None, connection_timeout=0.5)
    try:
        with socket.create_connection(audit_server.server_address[:2], timeout=30) as slow:
            slow.sendall(b"POST /audit/suppressions/list HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n{")
            client = boto3.client("iot", region_name=REGION, endpoint_url=audit_server.url, config=NO_RETRIES)
            assert client.list_audit_suppressions()["suppressions"] == []  # served meanwhile
            started = time.monotonic()
            assert slow.recv(65536) == b""  # closed by the server, not by this side's 30 s
            assert time.monotonic() - started < 20
    finally:
        audit_server.shutdown()
        audit_server.server_close()
        ctx.store.close()


# authentication ----------------------------------------------------------------------------------------


def test_the_body_is_the_one_signed(server):
    """A signed X-Amz-Content-SHA256 stood for the body, which was never hashed: a request
    captured on the wire could be replayed with another body (and UNSIGNED-PAYLOAD signed none)."""
    body = json.dumps(SUPPRESSION).encode()
    forged = json.dumps({**SUPPRESSION, "clientRequestToken": "token-2",
                         "resourceIdentifier": {"deviceCertificateId": "b" * 64}}).encode()
    for declared in (hashlib.sha256(body).hexdigest(), "UNSIGNED-PAYLOAD"):
        request = signed(server, "POST", "/audit/suppressions/create", body, {"X-Amz-Content-SHA256": declared})
        response = exchange(server, wire(request, body=forged))
        assert status_and_error(response)[:2] == (403, "InvalidSignatureException"), response
    assert suppressions(server) == []
    request = signed(server, "POST", "/audit/suppressions/create", body,
                     {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert status_and_error(exchange(server, wire(request)))[0] == 200
    assert [s["resourceIdentifier"] for s in suppressions(server)] == [SUPPRESSION["resourceIdentifier"]]


def test_a_credential_with_other_characters_is_refused_not_a_server_error(server):
    request = signed(server, "GET", "/audit/configuration")
    for field, value in (("Credential=testing", "Credential=t\u00e9sting"), ("Signature=", "Signature=\u00e9")):
        forged = wire(request, headers={"Authorization": request.headers["Authorization"].replace(field, value)})
        status, code, _ = status_and_error(exchange(server, forged))
        assert status == 403 and code in ("UnrecognizedClientException", "InvalidSignatureException")


def test_the_dry_run_header_is_honoured_only_when_signed(served):  # noqa: F811 (a fixture of test_serve)
    """A header outside the signature can be stripped on the way: a dry run would become a real one."""
    client = boto3.client("iot", region_name=REGION, endpoint_url=served["url"], config=NO_RETRIES)
    client.meta.events.register("before-send.iot.StartAuditMitigationActionsTask",  # after signing
                                lambda request, **_: request.headers.__setitem__("x-devicedefender-audit-dry-run",
                                                                                 "true"))
    with pytest.raises(ClientError) as caught:
        client.start_audit_mitigation_actions_task(taskId="t", clientRequestToken="t", target={"findingIds": ["f"]},
                                                   auditCheckToActionsMapping={CHECK_NAME: ["a"]})
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidRequestException" and "signed" in error["Message"], error


# bodies and targets ------------------------------------------------------------------------------------


def test_malformed_or_mistyped_json_is_one_clear_error(server):
    """Malformed JSON was read as an empty request (ListAuditSuppressions listed everything, an
    update changed nothing and said 200); deep nesting was a 500; a string where a list belongs
    was split into characters, true and 1.5 read as integers."""
    cases = {
        b'{"maxResults": 1': "not JSON",
        b"[" * 100_000 + b"]" * 100_000: "not JSON",
        b'{"nextToken": "\xff"}': "not JSON",
        b"[1, 2]": "JSON object",
        b'{"maxResults": true}': "maxResults",
        b'{"maxResults": 1.5}': "maxResults",
        b'{"resourceIdentifier": "x"}': "resourceIdentifier",
        b'{"checkName": ["x"]}': "checkName",
    }
    for body, named in cases.items():
        status, code, message = status_and_error(exchange(server, wire(signed(server, "POST",
                                                                              "/audit/suppressions/list", body))))
        assert (status, code) == (400, "SerializationException") and named in message, (body[:40], message)
    body = json.dumps({"targetCheckNames": CHECK_NAME}).encode()
    status, code, message = status_and_error(exchange(server, wire(signed(server, "POST", "/audit/tasks", body))))
    assert (status, code) == (400, "SerializationException") and "targetCheckNames" in message, message


def test_a_request_target_that_is_not_a_path_is_refused(moto_server, tmp_path):
    """The target was appended to the upstream URL: ``@host:port/x`` sent the request, signed with
    the server's credentials, to any host."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(2)
    contacted = []

    def accept() -> None:
        try:
            contacted.append(listener.accept()[0].close())
        except OSError:  # no one came (the listener timed out or was closed)
            pass

    threading.Thread(target=accept, daemon=True).start()
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None, authenticate=False)
    try:
        address = audit_server.server_address[:2]
        evil = f"@127.0.0.1:{listener.getsockname()[1]}/things"
        response = exchange(address, f"GET {evil} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode(),
                            timeout=30)
        assert status_and_error(response)[0] == 400, response
        time.sleep(0.5)
        assert contacted == []
    finally:
        listener.close()
        audit_server.shutdown()
        audit_server.server_close()
        ctx.store.close()


def test_an_unauthenticated_server_serves_no_web_page(moto_server, tmp_path):
    """Without authentication, a page in the operator's browser could POST to 127.0.0.1 (a
    "simple" cross-origin request needs no preflight) and start a mitigation task, or read the
    API through a rebound DNS name."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None, authenticate=False)
    try:
        host, port = audit_server.server_address[:2]
        body = json.dumps(SUPPRESSION).encode()

        def post(extra: str, host_header: str = f"{host}:{port}") -> int:
            head = (f"POST /audit/suppressions/create HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: text/plain\r\n"
                    f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            return status_and_error(exchange((host, port), head.encode() + body))[0]

        assert post("Origin: https://evil.example\r\n") == 403
        assert post("", host_header=f"rebound.evil.example:{port}") == 403
        assert suppressions_unsigned(host, port) == []
        assert post("", host_header=f"localhost:{port}") == 200  # a local tool
    finally:
        audit_server.shutdown()
        audit_server.server_close()
        ctx.store.close()


def suppressions_unsigned(host: str, port: int) -> list[dict]:
    response = exchange((host, port), f"POST /audit/suppressions/list HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                      f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
    return json.loads(response.partition(b"\r\n\r\n")[2])["suppressions"]


# the operator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_records_its_running_audit_as_canceled(moto_server, moto_calls, tmp_path,  # noqa: F811
                                                                 signum):
    """SIGTERM killed the server under its audits (left IN_PROGRESS, failed as interrupted by a
    later start); SIGINT closed the store under them. Both now cancel what runs, wait for it to
    record itself, and exit 0."""
    moto = AwsTarget(region=REGION, endpoint_url=moto_server).client("iot")
    moto.register_certificate_without_ca(certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")
    store = tmp_path / "serve.sqlite3"
    process = subprocess.Popen([sys.executable, "-m", "devicedefender_audit", "serve", "--port", "0", "--region",
                                REGION, "--endpoint-url", moto_server, "--store", str(store), "--own-credentials",
                                "--no-scheduler"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", process.stderr.readline())
        assert url
        client = boto3.client("iot", region_name=REGION, endpoint_url=url[1], config=NO_RETRIES)
        client.update_account_audit_configuration(roleArn="arn:aws:iam::123456789012:role/audit",
                                                  auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
        moto_calls["hold"].set()
        task_id = client.start_on_demand_audit_task(targetCheckNames=[CHECK_NAME])["taskId"]
        assert moto_calls["held"].wait(30), "the audit never listed certificates"
        process.send_signal(signum)
        time.sleep(1)  # the server asks the audit to stop; the audit sees it after its page
        moto_calls["release"].set()
        assert process.wait(60) == 0, process.stderr.read()
    finally:
        moto_calls["release"].set()
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    reopened = open_store(store)
    try:
        task = reopened.get_task(task_id)
        assert task is not None and task.task_status.value == "CANCELED", task
    finally:
        reopened.close()


def test_concurrent_requests_on_one_store_each_get_their_answer(served):  # noqa: F811 (a fixture of test_serve)
    """Two audits started at once both run to the end; two suppressions with one token: one is made."""
    iot = served["client"]
    iot.update_account_audit_configuration(roleArn="arn:aws:iam::123456789012:role/audit",
                                           auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    clients = [boto3.client("iot", region_name=REGION, endpoint_url=served["url"], config=NO_RETRIES)
               for _ in range(2)]
    started: list[str] = []
    threads = [threading.Thread(target=lambda c=c: started.append(
        c.start_on_demand_audit_task(targetCheckNames=[CHECK_NAME])["taskId"])) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    served["ctx"].wait(60)
    assert len(set(started)) == 2
    assert [iot.describe_audit_task(taskId=t)["taskStatus"] for t in started] == ["COMPLETED"] * 2

    outcomes: list[str] = []

    def suppress(client, certificate: str) -> None:
        try:
            client.create_audit_suppression(checkName=CHECK_NAME, suppressIndefinitely=True, clientRequestToken="same",
                                            resourceIdentifier={"deviceCertificateId": certificate})
            outcomes.append("created")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=suppress, args=(c, w)) for c, w in zip(clients, served["weak"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["InvalidRequestException", "created"] or \
        sorted(outcomes) == ["ResourceAlreadyExistsException", "created"], outcomes
    assert len(iot.list_audit_suppressions()["suppressions"]) == 1


def test_a_stopped_server_cancels_its_running_mitigation_task(served, monkeypatch):  # noqa: F811 (a fixture)
    """A mitigation actions task had no recovery at all: a server stopped under it left it
    IN_PROGRESS for good. Stopping asks it to cancel; the findings it has not reached are CANCELED."""
    from moto.iot.models import IoTBackend

    iot = served["client"]
    iot.update_account_audit_configuration(roleArn="arn:aws:iam::123456789012:role/audit",
                                           auditCheckConfigurations={CHECK_NAME: {"enabled": True}})
    task_id = iot.start_on_demand_audit_task(targetCheckNames=[CHECK_NAME])["taskId"]
    served["ctx"].wait(60)
    findings = [f["findingId"] for f in iot.list_audit_findings(taskId=task_id)["findings"]]
    assert len(findings) == 2
    iot.create_mitigation_action(actionName="deactivate", roleArn="arn:aws:iam::123456789012:role/mitigation",
                                 actionParams={"updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    held, release = threading.Event(), threading.Event()
    update = IoTBackend.update_certificate

    def held_update(self, *args, **kwargs):
        held.set()
        release.wait(60)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(IoTBackend, "update_certificate", held_update)
    iot.start_audit_mitigation_actions_task(taskId="m", clientRequestToken="m", target={"findingIds": findings},
                                            auditCheckToActionsMapping={CHECK_NAME: ["deactivate"]})
    assert held.wait(30), "the task never updated a certificate"
    asked: list[str] = []
    stopping = threading.Thread(target=lambda: asked.extend(served["server"].stop_background_work(wait=60)))
    stopping.start()
    time.sleep(0.5)  # the cancel is recorded while the first finding's action runs
    release.set()
    stopping.join(60)
    assert asked == ["m"]
    task = OPERATIONS["DescribeAuditMitigationActionsTask"](served["ctx"], taskId="m")  # HTTP is closing
    assert task["taskStatus"] == "CANCELED"
    assert task["taskStatistics"][CHECK_NAME]["canceledFindingsCount"] == 1
    # A connection still open after the listener closed starts nothing that would not be canceled.
    assert error_of(iot.start_on_demand_audit_task, targetCheckNames=[CHECK_NAME]) == (
        503, "ServiceUnavailableException")


def test_an_ipv6_loopback_address_is_served(moto_server, tmp_path):
    """``--host ::1`` was an AF_INET socket: 'Address family for hostname not supported'."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None, host="::1")
    try:
        assert audit_server.url.startswith("http://[::1]:")
        client = boto3.client("iot", region_name=REGION, endpoint_url=audit_server.url, config=NO_RETRIES)
        assert client.list_audit_suppressions()["suppressions"] == []
    finally:
        audit_server.shutdown()
        audit_server.server_close()
        ctx.store.close()


def test_the_access_log_escapes_what_the_client_wrote(server, caplog):
    """The request line is the client's text: an escape sequence or a carriage return in it must
    not reach the operator's terminal or forge a log line."""
    caplog.set_level("INFO", logger="devicedefender_audit.server")
    exchange(server, b"GET /x\x1b[2J\rforged HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", timeout=30)
    logged = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert logged and not any(c in m for m in logged for c in "\x1b\r"), logged
    assert any("\\x1b" in m for m in logged)


def test_signatures_that_are_not_the_servers_own_are_refused(server, monkeypatch):
    """Regression: a stale or future X-Amz-Date (AWS's 15 minutes), another service in the
    credential scope, a signed header changed after signing, a missing date, a presigned URL."""
    import botocore.auth

    def refused(request: AWSRequest, **change: object) -> tuple[int, str | None]:
        return status_and_error(exchange(server, wire(request, **change)))[:2]

    stale = signed(server, "GET", "/audit/configuration")
    for minutes in (-16, 16):  # signed correctly, at another time
        moment = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=minutes)
        with monkeypatch.context() as patched:
            patched.setattr(botocore.auth, "get_current_datetime", lambda moment=moment: moment)
            request = signed(server, "GET", "/audit/configuration")
        status, code, message = status_and_error(exchange(server, wire(request)))
        assert (status, code) == (403, "InvalidSignatureException") and "expired" in message, message
    other_service = AWSRequest(method="GET", url=f"http://{server[0]}:{server[1]}/audit/configuration",
                               headers={"Host": f"{server[0]}:{server[1]}"})
    SigV4Auth(CREDENTIALS, "execute-api", REGION).add_auth(other_service)
    assert refused(other_service) == (403, "InvalidSignatureException")
    assert refused(stale, headers={"X-Amz-Date": "20200101T000000Z"}) == (403, "InvalidSignatureException")
    assert refused(stale, headers={"X-Amz-Date": "yesterday"}) == (403, "IncompleteSignatureException")
    assert refused(stale, target="/audit/configuration?x=1") == (403, "InvalidSignatureException")
    assert status_and_error(exchange(server, wire(stale)))[0] == 200
    presigned = b"GET /audit/configuration?X-Amz-Algorithm=AWS4-HMAC-SHA256 HTTP/1.1\r\nHost: h\r\n" \
                b"Connection: close\r\n\r\n"
    assert status_and_error(exchange(server, presigned))[:2] == (403, "MissingAuthenticationTokenException")


def test_connections_beyond_the_limit_are_answered_busy_and_closed(moto_server, tmp_path):
    """Each connection had a thread, without limit: a flood of connections made as many threads."""
    target = AwsTarget(region=REGION, endpoint_url=moto_server)
    audit_server, ctx = serve(target, tmp_path / "s.sqlite3", schedule_interval=None, max_connections=1)
    address = audit_server.server_address[:2]
    try:
        with socket.create_connection(address, timeout=30) as holder:
            holder.sendall(b"POST /audit/suppressions/list HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n{")
            with socket.create_connection(address, timeout=30) as extra:
                answer = extra.recv(65536)
                assert answer.startswith(b"HTTP/1.1 503 ") and b"ServiceUnavailableException" in answer
                assert extra.recv(65536) == b""  # and closed
        client = boto3.client("iot", region_name=REGION, endpoint_url=audit_server.url, config=NO_RETRIES)
        deadline = time.monotonic() + 20
        while True:  # the holder's slot is given back once the server sees it closed
            try:
                assert client.list_audit_suppressions()["suppressions"] == []
                break
            except ClientError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        audit_server.shutdown()
        audit_server.server_close()
        ctx.store.close()
