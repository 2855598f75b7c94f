"""The one place that decides a payment's transitions and applies them.

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
3. After commit, :func:`athm_sync.sending.dispatch` sends each event's signal once, claiming
   the event first so that two processes never send the same one. An event a crash left
   unsent is sent by the next :func:`~athm_sync.sending.dispatch_pending`.

A second door arriving at the same payment sees the status already changed and does nothing.

A poll's check that changes nothing but the payment's schedule (most of them) is decided by the
same :func:`decide` and written in bulk (:mod:`athm_sync.unchanged`); the run's claims and
their lease are in :mod:`athm_sync.claims`, the "database is locked" retry in
:func:`athm_sync.database.run_locked`. Their public names are importable from here too, as
they always were.

The money must match: a payment becomes COMPLETED only when ATH Móvil's total equals the stored
total and, where the shop stored metadata, ATH Móvil's metadata equals it (:func:`mismatch`).
Otherwise it is held as ``MISMATCHED`` and ``payment_mismatched`` fires instead.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.db import DatabaseError, transaction

from athm_sync import calls, clock, database, normalize
from athm_sync.claims import (  # noqa: F401
    CLAIM_LEASE,
    LeaseKeeper,
    claim_due,
    claimable,
    keep_run_alive,
    release_claims,
    renew_claims,
)
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
from athm_sync.database import run_locked
from athm_sync.models import Payment, PaymentEvent, Refund, fit_to_column
from athm_sync.sending import (  # noqa: F401
    IN_FLIGHT,
    Dispatched,
    call_receiver,
    describe_error,
    dispatch,
    dispatch_pending,
    named_receivers,
    signal_for_kind,
    signal_of,
)

# The claims, the sending and run_locked lived in this module: shops and the app's other modules
# still import their names from here (re-exported: the imports above, hence the noqa).

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
# Everything copy_remote_fields may write.
REMOTE_FIELDS = (
    "total_refunded_amount",
    *_KEY_FIELDS,
    "transaction_date",
    *FITTED_FIELDS,
    "fee",
    "net_amount",
)


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
                copy_remote_fields(payment, snapshot, refresh_all=not payment.is_terminal)
            if decision.mismatch:
                _hold(payment, snapshot, decision.mismatch)
            elif observation.not_captured and decision.status == CONFIRM:
                _keep_remote(payment, snapshot, observation.not_captured)
            payment.status = decision.status
            payment.last_error = decision.note if decision.status == EXPIRED else ""
        if observation.drop_auth_token:
            payment.auth_token = ""
        given_up = record_check(payment, now, conf, error)
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


def record_check(payment: Payment, now: datetime, conf: AthmSyncSettings, error: str) -> bool:
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
        given_up = record_check(payment, now, conf, reason)
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


def copy_remote_fields(payment: Payment, snapshot: PaymentSnapshot, refresh_all: bool) -> None:
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
