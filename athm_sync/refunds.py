"""Refunding a payment from the shop: :func:`refund`, exposed as ``athm_sync.refund``.

A refund is money leaving the business, so it is validated before anything is sent, sent at
most once per intent, and recorded through the same transition function as every other change
(:func:`athm_sync.reconcile.apply`): the ``Refund`` row is the growth of the refunded amount
ATH Móvil reports, and ``refund_sent`` fires once, however many doors later see the same
refund (a poll, a webhook, the transaction report).

No database lock is held while ATH Móvil is asked. A refund is three steps:

1. a short transaction locks the payment's row, checks what is left to refund and reserves
   the intent (a :class:`~athm_sync.models.RefundIntent`, one per payment), then commits: a
   second refund of the payment started meanwhile finds it and is refused;
2. the refund API is called outside any transaction;
3. ATH Móvil's answer goes through :func:`athm_sync.reconcile.apply` and the intent is deleted.

An intent left behind (the process died between 1 and 3, or the answer was lost and ATH Móvil
did not show the refund yet) is settled by :func:`settle_intents`, which every ``athm_sync``
run calls: it reads the payment's refunded amount, records what grew, and deletes the intent.
It never calls the refund API again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F

from athm_sync import clock, database, reconcile
from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
)
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.managers import CENT, validate_ecommerce_id
from athm_sync.models import Payment, PaymentEvent, Refund, RefundIntent

logger = logging.getLogger("athm_sync.refunds")

MAX_MESSAGE_LENGTH = 50
# A payment whose customer's money ATH Móvil holds: completed, or held for a mismatch (a
# refund is how the shop returns a wrong payment).
REFUNDABLE_STATUSES = (Payment.Status.COMPLETED, Payment.Status.MISMATCHED)
# What ATH Móvil answers when it refuses the refund itself: nothing was refunded.
_REFUSALS = (InvalidRequestError, InvalidStateError, NotFoundError, AuthenticationError)
# Added to the longest the refund call and the findPayment after it can take: until then the
# process that reserved an intent may still be waiting for ATH Móvil, so nobody settles it.
INTENT_MARGIN = timedelta(seconds=60)


class RefundError(ValueError):
    """A refund that was not made. Unless it is a :class:`RefundUncertain`, nothing was sent
    or ATH Móvil refused it: no money moved."""


class RefundUncertain(RefundError):
    """The refund was sent but its answer was lost (or could not be stored), and it is not
    recorded yet.

    It is never sent again, and the payment takes no other refund until it is settled: if it
    went through, the payment's refunded amount grows and the next ``athm_sync`` run records
    it (:func:`settle_intents`) and fires ``refund_sent`` then.
    """


class _Stale(Exception):
    """An intent of the payment was left behind: settle it first."""


def refund(
    payment: Payment | Any,
    amount: Decimal | int | str | None = None,
    message: str = "",
    *,
    refunded_so_far: Decimal | int | str | None = None,
    client: ATHMovilClient | None = None,
) -> Refund:
    """Refund ``amount`` of a payment (all that is left when ``None``); returns the ``Refund``.

    Raises :class:`RefundError`, with nothing sent, when: the private token is not
    configured; it is called inside a database transaction (the intent must be committed
    before ATH Móvil is called); the message is not text of at most 50 characters; the amount
    is not a positive amount with at most two decimals; the payment is not stored, not
    COMPLETED or MISMATCHED, has no reference number yet, has less than ``amount`` left to
    refund, or another refund of it is being sent; ``refunded_so_far`` is given and is no
    longer the payment's ``total_refunded_amount`` (the page that asked was out of date); the
    database is locked (SQLite). It also raises it when ATH Móvil refuses the refund, and
    :class:`RefundUncertain` when the answer was lost. ``refund_sent`` fires once the result
    is recorded; refunds made elsewhere that the answer reveals become ``Refund`` rows too.
    """
    conf = get_settings()
    off = unavailable(conf)
    if off is not None:
        raise RefundError(off)
    text = _message(message)
    wanted = None if amount is None else _amount(amount)
    shown = None if refunded_so_far is None else _amount(refunded_so_far, zero=True)
    ecommerce_id = payment.pk if isinstance(payment, Payment) else validate_ecommerce_id(payment)
    if connection.in_atomic_block:
        raise RefundError(
            "refund() must be called outside a database transaction, so that the refund is "
            "reserved and committed before ATH Móvil is called (with ATOMIC_REQUESTS, decorate "
            "the view with django.db.transaction.non_atomic_requests)"
        )
    own_client = client is None
    client = client or ATHMovilClient.from_settings()
    try:
        try:
            locked, intent = _reserve(ecommerce_id, wanted, text, shown, conf)
        except _Stale:
            try:
                settle_intents(client, conf, ecommerce_ids=[ecommerce_id])
            except AuthenticationError as error:
                raise RefundError(f"ATH Móvil rejected the credentials: {error}") from None
            try:
                locked, intent = _reserve(ecommerce_id, wanted, text, shown, conf)
            except _Stale:
                raise RefundError(
                    f"an earlier refund of payment {ecommerce_id} is not settled yet (ATH "
                    "Móvil could not be asked); nothing was sent: try again later"
                ) from None
        made = _send_and_record(client, locked, intent, text, conf)
    finally:
        if own_client:
            client.close()
    logger.info("Refunded %s of payment %s", made.amount, ecommerce_id)
    return made


def _reserve(
    ecommerce_id: Any,
    wanted: Decimal | None,
    message: str,
    shown: Decimal | None,
    conf: AthmSyncSettings,
) -> tuple[Payment, RefundIntent]:
    """Check the payment and reserve the refund in one short transaction (committed)."""
    now = clock.now()

    def reserve() -> tuple[Payment, RefundIntent]:
        with transaction.atomic():
            if connection.vendor == "sqlite":
                # SQLite has no row locks: a write (changing nothing) takes its write lock
                # first, before anything is read, so the check below cannot go stale.
                Payment.objects.filter(pk=ecommerce_id).update(last_error=F("last_error"))
            locked = Payment.objects.select_for_update().filter(pk=ecommerce_id).first()
            if locked is None:
                raise RefundError(f"no stored payment {ecommerce_id}")
            waiting = RefundIntent.objects.filter(payment=locked).first()
            if waiting is not None:
                if waiting.busy_until > now:
                    raise RefundError(_in_flight(waiting))
                raise _Stale
            if shown is not None and locked.total_refunded_amount != shown:
                raise RefundError(
                    f"payment {ecommerce_id} was refunded {locked.total_refunded_amount} so "
                    f"far, not the {shown} the page showed: nothing was sent; look again"
                )
            refund_amount = _check_refundable(locked, wanted)
            intent = RefundIntent.objects.create(
                payment=locked,
                amount=refund_amount,
                message=message,
                refunded_before=locked.total_refunded_amount,
                created_at=now,
                busy_until=now + intent_lease(conf),
            )
            return locked, intent

    try:
        return reserve()
    except IntegrityError:
        waiting = RefundIntent.objects.filter(payment_id=ecommerce_id).first()
        if waiting is None:
            raise RefundError(f"another refund of payment {ecommerce_id} was just made") from None
        raise RefundError(_in_flight(waiting)) from None
    except OperationalError as error:
        if connection.vendor == "sqlite" and "locked" in str(error):
            raise RefundError(
                f"the database is locked (another process is writing): the refund of payment "
                f"{ecommerce_id} was not sent; try again"
            ) from None
        raise


def _in_flight(intent: RefundIntent) -> str:
    return (
        f"another refund of payment {intent.payment_id} ({intent.amount}) is being sent since "
        f"{intent.created_at:%Y-%m-%d %H:%M:%S} UTC: nothing was sent; look again in a minute"
    )


def intent_lease(conf: AthmSyncSettings) -> timedelta:
    """How long a reserved intent belongs to the process that reserved it: the longest the
    refund call (never retried) and the findPayment after a lost answer can take, plus
    ``INTENT_MARGIN``."""
    seconds = conf.connect_timeout + conf.read_timeout + conf.retry_deadline
    return timedelta(seconds=seconds) + INTENT_MARGIN


def _send_and_record(
    client: ATHMovilClient,
    payment: Payment,
    intent: RefundIntent,
    message: str,
    conf: AthmSyncSettings,
) -> Refund:
    """Call the refund API (no transaction open), record the answer, clear the intent."""
    try:
        observation = _send(client, payment, intent.amount, message)
    except RefundError:
        _clear(intent)  # refused by ATH Móvil: no money moved
        raise
    outcome = reconcile.apply(observation, source="refund", conf=conf)
    made = _refund_of(outcome, intent.amount)
    if made is None:
        reason = outcome.error or (
            f"ATH Móvil shows {outcome.payment.total_refunded_amount} refunded and no more"
        )
        _note(intent, reason)
        raise RefundUncertain(
            f"the refund of {intent.amount} for payment {payment.pk} was sent, but {reason}: "
            "it is not sent again; if it went through, the next athm_sync run records it"
        )
    _clear(intent)
    return made


def settle_intents(
    client: ATHMovilClient,
    conf: AthmSyncSettings | None = None,
    *,
    ecommerce_ids: Iterable[Any] | None = None,
    now: datetime | None = None,
) -> list[reconcile.Outcome]:
    """Settle the refund intents left behind (no process is sending them any more).

    For each, findPayment is asked and its answer applied (what grew becomes ``Refund`` rows,
    this intent's amount and message lent to the one it fits), then the intent is deleted. The
    refund API is never called again. An intent whose payment ATH Móvil cannot be asked about
    now stays for the next run. Raises :class:`AuthenticationError` when the credentials are
    rejected.
    """
    conf = conf or get_settings()
    now = now or clock.now()
    stale = RefundIntent.objects.filter(busy_until__lte=now).order_by("created_at", "pk")
    if ecommerce_ids is not None:
        stale = stale.filter(payment_id__in=list(ecommerce_ids))
    outcomes = []
    for intent in list(stale):
        observation = reconcile.observe(client, intent.payment_id, capture=False)
        if isinstance(observation.error, AuthenticationError):
            raise observation.error
        if observation.error is not None:
            logger.warning(
                "Refund of %s of payment %s not settled yet: %s",
                intent.amount,
                intent.payment_id,
                observation.error,
            )
            continue
        detail = reconcile.RefundDetail(intent.amount, message=intent.message)
        observation = reconcile.Observation(
            intent.payment_id, observation.snapshot, observation.not_found, refunds=(detail,)
        )
        outcome = reconcile.apply(observation, source="refund", conf=conf)
        if outcome.error:
            continue  # recorded on the payment; the intent stays for the next run
        outcomes.append(outcome)
        grown = sum((event.refund.amount for event in outcome.events if event.refund), Decimal(0))
        logger.warning(
            "Refund of %s of payment %s (started %s) settled without calling the refund API "
            "again: ATH Móvil shows %s more refunded",
            intent.amount,
            intent.payment_id,
            intent.created_at.isoformat(),
            grown,
        )
        _clear(intent)
    return outcomes


def _clear(intent: RefundIntent) -> None:
    # By its id: an intent settled meanwhile by another process and a new one are left alone.
    database.run_locked(lambda: RefundIntent.objects.filter(pk=intent.pk).delete())


def _note(intent: RefundIntent, note: str) -> None:
    database.run_locked(lambda: RefundIntent.objects.filter(pk=intent.pk).update(note=note[:255]))


def refundable_amount(payment: Payment) -> Decimal:
    """What is left to refund: the total ATH Móvil charged, less what was refunded."""
    charged = payment.remote_total if payment.is_held and payment.remote_total else payment.total
    return max(charged - payment.total_refunded_amount, Decimal("0.00"))


def unavailable(conf: AthmSyncSettings) -> str | None:
    """Why no refund at all can be sent with these settings (``None``: refunds can be sent)."""
    if not conf.private_token:
        return "refunds need ATHM_SYNC['PRIVATE_TOKEN']; it is not configured"
    return None


def refusal(payment: Payment, *, now: datetime | None = None) -> str | None:
    """Why :func:`refund` would refuse ``payment`` before sending anything, in one line, read
    from the row as it is (``None``: it would send it).

    A status other than COMPLETED or MISMATCHED, no reference number from ATH Móvil yet,
    nothing left to refund, or another refund of it being sent right now. The admin's refund
    page says it instead of offering a form; :func:`refund` checks the same again with the
    row locked. (A refund left behind by a process that died is settled by :func:`refund`
    first, so it is no refusal.)
    """
    reason = _payment_refusal(payment)
    if reason is not None:
        return reason
    try:
        intent = payment.refund_intent
    except RefundIntent.DoesNotExist:
        return None
    return _in_flight(intent) if intent.busy_until > (now or clock.now()) else None


def _payment_refusal(payment: Payment) -> str | None:
    if payment.status not in REFUNDABLE_STATUSES:
        return (
            f"payment {payment.pk} is {payment.status}: only a COMPLETED or MISMATCHED payment "
            "can be refunded"
        )
    if not payment.reference_number:
        return f"payment {payment.pk} has no reference number from ATH Móvil yet"
    if refundable_amount(payment) <= 0:
        return f"payment {payment.pk} is already refunded in full"
    return None


def _check_refundable(payment: Payment, wanted: Decimal | None) -> Decimal:
    reason = _payment_refusal(payment)
    if reason is not None:
        raise RefundError(reason)
    left = refundable_amount(payment)
    if wanted is not None and wanted > left:
        raise RefundError(
            f"payment {payment.pk} has {left} left to refund; {wanted} is more than that"
        )
    return left if wanted is None else wanted


def _send(
    client: ATHMovilClient, payment: Payment, amount: Decimal, message: str
) -> reconcile.Observation:
    """Call the refund API once; the observation to apply (what ATH Móvil shows after it)."""
    try:
        result = client.refund(payment.reference_number, amount, message, ecommerce_id=payment.pk)
    except _REFUSALS as error:
        raise RefundError(f"ATH Móvil refused the refund: {error}") from None
    except ATHMovilError as error:
        # It may have gone through: never send it again; ask what ATH Móvil shows now.
        logger.warning("Refund of payment %s: %s; asking ATH Móvil", payment.pk, error)
        return _observe(client, payment.pk)
    detail = reconcile.RefundDetail(
        amount, result.daily_transaction_id, result.transaction_date, result.message or message
    )
    snapshot = result.payment
    if snapshot is not None:
        try:
            reconcile.check_answer(payment.pk, snapshot, call="refund")
        except InvalidResponseError as error:
            logger.error("Refund of payment %s: %s; asking ATH Móvil", payment.pk, error)
            snapshot = None
    if snapshot is None:
        found = _observe(client, payment.pk)
        return reconcile.Observation(
            payment.pk, found.snapshot, found.not_found, found.error, refunds=(detail,)
        )
    return reconcile.Observation(payment.pk, snapshot=snapshot, refunds=(detail,))


def _observe(client: ATHMovilClient, ecommerce_id: Any) -> reconcile.Observation:
    """findPayment after a refund was sent; credentials rejected now are one more reason the
    refund is uncertain, not a reason to forget it."""
    try:
        return reconcile.observe(client, ecommerce_id, capture=False)
    except AuthenticationError as error:
        return reconcile.Observation(ecommerce_id, error=error)


def _refund_of(outcome: reconcile.Outcome, amount: Decimal) -> Refund | None:
    """The ``Refund`` of this refund among those ``apply`` made (others were made elsewhere
    and first seen now: they come before it)."""
    made = [e.refund for e in outcome.events if e.kind == PaymentEvent.Kind.REFUND_SENT]
    fitting = [refund for refund in made if refund is not None and refund.amount == amount]
    return fitting[-1] if fitting else None


def _amount(value: Any, *, zero: bool = False) -> Decimal:
    if isinstance(value, float | bool) or not isinstance(value, Decimal | int | str):
        raise RefundError(
            f"the amount must be a Decimal, int or str like 5.00, not {type(value).__name__} "
            f"{value!r}"
        )
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise RefundError(f"the amount must be an amount like 5.00, not {value!r}") from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not zero):
        raise RefundError(f"the amount must be more than 0, not {value!r}")
    if amount != amount.quantize(CENT):
        raise RefundError(f"the amount can have at most two decimals, not {value!r}")
    return amount.quantize(CENT)


def _message(message: Any) -> str:
    if not isinstance(message, str):
        raise RefundError(f"the message must be text, not {type(message).__name__}")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise RefundError(
            f"the message can be at most {MAX_MESSAGE_LENGTH} characters (ATH Móvil's limit), "
            f"not {len(message)}"
        )
    return message
