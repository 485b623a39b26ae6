"""The framing both saved fleet files share: ``MAGIC``, an 8-byte big-endian header length, a
JSON header, then the body.

The fleet product (:mod:`.fleet_state`) and the saved fleet audit (:mod:`.fleet_audit`, which
wraps a fleet product) are read from stores that may hand back anything: a truncated file, another
format, a damaged header. One reader makes every such case the same :class:`.FleetStateError`
with the file's own name in the message, so the engine recomputes and says why.
"""

from __future__ import annotations

import json


class FleetStateError(ValueError):
    """The stored state does not match the fleet described to it, or its file is damaged."""


def canonical_json(header: dict) -> bytes:
    """The header as written, and as its checksum (:mod:`.fleet_state`) is taken over."""
    return json.dumps(header, sort_keys=True).encode()


def frame(magic: bytes, header: dict) -> bytes:
    """``magic``, the header's length and the header as canonical JSON; the body follows it."""
    encoded = canonical_json(header)
    return magic + len(encoded).to_bytes(8, "big") + encoded


def read_frame(data: bytes | memoryview, magic: bytes, what: str, version: int) -> tuple[dict, memoryview]:
    """The header (a dict of the expected ``version``) and a view of the body after it."""
    view = memoryview(data)
    start = len(magic) + 8
    if len(view) < start or view[: len(magic)] != magic:
        raise FleetStateError(f"not a {what}")
    length = int.from_bytes(view[len(magic) : start], "big")
    try:
        header = json.loads(bytes(view[start : start + length]))
        found = header.get("version")
    except (ValueError, AttributeError) as exc:
        raise FleetStateError(f"damaged {what} header: {exc}") from exc
    if found != version:
        raise FleetStateError(f"unsupported {what} version {found!r}")
    return header, view[start + length :]
