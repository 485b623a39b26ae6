"""botocore's ``iot`` service model as the source of truth for request and response shapes.

Requests are checked with botocore's own parameter validator (what boto3 checks before sending),
then for what that validator leaves to the service: enums, maximum lengths and values, and
patterns (AWS answers those with ``InvalidRequestException``; botocore checks minimums only).
Responses are checked by :func:`output_problems`, a small walk over botocore's ``Shape`` objects
(required members, types, enums, bounds, no unknown members), used by the tests on every response.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from botocore.model import OperationModel, ServiceModel, Shape
from botocore.validate import ParamValidator

from devicedefender_audit.service.errors import InvalidRequest


@lru_cache(maxsize=1)
def _session() -> Any:
    import botocore.session

    return botocore.session.get_session()


@lru_cache(maxsize=1)
def iot_model() -> ServiceModel:
    return _session().get_service_model("iot")


def pagination(operation_name: str) -> dict | None:
    """The model's paginator for an operation (input/output token, limit and result keys), if any."""
    try:
        return _session().get_paginator_model("iot").get_paginator(operation_name)
    except ValueError:
        return None


def operation(name: str) -> OperationModel:
    return iot_model().operation_model(name)


def enum_values(shape_name: str) -> tuple[str, ...]:
    """The values of one of the model's enums, e.g. ``AuditFrequency``."""
    return tuple(iot_model().shape_for(shape_name).enum)


def fill_idempotency_tokens(operation_name: str, params: dict[str, Any]) -> None:
    """Give each idempotency-token member the request left out a fresh UUID, as botocore does
    before it sends (boto3 and the AWS CLI callers may omit ``clientRequestToken``)."""
    input_shape = operation(operation_name).input_shape
    for name, shape in (input_shape.members.items() if input_shape is not None else ()):
        if shape.metadata.get("idempotencyToken") and params.get(name) is None:
            params[name] = str(uuid.uuid4())


def check_request(operation_name: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidRequest` when ``params`` would not pass boto3's own validation."""
    input_shape = operation(operation_name).input_shape
    if input_shape is None:
        if params:
            raise InvalidRequest(f"{operation_name} takes no parameters, got {sorted(params)}")
        return
    report = ParamValidator().validate(dict(params), input_shape)
    if report.has_errors():
        raise InvalidRequest(report.generate_report())
    problems = _service_side_problems(input_shape, params)
    if problems:
        raise InvalidRequest("; ".join(problems))


#: How :func:`output_problems` words the constraints botocore's validator does not check.
_SERVICE_SIDE = ("is not one of", ", at most ", "does not match the pattern")


def _service_side_problems(shape: Shape, value: Any) -> list[str]:
    """What botocore's validator leaves to the service (enums, maximums, patterns). Types and
    required members were its job; timestamps it lets through as strings or numbers."""
    return [p for p in output_problems(shape, value, "") if any(marker in p for marker in _SERVICE_SIDE)]


@cache
def _pattern(pattern: str) -> re.Pattern[str] | None:
    """The model's pattern as Python reads it, or None where it uses Java syntax Python lacks
    (``\\p{Graph}``): such a pattern is not checked rather than guessed. The whole value must
    match (``fullmatch``): Smithy leaves patterns unanchored, but AWS IoT validates them whole, as
    its familiar "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+" for a thing
    name with a space shows (the pattern is found in such a name; the name is still refused)."""
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _bound_problems(shape: Shape, value: Any, where: str) -> list[str]:
    """The model's ``max`` (length of a string or list, value of a number) and ``pattern``."""
    limit = shape.metadata.get("max")
    if limit is not None:
        if isinstance(value, (str, list)) and len(value) > limit:
            unit = "characters" if isinstance(value, str) else "items"
            return [f"{where}: {len(value)} {unit}, at most {limit}"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            return [f"{where}: {value}, at most {limit}"]
    pattern = shape.metadata.get("pattern")
    if isinstance(value, str) and pattern and (compiled := _pattern(pattern)) and not compiled.fullmatch(value):
        return [f"{where}: {value!r} does not match the pattern {pattern}"]
    return []


_SCALARS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "timestamp": (datetime,),
    "blob": (bytes,),
}


def output_problems(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Every way ``value`` differs from ``shape``: missing required members, members the shape
    does not have, wrong types, values outside an enum. Empty when it conforms."""
    where = path or shape.name
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, Mapping):
            return [f"{where}: expected a structure, got {type(value).__name__}"]
        problems = [f"{where}: missing required member {m}" for m in shape.required_members if m not in value]
        for member, item in value.items():
            if member not in shape.members:
                problems.append(f"{where}: unknown member {member}")
            elif item is not None:
                problems += output_problems(shape.members[member], item, f"{where}.{member}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return _bound_problems(shape, value, where) + [
            p for i, item in enumerate(value) for p in output_problems(shape.member, item, f"{where}[{i}]")]
    if kind == "map":
        if not isinstance(value, Mapping):
            return [f"{where}: expected a map, got {type(value).__name__}"]
        problems = []
        for key, item in value.items():
            problems += output_problems(shape.key, key, f"{where} key")
            problems += output_problems(shape.value, item, f"{where}[{key}]")
        return problems
    expected = _SCALARS[kind]
    if not isinstance(value, expected) or (kind in ("integer", "long") and isinstance(value, bool)):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    enum = getattr(shape, "enum", None)
    if enum and value not in enum:
        return [f"{where}: {value!r} is not one of {list(enum)}"]
    return _bound_problems(shape, value, where)
