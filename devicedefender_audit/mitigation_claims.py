"""Who holds a mitigation claim, and taking back a claim whose holder is gone.

Before its first mutating call a mitigation task claims (finding, action) in the store (see
:mod:`devicedefender_audit.mitigation`), so that a re-run or a concurrent task never applies an
action twice. A task whose process dies between claiming and applying would leave the claim held
forever and the finding never mitigated, so a claim records its owner, as an audit task does
(:func:`devicedefender_audit.audit.recover_interrupted`): host, process id and when it was taken.
A claim is abandoned when its owner is gone by :mod:`devicedefender_audit.liveness`'s rule: its
process ended (same host), or the claim is older than
:data:`~devicedefender_audit.liveness.STALE_AFTER_S` (any host: an action is a few AWS calls,
never minutes).

Retaking is atomic without a compare-and-swap in the store: the retaker first creates a retake
marker keyed by the abandoned claim's own id (create-if-absent, as the claim itself is), and
only the one that created it overwrites the claim; every other retaker of that same claim skips.
Markers are kept (one per retaken claim), so a late retaker that read the old claim still loses.
"""

from __future__ import annotations

import time
import uuid

from devicedefender_audit.liveness import owner_gone, this_process
from devicedefender_audit.store import Store

#: api_records kind of the markers that let one retaker, and only one, take an abandoned claim.
RETAKE_KIND = "mitigation_claim_retake"


def new_claim(task_id: str, action_name: str) -> dict:
    """The body of a claim taken now by this process for ``task_id``."""
    host, pid = this_process()
    return {"taskId": task_id, "actionName": action_name, "state": "CLAIMED", "claimId": str(uuid.uuid4()),
            "host": host, "pid": pid, "heartbeat": time.time()}


def abandoned(holder: dict, now: float | None = None) -> str | None:
    """Why the claim ``holder`` is abandoned, or None while its owner may still apply it."""
    if holder.get("state") != "CLAIMED":
        return None
    return owner_gone(holder.get("host"), holder.get("pid"), holder.get("heartbeat"),
                      "applying or releasing it", now)


def retake(store: Store, kind: str, key: str, holder: dict, claim: dict) -> bool:
    """Replace the abandoned ``holder`` of claim ``key`` with ``claim``; False when another
    retaker took it first."""
    marker = f"{key}@{holder.get('claimId') or 'task:' + str(holder.get('taskId'))}"
    if not store.insert_record(RETAKE_KIND, marker, {"by": claim["taskId"], "claimId": claim["claimId"]}):
        return False
    store.put_record(kind, key, claim)
    return True
