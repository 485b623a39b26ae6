"""Whether the process that owns a piece of work is gone: one rule for audit tasks
(:func:`devicedefender_audit.audit.recover_interrupted`), mitigation claims
(:mod:`devicedefender_audit.mitigation_claims`) and mitigation actions tasks
(:mod:`devicedefender_audit.service.mitigation_tasks`).

Each records its owner when it starts: host, process id, and a heartbeat. The owner is gone when
its process has ended (asked of the operating system only where its process id means the same
process: the same kernel and process-id namespace) or its heartbeat is older than
:data:`STALE_AFTER_S` (anywhere: it hung, or its host is gone). Work stored without an owner (by
an earlier version) is gone too: no process can still be running it.

The recorded host is ``name#space#run``: the host name (what messages show), where a process id
means this process (the kernel's boot id and the process-id namespace: two Lambda execution
environments, each its own microVM, or two containers can share a host name and a process id,
never both), and this run of the process (a process restarted with the same id, as pid 1 of a
restarted container or a Lambda runtime after a timeout, is another owner: its predecessor's work
is recovered once its heartbeat is stale, not passed over for good as its own). The run is drawn
at first use, not at import, so that execution environments restored from one snapshot (Lambda
SnapStart) each draw their own.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from functools import cache
from pathlib import Path

#: An owner silent this long is taken as gone, wherever it ran: an audit commits a batch, a
#: mitigation task a finding, and a claim is applied, well within it.
STALE_AFTER_S = 15 * 60


def _pid_space() -> str:
    """Where a process id names the same process: the running kernel and its process-id namespace
    ("" where /proc does not say: the host name alone then)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


_HERE = f"{socket.gethostname()}#{_pid_space()}"


@cache
def _run() -> str:
    return secrets.token_hex(4)


def this_process() -> tuple[str, int]:
    """(host, process id) of this process, as owners are recorded (host: see the module doc)."""
    return f"{_HERE}#{_run()}", os.getpid()


def _same_pid_space(host: str) -> bool:
    """Whether ``host`` recorded its process id where this process's ids mean the same processes;
    a bare host name (recorded before 2026-11-24) is compared by name, as it was then."""
    if "#" not in host:
        return host == socket.gethostname()
    return host.rsplit("#", 1)[0] == _HERE


def _host_name(host: str) -> str:
    """The host name of a recorded host, as messages show it."""
    return host.split("#", 1)[0]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this process-id space still runs (one of another user counts)."""
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
    if (host, pid) != this_process() and _same_pid_space(host) and not process_alive(pid):
        return f"process {pid} on {_host_name(host)} ended without {unfinished}"
    if now - heartbeat > STALE_AFTER_S:
        return f"process {pid} on {_host_name(host)} gave no sign of life for more than {STALE_AFTER_S // 60} minutes"
    return None
