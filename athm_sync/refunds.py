"""Refunding a payment from the shop: :func:`refund`, exposed as ``athm_sync.refund``.

A refund is money leaving the business, so it is validated before anything is sent, sent at
most once, and recorded through the same transition function as every other change
(:func:`athm_sync.reconcile.apply`): the ``Refund`` row is the growth of the refunded amount
ATH Móvil reports, and ``refund_sent`` fires once, however many doors later see the same
refund (a poll, a webhook, the transaction report).

The payment's row is locked from the check of what is still refundable until the refund is
recorded, so two refunds of one payment started at the same moment cannot together exceed
its total: the second waits, then finds less (or nothing) left to refund.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import connection, transaction
from django.db.models import F

from athm_sync import reconcile
from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
)
from athm_sync.conf import get_settings
from athm_sync.managers import CENT, validate_ecommerce_id
from athm_sync.models import Payment, PaymentEvent, Refund

logger = logging.getLogger("athm_sync.refunds")

MAX_MESSAGE_LENGTH = 50
# A payment whose customer's money ATH Móvil holds: completed, or held for a mismatch (a
# refund is how the shop returns a wrong payment).
REFUNDABLE_STATUSES = (Payment.Status.COMPLETED, Payment.Status.MISMATCHED)
# What ATH Móvil answers when it refuses the refund itself: nothing was refunded.
_REFUSALS = (InvalidRequestError, InvalidStateError, NotFoundError, AuthenticationError)


class RefundError(ValueError):
    """A refund that was not made. Unless it is a :class:`RefundUncertain`, nothing was sent
    or ATH Móvil refused it: no money moved."""


class RefundUncertain(RefundError):
    """The refund was sent but its answer was lost, and ATH Móvil does not show it yet.

    It is never sent again: if it went through, the payment's refunded amount grows and the
    next check of the payment (the scheduled report scan, a refund webhook, ``sync_payment``)
    records it and fires ``refund_sent`` then.
    """


def refund(
    payment: Payment | Any,
    amount: Decimal | int | str | None = None,
    message: str = "",
    *,
    client: ATHMovilClient | None = None,
) -> Refund:
    """Refund ``amount`` of a payment (all that is left when ``None``); returns the ``Refund``.

    Raises :class:`RefundError`, with nothing sent, when: the private token is not
    configured; the message is not text of at most 50 characters; the amount is not a
    positive amount with at most two decimals; the payment is not stored, not COMPLETED or
    MISMATCHED, has no reference number yet, or has less than ``amount`` left to refund. It
    also raises it when ATH Móvil refuses the refund, and :class:`RefundUncertain` when the
    answer was lost. ``refund_sent`` fires once the transaction commits.
    """
    conf = get_settings()
    if not conf.private_token:
        raise RefundError("refunds need ATHM_SYNC['PRIVATE_TOKEN']; it is not configured")
    text = _message(message)
    wanted = None if amount is None else _amount(amount)
    ecommerce_id = payment.pk if isinstance(payment, Payment) else validate_ecommerce_id(payment)
    own_client = client is None
    client = client or ATHMovilClient.from_settings()
    try:
        with transaction.atomic():
            locked = Payment.objects.select_for_update().filter(pk=ecommerce_id).first()
            if locked is None:
                raise RefundError(f"no stored payment {ecommerce_id}")
            if connection.vendor == "sqlite":
                # SQLite has no row locks: a write (changing nothing) takes its write lock now,
                # before the check, even in Django's default deferred transactions.
                Payment.objects.filter(pk=ecommerce_id).update(last_error=F("last_error"))
            refund_amount = _check_refundable(locked, wanted)
            observation = _send(client, locked, refund_amount, text)
            outcome = reconcile.apply(observation, source="refund", conf=conf)
            made = _refund_of(outcome)
            if made is None:
                raise RefundUncertain(
                    f"the refund of {refund_amount} for payment {ecommerce_id} was sent, but "
                    f"ATH Móvil shows {outcome.payment.total_refunded_amount} refunded and no "
                    "more: it is not sent again; if it went through, the next check of the "
                    "payment records it"
                )
    finally:
        if own_client:
            client.close()
    logger.info("Refunded %s of payment %s", made.amount, ecommerce_id)
    return made


def refundable_amount(payment: Payment) -> Decimal:
    """What is left to refund: the total ATH Móvil charged, less what was refunded."""
    charged = payment.remote_total if payment.is_held and payment.remote_total else payment.total
    return max(charged - payment.total_refunded_amount, Decimal("0.00"))


def _check_refundable(payment: Payment, wanted: Decimal | None) -> Decimal:
    if payment.status not in REFUNDABLE_STATUSES:
        raise RefundError(
            f"payment {payment.pk} is {payment.status}: only a COMPLETED or MISMATCHED payment "
            "can be refunded"
        )
    if not payment.reference_number:
        raise RefundError(f"payment {payment.pk} has no reference number from ATH Móvil yet")
    left = refundable_amount(payment)
    if left <= 0:
        raise RefundError(f"payment {payment.pk} is already refunded in full")
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
        return reconcile.observe(client, payment.pk, capture=False)
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
        found = reconcile.observe(client, payment.pk, capture=False)
        return reconcile.Observation(
            payment.pk, found.snapshot, found.not_found, found.error, refunds=(detail,)
        )
    return reconcile.Observation(payment.pk, snapshot=snapshot, refunds=(detail,))


def _refund_of(outcome: reconcile.Outcome) -> Refund | None:
    for event in outcome.events:
        if event.kind == PaymentEvent.Kind.REFUND_SENT:
            return event.refund
    return None


def _amount(value: Any) -> Decimal:
    if isinstance(value, float | bool) or not isinstance(value, Decimal | int | str):
        raise RefundError(
            f"the amount must be a Decimal, int or str like 5.00, not {type(value).__name__} "
            f"{value!r}"
        )
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise RefundError(f"the amount must be an amount like 5.00, not {value!r}") from None
    if not amount.is_finite() or amount <= 0:
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
