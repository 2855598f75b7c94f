"""Receivers that raised, delivered again alone: the retries of the outbox.

:func:`athm_sync.sending.dispatch` sends each event's signal once, every receiver in a
savepoint of its own. A receiver that raises there is rolled back alone and recorded, in the
transaction that marks the event sent, as a :class:`~athm_sync.models.ReceiverDelivery`
(:func:`record_failures`): a failure that is recorded is never lost.

Each run then calls that receiver again, alone (:func:`retry_due`): one minute after it
failed, then after 2, 4, 8... minutes, at most an hour apart (:func:`retry_delay`), until it
returns or ``RECEIVER_GIVE_UP_AFTER`` (3 days) has passed since it first failed; a last try is
made at that moment, and if it fails too the receiver is given up, logged at ERROR once. The
receiver is found by its dotted name among the signal's live receivers at each retry; one no
longer connected (removed or renamed) is given up at once, with that reason. A person can
send any outstanding one again at once (:func:`redeliver`: the admin's action and
``manage.py athm_sync --redeliver``), a given-up one included.

A failed receiver counts against the sync (every run lists it in its errors and exits 1;
``--health`` is unhealthy) while it is *unsettled* (:func:`unsettled`): failing, or given up
and not acknowledged. It stops counting when it is delivered (a retry, ``--redeliver``), or,
once given up, when a person acknowledges it (:func:`acknowledge`: the admin's action and
``manage.py athm_sync --acknowledge``), having settled its order by hand.

Each retry is made the way the first send was: one transaction holds the retry's mark and
what the receiver writes (in a savepoint), so a process killed at any moment either leaves
the retry to be made again or has made it once. Two processes never retry the same receiver
at once: its row is locked (``SKIP LOCKED`` on PostgreSQL; SQLite's write lock makes the
second wait, then find it done).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Count, F, Min, Q, QuerySet

from athm_sync import clock, database, normalize, sending, signals, tracebacks
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.models import PaymentEvent, ReceiverDelivery, fit_to_column

logger = logging.getLogger("athm_sync.outbox")

# The first retry comes this long after the failure; each next one waits twice as long as the
# one before, up to MAX_RETRY_INTERVAL (1, 2, 4, 8, 16, 32 minutes, then every hour).
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY_INTERVAL = timedelta(hours=1)
# Failed receivers a run retries at most; the others wait for the next run, most overdue first.
RETRY_BATCH = 100
ALL = "all"


class RedeliveryError(ValueError):
    """Ids that cannot be sent again (not a number, no such failed receiver, delivered)."""


class AcknowledgeError(ValueError):
    """Ids that cannot be acknowledged (no such failed receiver, delivered, still retried)."""


# -- recording a failure (in the sending transaction) -------------------------------------


def record_failures(event: PaymentEvent, errors: Iterable[dict[str, str]], now: datetime) -> None:
    """Record each receiver of ``event`` that raised (``{"receiver", "error"}``), due for its
    first retry at ``now + FIRST_RETRY``. Call it inside the transaction that marks the event
    sent, so that the mark and the failures commit together."""
    ReceiverDelivery.objects.bulk_create(
        ReceiverDelivery(
            event=event,
            receiver=fit_to_column(ReceiverDelivery, "receiver", error["receiver"]),
            attempts=1,
            first_failed_at=now,
            last_failed_at=now,
            next_attempt_at=now + FIRST_RETRY,
            last_error=error["error"],
            last_traceback=error.get("traceback", ""),
        )
        for error in errors
    )


# -- the schedule ---------------------------------------------------------------------------


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed call a receiver is called again: 1 minute,
    doubling each time, at most an hour."""
    return min(MAX_RETRY_INTERVAL, FIRST_RETRY * 2 ** min(max(attempts, 1) - 1, 20))


def next_attempt(
    delivery: ReceiverDelivery, now: datetime, conf: AthmSyncSettings
) -> datetime | None:
    """When a receiver that just failed is called again; ``None`` when it is to be given up
    (``RECEIVER_GIVE_UP_AFTER`` has passed since it first failed). The last retry falls on that
    moment exactly, however the backoff lands."""
    deadline = delivery.first_failed_at + conf.receiver_give_up_after
    if now >= deadline:
        return None
    return min(now + retry_delay(delivery.attempts), deadline)


# -- what is outstanding ------------------------------------------------------------------


def failing() -> QuerySet[ReceiverDelivery]:
    """Receivers that raised, are not delivered since and are still retried."""
    return ReceiverDelivery.objects.filter(delivered_at__isnull=True, given_up_at__isnull=True)


def outstanding() -> QuerySet[ReceiverDelivery]:
    """Receivers not delivered since they raised: still retried, or given up."""
    return ReceiverDelivery.objects.filter(delivered_at__isnull=True)


def given_up_unacknowledged() -> QuerySet[ReceiverDelivery]:
    """Receivers given up, not delivered since, that no person has acknowledged yet."""
    return ReceiverDelivery.objects.filter(
        delivered_at__isnull=True, given_up_at__isnull=False, acknowledged_at__isnull=True
    )


def unsettled() -> QuerySet[ReceiverDelivery]:
    """The receivers that count against the sync: failing, or given up and not acknowledged."""
    return ReceiverDelivery.objects.filter(delivered_at__isnull=True, acknowledged_at__isnull=True)


def due(now: datetime) -> QuerySet[ReceiverDelivery]:
    """The failing receivers whose retry is due at ``now``, most overdue first (an index)."""
    return failing().filter(next_attempt_at__lte=now).order_by("next_attempt_at", "pk")


@dataclass(frozen=True)
class Status:
    """How many receivers are failing and since when; how many were given up lately; how
    many given-up ones no person has acknowledged yet (however long ago)."""

    failing: int
    failing_since: datetime | None
    given_up: int
    given_up_unacknowledged: int = 0
    given_up_unacknowledged_since: datetime | None = None


def status(given_up_since: datetime) -> Status:
    """One query: the failing receivers (how many, the first failure among them), those
    given up since ``given_up_since`` and not delivered since, and those given up and not
    acknowledged (how many, the first given up among them)."""
    given_up = Q(given_up_at__isnull=False)
    unacknowledged = given_up & Q(acknowledged_at__isnull=True)
    counts = ReceiverDelivery.objects.filter(
        Q(given_up_at__isnull=True) | Q(given_up_at__gte=given_up_since) | unacknowledged,
        delivered_at__isnull=True,
    ).aggregate(
        failing=Count("pk", filter=Q(given_up_at__isnull=True)),
        since=Min("first_failed_at", filter=Q(given_up_at__isnull=True)),
        given_up=Count("pk", filter=Q(given_up_at__gte=given_up_since)),
        unacknowledged=Count("pk", filter=unacknowledged),
        unacknowledged_since=Min("given_up_at", filter=unacknowledged),
    )
    return Status(
        counts["failing"],
        counts["since"],
        counts["given_up"],
        counts["unacknowledged"],
        counts["unacknowledged_since"],
    )


def describe(delivery: ReceiverDelivery) -> str:
    """One line on a failing or given-up receiver, for a run's errors and the command."""
    first = f"{delivery.first_failed_at:%Y-%m-%d %H:%M:%S} UTC"
    error = " ".join(delivery.last_error.split())[:200]
    line = (
        f"receiver {delivery.receiver} of {signal_name(delivery.event)} (failed receiver "
        f"{delivery.pk}) has failed {delivery.attempts} time(s) since {first}"
    )
    if delivery.given_up_at is not None:
        line += f"; given up at {delivery.given_up_at:%Y-%m-%d %H:%M:%S} UTC"
        if delivery.acknowledged_at is None:
            line += (
                f" (--redeliver {delivery.pk} calls it again, --acknowledge {delivery.pk} "
                "once its order is settled by hand)"
            )
    elif delivery.next_attempt_at is not None:
        line += f"; next attempt at {delivery.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
    return f"{line}: {error}"


def signal_name(event: PaymentEvent) -> str:
    """The name of the signal ``event`` sends (``payment_completed``...)."""
    signal = sending.signal_for_kind(event.kind)
    return next(name for name in signals.__all__ if getattr(signals, name) is signal)


# -- retrying -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One failed receiver called again: delivered, failed again (perhaps given up), or not
    attempted because of a database error (``error`` says which)."""

    delivery_id: int
    receiver: str
    ecommerce_id: Any
    delivered: bool
    given_up: bool = False
    error: str = ""
    description: str = ""


@dataclass
class Attempts:
    """What :func:`retry_due` or :func:`redeliver` did, one :class:`Attempt` per receiver
    called (a receiver another process was retrying, or had just delivered, is left out)."""

    done: list[Attempt] = field(default_factory=list)
    # Receivers that could not be attempted: (id, the database's reason).
    problems: list[tuple[int, str]] = field(default_factory=list)
    connection_lost: bool = False  # the database connection died: the rest were not tried

    @property
    def delivered(self) -> int:
        return sum(1 for attempt in self.done if attempt.delivered)

    @property
    def failed(self) -> int:
        return sum(1 for attempt in self.done if not attempt.delivered)

    @property
    def given_up(self) -> int:
        return sum(1 for attempt in self.done if attempt.given_up)


def retry_due(
    now: datetime | None = None, *, limit: int = RETRY_BATCH, conf: AthmSyncSettings | None = None
) -> Attempts:
    """Call again each failing receiver whose retry is due, at most ``limit``, most overdue
    first. Each in a transaction of its own (:func:`_attempt`)."""
    now = now or clock.now()
    ids = list(due(now).values_list("pk", flat=True)[:limit])
    return _attempt_each(ids, conf or get_settings(), due_at=now)


def parse_ids(values: Sequence[str], option: str = "--redeliver") -> list[int] | None:
    """``--redeliver``'s (or ``--acknowledge``'s) values: ids, or ``all`` alone (``None``);
    raises :class:`RedeliveryError`."""
    values = [str(value).strip() for value in values]
    if ALL in (value.lower() for value in values):
        if len(values) > 1:
            raise RedeliveryError(f"{option} takes ids or 'all', not both")
        return None
    ids: list[int] = []
    for value in values:
        if not value.isdigit() or int(value) < 1:
            raise RedeliveryError(f"{option} {value!r} is not a failed receiver's id (or 'all')")
        if int(value) not in ids:
            ids.append(int(value))
    return ids


def redeliver(
    ids: Sequence[int] | None = None, *, conf: AthmSyncSettings | None = None
) -> Attempts:
    """Call the given failed receivers again now, whatever their schedule, a given-up one
    included; ``None``: every outstanding one. The admin's action and ``--redeliver`` call it.

    Raises :class:`RedeliveryError`, having called nothing, when an id is not a failed
    receiver or was delivered already. One that fails again is scheduled as a retry would be
    (a given-up one stays given up, with the new error).
    """
    if ids is None:
        ids = list(outstanding().order_by("pk").values_list("pk", flat=True))
    else:
        ids = list(dict.fromkeys(ids))
        found = dict(ReceiverDelivery.objects.filter(pk__in=ids).values_list("pk", "delivered_at"))
        missing = [str(pk) for pk in ids if pk not in found]
        if missing:
            raise RedeliveryError(f"no failed receiver with id {', '.join(missing)}")
        delivered = [str(pk) for pk in ids if found[pk] is not None]
        if delivered:
            raise RedeliveryError(
                f"failed receiver {', '.join(delivered)} was delivered already; "
                "a delivered receiver is never called again"
            )
    return _attempt_each(ids, conf or get_settings(), due_at=None)


def acknowledge(ids: Sequence[int] | None = None, *, now: datetime | None = None) -> list[int]:
    """Mark the given given-up receivers as settled by a person, so that runs stop listing
    them and ``--health`` stops counting them; ``None``: every given-up one not acknowledged
    yet. Returns the ids acknowledged now (one acknowledged already is left as it was).

    Raises :class:`AcknowledgeError`, having changed nothing, when an id is not a failed
    receiver, was delivered, or is still being retried (it counts until it is delivered or
    given up: ``--redeliver`` calls it now).
    """
    now = now or clock.now()
    if ids is None:
        ids = list(given_up_unacknowledged().order_by("pk").values_list("pk", flat=True))
    else:
        ids = list(dict.fromkeys(ids))
        found = {
            row["pk"]: row
            for row in ReceiverDelivery.objects.filter(pk__in=ids).values(
                "pk", "delivered_at", "given_up_at", "acknowledged_at"
            )
        }
        missing = [str(pk) for pk in ids if pk not in found]
        if missing:
            raise AcknowledgeError(f"no failed receiver with id {', '.join(missing)}")
        for refused, why in (
            (
                [str(pk) for pk in ids if found[pk]["delivered_at"] is not None],
                "was delivered: there is nothing to acknowledge",
            ),
            (
                [str(pk) for pk in ids if found[pk]["given_up_at"] is None],
                "is still being retried: it counts until it is delivered or given up "
                "(--redeliver calls it now)",
            ),
        ):
            if refused:
                raise AcknowledgeError(f"failed receiver {', '.join(refused)} {why}")
        ids = [pk for pk in ids if found[pk]["acknowledged_at"] is None]
    if not ids:
        return []
    database.run_locked(
        lambda: given_up_unacknowledged().filter(pk__in=ids).update(acknowledged_at=now)
    )
    logger.info("Acknowledged given-up receiver(s) %s", ", ".join(map(str, ids)))
    return ids


def _attempt_each(ids: Sequence[int], conf: AthmSyncSettings, due_at: datetime | None) -> Attempts:
    result = Attempts()
    for pk in ids:
        try:
            attempt = database.run_locked(lambda pk=pk: _attempt(pk, conf, due_at))
        except DatabaseError as error:
            if database.connection_lost(error):
                # Every other retry would fail alike: the run says it once, and stops.
                result.connection_lost = True
                result.problems.append((pk, database.first_line(error)))
                break
            reason = normalize.text(f"{type(error).__name__}: {error}")[:500]
            logger.error("Failed receiver %s could not be retried, it stays due: %s", pk, reason)
            result.problems.append((pk, reason))
            continue
        if attempt is not None:
            result.done.append(attempt)
    return result


def _attempt(pk: int, conf: AthmSyncSettings, due_at: datetime | None) -> Attempt | None:
    """Call one failed receiver again in a transaction that also records the outcome; ``None``
    when it is no longer to be attempted (delivered, rescheduled or being retried by another
    process). ``due_at``: only if due then (a run); ``None``: now, whatever the schedule."""
    with transaction.atomic():
        # Django ignores select_for_update() where there is no FOR UPDATE (SQLite).
        rows = ReceiverDelivery.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            pk=pk, delivered_at__isnull=True
        )
        if due_at is not None:
            rows = rows.filter(given_up_at__isnull=True, next_attempt_at__lte=due_at)
        delivery = rows.select_related("event__payment", "event__refund").first()
        if delivery is None:
            return None
        # Written first: on SQLite this takes the write lock before the receiver runs, so a
        # second process waits for this one, then finds it done.
        ReceiverDelivery.objects.filter(pk=pk).update(next_attempt_at=None)
        event = delivery.event
        signal, sender, arguments = sending.signal_of(event)
        receiver = dict(sending.named_receivers(signal, sender)).get(delivery.receiver)
        now = clock.now()
        if receiver is None:
            reason = (
                f"no receiver named {delivery.receiver} is connected to {signal_name(event)} "
                "any more (removed or renamed?)"
            )
            return _failed(delivery, reason, now, conf, give_up=True)
        error = sending.call_receiver(receiver, signal, sender, arguments)
        if error is not None:
            return _failed(delivery, sending.describe_error(error), now, conf, error=error)
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.save(update_fields=["delivered_at", "next_attempt_at"])
        PaymentEvent.objects.filter(pk=event.pk, receiver_errors__gt=0).update(
            receiver_errors=F("receiver_errors") - 1
        )
    logger.info(
        "Receiver %s of %s for payment %s delivered, after %d failed attempt(s)",
        delivery.receiver,
        signal_name(event),
        event.payment_id,
        delivery.attempts,
    )
    return Attempt(delivery.pk, delivery.receiver, event.payment_id, delivered=True)


def _failed(
    delivery: ReceiverDelivery,
    reason: str,
    now: datetime,
    conf: AthmSyncSettings,
    *,
    give_up: bool = False,
    error: BaseException | None = None,
) -> Attempt:
    """Record one more failed call of ``delivery`` (inside its transaction): rescheduled, or
    given up (logged at ERROR once, when it happens)."""
    event = delivery.event
    delivery.attempts += 1
    delivery.last_failed_at = now
    delivery.last_error = reason
    delivery.last_traceback = tracebacks.full(error) if error is not None else ""
    was_given_up = delivery.given_up_at is not None
    scheduled = None if give_up or was_given_up else next_attempt(delivery, now, conf)
    delivery.next_attempt_at = scheduled
    if scheduled is None and not was_given_up:
        delivery.given_up_at = now
    delivery.save(
        update_fields=[
            "attempts",
            "last_failed_at",
            "last_error",
            "last_traceback",
            "next_attempt_at",
            "given_up_at",
        ]
    )
    given_up_now = scheduled is None and not was_given_up
    # Masked as stored, never exc_info: a receiver's message may quote a token.
    shown = f"\n{tracebacks.full(error).rstrip()}" if error is not None else ""
    if given_up_now:
        logger.error(
            "Gave up on receiver %s of %s for payment %s after %d failed attempt(s) since %s: "
            "%s (manage.py athm_sync --redeliver %d calls it again)%s",
            delivery.receiver,
            signal_name(event),
            event.payment_id,
            delivery.attempts,
            f"{delivery.first_failed_at:%Y-%m-%d %H:%M:%S} UTC",
            reason,
            delivery.pk,
            shown,
        )
    else:
        logger.warning(
            "Receiver %s of %s failed again for payment %s (attempt %d); its database writes "
            "were rolled back; %s%s",
            delivery.receiver,
            signal_name(event),
            event.payment_id,
            delivery.attempts,
            f"next attempt at {scheduled:%Y-%m-%d %H:%M:%S} UTC" if scheduled else "given up",
            shown,
        )
    return Attempt(
        delivery.pk,
        delivery.receiver,
        event.payment_id,
        delivered=False,
        given_up=given_up_now,
        error=reason,
        description=describe(delivery),
    )


__all__ = [
    "ALL",
    "FIRST_RETRY",
    "MAX_RETRY_INTERVAL",
    "RETRY_BATCH",
    "AcknowledgeError",
    "Attempt",
    "Attempts",
    "RedeliveryError",
    "Status",
    "acknowledge",
    "failing",
    "given_up_unacknowledged",
    "next_attempt",
    "outstanding",
    "parse_ids",
    "record_failures",
    "redeliver",
    "retry_delay",
    "retry_due",
    "status",
    "unsettled",
]
