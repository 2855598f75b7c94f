"""Refunds whose reference number matches no stored payment: linked by what else names them,
or listed for a person.

ATH Móvil links a refund to its payment by reference number only, and whether a refund made in
the ATH Business app repeats the payment's is not published. So a refund (a report row, a
refund webhook) whose reference matches no stored payment is linked by :func:`link`:

1. a ``Refund`` already holding its record (daily id and date) is that refund: nothing to do;
2. one already listed as an :class:`~athm_sync.models.UnmatchedRefund` is counted again, with
   no API call and no new log line;
3. a ``Refund`` recorded without details (found by a poll) of the same amount, of a payment
   of the same customer's phone, gets its record, with no API call, when there is exactly one;
4. otherwise the candidates are the COMPLETED or MISMATCHED payments of that phone, transacted
   in the ``LOOKBACK`` before the refund, with at least its amount left to refund, newest
   first. findPayment is asked about at most ``MAX_CANDIDATE_CALLS`` of them; a candidate
   whose refunded amount grew by at least the refund's is confirmed. Every growth found is
   recorded through :func:`athm_sync.reconcile.apply` (ATH Móvil's answer is the truth). When
   exactly one candidate grew, the refund's record goes onto its ``Refund``. When several
   grew, the growths are recorded without the record and the refund is listed as ambiguous.
5. a refund still linked to nothing is listed (:class:`~athm_sync.models.UnmatchedRefund`,
   logged once when first listed), never dropped in silence. One whose candidates ATH Móvil
   could not answer about is not listed: the next scan asks again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction

from athm_sync import clock, database, reconcile
from athm_sync.client import ATHMovilClient, AuthenticationError
from athm_sync.conf import AthmSyncSettings
from athm_sync.models import Payment, Refund, UnmatchedRefund
from athm_sync.refunds import refundable_amount

logger = logging.getLogger("athm_sync.unmatched")

# findPayment calls at most per unmatched refund, the first time it is seen (never again).
MAX_CANDIDATE_CALLS = 3
# A candidate payment was transacted at most this long before the refund.
LOOKBACK = timedelta(days=30)
_PAID = (Payment.Status.COMPLETED, Payment.Status.MISMATCHED)


@dataclass(frozen=True)
class ForeignRefund:
    """A refund ATH Móvil reported whose reference number names no single stored payment."""

    amount: Decimal
    reference_number: str
    daily_transaction_id: str
    date: datetime | None
    phone: str  # digits only
    name: str
    message: str
    source: str  # "report" or "webhook"

    @property
    def key(self) -> str:
        """What names this refund across sources and runs."""
        date = self.date.isoformat() if self.date else "-"
        return f"{date}|{self.daily_transaction_id or '-'}|{self.reference_number}|{self.amount}"

    def detail(self) -> reconcile.RefundDetail:
        return reconcile.RefundDetail(
            self.amount, self.daily_transaction_id, self.date, self.message, self.reference_number
        )


@dataclass
class Linked:
    """What :func:`link` made of one refund: the outcomes it applied, the payment it was
    linked to (``None``: listed), the findPayment calls it made."""

    outcomes: list[reconcile.Outcome] = field(default_factory=list)
    payment: Payment | None = None
    listed: UnmatchedRefund | None = None
    calls: int = 0
    reason: str = ""
    known: bool = False  # recorded before: nothing was done


def link(
    client: ATHMovilClient,
    conf: AthmSyncSettings,
    refund: ForeignRefund,
    *,
    reason: str = "",
    quiet: bool = False,
) -> Linked:
    """Link ``refund`` to its payment, or list it (see the module). ``reason`` says why its
    reference did not name a payment. Raises :class:`AuthenticationError` when the
    credentials are rejected."""
    known = _recorded(refund)
    if known is not None:
        return Linked(payment=known.payment, known=True)
    listed = UnmatchedRefund.objects.filter(key=refund.key[:200]).first()
    if listed is not None:
        return Linked(listed=_seen_again(listed), reason=listed.reason)
    if not refund.phone:
        return _list(refund, reason or "its reference number matches no stored payment")
    bare = list(
        Refund.objects.filter(
            payment__customer_phone=refund.phone,
            payment__status__in=_PAID,
            daily_transaction_id="",
            amount=refund.amount,
        ).select_related("payment")[:2]
    )
    if len(bare) == 1:
        lend(bare[0], refund.detail())
        return Linked(payment=bare[0].payment)
    result = Linked()
    candidates = _candidates(refund)
    grown: list[tuple[Payment, reconcile.Observation]] = []
    failed = ""
    for payment in candidates[:MAX_CANDIDATE_CALLS]:
        observation = reconcile.observe(client, payment.pk, capture=False)
        result.calls += 1
        if isinstance(observation.error, AuthenticationError):
            raise observation.error
        if observation.error is not None:
            failed = str(observation.error)
        snapshot = observation.snapshot
        if snapshot is None:
            continue
        if snapshot.total_refunded_amount - payment.total_refunded_amount >= refund.amount:
            grown.append((payment, observation))
    for payment, observation in grown:
        if len(grown) == 1:
            observation = reconcile.Observation(
                payment.pk, observation.snapshot, refunds=(refund.detail(),)
            )
        outcome = reconcile.apply(observation, source=refund.source, conf=conf, quiet=quiet)
        result.outcomes.append(outcome)
    if len(grown) == 1:
        result.payment = grown[0][0]
        return result
    if failed and not grown:
        # Not listed: the next scan asks again (it is not known to match nothing).
        logger.warning("A refund of %s not linked yet: %s", refund.amount, failed)
        result.reason = f"ATH Móvil could not be asked: {failed}"
        return result
    if grown:
        why = (
            f"{len(grown)} payments of the customer's phone grew by at least its amount "
            f"({', '.join(str(payment.pk) for payment, _ in grown)}): their refunds are "
            "recorded, this record is lent to none"
        )
    elif candidates:
        checked = min(len(candidates), MAX_CANDIDATE_CALLS)
        why = (
            f"none of {checked} of {len(candidates)} candidate payment(s) of the customer's "
            "phone shows it refunded"
        )
    else:
        why = "no payment of the customer's phone has that much left to refund"
    linked = _list(refund, f"{reason or 'its reference number matches no payment'}; {why}")
    linked.outcomes, linked.calls = result.outcomes, result.calls
    return linked


def _recorded(refund: ForeignRefund) -> Refund | None:
    if not (refund.daily_transaction_id and refund.date):
        return None
    return (
        Refund.objects.filter(
            daily_transaction_id=refund.daily_transaction_id[:32], transaction_date=refund.date
        )
        .select_related("payment")
        .first()
    )


def _candidates(refund: ForeignRefund) -> list[Payment]:
    """The payments ``refund`` may be of, newest first (see the module)."""
    payments = Payment.objects.filter(customer_phone=refund.phone, status__in=_PAID)
    if refund.date is not None:
        payments = payments.filter(
            transaction_date__lte=refund.date, transaction_date__gte=refund.date - LOOKBACK
        )
    payments = payments.order_by("-transaction_date", "pk")
    return [p for p in payments if refundable_amount(p) >= refund.amount]


def lend(bare: Refund, detail: reconcile.RefundDetail) -> None:
    """Give a refund recorded without its record (found by a poll) ``detail``'s."""
    bare.daily_transaction_id = detail.daily_transaction_id[:32]
    bare.transaction_date = detail.transaction_date
    bare.message = detail.message[:255]
    fields = ["daily_transaction_id", "transaction_date", "message"]
    if detail.reference_number:
        bare.reference_number = detail.reference_number[:100]
        fields.append("reference_number")
    database.run_locked(lambda: bare.save(update_fields=fields))


def _list(refund: ForeignRefund, reason: str) -> Linked:
    """List ``refund`` for a person; logged once, when first listed."""
    now = clock.now()

    def create() -> tuple[UnmatchedRefund, bool]:
        with transaction.atomic():
            return UnmatchedRefund.objects.get_or_create(
                key=refund.key[:200],
                defaults={
                    "source": refund.source,
                    "reference_number": refund.reference_number[:100],
                    "daily_transaction_id": refund.daily_transaction_id[:32],
                    "transaction_date": refund.date,
                    "amount": refund.amount,
                    "customer_name": refund.name[:255],
                    "customer_phone": refund.phone[:20],
                    "message": refund.message[:255],
                    "reason": reason,
                    "first_seen_at": now,
                    "last_seen_at": now,
                },
            )

    listed, created = database.run_locked(create)
    if created:
        # Never the phone: the reference, daily id and date name it for a person.
        logger.warning(
            "A refund of %s (reference %s, daily id %s, %s) matches no stored payment and is "
            "listed for review: %s",
            refund.amount,
            refund.reference_number or "-",
            refund.daily_transaction_id or "-",
            refund.date.isoformat() if refund.date else "no date",
            reason,
        )
    else:
        listed = _seen_again(listed)
    return Linked(listed=listed, reason=listed.reason)


def _seen_again(listed: UnmatchedRefund) -> UnmatchedRefund:
    now = clock.now()
    database.run_locked(
        lambda: UnmatchedRefund.objects.filter(pk=listed.pk).update(
            last_seen_at=now, times_seen=listed.times_seen + 1
        )
    )
    listed.last_seen_at, listed.times_seen = now, listed.times_seen + 1
    return listed
