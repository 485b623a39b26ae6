"""A store holds one region's audits: the first command that names a region binds it.

Inventories, fleet state, schedules, suppressions and the audit configuration are all one
region's (AWS IoT keeps each region's certificates apart), so two regions in one store would mix
them: a schedule created for eu-west-1 would audit us-east-1, and ``mitigate`` would act on the
other region's latest audit. A command with another region is refused with one clear error
that says how to keep regions apart; ``run --regions`` does that by itself, one partition per
account-region, which carries its region in its name.
"""

from __future__ import annotations

from devicedefender_audit.store.base import Store, StoreError

#: api_records kind and key of the binding.
BINDING_KIND, BINDING_KEY = "store_binding", "region"


def bind_region(store: Store, region: str, location: str) -> None:
    """Bind ``store`` to ``region`` on first use (create-if-absent: two first commands agree on
    one), or raise :class:`StoreError` when it holds another region's audits.

    A store from a release without the binding is bound to the region of its latest audit, so
    its first command in another region is refused like any later one.
    """
    binding = store.get_record(BINDING_KIND, BINDING_KEY)
    if binding is None:
        latest = next((task.region for task in store.list_tasks(limit=1) if task.region), None)
        store.insert_record(BINDING_KIND, BINDING_KEY, {"region": latest or region})
        binding = store.get_record(BINDING_KIND, BINDING_KEY) or {}
    bound = binding.get("region")
    if bound != region:
        raise StoreError(f"store {location} holds the audits of region {bound}, not {region}: give each region a "
                         f"store of its own (--store or $DDA_STORE, e.g. audits.{region}.sqlite3), or audit "
                         "several regions with run --regions, which keeps one per region")
