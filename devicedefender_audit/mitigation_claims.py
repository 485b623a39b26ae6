"""Who holds a mitigation claim, and taking back a claim whose holder is gone.

Before its first mutating call a mitigation task claims (finding, action) in the store (see
:mod:`devicedefender_audit.mitigation`), so that a re-run or a concurrent task never applies an
action twice. A task whose process dies between claiming and applying would leave the claim held
forever and the finding never mitigated, so a claim records its owner, as an audit task does
(:func:`devicedefender_audit.audit.recover_interrupted`): host, process id and when it was taken.
A claim is abandoned when its process is gone (same host) or it is older than
:data:`CLAIM_STALE_AFTER_S` (any host: an action is a few AWS calls, never minutes).

Retaking is atomic without a compare-and-swap in the store: the retaker first creates a retake
marker keyed by the abandoned claim's own id (create-if-absent, as the claim itself is), and
only the one that created it overwrites the claim; every other retaker of that same claim skips.
Markers are kept (one per retaken claim), so a late retaker that read the old claim still loses.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from devicedefender_audit.store import Store

#: A claim held this long without being applied or released is abandoned, wherever its owner ran.
CLAIM_STALE_AFTER_S = 15 * 60
#: api_records kind of the markers that let one retaker, and only one, take an abandoned claim.
RETAKE_KIND = "mitigation_claim_retake"


def new_claim(task_id: str, action_name: str) -> dict:
    """The body of a claim taken now by this process for ``task_id``."""
    return {"taskId": task_id, "actionName": action_name, "state": "CLAIMED", "claimId": str(uuid.uuid4()),
            "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def abandoned(holder: dict, now: float | None = None) -> str | None:
    """Why the claim ``holder`` is abandoned, or None while its owner may still apply it."""
    if holder.get("state") != "CLAIMED":
        return None
    now = time.time() if now is None else now
    host, pid, heartbeat = holder.get("host"), holder.get("pid"), holder.get("heartbeat")
    if host is None or pid is None or heartbeat is None:
        return "its owner was not recorded (a claim from an earlier version)"
    if host == socket.gethostname() and pid != os.getpid() and not _process_alive(pid):
        return f"process {pid} on {host} ended without applying or releasing it"
    if now - heartbeat > CLAIM_STALE_AFTER_S:
        return f"held for more than {CLAIM_STALE_AFTER_S // 60} minutes by process {pid} on {host}"
    return None


def retake(store: Store, kind: str, key: str, holder: dict, claim: dict) -> bool:
    """Replace the abandoned ``holder`` of claim ``key`` with ``claim``; False when another
    retaker took it first."""
    marker = f"{key}@{holder.get('claimId') or 'task:' + str(holder.get('taskId'))}"
    if not store.insert_record(RETAKE_KIND, marker, {"by": claim["taskId"], "claimId": claim["claimId"]}):
        return False
    store.put_record(kind, key, claim)
    return True
