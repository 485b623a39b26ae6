"""Calling the Device Defender operations in tests, with every response checked against botocore
(its output shape) and every error against the errors the operation declares in the model."""

from __future__ import annotations

from typing import Any

from devicedefender_audit.service import OPERATIONS, ServiceContext, ServiceError
from devicedefender_audit.service.shapes import operation, output_problems
from devicedefender_audit.service.tasks import EXTENSIONS_MEMBER

#: Operations called through :func:`call` in this process (the coverage test reads it).
CALLED: set[str] = set()


def call(ctx: ServiceContext, name: str, **request: Any) -> dict:
    """Run one operation and assert its response conforms to the model's output shape
    (our extension member, when asked for, is checked apart: it is not part of the model)."""
    try:
        response = OPERATIONS[name](ctx, **request)
    except ServiceError as exc:
        declared = {shape.name for shape in operation(name).error_shapes}
        assert exc.code in declared, f"{name} raised {exc.code}, which it does not declare: {sorted(declared)}"
        raise
    shape = operation(name).output_shape
    checked = {k: v for k, v in response.items() if k != EXTENSIONS_MEMBER}
    problems = output_problems(shape, checked) if shape is not None else ([] if not checked else ["not empty"])
    assert not problems, f"{name} response breaks the model: {problems}"
    CALLED.add(name)
    return response
