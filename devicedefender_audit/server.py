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

import hmac
import ipaddress
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
from devicedefender_audit.service import OPERATIONS, ServiceContext, ServiceError
from devicedefender_audit.service.scheduled import Scheduler
from devicedefender_audit.service.shapes import iot_model

log = logging.getLogger(__name__)

#: How far a request's X-Amz-Date may be from the server's clock, as AWS allows.
MAX_CLOCK_SKEW = timedelta(minutes=15)
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


def extension_arguments(operation: str, headers: HeadersDict) -> dict[str, bool]:
    """The keyword arguments that :data:`EXTENSION_HEADERS` in a request ask ``operation`` for;
    a 400 for an extension the operation does not take or a value that is not true/false (a
    dry run must never silently become a real run)."""
    arguments = {}
    for header, (keyword, operations) in EXTENSION_HEADERS.items():
        value = headers.get(header)
        if value is None:
            continue
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

    def verify(self, method: str, url: str, headers: HeadersDict, body: bytes) -> None:
        authorization = headers.get("Authorization")
        if not authorization:
            raise HttpError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = dict(re.findall(r"(\w+)=([^,\s]+)", authorization.partition(" ")[2]))
        if not authorization.startswith("AWS4-HMAC-SHA256 ") or not {"Credential", "SignedHeaders",
                                                                     "Signature"} <= set(fields):
            raise HttpError(403, "IncompleteSignatureException", "Authorization is not an AWS4-HMAC-SHA256 signature")
        own = self.credentials()
        access_key, _, scope = fields["Credential"].partition("/")
        if not hmac.compare_digest(access_key, own.access_key) or (
                own.token and not hmac.compare_digest(headers.get("X-Amz-Security-Token", ""), own.token)):
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
        request = AWSRequest(method=method, url=url, data=body,
                             headers={name: headers[name] for name in signed})
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(own, self.service, self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if signer.signed_headers(signer.headers_to_sign(request)) != fields["SignedHeaders"] or \
                not hmac.compare_digest(expected, fields["Signature"]):
            raise HttpError(403, "InvalidSignatureException", "The request signature we calculated does not match "
                            "the signature you provided. Check your AWS Secret Access Key and signing method.")


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
    (audits started in the background write through their own)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ctx: ServiceContext, forwarder: Forwarder,
                 verifier: SigV4Verifier | None, model: ServiceModel | None = None,
                 schedule_interval: float | None = None) -> None:
        if verifier is None and not ipaddress.ip_address(address[0]).is_loopback:
            raise ValueError(f"refusing to listen on {address[0]} without authentication: "
                             "only a loopback address may serve unauthenticated requests")
        self.ctx = ctx
        self.forwarder = forwarder
        self.verifier = verifier
        self.model = model or iot_model()
        self.router = Router(self.model)
        self.parser = RequestParser()
        self.serializer = ResponseSerializer()
        self.lock = threading.Lock()
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

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_request_bytes(self, method: str, target: str, headers: HeadersDict, body: bytes) -> tuple[int, dict,
                                                                                                         bytes]:
        """One request, start to end: authenticate, then serve or forward. Never raises."""
        parts = urlsplit(target)
        try:
            if self.verifier is not None:
                self.verifier.verify(method, f"http://{headers.get('Host', '')}{target}", headers, body)
            query = parse_qs(parts.query, keep_blank_values=True)
            resolved = self.router.resolve(method, parts.path, query)
            if resolved is None or resolved[0].name not in OPERATIONS:
                return self.forwarder.forward(method, target, headers, body)
            operation, labels = resolved
            request = self.parser.parse_request(operation, labels, query, headers, body)
            extensions = extension_arguments(operation.name, headers)
            with self.lock:
                response = OPERATIONS[operation.name](self.ctx, **request, **extensions)
            return self.serializer.serialize_response(operation, response)
        except ServiceError as exc:
            return error_response(exc)
        except Exception:
            log.exception("%s %s failed", method, parts.path)
            return error_response(HttpError(500, "InternalFailureException", "internal error; see the server log"))


class _Handler(BaseHTTPRequestHandler):
    """Reads the request, hands it to :class:`AuditServer`, writes what comes back."""

    server: AuditServer
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = HeadersDict()
        for name, value in self.headers.items():
            headers[name] = value if name not in headers else f"{headers[name]},{value}"
        status, response_headers, payload = self.server.handle_request_bytes(self.command, self.path, headers, body)
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
        log.info("%s %s", self.address_string(), format % args)


def make_server(target: AwsTarget, ctx: ServiceContext, host: str = "127.0.0.1", port: int = 8080,
                authenticate: bool = True, schedule_interval: float | None = 60.0) -> AuditServer:
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
    return AuditServer((host, port), ctx, forwarder, verifier, model, schedule_interval)
