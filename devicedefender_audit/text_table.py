"""Plain aligned text tables for the terminal (no imports, so fast commands stay fast)."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``headers`` over ``rows``, each column as wide as its widest cell, two spaces apart.

    One ``%``-format per row rather than padding and joining cell by cell, and cells made text
    by that format (``%s``) rather than one by one first: ``check`` over many files prints tens
    of thousands of rows. A row of the wrong length raises TypeError.
    """
    cells = [tuple(headers), *map(tuple, rows)]
    widths = [max(map(len, map(str, column))) for column in zip(*cells)]
    line = "  ".join(f"%-{width}s" for width in widths)
    lines = [(line % row).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
