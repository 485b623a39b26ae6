"""Where audits, the inventory and mitigations are kept (see :mod:`.base` for the interface)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from devicedefender_audit.store.base import Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.store.s3_fleet_state import S3Location

__all__ = ["Store", "StoreError", "StoreUnavailable", "check_location", "default_store_path", "demo_store_path",
           "open_store", "partition_location", "partition_region", "resolve_location"]

_ACCOUNT = re.compile(r"\d{12}")
#: A URL's ``scheme:/`` or ``scheme://`` (``pathlib.Path`` collapses the second slash); two letters
#: at least, so a Windows drive (``C:/``) is still a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
#: The DynamoDB store's option naming where its fleet state is kept (store/s3_fleet_state.py).
_FLEET_STATE = "fleet-state"


def _data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "devicedefender-audit"


def default_store_path() -> Path | str:
    """``$DDA_STORE``, else ``$XDG_DATA_HOME/devicedefender-audit/audits.sqlite3``. A URL
    (``dynamodb://TABLE``) is kept as written: a Path would collapse its ``//``."""
    location = os.environ.get("DDA_STORE")
    if location:
        return location if _SCHEME.match(location) else Path(location)
    return _data_dir() / "audits.sqlite3"


def demo_store_path() -> Path:
    """Where the demo keeps its audits unless told otherwise: ``demo.sqlite3`` in the default
    store's directory, never ``$DDA_STORE``, so they are never taken for the account's."""
    return _data_dir() / "demo.sqlite3"


def resolve_location(given: str | None, demo: bool = False) -> Path | str:
    """The store a command uses: ``--store`` as given, else the demo's own store for the demo,
    else :func:`default_store_path`."""
    if given is not None:
        return given
    return demo_store_path() if demo else default_store_path()


def check_location(location: Path | str) -> None:
    """Refuse a location that is neither a SQLite file nor ``dynamodb://``, before anything is
    opened: an empty one would be the current directory, and another URL (``s3://bucket``) a
    relative path, a SQLite file created in ``./s3:/bucket`` while the user meant a bucket."""
    text = str(location)
    if not text.strip():
        raise StoreError("the store location is empty: give a SQLite file path or dynamodb://TABLE "
                         "(--store or $DDA_STORE)")
    scheme = _SCHEME.match(text)
    if scheme and scheme.group(1) != "dynamodb":
        raise StoreError(f"store {text}: {scheme.group(1)}:// is not a store; a store is a SQLite file path, "
                         "dynamodb://TABLE or dynamodb://TABLE?fleet-state=s3://BUCKET/PREFIX")


def partition_location(location: Path | str, account_id: str, region: str) -> str:
    """Where one account-region of a multi-account audit is kept, under the store ``location``.

    Inventories and tasks are per account-region (the same certificate can be registered in
    several), so each gets its own store: the SQLite file ``audits.sqlite3`` becomes
    ``audits.<account>.<region>.sqlite3`` beside it, and a DynamoDB table a partition of it,
    ``dynamodb://TABLE/<account>/<region>``, which keeps the table's ``?fleet-state=s3://...``
    option (each partition has its own object there). Each location is a store of its own for
    every command (``list-audits --store ...``).
    """
    if not _ACCOUNT.fullmatch(account_id) or not _REGION.fullmatch(region):
        raise StoreError(f"no store partition for account {account_id!r} and region {region!r}")
    check_location(location)
    text = str(location)
    if text.startswith("dynamodb:"):
        base, fleet_state = _dynamodb_options(text)
        table, partition = _dynamodb_location(base)
        if partition:
            raise StoreError(f"store {text} is one account-region's already; give the table, dynamodb://{table}")
        return f"dynamodb://{table}/{account_id}/{region}" + (f"?{_FLEET_STATE}={fleet_state}" if fleet_state else "")
    if text == ":memory:":
        return text
    path = Path(location)
    return str(path.with_name(f"{path.stem}.{account_id}.{region}{path.suffix}"))


def partition_of(location: Path | str) -> tuple[str, str] | None:
    """(account, region) of an account-region's partition, as :func:`partition_location` names
    them; None for any other store."""
    text = str(location)
    if text.startswith("dynamodb:"):
        partition = _dynamodb_location(_dynamodb_options(text)[0])[1]
        if not partition:
            return None
        account, region = partition.split("/")[:2]
        return account, region
    parts = Path(text).name.split(".")
    if len(parts) >= 4 and _ACCOUNT.fullmatch(parts[-3]) and _REGION.fullmatch(parts[-2]):
        return parts[-3], parts[-2]
    return None


def partition_region(location: Path | str) -> str | None:
    """The region of an account-region's partition; None for any other store."""
    named = partition_of(location)
    return named[1] if named else None


def _dynamodb_options(location: str) -> tuple[str, S3Location | None]:
    """(the location without its options, where its fleet state is kept) of
    ``dynamodb://...[?fleet-state=s3://BUCKET/PREFIX]``; any other option is a StoreError."""
    base, query = location.split("?", 1) if "?" in location else (location, None)
    if query is None:
        return base, None
    from devicedefender_audit.store.s3_fleet_state import S3Location

    name, equals, value = query.partition("=")
    if name != _FLEET_STATE or not equals or "&" in value:
        raise StoreError(f"store {location}: a DynamoDB store's one option is {_FLEET_STATE}=s3://BUCKET/PREFIX "
                         f"(dynamodb://TABLE?{_FLEET_STATE}=s3://BUCKET/PREFIX), where the factorable check "
                         "keeps its fleet state between audits")
    return base, S3Location.parse(unquote(value))


def _dynamodb_location(location: str) -> tuple[str, str | None]:
    """(table, ``<account>/<region>`` or None) of ``dynamodb://TABLE[/ACCOUNT/REGION]``
    (also once a :class:`~pathlib.Path` collapsed the ``//``); a bad table name is a StoreError."""
    from devicedefender_audit.store.dynamodb import table_name

    rest = location.removeprefix("dynamodb:")
    table, *partition = rest.lstrip("/").split("/")
    if not partition:
        return table_name(location), None
    if len(partition) == 2 and _ACCOUNT.fullmatch(partition[0]) and _REGION.fullmatch(partition[1]):
        return table_name(f"dynamodb:{rest[:len(rest) - len(rest.lstrip('/'))]}{table}"), "/".join(partition)
    raise StoreError(f"store {location}: write a DynamoDB store as dynamodb://TABLE, or one account-region's "
                     "share of it as dynamodb://TABLE/ACCOUNT_ID/REGION")


def open_store(location: Path | str | None = None, target: AwsTarget | None = None, region: str | None = None,
               bind: bool = True, create: bool = True) -> Store:
    """Open (and check) the store at ``location``, by default :func:`default_store_path`.

    ``dynamodb://TABLE`` is a DynamoDB table, reached with ``target``'s region, profile and
    endpoint (the audit's own AWS options; the standard AWS chain when ``None``), and
    ``dynamodb://TABLE/ACCOUNT_ID/REGION`` one account-region's partition of it (see
    :func:`partition_location`). ``?fleet-state=s3://BUCKET/PREFIX`` after either keeps the
    factorable check's fleet state in S3 (:mod:`.s3_fleet_state`, with the same target), so
    that each audit compares only what changed; without it every audit compares the fleet in
    full. Anything else is a SQLite file, which keeps the state in a file beside it.

    With ``region`` (the command's), a store of another region is refused, and with ``bind`` a
    store not bound yet is bound to it (:mod:`.region_binding`); an account-region's partition
    (:func:`partition_location`) is the region its name gives.

    Without ``create`` (a command that only reads audits), a SQLite file or DynamoDB table that
    does not exist is refused rather than created: a mistyped ``--store`` would otherwise read as
    "no audits" and leave an empty store (or a new table in the account) behind.
    """
    location = default_store_path() if location is None else location
    check_location(location)
    text = str(location)
    if not create and not text.startswith("dynamodb:") and text != ":memory:" and not Path(text).exists():
        raise StoreError(f"no store at {text}: no audit has been recorded there; run an audit first (or check "
                         f"--store / $DDA_STORE){_demo_hint(text)}")
    store = _open(location, target, create)
    if region is not None:
        from devicedefender_audit.store.region_binding import check_region

        try:
            check_region(store, region, str(location), bind)
        except BaseException:
            store.close()
            raise
    return store


def _demo_hint(location: str) -> str:
    """Where the demo's audits are, when the store missing is the default one and the demo has
    run: they are kept apart (:func:`demo_store_path`), and "run an audit first" alone would
    mislead someone who just ran ``run --demo``."""
    demo = demo_store_path()
    if Path(location) == _data_dir() / "audits.sqlite3" and demo.exists():
        return f"; the demo's audits are in its own store: --store {demo}"
    return ""


def _open(location: Path | str, target: AwsTarget | None, create: bool = True) -> Store:
    if str(location).startswith("dynamodb:"):
        from devicedefender_audit.store.dynamodb import DynamoStore

        base, fleet_state = _dynamodb_options(str(location))
        table, partition = _dynamodb_location(base)
        return DynamoStore(table, target, partition, fleet_state, create)
    from devicedefender_audit.store.sqlite import SqliteStore

    return SqliteStore(location)
