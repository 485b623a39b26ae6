"""Where audits, the inventory and mitigations are kept (see :mod:`.base` for the interface)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from devicedefender_audit.store.base import Store, StoreError

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget

__all__ = ["Store", "StoreError", "default_store_path", "open_store"]


def default_store_path() -> Path:
    """``$DDA_STORE``, else ``$XDG_DATA_HOME/devicedefender-audit/audits.sqlite3``."""
    if os.environ.get("DDA_STORE"):
        return Path(os.environ["DDA_STORE"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "devicedefender-audit" / "audits.sqlite3"


def open_store(location: Path | str | None = None, target: AwsTarget | None = None) -> Store:
    """Open (and check) the store at ``location``, by default :func:`default_store_path`.

    ``dynamodb://TABLE`` is a DynamoDB table, reached with ``target``'s region, profile and
    endpoint (the audit's own AWS options; the standard AWS chain when ``None``); anything else
    is a SQLite file.
    """
    location = location or default_store_path()
    if str(location).startswith("dynamodb:"):
        from devicedefender_audit.store.dynamodb import DynamoStore, table_name

        return DynamoStore(table_name(str(location)), target)
    from devicedefender_audit.store.sqlite import SqliteStore

    return SqliteStore(location)
