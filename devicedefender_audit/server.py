"""``serve``: the Device Defender operations over rest-json, as the unmodified boto3 ``iot`` client
and the AWS CLI call them, with every other ``iot`` operation forwarded to the real endpoint.

Nothing here is written per operation. Routes come from botocore's ``iot`` model (each
operation's ``http.method`` and ``requestUri``), requests are read with the input shape's member
locations (``uri``, ``querystring``, ``header``, body) through botocore's own rest-json parser,
and responses are written with botocore's own rest-json serializer (epoch timestamps,
``locationName``\\ s), so an operation added to :data:`~devicedefender_audit.service.OPERATIONS`
is served as soon as it is registered. Errors carry ``x-amzn-ErrorType`` and a ``message`` body,
which is where botocore's rest-json parser looks for the code and message.

A request must be signed (SigV4) with the credentials the server runs with: the signature is
recomputed over the received request with botocore's signer. Requests for operations this
project does not implement (certificates, things, ...) are re-signed with the server's
credentials and sent on, so one ``endpoint_url`` serves a client's whole ``iot`` session.

Extensions travel in headers, never in the model's members (which the unmodified clients
validate): ``x-devicedefender-audit-dry-run: true`` on ``StartAuditMitigationActionsTask`` starts
the task as a dry run (:data:`EXTENSION_HEADERS`). The server also runs the scheduler of
scheduled audits (:class:`~devicedefender_audit.service.scheduled.Scheduler`) while it serves.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest, HeadersDict
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import NoCredentialsError, NoRegionError
from botocore.httpsession import URLLib3Session
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.parsers import RestJSONParser
from botocore.serialize import RestJSONSerializer
from botocore.utils import parse_timestamp

from devicedefender_audit.aws.clients import AwsTarget
from devicedefender_audit.liveness import this_process
from devicedefender_audit.service import OPERATIONS, ServiceContext, ServiceError
from devicedefender_audit.service.mitigation_tasks import running_task_ids
from devicedefender_audit.service.scheduled import Scheduler
from devicedefender_audit.service.shapes import iot_model

log = logging.getLogger(__name__)

#: How far a request's X-Amz-Date may be from the server's clock, as AWS allows.
MAX_CLOCK_SKEW = timedelta(minutes=15)
#: The largest request body read. The ``iot`` model's largest member (a policy document) is
#: 395 KiB; a longer body is refused before it is read, so no client makes the server hold gigabytes.
MAX_BODY_BYTES = 1 << 20
#: How long a connection may stay silent (mid-request or between requests) before it is closed,
#: so that clients that stop sending do not hold a thread each for ever.
CONNECTION_TIMEOUT_S = 60.0
#: Connections served at once, each in its own thread. One more is answered 503 and closed at
#: once: a flood of connections must not make the server start a thread (and hold its memory)
#: for each; the timeout above frees the slots of clients that went silent.
MAX_CONNECTIONS = 64
#: How long a stopped server waits for its running audits and mitigation tasks to record
#: themselves canceled; one still running then is failed as interrupted by the next start.
SHUTDOWN_WAIT_S = 30.0
#: Headers that describe one hop, not the message: never copied when forwarding.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date",
                          "server", "authorization", "x-amz-date", "x-amz-security-token", "expect"})
#: Our extensions over HTTP: header -> (the operation's keyword argument, operations that take it).
EXTENSION_HEADERS = {"x-devicedefender-audit-dry-run": ("dry_run", frozenset({"StartAuditMitigationActionsTask"}))}


class HttpError(ServiceError):
    """An error of the HTTP layer (authentication, malformed request, unreachable upstream)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# routing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One operation's ``requestUri`` as a pattern; literal segments make a route more specific."""

    operation: OperationModel
    method: str
    pattern: re.Pattern[str]
    labels: tuple[str, ...]
    query_literals: tuple[str, ...]
    specificity: tuple[int, int]

    @classmethod
    def of(cls, operation: OperationModel) -> Route:
        path, _, query = operation.http["requestUri"].partition("?")
        regex, labels, literals, greedy = "", [], 0, 0
        for segment in filter(None, path.split("/")):
            label = re.fullmatch(r"\{(\w+)(\+?)\}", segment)
            if label is None:
                literals += 1
                regex += "/" + re.escape(segment)
                continue
            greedy += bool(label[2])
            regex += f"/(?P<g{len(labels)}>{'.+' if label[2] else '[^/]+'})"
            labels.append(label[1])
        if path.endswith("/"):  # e.g. ListAuthorizers' "/authorizers/", sent as written
            regex += "/"
        return cls(operation, operation.http["method"], re.compile(regex), tuple(labels),
                   tuple(q.partition("=")[0] for q in query.split("&") if q), (literals, -greedy))

    def match(self, method: str, path: str, query: Mapping[str, list[str]]) -> dict[str, str] | None:
        if method != self.method or any(key not in query for key in self.query_literals):
            return None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: unquote(found[f"g{i}"]) for i, name in enumerate(self.labels)}


class Router:
    """Every ``iot`` operation's route, most specific first, so that a literal segment
    (``/audit/tasks/{taskId}/cancel``) wins over a label, and an operation we do not serve is
    recognised as such (and forwarded) rather than mistaken for one we do."""

    def __init__(self, model: ServiceModel) -> None:
        routes = [Route.of(model.operation_model(name)) for name in model.operation_names]
        self.routes = sorted(routes, key=lambda r: r.specificity, reverse=True)

    def resolve(self, method: str, path: str, query: Mapping[str, list[str]]) -> tuple[OperationModel,
                                                                                       dict[str, str]] | None:
        for route in self.routes:
            labels = route.match(method, path, query)
            if labels is not None:
                return route.operation, labels
        return None


# (de)serialisation --------------------------------------------------------------------------------


class RequestParser(RestJSONParser):
    """botocore's rest-json parser read the other way round: a request against its input shape.

    The parser already reads header members and the JSON body (epoch timestamps, ``locationName``,
    blobs); what a response never has, path labels and query-string members, is added here with
    the scalar conversions botocore's serializer applies in reverse (ISO 8601 timestamps,
    ``true``/``false``)."""

    def parse_request(self, operation: OperationModel, labels: Mapping[str, str],
                      query: Mapping[str, list[str]], headers: HeadersDict, body: bytes) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        _check_json_body(shape, body)  # botocore's parser reads bad JSON as no members, and coerces types
        try:
            params = self.parse({"status_code": 200, "headers": headers, "body": body}, shape)
        except (AttributeError, TypeError, ValueError) as exc:
            raise HttpError(400, "SerializationException", f"the request body does not match {shape.name}: {exc}") \
                from exc
        params.pop("ResponseMetadata", None)
        bound = set()
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri" and wire in labels:
                params[name] = _scalar(member, labels[wire], name)
            elif location == "querystring" and member.type_name == "map":
                continue
            elif location == "querystring" and wire in query:
                bound.add(wire)
                values = query[wire]
                params[name] = ([_scalar(member.member, v, name) for v in values] if member.type_name == "list"
                                else _scalar(member, values[0], name))
        for name, member in shape.members.items():  # a map takes the query keys no member names
            if member.serialization.get("location") == "querystring" and member.type_name == "map":
                rest = {k: v for k, v in query.items() if k not in bound}
                if rest:
                    params[name] = {k: v if member.value.type_name == "list" else v[0] for k, v in rest.items()}
        return params


#: The JSON types a member of each model type may have in a request body (a timestamp may be
#: epoch seconds or text, a blob is base64 text); ``bool`` is never a number.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "structure": (dict,), "map": (dict,), "list": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "long": (int,), "float": (int, float), "double": (int, float),
    "timestamp": (int, float, str), "blob": (str,),
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "an integer",
               float: "a number", type(None): "null"}


def _check_json_body(shape: Shape, body: bytes) -> None:
    """Refuse a body that is not a JSON object, or whose members have the wrong JSON type for
    ``shape``: botocore's parser (made for AWS's own responses) reads malformed JSON as an empty
    request, splits a string given for a list into characters and takes ``true`` or ``1.5`` for
    an integer."""
    payload = shape.serialization.get("payload")
    if payload is not None and shape.members[payload].type_name != "structure":
        return  # a raw payload (a blob), not JSON
    if not body.strip():
        return
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HttpError(400, "SerializationException", f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise HttpError(400, "SerializationException", "the request body must be a JSON object")
    body_shape = shape.members[payload] if payload is not None else shape
    located = payload is None  # a structure payload is all body; otherwise members with a location are not
    problems = _json_problems(body_shape, document, "", located)
    if problems:
        raise HttpError(400, "SerializationException", "; ".join(problems[:10]))


def _json_problems(shape: Shape, value: Any, where: str, located: bool = False) -> list[str]:
    """Each member of ``value`` (the JSON of ``shape``) whose JSON type is wrong, by its path."""
    if value is None:  # null: the member is absent, as botocore reads it
        return []
    kinds = _JSON_TYPES.get(shape.type_name, (object,))
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        return [f"{where or shape.name} must be {_JSON_NAMES[kinds[0]]}, not {_JSON_NAMES.get(type(value), 'that')}"]
    if shape.type_name == "list":
        return [p for i, item in enumerate(value) for p in _json_problems(shape.member, item, f"{where}[{i}]")]
    if shape.type_name == "map":
        return [p for key, item in value.items() for p in _json_problems(shape.value, item, f"{where}.{key}")]
    if shape.type_name != "structure":
        return []
    problems = []
    for name, member in shape.members.items():
        if located and member.serialization.get("location"):
            continue  # a path, query-string or header member: not in the body
        wire = member.serialization.get("name", name)
        if wire in value:
            problems += _json_problems(member, value[wire], f"{where}.{wire}" if where else wire)
    return problems


def _scalar(shape: Shape, text: str, member: str) -> Any:
    """A path or query-string value as the member's type (what boto3 would have sent)."""
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind == "timestamp":
            return parse_timestamp(text)
    except (ValueError, OverflowError) as exc:
        raise HttpError(400, "SerializationException", f"{member}: {text!r} is not a {kind}") from exc
    return text


class ResponseSerializer(RestJSONSerializer):
    """botocore's rest-json serializer writing an output shape: body members as JSON (epoch
    timestamps, as the ``iot`` client parses them), header members as headers."""

    def serialize_response(self, operation: OperationModel, response: Mapping[str, Any]) -> tuple[int, dict, bytes]:
        status = int(operation.http.get("responseCode", 200))
        shape = operation.output_shape
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if shape is None:
            return status, headers, b"{}"
        body: dict[str, Any] = {}
        for name, value in response.items():
            member = shape.members[name]
            location = member.serialization.get("location")
            if location == "statusCode":
                status = int(value)
            elif location == "header":
                headers[member.serialization.get("name", name)] = self._convert_header_value(member, value)
            elif location == "headers":
                prefix = member.serialization.get("name", "")
                headers.update({prefix + key: str(item) for key, item in value.items()})
            else:
                body[name] = value
        payload = shape.serialization.get("payload")
        if payload is None:
            return status, headers, self._serialize_body_params(body, shape)
        member = shape.members[payload]
        if member.type_name == "structure":
            return status, headers, self._serialize_body_params(body.get(payload, {}), member)
        value = body.get(payload, b"")
        headers["Content-Type"] = "application/octet-stream"
        return status, headers, value.encode() if isinstance(value, str) else value


def extension_arguments(operation: str, headers: HeadersDict, signed: frozenset[str] | None = None) -> dict[str, bool]:
    """The keyword arguments that :data:`EXTENSION_HEADERS` in a request ask ``operation`` for;
    a 400 for an extension the operation does not take, a value that is not true/false, or (on
    an authenticating server, ``signed`` the names the signature covers) a header the signature
    does not cover: one outside it can be removed on the way, and a dry run must never silently
    become a real run."""
    arguments = {}
    for header, (keyword, operations) in EXTENSION_HEADERS.items():
        value = headers.get(header)
        if value is None:
            continue
        if signed is not None and header not in signed:
            raise HttpError(400, "InvalidRequestException", f"{header} must be signed (add it before signing, "
                            "as a before-sign handler does)")
        if operation not in operations:
            raise HttpError(400, "InvalidRequestException", f"{header} applies to {', '.join(sorted(operations))}, "
                            f"not {operation}")
        if value.strip().lower() not in ("true", "false"):
            raise HttpError(400, "InvalidRequestException", f"{header} must be true or false, not {value!r}")
        arguments[keyword] = value.strip().lower() == "true"
    return arguments


def error_response(error: ServiceError) -> tuple[int, dict, bytes]:
    """An error as AWS writes it for rest-json: the code in ``x-amzn-ErrorType`` (botocore reads
    it there first) and the message in the body."""
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}
    return error.status, headers, json.dumps({"message": error.message}).encode()


@cache
def _busy_answer() -> bytes:
    """What a connection beyond :data:`MAX_CONNECTIONS` is answered before it is closed: the
    503 error as :func:`error_response` writes every error, on the wire at once (no handler
    thread reads the request)."""
    status, headers, body = error_response(HttpError(503, "ServiceUnavailableException",
                                                     "too many connections; try again"))
    lines = [f"HTTP/1.1 {status} Service Unavailable", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


# authentication and forwarding ----------------------------------------------------------------------


class SigV4Verifier:
    """Accepts a request only when it is signed with the server's own credentials: the
    signature is recomputed with botocore's :class:`~botocore.auth.SigV4Auth` over what was
    received (method, path, query, the headers the client signed, the body)."""

    def __init__(self, credentials: Callable[[], ReadOnlyCredentials], region: str, service: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self.clock = clock

    def verify(self, method: str, url: str, headers: HeadersDict, body: bytes) -> frozenset[str]:
        """Raise :class:`HttpError` (403) unless the request is signed with the server's
        credentials; return the names of the headers the signature covers (lower case)."""
        authorization = headers.get("Authorization")
        if not authorization:
            raise HttpError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = dict(re.findall(r"(\w+)=([^,\s]+)", authorization.partition(" ")[2]))
        if not authorization.startswith("AWS4-HMAC-SHA256 ") or not {"Credential", "SignedHeaders",
                                                                     "Signature"} <= set(fields):
            raise HttpError(403, "IncompleteSignatureException", "Authorization is not an AWS4-HMAC-SHA256 signature")
        own = self.credentials()
        access_key, _, scope = fields["Credential"].partition("/")
        if not _same(access_key, own.access_key) or (
                own.token and not _same(headers.get("X-Amz-Security-Token", ""), own.token)):
            raise HttpError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        timestamp = headers.get("X-Amz-Date", "")
        try:
            signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=timezone.utc)
        except ValueError as exc:
            raise HttpError(403, "IncompleteSignatureException", "X-Amz-Date is missing or malformed") from exc
        if abs(self.clock() - signed_at) > MAX_CLOCK_SKEW:
            raise HttpError(403, "InvalidSignatureException", f"Signature expired: {timestamp} is not within "
                            f"{MAX_CLOCK_SKEW} of the server's time")
        if scope != f"{timestamp[:8]}/{self.region}/{self.service}/aws4_request":
            raise HttpError(403, "InvalidSignatureException",
                            f"Credential should be scoped to {timestamp[:8]}/{self.region}/{self.service}, not {scope}")
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or any(name not in headers for name in signed):
            raise HttpError(403, "InvalidSignatureException", "a signed header is missing (host must be signed)")
        declared = headers.get("X-Amz-Content-SHA256")
        if declared is not None and not _same(declared, hashlib.sha256(body).hexdigest()):
            # botocore's signer takes this header for the body's hash without hashing the body.
            raise HttpError(403, "InvalidSignatureException", "X-Amz-Content-SHA256 is not the SHA-256 of the "
                            "request body (an unsigned payload is not accepted)")
        request = AWSRequest(method=method, url=url, data=body,
                             headers={name: headers[name] for name in signed})
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(own, self.service, self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if signer.signed_headers(signer.headers_to_sign(request)) != fields["SignedHeaders"] or \
                not _same(expected, fields["Signature"]):
            raise HttpError(403, "InvalidSignatureException", "The request signature we calculated does not match "
                            "the signature you provided. Check your AWS Secret Access Key and signing method.")
        return frozenset(signed)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two header values, whatever characters a client sent
    (:func:`hmac.compare_digest` raises on a non-ASCII ``str``)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class Forwarder:
    """Sends a request the server does not serve to the real ``iot`` endpoint, signed anew
    with the server's credentials (the client's signature names this server as host)."""

    def __init__(self, endpoint_url: str, credentials: Callable[[], ReadOnlyCredentials], region: str,
                 service: str) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.credentials = credentials
        self.region = region
        self.service = service
        self.http = URLLib3Session()

    def forward(self, method: str, path_and_query: str, headers: HeadersDict, body: bytes) -> tuple[int, dict, bytes]:
        kept = {name: value for name, value in headers.items() if name.lower() not in _HOP_HEADERS}
        request = AWSRequest(method=method, url=self.endpoint_url + path_and_query, data=body, headers=kept)
        SigV4Auth(self.credentials(), self.service, self.region).add_auth(request)
        try:
            response = self.http.send(request.prepare())
        except Exception as exc:  # botocore's HTTPClientError family: the upstream cannot be reached
            raise HttpError(503, "ServiceUnavailableException", f"{self.endpoint_url} cannot be reached: {exc}") \
                from exc
        passed = {name: value for name, value in response.headers.items() if name.lower() not in _HOP_HEADERS}
        return response.status_code, passed, response.content


# the server ---------------------------------------------------------------------------------------------


class AuditServer(ThreadingHTTPServer):
    """The HTTP front: routes to :data:`OPERATIONS` or forwards, after authentication.

    Operations run one at a time under :attr:`lock`: they share the context's store connection
    (audits started in the background write through their own). Each connection has its own
    thread, and is closed after ``connection_timeout`` seconds of silence; at most
    ``max_connections`` are served at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ctx: ServiceContext, forwarder: Forwarder,
                 verifier: SigV4Verifier | None, model: ServiceModel | None = None,
                 schedule_interval: float | None = None, connection_timeout: float = CONNECTION_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if verifier is None and not _loopback(address[0]):
            raise ValueError(f"refusing to listen on {address[0]} without authentication: "
                             "only a loopback address may serve unauthenticated requests")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.ctx = ctx
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.forwarder = forwarder
        self.verifier = verifier
        self.model = model or iot_model()
        self.router = Router(self.model)
        self.parser = RequestParser()
        self.serializer = ResponseSerializer()
        self.lock = threading.Lock()
        self.stopping = False  # set under the lock by stop_background_work: no operation runs after it
        self.scheduler = None if schedule_interval is None else Scheduler(ctx, schedule_interval)
        super().__init__(address, _Handler)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve, with the scheduler running, until :meth:`shutdown`; the scheduler stops with it."""
        if self.scheduler is not None:
            self.scheduler.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            if self.scheduler is not None:
                self.scheduler.stop()

    def stop_background_work(self, wait: float = SHUTDOWN_WAIT_S) -> list[str]:
        """After serving has stopped: ask the audits this process runs (on-demand and scheduled)
        and the mitigation actions tasks it started to stop, and wait up to ``wait`` seconds for
        them to record themselves ``CANCELED``. Returns the task ids asked. Without it a stopped
        server's audits were left ``IN_PROGRESS`` (failed as interrupted by a later start) and its
        mitigation tasks ``IN_PROGRESS`` for good."""
        asked = []
        with self.lock:  # no request is using the context's store connection
            self.stopping = True  # a connection still open may not start what would not be canceled
            for task, owner in self.ctx.store.in_progress_tasks():
                if owner is not None and (owner.host, owner.pid) == this_process():
                    self.ctx.store.request_cancel(task.task_id)
                    asked.append(task.task_id)
            for task_id in running_task_ids(self.ctx):
                try:
                    OPERATIONS["CancelAuditMitigationActionsTask"](self.ctx, taskId=task_id)
                except ServiceError:  # it ended meanwhile
                    continue
                asked.append(task_id)
        deadline = time.monotonic() + wait
        for thread in list(self.ctx.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return asked

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own when a slot is free; else 503 and close."""
        if not self._slots.acquire(blocking=False):
            log.warning("connection from %s refused: %d connections are being served", client_address[0],
                        self.max_connections)
            try:
                request.sendall(_busy_answer())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else will give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (reset, closed mid-response, timed out) is one log line, and
        anything else a logged traceback: never a traceback printed on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("connection from %s ended: %s", client_address[0], error)
        else:
            log.exception("request from %s failed", client_address[0])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def handle_request_bytes(self, method: str, target: str, headers: HeadersDict, body: bytes) -> tuple[int, dict,
                                                                                                         bytes]:
        """One request, start to end: authenticate, then serve or forward. Never raises."""
        parts = urlsplit(target)
        try:
            if not target.startswith("/"):  # appended to the upstream URL, "@host/..." would name another host
                raise HttpError(400, "InvalidRequestException", "the request-target must be a path (/...)")
            signed = None
            if self.verifier is not None:
                signed = self.verifier.verify(method, f"http://{headers.get('Host', '')}{target}", headers, body)
            else:
                local_tool_only(headers)
            query = parse_qs(parts.query, keep_blank_values=True)
            resolved = self.router.resolve(method, parts.path, query)
            if resolved is None or resolved[0].name not in OPERATIONS:
                return self.forwarder.forward(method, target, headers, body)
            operation, labels = resolved
            request = self.parser.parse_request(operation, labels, query, headers, body)
            extensions = extension_arguments(operation.name, headers, signed)
            with self.lock:
                if self.stopping:
                    raise HttpError(503, "ServiceUnavailableException", "the server is stopping")
                response = OPERATIONS[operation.name](self.ctx, **request, **extensions)
            return self.serializer.serialize_response(operation, response)
        except ServiceError as exc:
            return error_response(exc)
        except Exception:
            log.exception("%s %s failed", method, parts.path)
            return error_response(HttpError(500, "InternalFailureException", "internal error; see the server log"))


class _Handler(BaseHTTPRequestHandler):
    """Reads the request, hands it to :class:`AuditServer`, writes what comes back.

    A body is read only with a valid Content-Length within :data:`MAX_BODY_BYTES`; anything else
    is refused and the connection closed, since the bytes of an unread body would otherwise be
    read as the next request on the connection."""

    server: AuditServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.connection_timeout  # set on the socket: every read and write
        super().setup()

    def handle_expect_100(self) -> bool:
        """Refuse a body that would not be read before the client sends it."""
        try:
            self._body_length()
        except HttpError as exc:
            self._refuse(exc)
            return False
        return super().handle_expect_100()

    def _body_length(self) -> int:
        if self.headers.get("Transfer-Encoding") is not None:
            raise HttpError(411, "LengthRequiredException", "a request body needs a Content-Length "
                            "(Transfer-Encoding is not accepted)")
        values = {value.strip() for value in self.headers.get_all("Content-Length") or ()}
        if not values:
            return 0
        text = values.pop()
        if values or not re.fullmatch(r"[0-9]{1,18}", text):
            raise HttpError(400, "SerializationException", f"Content-Length {text!r} is not a length")
        if int(text) > MAX_BODY_BYTES:
            raise HttpError(413, "RequestEntityTooLargeException", f"the request body is {text} bytes; this "
                            f"server takes at most {MAX_BODY_BYTES}")
        return int(text)

    def _any(self) -> None:
        try:
            length = self._body_length()
        except HttpError as exc:
            self._refuse(exc)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        headers = HeadersDict()
        for name, value in self.headers.items():
            headers[name] = value if name not in headers else f"{headers[name]},{value}"
        self._send(*self.server.handle_request_bytes(self.command, self.path, headers, body))

    def _refuse(self, error: HttpError) -> None:
        """Answer ``error`` and close: the request's body, if any, stays unread."""
        self.close_connection = True
        status, headers, payload = error_response(error)
        self._send(status, {**headers, "Connection": "close"}, payload)

    def _send(self, status: int, response_headers: dict, payload: bytes) -> None:
        self.send_response(status)
        if not any(name.lower() == "x-amzn-requestid" for name in response_headers):
            response_headers["x-amzn-RequestId"] = str(uuid.uuid4())
        for name, value in response_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    def log_message(self, format: str, *args: Any) -> None:
        # The request line is the client's text: control characters are escaped, not written to the log.
        log.info("%s %s", self.address_string(), _CONTROL.sub(lambda c: f"\\x{ord(c[0]):02x}", format % args))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) names this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_tool_only(headers: HeadersDict) -> None:
    """For a server without authentication (loopback only): refuse what a web page in the
    operator's browser could send. A cross-origin POST of ``text/plain`` needs no preflight, so
    any page could otherwise start a mitigation task; browsers add ``Origin`` to such requests,
    and a page reaching the server through a DNS name rebound to 127.0.0.1 sends that name as
    ``Host``. boto3, the AWS CLI and curl send neither."""
    if headers.get("Origin") is not None:
        raise HttpError(403, "AccessDeniedException", "a server without authentication answers no web page "
                        "(the request has an Origin header)")
    host = urlsplit(f"//{headers.get('Host', '')}").hostname or ""
    if not _loopback(host):
        raise HttpError(403, "AccessDeniedException", f"a server without authentication answers requests for a "
                        f"loopback host only, not Host {headers.get('Host', '')!r}")


def make_server(target: AwsTarget, ctx: ServiceContext, host: str = "127.0.0.1", port: int = 8080,
                authenticate: bool = True, schedule_interval: float | None = 60.0,
                connection_timeout: float = CONNECTION_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> AuditServer:
    """A server for ``target``'s region that authenticates with, and forwards as, ``target``'s
    credentials; everything it does not serve goes to ``target.endpoint_url``, or to the
    region's AWS IoT endpoint when there is none. ``port`` 0 picks a free port. While it serves,
    due scheduled audits are started every ``schedule_interval`` seconds (None: never, for
    deployments where ``run-due`` does it)."""
    session = target.session()
    region = target.region_name
    if region is None:
        raise NoRegionError()
    credentials = session.get_credentials()
    if credentials is None:  # forwarding signs with them even when requests are not verified
        raise NoCredentialsError()
    model = iot_model()
    service = model.metadata["signingName"]
    endpoint = target.endpoint_url or session.client("iot", region_name=region).meta.endpoint_url
    forwarder = Forwarder(endpoint, credentials.get_frozen_credentials, region, service)
    verifier = SigV4Verifier(credentials.get_frozen_credentials, region, service) if authenticate else None
    return AuditServer((host, port), ctx, forwarder, verifier, model, schedule_interval, connection_timeout,
                       max_connections)
