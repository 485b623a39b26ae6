"""A progress bar on stderr for long scans; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    WIDTH = 30

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total: int | None = None
        self.done = 0
        self._began = time.monotonic()
        self._last_draw = 0.0

    def set_total(self, total: int) -> None:
        self.total = total
        self._draw(force=True)

    def advance(self, step: int = 1) -> None:
        self.done += step
        self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        rate = self.done / max(now - self._began, 1e-9)
        if self.total:
            filled = int(self.WIDTH * self.done / self.total)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total} ({rate:.0f}/s)"
        else:
            text = f"\r{self.label} {self.done} ({rate:.0f}/s)"
        self.stream.write(text)
        self.stream.flush()
