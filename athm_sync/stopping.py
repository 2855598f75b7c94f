"""Stopping a run cleanly: SIGTERM and SIGINT become a request the run reads between payments.

systemd (``systemctl stop``, ``TimeoutStartSec``), ``docker stop`` and Ctrl-C stop a process
with SIGTERM or SIGINT. Python's defaults would end a run where it stands (SIGTERM at once,
SIGINT with ``KeyboardInterrupt`` wherever it lands): its payments stay claimed until their
lease runs out and its ``SyncRun`` never ends. Instead, while :func:`signals_stop` is open, the
first signal only sets a :class:`StopRequest`; the run applies the answer in hand, claims
nothing more, releases its claims, records its end and exits ``128 + signal``: 143 for
SIGTERM, 130 for SIGINT. A second signal stops at once (:class:`StopNow`): the work in hand is
rolled back, the claims are still released and the run recorded.

Signal handlers can only be installed from the main thread. Elsewhere (a task queue's worker
thread) nothing is installed and the run stops only when something calls
:meth:`StopRequest.request` (:func:`athm_sync.contrib.jobs.stop_runs`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger("athm_sync.stopping")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The exit codes of a run those signals stopped (143, 130): neither a success nor a failure.
SIGNAL_EXIT_CODES = tuple(128 + int(signum) for signum in STOP_SIGNALS)


def exit_code_for(reason: str) -> int:
    """The exit code of a run stopped for ``reason``: ``128 + n`` for a signal's name (the
    shell's convention: 143 for SIGTERM, 130 for SIGINT), 1 for anything else."""
    try:
        return 128 + int(signal.Signals[reason])
    except KeyError:
        return 1


class StopRequest:
    """A request to stop a run between payments; safe to set from any thread or a signal
    handler. ``reason`` is the first request's: ``"SIGTERM"``, ``"SIGINT"`` or a caller's."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        """Ask the run to stop; the first reason given is kept."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a request; whether there is one."""
        return self._event.wait(timeout)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.reason)


class StopNow(BaseException):
    """A second signal: stop where the run stands. A ``BaseException``, as
    ``KeyboardInterrupt`` is, so that no ``except Exception`` (a receiver's) swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.reason = signal.Signals(signum).name
        super().__init__(f"stopped at once by a second {self.reason}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


Handler = Callable[[int, FrameType | None], Any] | int | None


@contextmanager
def signals_stop(stop: StopRequest, *, chain: bool = False) -> Iterator[bool]:
    """While open, SIGTERM and SIGINT set ``stop``; a second signal raises :class:`StopNow`.
    Yields whether the handlers could be installed (only in the main thread).

    The handlers that were there before are put back on the way out, so a run called
    in-process (a shop's code, a test, a task) leaves nothing behind. ``chain`` also calls
    the previous Python handler, so that a worker that runs tasks in its main thread (Django's
    ``db_worker``, Celery's solo pool) still learns it must shut down after this task; Python's
    own SIGINT handler (``KeyboardInterrupt``) is never chained: it is what this replaces.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[int, Handler] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        again = stop.is_set()
        if not again:
            stop.request(signal.Signals(signum).name)
            logger.warning(
                "%s: the run stops after the payment in hand and releases its claims "
                "(send it again to stop at once)",
                signal.Signals(signum).name,
            )
        before = previous.get(signum)
        if chain and callable(before) and before is not signal.default_int_handler:
            before(signum, frame)  # it may end the worker itself (sys.exit)
        if again:
            raise StopNow(signum)

    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
        yield True
    finally:
        for signum, handler in previous.items():
            # None: a handler installed from C, which Python cannot put back; the default is
            # the nearest thing.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


__all__ = [
    "SIGNAL_EXIT_CODES",
    "STOP_SIGNALS",
    "StopNow",
    "StopRequest",
    "exit_code_for",
    "signals_stop",
]
