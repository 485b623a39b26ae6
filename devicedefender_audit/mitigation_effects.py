"""The effects a mitigation task has made (a real run) or would have made (a dry run).

A dry run makes no mutating call, so AWS and the store cannot tell it what its earlier actions
would have changed: read alone, they would let it plan the same change twice (a certificate
with two findings deactivated twice, a thing added to a group twice). Both modes therefore
record every mutating call's effect here as it is made or planned, and every read of the
state an action depends on consults this record first. The dry run then sees its own planned
effects exactly as the real run sees its made ones, by construction rather than case by case,
and both modes skip with the same reason, naming the finding whose action made the change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunEffects:
    """What this task changed, each effect with the finding (or action) that changed it."""

    #: Certificates set INACTIVE (``ca:`` before a CA's id) -> finding id.
    deactivated: dict[str, str] = field(default_factory=dict)
    #: Thing groups known to exist: seen by a read or created by this task.
    groups: set[str] = field(default_factory=set)
    #: (thing group, thing) pairs added -> finding id.
    members: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Claims (finding id / action digest) whose change was made -> action name. A second
    #: action of the same effect on that finding has nothing left to do.
    applied: dict[str, str] = field(default_factory=dict)

    def record_call(self, operation: str, params: Mapping[str, Any], finding_id: str) -> None:
        """The effect of one mutating call, made or planned for ``finding_id``."""
        if operation == "update_certificate" and params.get("newStatus") == "INACTIVE":
            self.deactivated.setdefault(params["certificateId"], finding_id)
        elif operation == "update_ca_certificate" and params.get("newStatus") == "INACTIVE":
            self.deactivated.setdefault(f"ca:{params['certificateId']}", finding_id)
        elif operation == "create_thing_group":
            self.groups.add(params["thingGroupName"])
        elif operation == "add_thing_to_thing_group":
            self.members.setdefault((params["thingGroupName"], params["thingName"]), finding_id)
