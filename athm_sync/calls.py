"""How many calls the client made to ATH Móvil, and how each that failed failed.

Every :class:`~athm_sync.client.ATHMovilClient` counts its calls in a :class:`CallCounts`
(``client.calls``): per endpoint (``findPayment``, ``authorization``...), the calls sent, the
retries among their attempts and the calls that failed, by kind (:func:`failure_kind`). A run
records what its client counted in ``SyncRun.calls`` (:meth:`CallCounts.since`), so that
monitoring can add up the calls of runs that were separate processes
(:mod:`athm_sync.monitoring`).

A failure is counted once per call, after its retries: a call that succeeds on its second
attempt counts one retry and no failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from athm_sync.errors import (
    EMPTY_REPORT_CODES,
    ATHMovilError,
    AuthenticationError,
    AuthTokenError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
    TransientError,
)

# What went wrong, most specific first. The first five mean ATH Móvil (or the way to it) is
# failing; the others are answers it gave.
FAILURE_KINDS = (
    "unreachable",  # no connection could be made (refused, DNS, connect timeout, TLS)
    "timeout",  # no whole answer in time (READ_TIMEOUT, RETRY_DEADLINE)
    "connection",  # the connection broke after the request was sent
    "server_error",  # HTTP 5xx, or ATH Móvil's own "try again" (BTRA_9998...)
    "throttled",  # HTTP 429
    "invalid_answer",  # an answer that is not what the API documents
    "credentials",  # the merchant's tokens were rejected
    "auth_token",  # a payment's auth token was rejected or expired
    "not_found",  # ATH Móvil does not know the payment
    "invalid_state",  # the payment is in the wrong state for the call
    "invalid_request",  # ATH Móvil refused the request as invalid
    "other",
)
OUTAGE_KINDS = FAILURE_KINDS[:5]

# Set on an error once it is counted, so that a caller that checks the answer further
# (reconcile.check_answer) does not count it twice.
_COUNTED = "_athm_counted"


def failure_kind(error: ATHMovilError) -> str | None:
    """The kind of failure ``error`` is (one of ``FAILURE_KINDS``), or ``None`` for an error
    answer that is an ordinary outcome (an empty transaction report)."""
    if (error.errorcode or "").upper() in EMPTY_REPORT_CODES:
        return None
    if isinstance(error, TransientError):
        if error.cause:
            return error.cause
        return "throttled" if error.http_status == 429 else "server_error"
    for cls, kind in (
        (AuthTokenError, "auth_token"),
        (AuthenticationError, "credentials"),
        (NotFoundError, "not_found"),
        (InvalidStateError, "invalid_state"),
        (InvalidRequestError, "invalid_request"),
        (InvalidResponseError, "invalid_answer"),
    ):
        if isinstance(error, cls):
            return kind
    return "other"


class CallCounts:
    """The calls one client made, by endpoint; safe to share between the run's workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, Any]] = {}

    def _entry(self, call: str) -> dict[str, Any]:
        return self._counts.setdefault(call, {"calls": 0, "retries": 0, "failures": {}})

    def sent(self, call: str) -> None:
        """One call to ``call`` (its retries are counted apart)."""
        with self._lock:
            self._entry(call)["calls"] += 1

    def retried(self, call: str) -> None:
        """One more attempt of a call to ``call``."""
        with self._lock:
            self._entry(call)["retries"] += 1

    def failed(self, call: str, error: ATHMovilError) -> None:
        """A call to ``call`` ended in ``error``; counted once however often it is reported."""
        if getattr(error, _COUNTED, False):
            return
        kind = failure_kind(error)
        if kind is None:
            return
        setattr(error, _COUNTED, True)
        with self._lock:
            failures = self._entry(call)["failures"]
            failures[kind] = failures.get(kind, 0) + 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A copy of the counts so far."""
        with self._lock:
            return {
                call: {**entry, "failures": dict(entry["failures"])}
                for call, entry in self._counts.items()
            }

    def since(self, before: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """What was counted after ``before`` (a :meth:`snapshot`): one run's calls when the
        client serves several (``--watch``). Endpoints without a call are left out."""
        counted = {}
        for call, entry in self.snapshot().items():
            earlier = before.get(call, {})
            failures = {
                kind: n - earlier.get("failures", {}).get(kind, 0)
                for kind, n in entry["failures"].items()
            }
            delta = {
                "calls": entry["calls"] - earlier.get("calls", 0),
                "retries": entry["retries"] - earlier.get("retries", 0),
                "failures": {kind: n for kind, n in failures.items() if n},
            }
            if delta["calls"] or delta["retries"] or delta["failures"]:
                counted[call] = delta
        return counted


def total(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The calls of several runs (their ``SyncRun.calls``) added up; anything of another shape
    (a row edited by hand) is skipped."""
    summed: dict[str, dict[str, Any]] = {}
    for calls in runs:
        if not isinstance(calls, Mapping):
            continue
        for call, entry in calls.items():
            if not isinstance(entry, Mapping):
                continue
            into = summed.setdefault(str(call), {"calls": 0, "retries": 0, "failures": {}})
            into["calls"] += _count(entry.get("calls"))
            into["retries"] += _count(entry.get("retries"))
            failures = entry.get("failures")
            for kind, n in failures.items() if isinstance(failures, Mapping) else ():
                into["failures"][str(kind)] = into["failures"].get(str(kind), 0) + _count(n)
    return summed


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def count_failure(client: Any, call: str, error: ATHMovilError) -> None:
    """Count ``error`` against ``client``'s ``call`` when the client did not (an answer that
    a caller found invalid after the client accepted it); a client without counts is left
    alone."""
    counts = getattr(client, "calls", None)
    if isinstance(counts, CallCounts):
        counts.failed(call, error)


__all__ = ["FAILURE_KINDS", "OUTAGE_KINDS", "CallCounts", "count_failure", "failure_kind", "total"]
