"""Whether the process that owns a piece of work is gone: one rule for audit tasks
(:func:`devicedefender_audit.audit.recover_interrupted`), mitigation claims
(:mod:`devicedefender_audit.mitigation_claims`) and mitigation actions tasks
(:mod:`devicedefender_audit.service.mitigation_tasks`).

Each records its owner when it starts: host, process id, and a heartbeat. The owner is gone when
its process has ended (asked of the operating system on the same host only: a process id of
another host means nothing here) or its heartbeat is older than :data:`STALE_AFTER_S` (any host:
it hung, or its host is gone). Work stored without an owner (by an earlier version) is gone too:
no process can still be running it.
"""

from __future__ import annotations

import os
import socket
import time

#: An owner silent this long is taken as gone, wherever it ran: an audit commits a batch, a
#: mitigation task a finding, and a claim is applied, well within it.
STALE_AFTER_S = 15 * 60


def this_process() -> tuple[str, int]:
    """(host, process id) of this process, as owners are recorded."""
    return socket.gethostname(), os.getpid()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def owner_gone(host: str | None, pid: int | None, heartbeat: float | None, unfinished: str,
               now: float | None = None) -> str | None:
    """Why the owner (``host``, ``pid``, last ``heartbeat``) of a piece of work is gone, or None
    while it may still be working on it. ``unfinished`` says what it left undone ("finishing the
    task"). This process is never found ended, only silent: its work either runs or records its
    own end."""
    if host is None or pid is None or heartbeat is None:
        return "its owner was not recorded (stored by an earlier version)"
    now = time.time() if now is None else now
    if (host, pid) != this_process() and host == socket.gethostname() and not process_alive(pid):
        return f"process {pid} on {host} ended without {unfinished}"
    if now - heartbeat > STALE_AFTER_S:
        return f"process {pid} on {host} gave no sign of life for more than {STALE_AFTER_S // 60} minutes"
    return None
