"""Calling the Device Defender operations in tests, with every response checked against botocore."""

from __future__ import annotations

from typing import Any

from devicedefender_audit.service import OPERATIONS, ServiceContext
from devicedefender_audit.service.shapes import operation, output_problems
from devicedefender_audit.service.tasks import EXTENSIONS_MEMBER

#: Operations called through :func:`call` in this process (the coverage test reads it).
CALLED: set[str] = set()


def call(ctx: ServiceContext, name: str, **request: Any) -> dict:
    """Run one operation and assert its response conforms to the model's output shape
    (our extension member, when asked for, is checked apart: it is not part of the model)."""
    response = OPERATIONS[name](ctx, **request)
    shape = operation(name).output_shape
    checked = {k: v for k, v in response.items() if k != EXTENSIONS_MEMBER}
    problems = output_problems(shape, checked) if shape is not None else ([] if not checked else ["not empty"])
    assert not problems, f"{name} response breaks the model: {problems}"
    CALLED.add(name)
    return response
