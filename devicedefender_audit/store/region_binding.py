"""A store holds one region's audits: the first command that acts on AWS in a region binds it.

Inventories, fleet state, schedules, suppressions and the audit configuration are all one
region's (AWS IoT keeps each region's certificates apart), so two regions in one store would mix
them: a schedule created for eu-west-1 would audit us-east-1, and ``mitigate`` would act on the
other region's latest audit. A command for another region is refused with one clear error that
says how to keep regions apart; ``run --regions`` does that by itself, one partition per
account-region, which carries its region in its name.

Only a region botocore knows binds a store, so a mistyped ``--region`` (whose command fails
anyway) cannot bind it for good. A damaged binding record is taken as none: the store is bound
again, to the region of its latest audit where it has one.
"""

from __future__ import annotations

from functools import cache

from devicedefender_audit.store import partition_region
from devicedefender_audit.store.base import Store, StoreError

#: api_records kind and key of the binding.
BINDING_KIND, BINDING_KEY = "store_binding", "region"


def check_region(store: Store, region: str, location: str, bind: bool) -> None:
    """Raise :class:`StoreError` when ``store`` holds another region's audits than ``region``.

    An account-region's partition is the region its location names (:func:`partition_region`:
    a SQLite partition is compared with it; a DynamoDB partition is reached with the table's
    region, so nothing is compared). With
    ``bind``, a store not bound yet is bound: to the region of its latest audit (a store from
    before the binding), else to ``region``, in either case only a region botocore knows (a
    mistyped one's audit failed, and binds nothing).
    """
    named = partition_region(location)
    if named is not None:
        if not location.startswith("dynamodb:") and named != region:
            raise _other_region(location, named, region)
        return
    bound = _bound_region(store)
    if bound is None:
        latest = next((task.region for task in store.list_tasks(limit=1) if task.region), None)
        earlier = latest if latest is not None and _known_region(latest) else None
        if bind and (earlier is not None or _known_region(region)):
            store.insert_record(BINDING_KIND, BINDING_KEY, {"region": earlier or region})
            bound = _bound_region(store)
        else:
            bound = earlier
    if bound is not None and bound != region:
        raise _other_region(location, bound, region)


def _bound_region(store: Store) -> str | None:
    """The bound region; None when there is none or the record is damaged (it is then replaced)."""
    try:
        record = store.get_record(BINDING_KIND, BINDING_KEY)
    except ValueError:  # not JSON: a torn write or a hand edit
        record = "damaged"
    if record is None:
        return None
    region = record.get("region") if isinstance(record, dict) else None
    if isinstance(region, str) and region:
        return region
    store.delete_record(BINDING_KIND, BINDING_KEY)
    return None


@cache
def _known_region(region: str) -> bool:
    """Whether botocore's endpoint data lists ``region`` for AWS IoT, in any partition."""
    import boto3

    from devicedefender_audit.accounts import iot_region_partitions

    return region in iot_region_partitions(boto3.session.Session())


def _other_region(location: str, bound: str, region: str) -> StoreError:
    return StoreError(f"store {location} holds the audits of region {bound}, not {region}: give each region a "
                      f"store of its own (--store or $DDA_STORE, e.g. audits.{region}.sqlite3), or audit "
                      "several regions with run --regions, which keeps one per region")
