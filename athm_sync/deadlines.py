"""Whole-answer deadlines for the client's HTTP attempts, and the one thread that enforces them.

requests' ``timeout`` applies to each socket operation: an answer that drips one byte a second
never trips it, in the status line, the headers or the body. So each attempt of a call gets a
:class:`Deadline`, and every socket the attempt uses is registered with the process's
:data:`WATCHDOG`. When a deadline passes before its attempt is done, the watchdog shuts those
sockets down, so whatever read is blocked on them returns at once; the client then reports
that no whole answer came in time.

The watchdog holds a duplicate of each socket's file descriptor (closed when the attempt ends),
so a descriptor the connection closed and the system handed to another socket is never shut
down by mistake; and a connection only stays registered with the latest attempt that used it,
so a pooled connection already serving the next call is never cut for the previous one.

One daemon thread per process sleeps until the earliest deadline; attempts that finish remove
themselves, so it wakes about once per deadline period, not once per call.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

# How long the idle watchdog sleeps when no attempt is running.
_IDLE = 60.0


class Deadline:
    """When one attempt must have had its whole answer: ``seconds`` from its creation."""

    __slots__ = ("_fds", "at", "done", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False  # the watchdog cut this attempt's sockets
        self.done = False
        # (connection, duplicate descriptor of its socket) for each socket the attempt used
        self._fds: list[tuple[Any, int]] = []

    def passed(self) -> bool:
        """Whether the deadline has passed (or the watchdog already acted on it)."""
        return self.expired or time.monotonic() >= self.at


class Watchdog:
    """Shuts down the sockets of attempts whose deadline passed before they finished."""

    def __init__(self) -> None:
        self._reset()
        # A forked child has no watchdog thread and maybe a lock held by a thread that is gone.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._sleeping_until = float("inf")

    def watch(self, deadline: Deadline) -> None:
        """Start watching ``deadline`` (call :meth:`finish` when its attempt ends)."""
        with self._lock:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="athm_sync deadline watchdog", daemon=True
                )
                self._thread.start()
            elif deadline.at < self._sleeping_until:
                self._wake.notify()

    def guard(self, deadline: Deadline, owner: Any, sock: socket.socket) -> None:
        """Have ``sock`` (the connection ``owner``'s) shut down if ``deadline`` passes first."""
        with self._lock:
            if deadline.done:
                return
            owner._athm_deadline = deadline
            try:
                fd = os.dup(sock.fileno())
            except OSError:  # already closed: nothing to cut
                return
            deadline._fds.append((owner, fd))
            if deadline.expired:
                _shutdown(fd)

    def finish(self, deadline: Deadline) -> bool:
        """Stop watching ``deadline``; returns whether the watchdog had cut its sockets."""
        with self._lock:
            deadline.done = True
            for _, fd in deadline._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            deadline._fds.clear()
            while self._heap and self._heap[0][2].done:
                heapq.heappop(self._heap)
            return deadline.expired

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    if not deadline.done:
                        deadline.expired = True
                        for owner, fd in deadline._fds:
                            # Not a connection the pool already gave to a newer attempt.
                            if getattr(owner, "_athm_deadline", None) is deadline:
                                _shutdown(fd)
                self._sleeping_until = self._heap[0][0] if self._heap else now + _IDLE
                self._wake.wait(self._sleeping_until - now)


def _shutdown(fd: int) -> None:
    """Shut a socket down through a descriptor of our own: blocked reads on it return now."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass
    finally:
        sock.detach()


WATCHDOG = Watchdog()


# -- a budget for several calls -------------------------------------------------------------

_budgets = threading.local()


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Every ATH Móvil call this thread makes inside the block, retries included, ends within
    ``seconds`` of the block's start, all of them together.

    The webhook view's ``WEBHOOK_VERIFY_TIMEOUT``: an event without an ecommerceId may need a
    findPayment for each payment it can be, and the web worker must still be free in time.
    A block inside another keeps the earlier end of the two.
    """
    outer = getattr(_budgets, "until", None)
    until = time.monotonic() + seconds
    _budgets.until = until if outer is None else min(outer, until)
    try:
        yield
    finally:
        _budgets.until = outer


def budget_left() -> float | None:
    """Seconds left of this thread's :func:`budget` (``None`` outside one; ``<= 0`` spent)."""
    until = getattr(_budgets, "until", None)
    return None if until is None else until - time.monotonic()
