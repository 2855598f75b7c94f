"""The sandbox's clock: real time plus an offset that only grows.

It reads ``time.time()`` rather than a monotonic clock so that time-machine in a test moves the
sandbox too; :meth:`SandboxClock.advance` moves the sandbox alone (our app's clock stays put).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from athm_sync.sandbox.formats import pr_local


class SandboxClock:
    """What time it is for the fake ATH Móvil: payments expire and tokens lapse by it."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        """A clock at real time (offset 0); ``lock`` is shared with the rest of the state."""
        self._lock = lock or threading.RLock()
        self.offset = 0.0

    def reset(self) -> None:
        """Back to real time."""
        with self._lock:
            self.offset = 0.0

    def timestamp(self) -> float:
        """The sandbox's time as epoch seconds."""
        return time.time() + self.offset

    def now(self) -> datetime:
        """The sandbox's current time, an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp(), UTC)

    def move(self, seconds: float) -> None:
        """Add ``seconds`` to the offset (no expiry sweep: see ``SandboxState.advance``)."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self.offset += float(seconds)

    def as_json(self) -> dict[str, Any]:
        """The clock as the control API shows it: UTC ISO time, PR local time, offset."""
        with self._lock:
            moment = self.now()
            return {"now": moment.isoformat(), "local": pr_local(moment), "offset": self.offset}
