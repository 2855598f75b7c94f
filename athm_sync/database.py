"""The database connection of a run: whether an error means it is gone, and one more try.

A connection the server ended (``pg_terminate_backend``, a restart, a failover, a proxy's idle
timeout) fails every query after it, so going on would turn one event into one logged error,
or one traceback, per payment. Where the app catches a database error to go on with the next
payment, it asks :func:`connection_lost` first and lets the error through when the connection
is gone; the run then ends in one line (:mod:`athm_sync.runner`).

And SQLite's one writer: :func:`run_locked` runs a transaction again while another process
holds the write lock ("database is locked").
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

T = TypeVar("T")


class ConnectionLost(Exception):
    """The run's database connection died; the message is the one line to show."""


def connection_lost(error: BaseException | None = None) -> bool:
    """Whether this thread's connection is gone, asked right after ``error``, one of its errors.

    Django closes a connection whose rollback failed (it leaves an ``atomic`` block with no
    connection), and the drivers mark some dropped connections closed. On PostgreSQL the
    error itself tells: the server's last word has an SQLSTATE of class 08 (connection
    exception) or 57P01-57P03 (shut down by an administrator, a crash, a restart), and
    libpq's own failures (a dropped socket: "server closed the connection unexpectedly")
    have no SQLSTATE at all, which no error of a query has. SQLite's connections are files:
    never gone so.
    """
    raw = connection.connection
    if raw is None or bool(getattr(raw, "closed", False)):
        return True
    cause = getattr(error, "__cause__", None)
    if connection.vendor != "postgresql" or cause is None:
        return False
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None) or ""
    return not code or code.startswith("08") or code in _SHUT_DOWN


_SHUT_DOWN = {"57P01", "57P02", "57P03"}


def first_line(error: BaseException) -> str:
    """The first line of an error's message (psycopg adds a hint on more lines)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def on_new_connection(work: Callable[[], T]) -> T:
    """``work()``; when it fails because the connection is gone, once more on a new one."""
    try:
        return work()
    except DatabaseError as error:
        if not connection_lost(error):
            raise
        connection.close()
        return work()


def discard() -> None:
    """Drop this thread's connection whatever state it is in; the next query opens a new one.

    For a connection a signal interrupted mid-query (a second SIGTERM raises in the middle of
    the driver's wait): it is left half-way through the protocol ("connection in transaction
    status ACTIVE"), and every later use of it fails.
    """
    with contextlib.suppress(DatabaseError):
        connection.close()
    if not connection.in_atomic_block:
        connection.connection = None


def interrupted_by(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The ``kind`` exception ``error`` was raised while handling, if any (``__context__``):
    a database error met while a signal's exception unwound (a rollback, the autocommit
    reset) hides the signal's."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__context__
    return None


def run_locked(work: Callable[[], T], attempts: int = 8) -> T:
    """Run a transaction, retrying it while SQLite says "database is locked".

    With Django's default deferred transactions, SQLite refuses at once a transaction that read
    and then tries to write while another process writes; running it again succeeds. Other
    databases wait for the lock instead, so this never retries there.
    """
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except OperationalError as error:
            locked = connection.vendor == "sqlite" and "locked" in str(error)
            if not locked or attempt == attempts or connection.in_atomic_block:
                raise
            time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))  # noqa: S311
    raise AssertionError("unreachable")


__all__ = [
    "ConnectionLost",
    "connection_lost",
    "discard",
    "first_line",
    "interrupted_by",
    "on_new_connection",
    "run_locked",
]
