"""Named leases in the database: at most one holder at a time, across processes and hosts.

A lease is one ``RunLock`` row. Taking it is one conditional ``UPDATE`` that matches only a
free or expired row, so two takers never both win: PostgreSQL re-checks the condition on the
row the first writer committed, and SQLite has one writer at a time. It needs nothing but the
database the app already uses: no shared cache, no advisory locks (which a connection pooler
in transaction mode would break).

A holder renews its lease from a thread (every ``lease / 3``) while it works and frees it when
done. A holder that dies without freeing it (SIGKILL, out of memory, its host gone) leaves it
taken until ``expires_at``: at most ``LOCK_LEASE`` (45 s) later the next taker wins.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, connection
from django.db.models import Q

from athm_sync import clock
from athm_sync.database import run_locked
from athm_sync.models import RunLock

logger = logging.getLogger("athm_sync.locks")

# The lease of a scheduled run (the task-queue integrations): as long as a payment claim, so a
# dead run's lock and its payments are free again at about the same moment.
RUN_LOCK = "athm_sync.run"
LOCK_LEASE = timedelta(seconds=45)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (unless renewed)."""

    holder: str
    acquired_at: datetime | None
    expires_at: datetime


def current_holder(name: str, *, now: datetime | None = None) -> Holder | None:
    """Who holds ``name`` now; ``None`` when it is free (or its holder's lease ran out)."""
    now = now or clock.now()
    row = RunLock.objects.filter(name=name, expires_at__gte=now).exclude(holder="").first()
    if row is None:
        return None
    return Holder(row.holder, row.acquired_at, row.expires_at)


class Lease:
    """The lease ``name`` for ``holder``: :meth:`acquire` it, keep it renewed while working
    (``with lease.kept(): ...``) and :meth:`release` it.

    Renewal runs in a thread with a database connection of its own, closed when it stops. If a
    renewal finds the lease taken by someone else (this holder could not renew for a whole
    lease, e.g. the database was unreachable), it says so once; the work goes on, since what
    the lease guards is safe to overlap.
    """

    def __init__(self, name: str, holder: str, lease: timedelta = LOCK_LEASE) -> None:
        self.name = name
        self.holder = holder
        self.lease = lease

    def acquire(self, *, now: datetime | None = None) -> bool:
        """Take the lease if it is free or expired; whether this holder has it now."""
        now = now or clock.now()
        run_locked(lambda: RunLock.objects.get_or_create(name=self.name))
        free = Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lt=now)
        taken = run_locked(
            lambda: RunLock.objects.filter(free, name=self.name).update(
                holder=self.holder, acquired_at=now, expires_at=now + self.lease
            )
        )
        return taken == 1

    def renew(self) -> bool:
        """Push the expiry one lease ahead; ``False`` when this holder no longer has it."""
        return bool(
            run_locked(
                lambda: RunLock.objects.filter(name=self.name, holder=self.holder).update(
                    expires_at=clock.now() + self.lease
                )
            )
        )

    def release(self) -> None:
        """Free the lease if this holder still has it (never someone else's)."""
        run_locked(
            lambda: RunLock.objects.filter(name=self.name, holder=self.holder).update(
                holder="", expires_at=None
            )
        )

    def kept(self) -> _Keeper:
        """A context manager that renews the lease every ``lease / 3`` while it is open."""
        return _Keeper(self)


class _Keeper:
    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._every = lease.lease.total_seconds() / 3
        self._stop = threading.Event()
        self.renewed = threading.Event()  # set after each renewal that found the lease held
        self._thread = threading.Thread(
            target=self._keep, name=f"athm-sync-lock-{lease.name}", daemon=True
        )

    def __enter__(self) -> _Keeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every)

    def _keep(self) -> None:
        lost = False
        try:
            while not self._stop.wait(self._every):
                try:
                    held = self._lease.renew()
                except DatabaseError as error:  # the next tick tries again
                    logger.warning("Could not renew the lock %s: %s", self._lease.name, error)
                    continue
                if held:
                    self.renewed.set()
                elif not lost:
                    lost = True
                    logger.warning(
                        "The lock %s was taken over while %s still ran (it could not renew "
                        "it in time); the runs overlap, which is safe",
                        self._lease.name,
                        self._lease.holder,
                    )
        finally:
            connection.close()


__all__ = ["LOCK_LEASE", "RUN_LOCK", "Holder", "Lease", "current_holder"]
