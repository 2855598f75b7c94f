"""The one place that decides a payment's transitions, and the outbox that fires signals.

Every door (the ``athm_sync`` command, the webhook view, :func:`athm_sync.sync_payment`, the
admin) goes through the same three steps:

1. :func:`observe` asks ATH Móvil (find payment, and authorization for a payment the customer
   confirmed but nobody captured) and checks that the answer is about the payment asked about
   and holds possible amounts (:func:`check_answer`). Network only: it touches no database,
   so it can run in worker threads.
2. :func:`apply` locks the payment row, lets :func:`decide` pick the transition, writes the
   remote fields, the status, any new refund and one :class:`~athm_sync.models.PaymentEvent`
   per transition, all in one transaction. A database error while doing so is recorded on
   that payment alone, which is retried later with backoff.
3. After commit, :func:`dispatch` sends each event's signal once, claiming the event first so
   that two processes never send the same one. An event a crash left unsent is sent by the
   next :func:`dispatch_pending`.

A second door arriving at the same payment sees the status already changed and does nothing.

A poll's check that changes nothing but the payment's schedule (most of them) is decided by the
same :func:`decide` on the row as claimed (:func:`settle_unchanged`) and written with the rest
of its batch in one query (:func:`record_unchanged`), only where the run still holds the claim:
any door that applied the payment meanwhile released it, and its write stands.

The money must match: a payment becomes COMPLETED only when ATH Móvil's total equals the stored
total and, where the shop stored metadata, ATH Móvil's metadata equals it (:func:`mismatch`).
Otherwise it is held as ``MISMATCHED`` and ``payment_mismatched`` fires instead.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from asgiref.sync import AsyncToSync, async_to_sync
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Q, QuerySet

from athm_sync import calls, clock, database, normalize, signals, tracebacks
from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    AuthTokenError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
    PaymentSnapshot,
)
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.models import Payment, PaymentEvent, Refund, SyncRun, fit_to_column

logger = logging.getLogger("athm_sync.reconcile")

OPEN, CONFIRM = Payment.Status.OPEN, Payment.Status.CONFIRM
COMPLETED, CANCEL, EXPIRED = Payment.Status.COMPLETED, Payment.Status.CANCEL, Payment.Status.EXPIRED
MISMATCHED = Payment.Status.MISMATCHED
HINT_CANCELLED, HINT_EXPIRED = "cancelled", "expired"
HINTS = (HINT_CANCELLED, HINT_EXPIRED)

# A status only moves forward: OPEN -> CONFIRM -> one of the terminal statuses.
_RANK = {OPEN: 0, CONFIRM: 1, COMPLETED: 2, CANCEL: 2, EXPIRED: 2, MISMATCHED: 2}
_EVENT_FOR_STATUS = {
    COMPLETED: PaymentEvent.Kind.COMPLETED,
    CANCEL: PaymentEvent.Kind.CANCELLED,
    EXPIRED: PaymentEvent.Kind.EXPIRED,
    MISMATCHED: PaymentEvent.Kind.MISMATCHED,
}
# Statuses in which ATH Móvil holds the customer's money, so refunds are followed.
_PAID = (COMPLETED, MISMATCHED)
# Rechecks of a payment that is still open: often while the customer can act, then backing off.
MIN_INTERVAL = timedelta(seconds=5)
MAX_INTERVAL_BEFORE_DEADLINE = timedelta(seconds=60)
FIRST_INTERVAL_AFTER_DEADLINE = timedelta(seconds=30)
MAX_INTERVAL = timedelta(hours=1)
# A check that failed (API or database) waits 10 s, 20 s, 40 s... up to MAX_INTERVAL.
FIRST_RETRY = timedelta(seconds=10)
# How long a run's claim on a payment lasts; a live run renews it (LeaseKeeper), so this is
# how soon the payments of a run that died are free for the next run.
CLAIM_LEASE = timedelta(seconds=45)
# A capture needs an auth token with at least this much life left.
TOKEN_MARGIN = timedelta(seconds=10)
# A webhook's "expired" is believed from this long before the deadline, its "cancelled" until
# this long after it: the clocks of this server, ATH Móvil and the browser differ a little.
HINT_ALLOWANCE = timedelta(seconds=30)
# The text columns an answer fills, and their lengths; a longer reference number or daily id
# is an invalid answer (cutting a key would point it at another transaction).
_KEY_FIELDS = ("reference_number", "daily_transaction_id")
# Descriptive text: cut to its column (fit_to_column), also by the django-athm import.
FITTED_FIELDS = ("customer_name", "customer_phone", "customer_email", "business_name")
# Everything _copy_remote_fields may write.
_REMOTE_FIELDS = (
    "total_refunded_amount",
    *_KEY_FIELDS,
    "transaction_date",
    *FITTED_FIELDS,
    "fee",
    "net_amount",
)

T = TypeVar("T")


class Expected(Protocol):
    """What the shop stored and ATH Móvil's answer must match (a ``Payment`` is one)."""

    total: Decimal
    metadata_1: str
    metadata_2: str


# -- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one observation means for a stored payment."""

    status: str
    event: str | None = None
    refund_amount: Decimal = Decimal("0.00")
    note: str = ""
    mismatch: str = ""  # why the payment is held, when ``status`` is MISMATCHED now

    @property
    def changes_anything(self) -> bool:
        return self.event is not None or self.refund_amount > 0


def mismatch(expected: Expected, snapshot: PaymentSnapshot) -> str:
    """Why ATH Móvil's answer is not the payment the shop stored; ``""`` when it is.

    The totals must be equal to the cent; each metadata the shop stored (not blank) must equal
    ATH Móvil's, compared as the client normalises text (stray spaces stripped).
    """
    problems = []
    if snapshot.total != expected.total:
        problems.append(f"total: ATH Móvil says {snapshot.total}, the shop stored {expected.total}")
    for name in ("metadata_1", "metadata_2"):
        stored = normalize.text(getattr(expected, name))
        remote = getattr(snapshot, name)
        if stored and remote != stored:
            problems.append(f"{name}: ATH Móvil says {remote[:60]!r}, the shop stored {stored!r}")
    return "; ".join(problems)


def decide(
    payment: Payment,
    snapshot: PaymentSnapshot | None,
    hint: str | None = None,
    *,
    now: datetime,
    conf: AthmSyncSettings,
) -> Decision:
    """The transition for ``payment`` given what ATH Móvil says (the status mapping table).

    ``snapshot`` is ``None`` when ATH Móvil does not know the payment. ``hint`` is a webhook's
    ``cancelled`` or ``expired``: findPayment says CANCEL for both. The hint only breaks that
    tie near the deadline (``HINT_ALLOWANCE``); elsewhere the deadline decides.
    """
    current = payment.status
    note = ""
    deadline = payment.deadline
    if snapshot is None:
        target = EXPIRED if now >= deadline + conf.expiry_grace else current
        if target == EXPIRED:
            note = "ATH Móvil never knew this payment; it never reached ATH Móvil"
    elif snapshot.status in (CANCEL, EXPIRED):
        by_clock = EXPIRED if now >= deadline else CANCEL
        if snapshot.status == EXPIRED or (
            hint == HINT_EXPIRED and now >= deadline - HINT_ALLOWANCE
        ):
            target = EXPIRED
        elif hint == HINT_CANCELLED and now < deadline + HINT_ALLOWANCE:
            target = CANCEL
        else:
            target = by_clock
            if hint in HINTS and current in Payment.ACTIVE_STATUSES:
                note = (
                    f"a webhook says {hint}, but the deadline {deadline.isoformat()} says "
                    f"{'expired' if by_clock == EXPIRED else 'cancelled'}; the clock decides"
                )
    else:
        target = snapshot.status

    held_for = ""
    if target == COMPLETED and current in Payment.ACTIVE_STATUSES:
        held_for = mismatch(payment, snapshot)
        if held_for:
            target = MISMATCHED

    if current in Payment.TERMINAL_STATUSES or _RANK[target] < _RANK[current]:
        if _RANK[target] == 2 and (target in _PAID) != (current in _PAID):
            # Money and the stored outcome disagree: someone must look.
            note = f"ATH Móvil says {target} but the payment is already {current}; kept"
        target = current
        held_for = ""
    event = _EVENT_FOR_STATUS.get(target) if target != current else None

    refund_amount = Decimal("0.00")
    if snapshot is not None and target in _PAID:
        grown = snapshot.total_refunded_amount - payment.total_refunded_amount
        refund_amount = max(grown, Decimal("0.00"))
    return Decision(
        status=target, event=event, refund_amount=refund_amount, note=note, mismatch=held_for
    )


def next_check(payment: Payment, now: datetime, conf: AthmSyncSettings) -> datetime | None:
    """When an active payment should be checked again; ``None`` once given up (``MAX_AGE``).

    Before its deadline a payment is rechecked every 5 to 60 seconds (the customer may act any
    moment) and once right at the deadline, so that an expiry is seen as one. After it, the
    interval doubles up to an hour. After ``payment.failures`` failed checks in a row it waits
    at least 10 s doubled for each (``FIRST_RETRY``), up to an hour, so a payment whose answer
    cannot be stored does not stay first in line.
    """
    if payment.is_terminal or now >= payment.created_at + conf.max_age:
        return None
    deadline = payment.deadline
    if now < deadline:
        age = now - payment.created_at
        interval = min(MAX_INTERVAL_BEFORE_DEADLINE, max(MIN_INTERVAL, age / 2))
        scheduled = min(now + interval, deadline)
    else:
        # From the time overdue, not from check_count: that also counts the checks made before
        # the deadline, which made the first interval after it a whole hour. Checked when due,
        # this gives 30 s, 60 s, 120 s... (each interval doubles) up to an hour.
        interval = min(MAX_INTERVAL, FIRST_INTERVAL_AFTER_DEADLINE + (now - deadline))
        scheduled = now + interval
    if payment.failures:
        backoff = min(MAX_INTERVAL, FIRST_RETRY * 2 ** min(payment.failures - 1, 20))
        scheduled = max(scheduled, now + backoff)
    return scheduled


# -- observing (network only) --------------------------------------------------------------


@dataclass(frozen=True)
class RefundDetail:
    """What a refund's own record says (the refund API's answer, a refund webhook, a report
    row), copied onto the ``Refund`` that the growth of the refunded amount creates."""

    amount: Decimal | None = None
    daily_transaction_id: str = ""
    transaction_date: datetime | None = None
    message: str = ""
    # The refund's own reference number, when it is not the payment's.
    reference_number: str = ""


def refund_parts(growth: Decimal, details: tuple[RefundDetail, ...]) -> list[RefundDetail]:
    """The ``Refund`` rows one growth of the refunded amount becomes.

    One per detail when the details' amounts add up to the growth exactly (two refunds made
    between two checks, each with its own record). When they add up to less, one per detail
    and one more, without details, of the rest: refunds made elsewhere that no record told
    of yet (the transaction report lends them their details later). Otherwise one of the
    whole growth, with the one detail that fits it (its amount unknown or equal), or none.
    """
    amounts = [d.amount for d in details]
    if amounts and None not in amounts:
        known = sum(amounts, Decimal("0.00"))
        if known == growth:
            return list(details)
        if Decimal("0.00") < known < growth:
            return [RefundDetail(amount=growth - known), *details]
    fitting = [d for d in details if d.amount in (None, growth)]
    detail = fitting[0] if len(fitting) == 1 else RefundDetail()
    return [dataclasses.replace(detail, amount=growth)]


@dataclass(frozen=True)
class Observation:
    """What ATH Móvil said about one payment: a snapshot, "not found", or an error."""

    ecommerce_id: Any
    snapshot: PaymentSnapshot | None = None
    not_found: bool = False
    error: ATHMovilError | None = None
    captured: bool = False
    drop_auth_token: bool = False
    # Why a confirmed payment was not captured: its answer differs from what the shop stored.
    not_captured: str = ""
    # The records of the refunds behind a growth of the refunded amount, when known.
    refunds: tuple[RefundDetail, ...] = ()


def check_answer(ecommerce_id: Any, snapshot: PaymentSnapshot, call: str = "findPayment") -> None:
    """Refuse an answer that cannot be about this payment; raises ``InvalidResponseError``.

    It must name the ``ecommerce_id`` asked about (a proxy's cache or a backend mix-up can
    answer with another payment's data); its amounts cannot be negative and the refunded
    amount cannot exceed the total; its reference number and daily id must fit their columns.
    """
    problems = []
    if str(snapshot.ecommerce_id) != str(ecommerce_id):
        problems.append(f"it is about payment {snapshot.ecommerce_id}, not {ecommerce_id}")
    for name in ("total", "subtotal", "tax", "fee", "net_amount", "total_refunded_amount"):
        if getattr(snapshot, name) < 0:
            problems.append(f"{name} is negative ({getattr(snapshot, name)})")
    if snapshot.total_refunded_amount > snapshot.total:
        problems.append(
            f"the refunded amount {snapshot.total_refunded_amount} exceeds the total "
            f"{snapshot.total}"
        )
    for name in _KEY_FIELDS:
        limit = Payment._meta.get_field(name).max_length
        if len(getattr(snapshot, name)) > limit:
            problems.append(f"{name} is longer than {limit} characters")
    if problems:
        raise InvalidResponseError(
            "the answer is invalid: " + "; ".join(problems), call=call, http_status=200
        )


def observe(
    client: ATHMovilClient,
    ecommerce_id: Any,
    auth_token: str = "",
    *,
    capture: bool = True,
    expected: Expected | None = None,
    now: datetime | None = None,
) -> Observation:
    """Ask ATH Móvil about one payment, capturing it when confirmed but never captured.

    A payment is captured only when its answer matches ``expected`` (the stored payment): the
    customer is never charged for another amount than the order's. Raises
    :class:`AuthenticationError` when the merchant's credentials are rejected (nothing else
    can work then); every other failure, an invalid answer included, is returned in ``error``.
    """
    now = now or clock.now()
    try:
        snapshot = client.find_payment(ecommerce_id)
        check_answer(ecommerce_id, snapshot)
    except NotFoundError:
        return Observation(ecommerce_id, not_found=True)
    except AuthTokenError as error:
        return Observation(ecommerce_id, error=error)
    except AuthenticationError:
        raise
    except InvalidResponseError as error:
        calls.count_failure(client, error.call, error)  # check_answer's refusal too
        logger.error("Payment %s: ATH Móvil's answer was not used: %s", ecommerce_id, error)
        return Observation(ecommerce_id, error=error)
    except ATHMovilError as error:
        return Observation(ecommerce_id, error=error)
    if not (capture and snapshot.status == CONFIRM and auth_token):
        return Observation(ecommerce_id, snapshot=snapshot)
    if expected is not None and (differs := mismatch(expected, snapshot)):
        # Said once (apply() records the reason): every later look would say it again.
        already_said = getattr(expected, "mismatch_reason", "") == differs
        (logger.debug if already_said else logger.error)(
            "Payment %s not captured: %s", ecommerce_id, differs
        )
        return Observation(ecommerce_id, snapshot=snapshot, not_captured=differs)
    if not auth_token_usable(auth_token, now):
        return Observation(ecommerce_id, snapshot=snapshot, drop_auth_token=True)
    try:
        captured = client.authorize(auth_token)
        check_answer(ecommerce_id, captured, call="authorization")
    except (AuthTokenError, InvalidStateError) as error:
        logger.info("Payment %s could not be captured: %s", ecommerce_id, error)
        return Observation(ecommerce_id, snapshot=snapshot, drop_auth_token=True)
    except ATHMovilError as error:
        calls.count_failure(client, error.call, error)  # check_answer's refusal too
        # The capture may or may not have happened; the next findPayment tells.
        log = logger.error if isinstance(error, InvalidResponseError) else logger.warning
        log("Capture of payment %s failed: %s", ecommerce_id, error)
        return Observation(ecommerce_id, snapshot=snapshot)
    logger.info("Captured payment %s, which the customer confirmed", ecommerce_id)
    return Observation(ecommerce_id, snapshot=captured, captured=True)


def auth_token_usable(auth_token: str, now: datetime) -> bool:
    """Whether a create-payment JWT still has life in it. An unreadable token is tried anyway:
    ATH Móvil decides; its expiry is only read here to save a call bound to fail."""
    try:
        payload = auth_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expires = datetime.fromtimestamp(float(claims["exp"]), tz=now.tzinfo)
    except (IndexError, ValueError, KeyError, TypeError, OverflowError):
        return True
    return expires - TOKEN_MARGIN > now


# -- applying (one transaction) ------------------------------------------------------------


@dataclass
class Outcome:
    """What :func:`apply` did. The signal counts are filled in when the events are sent.

    ``error`` says why the payment could not be checked (ATH Móvil failed or answered
    something invalid, or its answer could not be stored); it is recorded on the payment.
    """

    payment: Payment
    decision: Decision
    events: list[PaymentEvent] = field(default_factory=list)
    signals_sent: int = 0
    receiver_errors: int = 0
    given_up: bool = False
    error: str = ""
    unsent: str = ""  # why some of its signals could not be sent (they stay pending)
    connection_lost: bool = False  # the database connection died while they were sent

    @property
    def changed(self) -> bool:
        return self.decision.changes_anything


def apply(
    observation: Observation,
    hint: str | None = None,
    *,
    source: str = "poll",
    now: datetime | None = None,
    conf: AthmSyncSettings | None = None,
    quiet: bool = False,
) -> Outcome:
    """Record one observation: the only function that changes a payment's status.

    Locks the row, decides, writes the payment, any refund and the transition events in one
    transaction, and sends the events' signals after it commits. A database error while doing
    so (an answer no column can hold, a constraint) rolls all of it back and is recorded on
    the payment in a transaction of its own, with backoff (``outcome.error``). Raises
    ``Payment.DoesNotExist`` for a payment that is not stored, and the database's error when
    the connection died (the answer was not at fault: nothing is recorded on the payment).
    ``quiet`` records the transitions as sent without sending their signals (importing history).
    """
    conf = conf or get_settings()
    now = now or clock.now()
    try:
        outcome = run_locked(lambda: _apply_locked(observation, hint, source, now, conf, quiet))
    except Payment.DoesNotExist:
        raise
    except DatabaseError as error:
        if database.connection_lost(error):
            raise
        reason = normalize.text(f"could not store ATH Móvil's answer: {error}")[:1000]
        logger.error("Payment %s: %s", observation.ecommerce_id, reason)
        outcome = run_locked(lambda: _record_failure(observation.ecommerce_id, reason, now, conf))
    if outcome.given_up:
        logger.warning(
            "Gave up on payment %s: still %s after %s",
            outcome.payment.pk,
            outcome.payment.status,
            conf.max_age,
        )
    return outcome


def _apply_locked(
    observation: Observation,
    hint: str | None,
    source: str,
    now: datetime,
    conf: AthmSyncSettings,
    quiet: bool = False,
) -> Outcome:
    sent_at = now if quiet else None  # quiet: recorded as sent, never sent
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=observation.ecommerce_id)
        stored = _values(payment)
        before = payment.status
        error = ""
        if observation.error is not None:
            decision = Decision(status=before)
            error = str(observation.error)[:1000]
        else:
            snapshot = observation.snapshot
            decision = decide(payment, snapshot, hint, now=now, conf=conf)
            if decision.note:
                logger.warning("Payment %s: %s", payment.pk, decision.note)
            if snapshot is not None:
                _copy_remote_fields(payment, snapshot, refresh_all=not payment.is_terminal)
            if decision.mismatch:
                _hold(payment, snapshot, decision.mismatch)
            elif observation.not_captured and decision.status == CONFIRM:
                _keep_remote(payment, snapshot, observation.not_captured)
            payment.status = decision.status
            payment.last_error = decision.note if decision.status == EXPIRED else ""
        if observation.drop_auth_token:
            payment.auth_token = ""
        given_up = _checked(payment, now, conf, error)
        # Only what changed (a check always changes its schedule): a smaller UPDATE to build.
        payment.save(update_fields=[*_changed_fields(payment, stored), "updated_at"])

        outcome = Outcome(payment=payment, decision=decision, given_up=given_up, error=error)
        if decision.event:
            outcome.events.append(
                PaymentEvent.objects.create(
                    payment=payment,
                    kind=decision.event,
                    from_status=before,
                    to_status=decision.status,
                    source=source,
                    created_at=now,
                    dispatched_at=sent_at,
                )
            )
        if decision.refund_amount > 0:
            for part in refund_parts(decision.refund_amount, observation.refunds):
                refund = Refund.objects.create(
                    payment=payment,
                    amount=part.amount,
                    reference_number=(part.reference_number or payment.reference_number)[:100],
                    daily_transaction_id=part.daily_transaction_id[:32],
                    transaction_date=part.transaction_date,
                    message=part.message[:255],
                    created_at=now,
                )
                outcome.events.append(
                    PaymentEvent.objects.create(
                        payment=payment,
                        refund=refund,
                        kind=PaymentEvent.Kind.REFUND_SENT,
                        from_status=decision.status,
                        to_status=decision.status,
                        source=source,
                        created_at=now,
                        dispatched_at=sent_at,
                    )
                )
        if outcome.events and not quiet:
            events = list(outcome.events)
            # robust: an unexpected failure while sending is logged; the events stay pending
            # for the next run's sweep. A database error is reported in ``outcome.unsent``.
            transaction.on_commit(lambda: _record_dispatch(outcome, dispatch(events)), robust=True)
    return outcome


def _values(payment: Payment) -> dict[str, Any]:
    return {field.attname: getattr(payment, field.attname) for field in _CONCRETE_FIELDS}


def _changed_fields(payment: Payment, stored: dict[str, Any]) -> list[str]:
    return [name for name, value in stored.items() if getattr(payment, name) != value]


_CONCRETE_FIELDS = [field for field in Payment._meta.concrete_fields if not field.primary_key]


def _checked(payment: Payment, now: datetime, conf: AthmSyncSettings, error: str) -> bool:
    """Record one check on ``payment`` (failed when ``error``) and schedule the next one;
    returns whether the payment was given up just now."""
    payment.check_count += 1
    payment.last_checked_at = now
    payment.claimed_by, payment.claimed_until = "", None
    if error:
        payment.failures += 1
        payment.last_error = error
    else:
        payment.failures = 0
    scheduled = next_check(payment, now, conf)
    if scheduled is not None:
        payment.next_check_at = scheduled
        return False
    if payment.is_terminal or payment.given_up_at is not None:
        return False
    payment.given_up_at = now
    payment.last_error = f"given up: still {payment.status} after {conf.max_age}"
    return True


def _record_failure(
    ecommerce_id: Any, reason: str, now: datetime, conf: AthmSyncSettings
) -> Outcome:
    """Record a check whose answer could not be stored, in a transaction of its own."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=ecommerce_id)
        given_up = _checked(payment, now, conf, reason)
        payment.save(
            update_fields=[
                "check_count",
                "last_checked_at",
                "claimed_by",
                "claimed_until",
                "failures",
                "last_error",
                "next_check_at",
                "given_up_at",
            ]
        )
    return Outcome(
        payment=payment, decision=Decision(status=payment.status), given_up=given_up, error=reason
    )


def _hold(payment: Payment, snapshot: PaymentSnapshot, reason: str) -> None:
    """Keep what ATH Móvil reported beside what the shop stored, for a held payment."""
    _keep_remote(payment, snapshot, reason)
    logger.error(
        "Payment %s held, not completed: ATH Móvil completed it for %s, the shop expected %s (%s)",
        payment.pk,
        snapshot.total,
        payment.total,
        reason,
    )


def _keep_remote(payment: Payment, snapshot: PaymentSnapshot, reason: str) -> None:
    """Store ATH Móvil's amounts beside the shop's, and why they differ: for a held payment,
    and for a confirmed one left uncaptured (its waiting page then says "we are checking")."""
    payment.remote_total = snapshot.total
    for name in ("remote_metadata_1", "remote_metadata_2"):
        value = getattr(snapshot, name.removeprefix("remote_"))
        setattr(payment, name, fit_to_column(Payment, name, value))
    payment.mismatch_reason = reason


def _record_dispatch(outcome: Outcome, dispatched: Dispatched) -> None:
    outcome.signals_sent = dispatched.sent
    outcome.receiver_errors = dispatched.receiver_errors
    outcome.unsent = dispatched.problem
    outcome.connection_lost = dispatched.connection_lost


def _copy_remote_fields(payment: Payment, snapshot: PaymentSnapshot, refresh_all: bool) -> None:
    """Copy what ATH Móvil knows onto the row; a terminal payment only gains its refunds.

    Descriptive text longer than its column (a name, an e-mail) is cut to fit; the client has
    already removed NUL characters. Keys that would not fit never get here (:func:`check_answer`).
    """
    payment.total_refunded_amount = max(
        payment.total_refunded_amount, snapshot.total_refunded_amount
    )
    if not refresh_all and payment.reference_number:
        return
    for name in (*_KEY_FIELDS, "transaction_date", *FITTED_FIELDS):
        value = getattr(snapshot, name)
        if not value:  # ATH Móvil sends "" until it knows; never erase what is stored
            continue
        if name in FITTED_FIELDS:
            value = fit_to_column(Payment, name, value)
        setattr(payment, name, value)
    for name in ("fee", "net_amount"):
        value = getattr(snapshot, name)
        if value:
            setattr(payment, name, value)


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


# -- dispatching the outbox ----------------------------------------------------------------


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

    ``events`` are ids, or the events :func:`apply` just committed (with their payment and
    refund attached), which are sent as they are instead of being read again.

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


# -- claiming due payments -----------------------------------------------------------------


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


# -- checks that change nothing ------------------------------------------------------------


@dataclass(frozen=True)
class Settled:
    """A check that changed nothing but the schedule (and perhaps descriptive fields ATH
    Móvil filled in, such as the business name): ``payment`` as the check leaves it, and the
    names of the remote fields it changed."""

    payment: Payment
    remote_fields: tuple[str, ...] = ()


# What every settled check writes; record_unchanged adds the remote fields some row changed.
_SCHEDULE_FIELDS = ("next_check_at", "last_checked_at", "expires_at")


def settle_unchanged(
    payment: Payment, observation: Observation, *, now: datetime, conf: AthmSyncSettings
) -> Settled | None:
    """The claimed ``payment`` as one more check leaves it, when ``observation`` changes
    nothing but its schedule and descriptive fields; ``None`` when it must go through
    :func:`apply` instead.

    That is when the answer was read (no error), nothing was captured or dropped,
    :func:`decide` finds no transition, refund, note or mismatch, and the payment is not given
    up now. Such checks are written many at a time by :func:`record_unchanged`. The decision
    is made by the same functions as :func:`apply`'s, on the row as it was claimed.
    """
    if observation.error is not None or observation.captured or observation.drop_auth_token:
        return None
    if observation.refunds:
        return None
    snapshot = observation.snapshot
    decision = decide(payment, snapshot, now=now, conf=conf)
    if decision.changes_anything or decision.note or decision.mismatch:
        return None
    if decision.status != payment.status:
        return None
    checked = copy.copy(payment)
    changed: tuple[str, ...] = ()
    if snapshot is not None:
        _copy_remote_fields(checked, snapshot, refresh_all=not checked.is_terminal)
        changed = tuple(
            name for name in _REMOTE_FIELDS if getattr(checked, name) != getattr(payment, name)
        )
    if _checked(checked, now, conf, "") or checked.given_up_at is not None:
        return None
    if checked.expires_at is None:
        checked.expires_at = checked.compute_expires_at()
    return Settled(checked, changed)


def record_unchanged(run_id: str, settled: Iterable[Settled], now: datetime | None = None) -> int:
    """Write the checks :func:`settle_unchanged` settled, in one query; returns how many rows
    took them.

    Only rows ``run_id`` still holds are written: any other door that checked a payment
    meanwhile (a webhook, ``sync_payment``, the admin) went through :func:`apply`, which
    released the claim, and its write stands.
    """
    settled = list(settled)
    by_pk = {each.payment.pk: each.payment for each in settled}
    if not by_pk:
        return 0
    now = now or clock.now()
    remote = {name for each in settled for name in each.remote_fields}
    per_row = [*_SCHEDULE_FIELDS, *(name for name in _REMOTE_FIELDS if name in remote)]
    same = {
        "check_count": None,  # + 1
        "failures": 0,
        "last_error": "",
        "claimed_by": "",
        "claimed_until": None,
        "updated_at": now,
    }
    sql, params = _bulk_update_sql(by_pk, per_row, same, run_id)

    def write() -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    return run_locked(write)


def _bulk_update_sql(
    rows: dict[Any, Payment], per_row: Sequence[str], same: dict[str, Any], run_id: str
) -> tuple[str, list[Any]]:
    """One ``UPDATE`` of ``rows`` (held by ``run_id``): the ``per_row`` fields from each row
    (``CASE pk WHEN ... THEN ...``), the ``same`` ones set alike (``check_count`` incremented).

    Written as SQL because the ORM's ``Case(When(pk=...))`` builds a filter for every row and
    field, which cost more than the checks it writes; the values are prepared by the model's
    own fields, as the ORM would.
    """
    meta = Payment._meta
    quote = connection.ops.quote_name
    pk_column = quote(meta.pk.column)
    pks = [meta.pk.get_db_prep_value(pk, connection) for pk in rows]
    assignments: list[str] = []
    params: list[Any] = []
    for name in per_row:
        field = meta.get_field(name)
        column = quote(field.column)
        whens = " ".join(["WHEN %s THEN %s"] * len(rows))
        assignments.append(f"{column} = CASE {pk_column} {whens} ELSE {column} END")
        for db_pk, payment in zip(pks, rows.values(), strict=True):
            params += [db_pk, field.get_db_prep_save(getattr(payment, name), connection)]
    for name, value in same.items():
        field = meta.get_field(name)
        column = quote(field.column)
        if name == "check_count":
            assignments.append(f"{column} = {column} + 1")
            continue
        assignments.append(f"{column} = %s")
        params.append(field.get_db_prep_save(value, connection))
    claimed_by = quote(meta.get_field("claimed_by").column)
    placeholders = ", ".join(["%s"] * len(pks))
    # Identifiers come from the model, quoted; every value is a parameter.
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {pk_column} IN ({placeholders}) AND {claimed_by} = %s"
    )
    return sql, [*params, *pks, run_id]


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


# -- one payment, now ----------------------------------------------------------------------


def check_payment(
    ecommerce_id: Any,
    *,
    hint: str | None = None,
    source: str = "sync_payment",
    client: ATHMovilClient | None = None,
) -> Outcome:
    """Check one stored payment now, through the same path as the poller.

    Raises ``Payment.DoesNotExist`` when it is not stored and :class:`AuthenticationError` when
    the credentials are rejected; other API failures are recorded on the payment.
    """
    conf = get_settings()
    payment = Payment.objects.get(pk=ecommerce_id)
    own_client = client is None
    client = client or ATHMovilClient.from_settings()
    try:
        observation = observe(
            client,
            payment.pk,
            payment.auth_token,
            capture=conf.auto_capture and not payment.is_terminal,
            expected=payment,
        )
    finally:
        if own_client:
            client.close()
    return apply(observation, hint, source=source, conf=conf)
