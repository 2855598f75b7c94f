"""A run's payments in batches, and the pipeline that keeps the workers busy.

Only :func:`athm_sync.reconcile.observe` (network, no database) runs in the worker pool;
:func:`pipeline` settles each answer in the calling thread, so a run uses one database
connection however many workers it has. The batches come from the claims
(:func:`athm_sync.claims.claim_due`), from ``--ecommerce-id`` (:func:`given_pages`) or, in a
dry run that claims nothing, from keyset pages of the due payments (:func:`due_pages`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime

from django.db.models import Q

from athm_sync import claims, clock, reconcile
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment

BATCH_PER_WORKER = 4

# A payment to ask ATH Móvil about, and whether it may be captured.
Work = tuple[Payment, bool]


def batch_size(workers: int, limit: int | None) -> int:
    """How many payments a run takes at a time: enough for every worker, at most ``limit``."""
    size = max(10, workers * BATCH_PER_WORKER)
    return size if limit is None else min(size, limit)


def pipeline(
    pool: ThreadPoolExecutor,
    client: ATHMovilClient,
    batches: Iterator[Sequence[Work]],
    settle: Callable[[Payment, reconcile.Observation], None],
    *,
    size: int,
    should_stop: Callable[[], bool],
    tick: Callable[[], None],
) -> None:
    """Ask ATH Móvil about each payment of ``batches`` in the pool and ``settle`` each
    answer as it comes, in this thread, calling ``tick`` after each.

    The workers never wait for the database: as soon as no more than one batch (``size``) is
    in flight the next one is taken (claimed) ahead, so a worker that finishes always finds
    the next payment queued. At most two batches are held at once, however many are due.
    When ``should_stop`` says so, the answers not settled yet are dropped: their payments stay
    due.
    """
    in_flight: dict[Future, Payment] = {}
    exhausted = False

    def top_up() -> None:
        nonlocal exhausted
        while not exhausted and len(in_flight) <= size and not should_stop():
            batch = next(batches, None)
            if batch is None:
                exhausted = True
                return
            for payment, capture in batch:
                future = pool.submit(
                    reconcile.observe,
                    client,
                    payment.pk,
                    payment.auth_token,
                    capture=capture,
                    expected=payment,
                )
                in_flight[future] = payment

    try:
        top_up()
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                payment = in_flight.pop(future)
                settle(payment, future.result())  # AuthenticationError propagates
                tick()
                if should_stop():
                    return
                top_up()
    finally:
        for future in in_flight:
            future.cancel()


def claimed_batches(
    run_id: str,
    *,
    now: datetime,
    size: int,
    limit: int | None,
    capture: bool,
    counted: Callable[[int], None],
) -> Iterator[list[Work]]:
    """Claim the payments due at ``now`` for ``run_id``, ``size`` at a time up to ``limit``,
    each batch as it is asked for; ``counted`` is told how many were claimed so far."""
    claimed_total = 0
    while True:
        take = size if limit is None else min(size, limit - claimed_total)
        if take <= 0:
            return
        # The lease counts from the claim, not from the start of the run.
        claimed = claims.claim_due(run_id, take, claims.CLAIM_LEASE + (clock.now() - now), now=now)
        if not claimed:
            return
        claimed_total += len(claimed)
        counted(claimed_total)
        yield [(payment, capture) for payment in claimed]


def given_pages(ids: Sequence[uuid.UUID], size: int) -> Iterator[list[Payment]]:
    """The stored rows of ``ids``, ``size`` at a time, in the order given (a payment deleted
    since the options were checked is left out)."""
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        stored = Payment.objects.in_bulk(chunk)
        yield [stored[pk] for pk in chunk if pk in stored]


def due_pages(now: datetime, size: int, limit: int | None) -> Iterator[list[Payment]]:
    """The payments due at ``now``, ``size`` at a time (keyset pages: nothing is claimed,
    and none is read twice), up to ``limit``."""
    due = Payment.objects.due(now)
    remaining = limit
    last: Payment | None = None
    while remaining is None or remaining > 0:
        page = due
        if last is not None:
            page = due.filter(
                Q(next_check_at__gt=last.next_check_at)
                | Q(next_check_at=last.next_check_at, pk__gt=last.pk)
            )
        rows = list(page[: size if remaining is None else min(size, remaining)])
        if not rows:
            return
        yield rows
        last = rows[-1]
        if remaining is not None:
            remaining -= len(rows)
