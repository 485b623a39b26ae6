"""A time limit set from outside (a Lambda function's timeout), kept so that work stops and is
recorded before the limit kills it unrecorded.

A killed invocation leaves its audit ``IN_PROGRESS`` until a later start marks it ``FAILED``,
notifies no one, and leaves the regions after it unaudited in silence. Work that checks its
budget instead ends ``CANCELED`` with :attr:`TimeBudget.why`, and what was not started is
reported as such; both reach the notification. The reserve is what follows the stop: the audit's
last batch, its records and the notifications (the Security Hub sync is skipped once it is spent).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: Seconds kept back from the limit. An audit sees its budget between pages and batches (one
#: paced batch of descriptions takes tens of seconds), and the notifications go out after it stops.
RESERVE_S = 120.0


@dataclass(frozen=True)
class TimeBudget:
    #: ``time.monotonic()`` at which work stops.
    stop_at: float
    #: What a task stopped by this budget says (its ``message``).
    why: str

    @classmethod
    def from_remaining(cls, remaining_s: float, reserve_s: float = RESERVE_S) -> TimeBudget:
        """The budget of an invocation with ``remaining_s`` left before it is killed."""
        return cls(time.monotonic() + remaining_s - reserve_s,
                   f"stopped {reserve_s:.0f} s before the function's time limit; the next audit goes on "
                   "from the certificates this one described")

    def spent(self) -> bool:
        return time.monotonic() >= self.stop_at

    def left(self) -> float:
        """Seconds until work stops (negative once spent): for a step that cannot stop midway,
        which starts only when it fits."""
        return self.stop_at - time.monotonic()
