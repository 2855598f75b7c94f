"""Faults to serve instead of (or before) an API answer: outages, throttling, garbage, loss.

Each kind imitates something the real service or the network between does; the server
(:mod:`athm_sync.sandbox.server`) decides what each looks like on the wire:

``http500``/``http503``/``http429``
    that HTTP status with an error envelope (``http429`` carries ``Retry-After: 0``).
``btra9998``/``btra9999``
    ATH Móvil's own "try again" error envelopes (HTTP 200 and 500 by default; ``status=``).
``latency``/``timeout``
    answer after ``delay`` seconds / hold the request ``delay`` seconds, then hang up.
``drop``
    hang up without answering.
``auth``
    the credentials rejected (401).
``html``/``garbage``
    a proxy's HTML 502 page / a success envelope whose ``data`` is not an object.
``lost``
    do the work, then drop the answer (a refund that happened though the shop saw an error).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from athm_sync.sandbox.counters import ENDPOINTS

FAULT_KINDS = (
    "http500",
    "http503",
    "http429",
    "btra9998",
    "btra9999",
    "latency",
    "timeout",
    "drop",
    "auth",
    "html",
    "garbage",
    "lost",
)


@dataclass
class Fault:
    """A failure to serve instead of (or before) the next ``remaining`` calls to ``endpoint``."""

    kind: str
    endpoint: str
    remaining: int
    delay: float
    status: int | None


class Faults:
    """The queue of faults waiting to be served, first injected first served."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        """No faults; ``lock`` is shared with the rest of the state."""
        self._lock = lock or threading.RLock()
        self._faults: list[Fault] = []

    def inject(
        self,
        kind: str,
        endpoint: str = "*",
        times: int = 1,
        delay: float = 0.0,
        status: int | None = None,
    ) -> None:
        """Serve ``kind`` to the next ``times`` API calls to ``endpoint`` ("*" = any endpoint).

        ``delay`` is the wait for "latency" and "timeout"; ``status`` overrides the HTTP status
        of "btra9998" (default 200, as the real API sometimes does) and "btra9999" (default 500).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of *, {', '.join(ENDPOINTS)}")
        if int(times) < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay cannot be negative")
        if status is not None and not 100 <= int(status) <= 599:
            raise ValueError("status must be an HTTP status code")
        fault = Fault(
            kind, endpoint, int(times), float(delay), None if status is None else int(status)
        )
        with self._lock:
            self._faults.append(fault)

    def take(self, endpoint: str) -> Fault | None:
        """The fault to serve for this call to ``endpoint``, if any; uses one of its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in ("*", endpoint) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        """Faults still waiting to be served."""
        with self._lock:
            return [
                {"kind": f.kind, "endpoint": f.endpoint, "times": f.remaining, "delay": f.delay}
                for f in self._faults
            ]

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()
