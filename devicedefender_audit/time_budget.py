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
from collections.abc import Mapping
from dataclasses import dataclass

#: Seconds kept back from the limit. An audit sees its budget between pages and batches (one
#: paced batch of descriptions takes tens of seconds), and the notifications go out after it stops.
RESERVE_S = 120.0
#: A Lambda function gets one whole vCPU at this memory size, a proportional share below it.
LAMBDA_MB_PER_VCPU = 1769.0


@dataclass(frozen=True)
class TimeBudget:
    #: ``time.monotonic()`` at which work stops.
    stop_at: float
    #: What a task stopped by this budget says (its ``message``).
    why: str
    #: The share of one core the work gets, for estimates measured on one: a Lambda function gets
    #: its memory size / 1769 MB of a vCPU (1769 MB is one whole vCPU).
    cpu: float = 1.0

    @classmethod
    def from_remaining(cls, remaining_s: float, reserve_s: float = RESERVE_S, cpu: float = 1.0) -> TimeBudget:
        """The budget of an invocation with ``remaining_s`` left before it is killed."""
        return cls(time.monotonic() + remaining_s - reserve_s,
                   f"stopped {reserve_s:.0f} s before the function's time limit; the next audit goes on "
                   "from the certificates this one described", cpu)

    @staticmethod
    def lambda_cpu(env: Mapping[str, str]) -> float:
        """The vCPU share of the Lambda function running here, from its memory size (1.0 where
        none is set: not in Lambda); single-threaded work gains nothing beyond one vCPU."""
        try:
            memory_mb = float(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", LAMBDA_MB_PER_VCPU))
        except ValueError:
            return 1.0
        return min(1.0, max(memory_mb, 128.0) / LAMBDA_MB_PER_VCPU)

    def spent(self) -> bool:
        return time.monotonic() >= self.stop_at

    def left(self) -> float:
        """Seconds until work stops (negative once spent): for a step that cannot stop midway,
        which starts only when it fits."""
        return self.stop_at - time.monotonic()
