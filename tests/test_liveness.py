"""One rule for "the process that owns this work is gone", for audit tasks, mitigation claims and
mitigation actions tasks (devicedefender_audit.liveness)."""

from __future__ import annotations

import os
import socket

from devicedefender_audit.audit import recover_interrupted
from devicedefender_audit.liveness import STALE_AFTER_S, owner_gone, this_process
from devicedefender_audit.mitigation_claims import abandoned, new_claim
from devicedefender_audit.models import AuditTask, AuditTaskStatus
from devicedefender_audit.store import open_store
from devicedefender_audit.store.base import TaskOwner

NOW = 1e12
NO_SUCH_PID = 2**22 + 12345  # above Linux's pid_max


HERE = this_process()[0]  # this host and process-id space, this run of the process
NAME = socket.gethostname()


def test_each_way_an_owner_is_gone_says_why():
    host = HERE
    assert owner_gone(host, NO_SUCH_PID, NOW, "finishing the task", NOW) == \
        f"process {NO_SUCH_PID} on {NAME} ended without finishing the task"
    assert owner_gone("elsewhere", 1, NOW - STALE_AFTER_S - 1, "finishing the task", NOW) == \
        f"process 1 on elsewhere gave no sign of life for more than {STALE_AFTER_S // 60} minutes"
    assert "not recorded" in owner_gone(None, None, None, "finishing the task", NOW)
    # alive: a live process of this host, another host's within the wait, this process itself
    assert owner_gone(host, os.getppid(), NOW, "finishing the task", NOW) is None
    assert owner_gone("elsewhere", NO_SUCH_PID, NOW - STALE_AFTER_S + 60, "finishing the task", NOW) is None
    assert owner_gone(*this_process(), NOW, "finishing the task", NOW) is None
    assert owner_gone(*this_process(), NOW - STALE_AFTER_S - 1, "finishing the task", NOW) is not None


def test_a_claim_and_an_audit_task_are_given_up_by_the_same_rule():
    claim = {**new_claim("t", "notify"), "pid": NO_SUCH_PID, "heartbeat": NOW}
    assert abandoned(claim, NOW) == f"process {NO_SUCH_PID} on {NAME} ended without applying or " \
                                    "releasing it"
    assert abandoned({**claim, "state": "APPLIED"}, NOW) is None
    store = open_store(":memory:")
    dead = AuditTask()
    store.save_task(dead, TaskOwner(HERE, NO_SUCH_PID, NOW))
    assert recover_interrupted(store, now=NOW) == [dead.task_id]
    assert store.get_task(dead.task_id).details.message == \
        f"process {NO_SUCH_PID} on {NAME} ended without finishing the task"


def test_an_audit_task_stored_without_an_owner_says_so():
    """It read 'no progress for 15 minutes', which nothing had measured."""
    store = open_store(":memory:")
    old = AuditTask()
    store.save_task(old)  # as an earlier version stored it: no host, pid or heartbeat
    assert recover_interrupted(store, now=NOW) == [old.task_id]
    failed = store.get_task(old.task_id)
    assert failed.task_status is AuditTaskStatus.FAILED and failed.details.error_code == "INTERRUPTED"
    assert "owner was not recorded" in failed.details.message


def test_a_process_id_is_asked_of_the_system_only_where_it_names_the_same_process():
    """Two Lambda execution environments or containers can share a host name and process ids:
    only the same kernel and process-id namespace ask the system; elsewhere only the heartbeat
    counts. A process restarted with the same id (pid 1 of a restarted container, a Lambda
    runtime after a timeout) is another run: its predecessor's work, passed over for good as its
    own before, is recovered once its heartbeat is stale."""
    name, space, _run = HERE.split("#")
    other_space = f"{name}#{space}x#{_run}"  # same host name, another kernel or namespace
    assert owner_gone(other_space, NO_SUCH_PID, NOW, "finishing the task", NOW) is None
    assert "no sign of life" in owner_gone(other_space, NO_SUCH_PID, NOW - STALE_AFTER_S - 1, "finishing the task", NOW)
    # Recorded by an earlier version (the host name alone): compared by name, as then.
    assert owner_gone(NAME, NO_SUCH_PID, NOW, "finishing the task", NOW) == \
        f"process {NO_SUCH_PID} on {NAME} ended without finishing the task"
    previous_run = f"{name}#{space}#previous"
    store = open_store(":memory:")
    silent, beating = AuditTask(), AuditTask()
    store.save_task(silent, TaskOwner(previous_run, os.getpid(), NOW - STALE_AFTER_S - 1))
    store.save_task(beating, TaskOwner(previous_run, os.getpid(), NOW))
    assert recover_interrupted(store, now=NOW) == [silent.task_id]
    assert store.get_task(silent.task_id).details.message == \
        f"process {os.getpid()} on {NAME} gave no sign of life for more than {STALE_AFTER_S // 60} minutes"
