"""Claims: which run checks which payment, and the lease that frees a dead run's payments.

A run claims a batch of due payments (:func:`claim_due`) until ``now + CLAIM_LEASE``; two
runs never hold the same payment. While the run lives, :class:`LeaseKeeper` renews its claims
(and its ``SyncRun``'s heartbeat) from a thread of its own; a run that stops early gives them
back (:func:`release_claims`), and those of a run that died are free again once its lease
runs out. :func:`athm_sync.reconcile.apply` releases the claim of the payment it writes.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models import Q, QuerySet

from athm_sync import clock
from athm_sync.database import run_locked
from athm_sync.models import Payment, SyncRun

# The name these lines were always logged under: a shop's logging configuration names it.
logger = logging.getLogger("athm_sync.reconcile")

# How long a run's claim on a payment lasts; a live run renews it (LeaseKeeper), so this is
# how soon the payments of a run that died are free for the next run.
CLAIM_LEASE = timedelta(seconds=45)


def claim_due(
    run_id: str, limit: int, lease: timedelta, now: datetime | None = None
) -> list[Payment]:
    """Claim up to ``limit`` due payments for ``run_id`` until ``now + lease``; returns their
    rows as claimed, the most overdue first.

    Two runs never hold the same payment: on PostgreSQL rows another run is claiming are
    skipped (``SKIP LOCKED``); everywhere, the claim is a conditional update that only takes
    rows whose lease is free or has expired (its holder died). Three queries, however many
    rows.
    """
    now = now or clock.now()

    def claim() -> list[Payment]:
        with transaction.atomic():
            ids = list(claimable(now).values_list("pk", flat=True)[:limit])
            if not ids:
                return []
            Payment.objects.filter(_lease_free(now), pk__in=ids).update(
                claimed_by=run_id, claimed_until=now + lease
            )
            return list(
                Payment.objects.filter(pk__in=ids, claimed_by=run_id).order_by(
                    "next_check_at", "pk"
                )
            )

    return run_locked(claim)


def claimable(now: datetime) -> QuerySet[Payment]:
    """The due payments no live run holds, as :func:`claim_due` takes them: locked, rows
    another run is locking skipped (PostgreSQL). Evaluate it inside a transaction."""
    free = Payment.objects.due(now).filter(_lease_free(now))
    if connection.features.has_select_for_update_skip_locked:
        free = free.select_for_update(skip_locked=True)
    return free


def renew_claims(run_id: str, lease: timedelta, now: datetime | None = None) -> int:
    """Extend every claim ``run_id`` holds to ``now + lease``; returns how many."""
    until = (now or clock.now()) + lease
    return run_locked(
        lambda: Payment.objects.filter(claimed_by=run_id, claimed_until__isnull=False).update(
            claimed_until=until
        )
    )


class LeaseKeeper:
    """Renews a live run's claims from a thread of its own, every ``lease / 3``.

    Claims are short (``CLAIM_LEASE``, 45 s) so that the payments of a run that died (killed,
    out of memory, its host gone) are free again within a minute; while the run lives, this
    keeps them, however slow ATH Móvil or its receivers are. With ``sync_run_id`` it also
    pushes that ``SyncRun``'s ``alive_until`` ahead: a run that never finished and stopped
    renewing was abandoned. The thread uses its own database connection and closes it when
    stopped. ``renewed`` is set after each renewal.
    """

    def __init__(
        self, run_id: str, lease: timedelta = CLAIM_LEASE, *, sync_run_id: int | None = None
    ) -> None:
        self.run_id = run_id
        self.lease = lease
        self.sync_run_id = sync_run_id
        self.every = lease.total_seconds() / 3
        self.renewed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep, name=f"athm-sync-lease-{run_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every)

    def _keep(self) -> None:
        try:
            while not self._stop.wait(self.every):
                try:
                    renew_claims(self.run_id, self.lease)
                    if self.sync_run_id is not None:
                        keep_run_alive(self.sync_run_id, self.lease)
                except DatabaseError as error:  # the next tick tries again
                    logger.warning("Could not renew the claims of run %s: %s", self.run_id, error)
                else:
                    self.renewed.set()
        finally:
            connection.close()


def keep_run_alive(sync_run_id: int, lease: timedelta, now: datetime | None = None) -> int:
    """Push an unfinished ``SyncRun``'s ``alive_until`` to ``now + lease``."""
    until = (now or clock.now()) + lease
    return run_locked(
        lambda: SyncRun.objects.filter(pk=sync_run_id, finished_at__isnull=True).update(
            alive_until=until
        )
    )


def release_claims(run_id: str) -> int:
    """Give back every payment ``run_id`` still holds (a run that stops early)."""
    return run_locked(
        lambda: Payment.objects.filter(claimed_by=run_id).update(claimed_by="", claimed_until=None)
    )


def _lease_free(now: datetime) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
