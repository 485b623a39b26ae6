"""Where audits, the inventory and mitigations are kept (see :mod:`.base` for the interface)."""

from __future__ import annotations

import os
from pathlib import Path

from devicedefender_audit.store.base import Store, StoreError

__all__ = ["Store", "StoreError", "default_store_path", "open_store"]


def default_store_path() -> Path:
    """``$DDA_STORE``, else ``$XDG_DATA_HOME/devicedefender-audit/audits.sqlite3``."""
    if os.environ.get("DDA_STORE"):
        return Path(os.environ["DDA_STORE"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "devicedefender-audit" / "audits.sqlite3"


def open_store(location: Path | str | None = None) -> Store:
    """Open (and check) the store at ``location``, by default :func:`default_store_path`."""
    from devicedefender_audit.store.sqlite import SqliteStore

    return SqliteStore(location or default_store_path())
