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
from collections.abc import Callable
from typing import TypeVar

import tenacity

from athm_sync.calls import CallCounts
from athm_sync.endpoints import Endpoint
from athm_sync.errors import TransientError
from athm_sync.transport import NotSent

# The retries are the client's: they are logged where a shop already looks for them.
logger = logging.getLogger("athm_sync.client")
# Set on the log record of each retry, so a caller can tell retries from other messages.
RETRY_LOG_MARK = "athm_retry"

_Answer = TypeVar("_Answer")


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
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts)
        | tenacity.stop_before_delay(deadline)
        | (lambda state: should_stop()),
        wait=tenacity.wait_random_exponential(multiplier=0.25, max=8),
        retry=tenacity.retry_if_exception(
            lambda error: (
                isinstance(error, NotSent)
                or (endpoint.repeatable and isinstance(error, TransientError))
            )
        ),
        before_sleep=lambda state: _log_retry(endpoint, state, max_attempts, calls),
        sleep=sleep,
        reraise=True,
    )
    failed: list[BaseException] = []

    def tracked() -> _Answer:
        if failed and should_stop():
            raise failed[-1]  # the stop came while waiting to retry: no more attempts
        try:
            return attempt()
        except Exception as error:
            failed.append(error)
            raise

    return retrying(tracked)


def _log_retry(
    endpoint: Endpoint, state: tenacity.RetryCallState, max_attempts: int, calls: CallCounts
) -> None:
    calls.retried(endpoint.name)
    error = state.outcome.exception() if state.outcome else None
    # DEBUG: an outage would write one line per attempt per payment. The runner says once
    # that ATH Móvil is failing, and once that it answers again.
    logger.debug(
        "ATH Móvil %s failed (attempt %d of %d): %s; retrying in %.2f s",
        endpoint.name,
        state.attempt_number,
        max_attempts,
        error,
        state.upcoming_sleep,
        extra={RETRY_LOG_MARK: True},
    )
