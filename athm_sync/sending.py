"""The outbox's sending: each transition's signal sent once, after the transition commits.

:func:`athm_sync.reconcile.apply` stores one :class:`~athm_sync.models.PaymentEvent` per
transition in the transaction that makes it; after that commits, :func:`dispatch` sends the
event's signal, claiming the event first so that two processes never send the same one. The
event's "sent" mark and everything its receivers write commit together, each receiver in a
savepoint of its own. An event a crash left unsent is sent by the next
:func:`dispatch_pending`. A receiver that raised is retried alone later by
:mod:`athm_sync.outbox`, which calls receivers through :func:`named_receivers` and
:func:`call_receiver` as this module does.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from asgiref.sync import AsyncToSync, async_to_sync
from django.db import DatabaseError, transaction

from athm_sync import clock, database, normalize, signals, tracebacks
from athm_sync.database import run_locked
from athm_sync.models import Payment, PaymentEvent, Refund

# The name these lines were always logged under (docs/signals.md, docs/operations.md): a shop's
# logging configuration names it.
logger = logging.getLogger("athm_sync.reconcile")


@dataclass
class Dispatched:
    """What :func:`dispatch` did: events sent, receivers that raised, events it could not
    send (each with the database's reason; they stay pending for the next run)."""

    sent_ids: list[int] = field(default_factory=list)
    receiver_errors: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    # Of the events sent, how many a crash had left (not a live process's, just committed).
    leftovers: int = 0
    # The connection died: the events not sent yet were not tried (they stay pending).
    connection_lost: bool = False

    @property
    def sent(self) -> int:
        return len(self.sent_ids)

    @property
    def problem(self) -> str:
        """One line on the events that could not be sent; ``""`` when all were."""
        if not self.failures:
            return ""
        reasons = "; ".join(reason for _, reason in self.failures)
        return f"{len(self.failures)} signal(s) not sent, left pending: {reasons}"


def dispatch(events: Iterable[int | PaymentEvent]) -> Dispatched:
    """Send the signal of each given event not yet sent, each in one transaction.

    ``events`` are ids, or the events :func:`~athm_sync.reconcile.apply` just committed (with
    their payment and refund attached), which are sent as they are instead of being read again.

    The transaction holds the event's "sent" mark and everything its receivers write to the
    database, so a process killed at any moment either rolls both back (the event stays
    pending and the next run sends it again) or commits both: a receiver's database work
    happens exactly once. Each receiver runs in a savepoint of its own: one that raises is
    rolled back alone, logged with its traceback and recorded on the event (``errors``); the
    others' work still commits. An event another process is sending is skipped (its row is
    locked: ``SKIP LOCKED`` on PostgreSQL; SQLite's write lock makes the second process wait,
    then find it sent). An event that cannot be marked (a database error) is reported in
    ``failures`` and left pending; the others are still sent, unless the connection died
    (``connection_lost``): then the others are left pending too, untried.
    """
    result = Dispatched()
    for given in events:
        event = given if isinstance(given, PaymentEvent) else None
        pk = event.pk if event is not None else given
        try:
            failures = run_locked(lambda pk=pk, event=event: _dispatch_one(pk, event))
        except DatabaseError as error:
            if database.connection_lost(error):
                # Said once by the run that meets it; every other event would fail alike.
                result.connection_lost = True
                result.failures.append((pk, database.first_line(error)))
                break
            reason = normalize.text(f"{type(error).__name__}: {error}")[:500]
            logger.error("Signal of event %s not sent, it stays pending: %s", pk, reason)
            result.failures.append((pk, reason))
            continue
        if failures is not None:
            result.sent_ids.append(pk)
            result.receiver_errors += failures
    return result


def _dispatch_one(pk: int, event: PaymentEvent | None = None) -> int | None:
    """Send one event in a transaction; returns how many receivers raised, or ``None`` when
    it was already sent or another process is sending it."""
    with transaction.atomic():
        # Django ignores select_for_update() where there is no FOR UPDATE (SQLite).
        unsent = PaymentEvent.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            pk=pk, dispatched_at__isnull=True
        )
        if event is None:
            event = unsent.select_related("payment", "refund").first()
            if event is None:
                return None
        # An event apply() just committed is marked at once: only a sweep of another process
        # could be sending it, and then the mark below waits for that one to end, and finds
        # it sent.
        # Written first: on SQLite this takes the write lock before any receiver runs, so a
        # receiver's own writes never meet "database is locked" halfway through.
        marked = PaymentEvent.objects.filter(pk=pk, dispatched_at__isnull=True).update(
            dispatched_at=clock.now()
        )
        if not marked:
            return None
        errors = _send(event)
        if errors:
            from athm_sync import outbox  # it builds on this module

            PaymentEvent.objects.filter(pk=pk).update(receiver_errors=len(errors), errors=errors)
            # In this same transaction: a failure recorded is a failure retried, by later runs.
            outbox.record_failures(event, errors, clock.now())
    return len(errors)


# An unsent event younger than this may be one a live process is about to send right after
# its commit: sending it is harmless (once is once), but it is no leftover of a crash.
IN_FLIGHT = timedelta(seconds=10)


def dispatch_pending(should_stop: Callable[[], bool] | None = None) -> Dispatched:
    """Send every event a crash left unsent (committed, never dispatched), at once.

    Events another live process is sending are skipped. Only events older than ``IN_FLIGHT``
    that this call really sent are reported as left by an earlier run. ``should_stop`` is
    asked before each event: when it says so, the rest stay pending for the next run.
    """
    pending = list(
        PaymentEvent.objects.filter(dispatched_at__isnull=True)
        .order_by("created_at", "pk")
        .values_list("pk", "created_at")
    )
    if not pending:
        return Dispatched()
    stop = should_stop or (lambda: False)
    result = dispatch(itertools.takewhile(lambda _: not stop(), (pk for pk, _ in pending)))
    sent = set(result.sent_ids)
    fresh_before = clock.now() - IN_FLIGHT
    result.leftovers = sum(1 for pk, created in pending if pk in sent and created < fresh_before)
    if result.leftovers:
        logger.warning("Sent %d signal(s) left unsent by an earlier run", result.leftovers)
    return result


def signal_of(event: PaymentEvent) -> tuple[Any, type, dict[str, Any]]:
    """The signal an event sends, its sender and its arguments (its payment and refund as
    loaded with it)."""
    payment = event.payment
    kind = PaymentEvent.Kind
    if event.kind == kind.REFUND_SENT:
        return signals.refund_sent, Refund, {"refund": event.refund, "payment": payment}
    if event.kind == kind.MISMATCHED:
        arguments = {
            "payment": payment,
            "expected_total": payment.total,
            "remote_total": payment.remote_total,
            "reason": payment.mismatch_reason,
        }
        return signals.payment_mismatched, Payment, arguments
    return signal_for_kind(event.kind), Payment, {"payment": payment}


def signal_for_kind(kind: str) -> Any:
    """The signal an event of ``kind`` sends."""
    return {
        PaymentEvent.Kind.COMPLETED: signals.payment_completed,
        PaymentEvent.Kind.CANCELLED: signals.payment_cancelled,
        PaymentEvent.Kind.EXPIRED: signals.payment_expired,
        PaymentEvent.Kind.REFUND_SENT: signals.refund_sent,
        PaymentEvent.Kind.MISMATCHED: signals.payment_mismatched,
    }[kind]


def _send(event: PaymentEvent) -> list[dict[str, str]]:
    """Call each receiver of the event's signal in a savepoint; returns the failures."""
    signal, sender, arguments = signal_of(event)
    errors = []
    for name, receiver in named_receivers(signal, sender):
        error = call_receiver(receiver, signal, sender, arguments)
        if error is None:
            continue
        errors.append(
            {"receiver": name, "error": describe_error(error), "traceback": tracebacks.full(error)}
        )
        # The traceback as stored (secrets masked), not exc_info: a receiver's message may
        # quote a token, and log handlers would print it as raised.
        logger.error(
            "Receiver %s of %s failed for payment %s; its database writes were rolled back\n%s",
            name,
            event.kind,
            event.payment_id,
            errors[-1]["traceback"].rstrip("\n"),
        )
    logger.debug("Sent %s for payment %s (sender %s)", event.kind, event.payment_id, sender)
    return errors


def call_receiver(
    receiver: Callable[..., Any], signal: Any, sender: type, arguments: dict[str, Any]
) -> Exception | None:
    """Call one receiver in a savepoint; returns what it raised (its writes rolled back), or
    ``None`` when it returned. A database connection that died under it is not the
    receiver's fault: that is raised, and the event or retry stays pending."""
    try:
        with transaction.atomic():
            receiver(signal=signal, sender=sender, **arguments)
    except Exception as error:
        if isinstance(error, DatabaseError) and database.connection_lost(error):
            raise
        return error
    return None


def describe_error(error: BaseException) -> str:
    """A receiver's error as it is recorded: its type and message, secrets masked, cut to 500
    characters (:func:`athm_sync.tracebacks.one_line`)."""
    return tracebacks.one_line(error)


def named_receivers(signal: Any, sender: type) -> list[tuple[str, Callable[..., Any]]]:
    """The live receivers of ``signal`` for ``sender``, in the order they are called, each with
    the name a failure is recorded under (:func:`_name_of`). A second receiver of the same
    name (closures made in a loop) is named ``name#2``, a third ``name#3``..., so that a retry
    calls the very one that failed."""
    named = []
    seen: dict[str, int] = {}
    for receiver in _receivers(signal, sender):
        name = _name_of(receiver)
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", receiver))
    return named


def _receivers(signal: Any, sender: type) -> list[Callable[..., Any]]:
    """The live receivers of ``signal`` for ``sender``, sync ones first, as ``send`` calls them.

    Django's ``Signal`` has no public way to call receivers one at a time (a savepoint each),
    so this reads ``_live_receivers``: a (sync, async) pair since Django 5.0. Async receivers
    are called through ``async_to_sync``.
    """
    live = signal._live_receivers(sender)
    sync_receivers, async_receivers = live if isinstance(live, tuple) else (live, [])
    return [*sync_receivers, *(async_to_sync(receiver) for receiver in async_receivers)]


def _name_of(receiver: Any) -> str:
    """A receiver's dotted name, ``module.qualname``: the same in every process running the
    same code. An async receiver is named for its coroutine function, a ``partial`` for its
    function, a callable object for its class (never a ``repr`` holding a memory address)."""
    if isinstance(receiver, AsyncToSync):
        receiver = receiver.awaitable
    while isinstance(receiver, functools.partial):
        receiver = receiver.func
    if getattr(receiver, "__qualname__", None) is None:
        receiver = type(receiver)
    module = getattr(receiver, "__module__", "") or ""
    name = receiver.__qualname__
    return f"{module}.{name}" if module else name
