"""The client's retry policy: which failures are tried again, how long it waits, when it stops.

A call is tried up to ``max_attempts`` times within its deadline, waiting a random
exponential backoff (jitter, up to 8 s) between attempts. A failure before anything of the
request left (:class:`athm_sync.transport.NotSent`) is retried for every call; a
``TransientError`` once it may have left only for the endpoints that are safe to repeat
(:attr:`athm_sync.endpoints.Endpoint.repeatable`). Each retry is counted and logged at DEBUG
on ``athm_sync.client``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from athm_sync.calls import CallCounts
from athm_sync.endpoints import Endpoint
from athm_sync.errors import TransientError
from athm_sync.transport import NotSent

# The retries are the client's: they are logged where a shop already looks for them.
logger = logging.getLogger("athm_sync.client")
# Set on the log record of each retry, so a caller can tell retries from other messages.
RETRY_LOG_MARK = "athm_retry"

_Answer = TypeVar("_Answer")
# The backoff window after the first failure, doubled after each: 0.25, 0.5, ... up to 8 s.
_FIRST_WINDOW = 0.25
_DOUBLINGS = 5


def with_retries(
    endpoint: Endpoint,
    attempt: Callable[[], _Answer],
    *,
    max_attempts: int,
    deadline: float,
    sleep: Callable[[float], None],
    should_stop: Callable[[], bool],
    calls: CallCounts,
) -> _Answer:
    """``attempt()``'s answer, trying again after a retryable failure; the last failure is
    raised once no attempt is left, ``deadline`` seconds would pass before the next one, or
    ``should_stop()`` says the run is stopping (asked before each wait, and after it)."""
    started = time.monotonic()
    attempt_number = 1
    while True:
        try:
            return attempt()
        except Exception as error:
            if not retryable(endpoint, error):
                raise
            wait = backoff(attempt_number)
            if (
                attempt_number >= max_attempts
                or time.monotonic() - started + wait >= deadline
                or should_stop()
            ):
                raise
            _log_retry(endpoint, error, attempt_number, max_attempts, wait, calls)
            sleep(wait)
            if should_stop():
                raise  # the stop came while waiting to retry: no more attempts
        attempt_number += 1


def retryable(endpoint: Endpoint, error: Exception) -> bool:
    """Whether trying ``endpoint`` again after ``error`` is safe and may help."""
    return isinstance(error, NotSent) or (endpoint.repeatable and isinstance(error, TransientError))


def backoff(attempt_number: int) -> float:
    """The wait after failed attempt ``attempt_number`` (from 1): "full jitter", uniform in a
    window that doubles from 0.25 s up to 8 s, so workers failing together spread out."""
    window = _FIRST_WINDOW * 2 ** min(attempt_number - 1, _DOUBLINGS)
    return random.uniform(0, window)  # noqa: S311 - jitter, not a secret


def _log_retry(
    endpoint: Endpoint,
    error: Exception,
    attempt_number: int,
    max_attempts: int,
    wait: float,
    calls: CallCounts,
) -> None:
    calls.retried(endpoint.name)
    # DEBUG: an outage would write one line per attempt per payment. The runner says once
    # that ATH Móvil is failing, and once that it answers again.
    logger.debug(
        "ATH Móvil %s failed (attempt %d of %d): %s; retrying in %.2f s",
        endpoint.name,
        attempt_number,
        max_attempts,
        error,
        wait,
        extra={RETRY_LOG_MARK: True},
    )
