"""How many API calls and TCP connections the sandbox served: what tests and the bench count."""

from __future__ import annotations

import threading

ENDPOINTS = (
    "payment",
    "findPayment",
    "updatePhoneNumber",
    "authorization",
    "cancel",
    "refund",
    "transactionReport",
    "webhookSubscribe",
)


class Counters:
    """API calls per endpoint name (faulted calls count too) and connections accepted."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        """Zeroed counters; ``lock`` is shared with the rest of the state."""
        self._lock = lock or threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Zero the request and connection counters."""
        with self._lock:
            self._counts: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
            self._connections = 0

    def count(self, endpoint: str) -> None:
        """Record one API call to ``endpoint``."""
        with self._lock:
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def counts(self) -> dict[str, int]:
        """API calls per endpoint name since the last reset."""
        with self._lock:
            return dict(self._counts)

    def count_connection(self) -> None:
        """Record one TCP connection accepted by the server."""
        with self._lock:
            self._connections += 1

    def connections(self) -> int:
        """TCP connections the server accepted since the last reset."""
        with self._lock:
            return self._connections
