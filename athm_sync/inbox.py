"""The webhook inbox: read a webhook body, store it once, verify it with ATH Móvil, apply it.

ATH Móvil's webhooks are not signed, are sometimes not sent and may arrive twice, so a webhook
is only a hint to look now. The flow, for the view and for the ``athm_sync`` run alike:

1. :func:`read` (:func:`read_body`, then :func:`parse`) turns a body into a :class:`Notice`,
   or raises :class:`InvalidWebhook` with a short reason (the view answers 400).
2. :func:`record` stores it as a :class:`~athm_sync.models.WebhookEvent`, keyed by its
   idempotency key, with the body byte for byte (:func:`storable_body`); a second delivery
   finds the first row instead.
3. :func:`process` asks ATH Móvil (findPayment) whether the event is true. If it is, the
   observation goes through :func:`athm_sync.reconcile.apply`, the same function the poller
   uses, with the webhook's ``cancelled``/``expired`` as the hint. If ATH Móvil contradicts it,
   nothing changes and the event is ``rejected``. If ATH Móvil cannot be asked in time, the
   event stays ``pending`` and the next run processes it (:func:`process_pending`).

Decisions:

- A verified eCommerce event for a payment the shop never tracked (the browser died before it
  told the server) creates the payment from ATH Móvil's answer; its signal fires. An event
  ATH Móvil does not bear out is rejected, but if it names an untracked payment that is still
  OPEN or CONFIRM, that payment (real, and the business's own) is tracked from then on.
- An eCommerce webhook without an ecommerceId (the shape Evertec documents) is a "look now"
  for the stored payments it can be (:func:`candidates`: OPEN or CONFIRM, its total and the
  stored metadata); at most ``MAX_CANDIDATE_CHECKS`` of them, the most recent, are checked
  with findPayment and what ATH Móvil says is applied; the others are made due for the next
  run. One that no stored payment can be is ``ignored``, with the reason.
- A refund webhook names no ecommerceId: it is matched to the stored payment with its reference
  number and verified by the refunded amount findPayment reports. One whose reference names no
  single stored payment is linked by the customer's phone and the amount
  (:mod:`athm_sync.unmatched`); one linked to nothing is ``ignored`` and listed for review.
- ``payment``, ``donation`` and ``simulated`` events are stored and ``ignored``.
- A duplicate of an event that was applied, changed nothing or was ignored does nothing more.
  A duplicate of a ``rejected`` or ``pending`` one is verified again: ATH Móvil may have caught
  up since, and the transition function never fires a signal twice.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from ipaddress import ip_address
from typing import Any, NamedTuple

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q, QuerySet

from athm_sync import clock, database, deadlines, normalize, reconcile, unmatched
from athm_sync.client import ATHMovilClient, AuthenticationError, TransientError
from athm_sync.conf import MAX_PAYMENT_TIMEOUT, AthmSyncSettings, get_settings
from athm_sync.managers import StatusIn
from athm_sync.models import Payment, WebhookEvent

logger = logging.getLogger("athm_sync.inbox")

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32
ECOMMERCE, REFUND = "ecommerce", "refund"
IGNORED_TYPES = ("payment", "donation", "simulated")
TRANSACTION_TYPES = (ECOMMERCE, REFUND, *IGNORED_TYPES)
# A webhook's status, in the app's status spelling, as the webhook words it.
_WEBHOOK_STATUS = {
    Payment.Status.COMPLETED: "completed",
    Payment.Status.CANCEL: reconcile.HINT_CANCELLED,
    Payment.Status.EXPIRED: reconcile.HINT_EXPIRED,
}
# Added to the longest a verification can take, for the lease on an event being verified.
PROCESSING_MARGIN = timedelta(seconds=60)
# The longest a pending event waits between two verifications.
MAX_RETRY_DELAY = timedelta(minutes=15)

Outcome = WebhookEvent.Outcome


class InvalidWebhook(ValueError):
    """A body the view refuses with 400; the message is the short reason it answers."""


@dataclass(frozen=True)
class Notice:
    """A webhook body, read: what it claims, in the app's types, the body parsed
    (``payload``) and the bytes as received (``body``; empty for a notice parsed from a dict)."""

    transaction_type: str
    status: str
    ecommerce_id: uuid.UUID | None
    reference_number: str
    amount: Decimal | None
    idempotency_key: str
    payload: dict[str, Any]
    body: bytes = b""


# -- reading -------------------------------------------------------------------------------


def read(body: bytes) -> Notice:
    """The :class:`Notice` a webhook body makes, with the body's bytes kept on it; raises
    :class:`InvalidWebhook` (see :func:`read_body` and :func:`parse`)."""
    return dataclasses.replace(parse(read_body(body)), body=bytes(body))


def read_body(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; raises :class:`InvalidWebhook`.

    Refuses what no database could store faithfully: NaN and Infinity, NUL characters and
    lone surrogates in strings, and nesting deeper than 32 levels.
    """
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except InvalidWebhook:
        raise
    except (ValueError, RecursionError):
        raise InvalidWebhook("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidWebhook("the body is not a JSON object")
    _check_storable(payload)
    return payload


def _refuse_constant(name: str) -> Any:
    raise InvalidWebhook(f"the body holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON allows it, no database column does
        raise InvalidWebhook(f"the body holds the number {text[:20]}, too large to store")
    return number


def _check_storable(payload: dict[str, Any]) -> None:
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidWebhook(f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidWebhook("the body holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidWebhook("the body holds a lone surrogate (not valid Unicode)") from None


def parse(payload: Mapping[str, Any]) -> Notice:
    """Read a webhook body; raises :class:`InvalidWebhook` naming what is wrong with it.

    Every quirk of ATHM_API.md is accepted: ``ECOMMERCE`` or ``ecommerce``, ``COMPLETED`` or
    ``completed``, ``CANCEL`` or ``cancelled``, amounts as numbers or strings, stray spaces.
    """
    try:
        return _parse(payload)
    except InvalidWebhook:
        raise
    except ValueError as error:
        reason = str(error)
        raise InvalidWebhook(reason if len(reason) <= 160 else reason[:159] + "…") from None


def _parse(payload: Mapping[str, Any]) -> Notice:
    raw_type = payload.get("transactionType")
    if raw_type is None or raw_type == "":
        raise InvalidWebhook("transactionType is missing")
    transaction_type = normalize.text(raw_type, "transactionType").lower()
    if transaction_type not in TRANSACTION_TYPES:
        raise InvalidWebhook(
            f"transactionType {transaction_type[:40]!r} is not one of "
            + ", ".join(TRANSACTION_TYPES)
        )
    reference_number = normalize.text(payload.get("referenceNumber"), "referenceNumber")[:100]
    if transaction_type == ECOMMERCE:
        if payload.get("ecommerceId") in (None, ""):
            return _parse_unidentified(payload, reference_number)
        ecommerce_id = normalize.ecommerce_id(payload.get("ecommerceId"))
        status = _webhook_status(payload.get("status"))
        amount = normalize.money(payload.get("total"), "total")
        key = f"{ECOMMERCE}:{ecommerce_id}:{status}"
        return Notice(ECOMMERCE, status, ecommerce_id, reference_number, amount, key, dict(payload))
    if transaction_type == REFUND:
        if not reference_number:
            raise InvalidWebhook("referenceNumber is missing")
        amount = normalize.money(payload.get("total"), "total")
        if amount <= 0:
            raise InvalidWebhook("total (the refunded amount) must be more than 0")
        daily_id = normalize.daily_transaction_id(
            normalize.pick(payload, "dailyTransactionID", "dailyTransactionId")
        )
        date = normalize.text(normalize.pick(payload, "date", "transactionDate"), "date")
        key = f"{REFUND}:{_digest([reference_number, daily_id, str(amount), date])}"
        return Notice(REFUND, "completed", None, reference_number, amount, key, dict(payload))
    key = f"{transaction_type}:{_digest(payload)}"
    return Notice(transaction_type, "", None, reference_number, None, key, dict(payload))


def _parse_unidentified(payload: Mapping[str, Any], reference_number: str) -> Notice:
    """An eCommerce webhook without ``ecommerceId``, as Evertec documents them: its total (and
    metadata) is what finds the payments it can be (:func:`candidates`)."""
    if payload.get("total") in (None, ""):
        raise InvalidWebhook("ecommerceId is missing, and so is total: nothing says which payment")
    status = _webhook_status(payload.get("status"))
    amount = normalize.money(payload.get("total"), "total")
    if amount <= 0:
        raise InvalidWebhook("total must be more than 0 (no ecommerceId to find the payment by)")
    identity = [
        str(amount),
        normalize.text(payload.get("metadata1"), "metadata1"),
        normalize.text(payload.get("metadata2"), "metadata2"),
        reference_number,
        normalize.daily_transaction_id(
            normalize.pick(payload, "dailyTransactionID", "dailyTransactionId")
        ),
        normalize.text(normalize.pick(payload, "date", "transactionDate"), "date"),
    ]
    key = f"{ECOMMERCE}:{status}:{_digest(identity)}"
    return Notice(ECOMMERCE, status, None, reference_number, amount, key, dict(payload))


def _webhook_status(value: Any) -> str:
    if value is None or value == "":
        raise InvalidWebhook("status is missing")
    remote = normalize.status(value)
    if remote not in _WEBHOOK_STATUS:
        raise InvalidWebhook(f"status {remote!r} is not completed, cancelled or expired")
    return _WEBHOOK_STATUS[remote]


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


# -- storing -------------------------------------------------------------------------------


def record(
    notice: Notice, remote_addr: str | None = None, *, claim_until: datetime | None = None
) -> tuple[WebhookEvent, bool]:
    """Store ``notice`` once; returns ``(event, created)``.

    A second delivery (same idempotency key, even arriving at the same instant) returns the
    stored event, with its delivery count raised. Events of types the app does not act on are
    stored as ``ignored``. ``claim_until`` stores a new pending event already claimed by the
    caller, which is about to verify it (one write fewer than claiming it afterwards).
    """
    ignored = notice.transaction_type in IGNORED_TYPES

    body, body_encoding = storable_body(notice.body)

    def create() -> WebhookEvent:
        with transaction.atomic():
            return WebhookEvent.objects.create(
                remote_addr=_ip_or_none(remote_addr),
                payload=notice.payload,
                body=body,
                body_encoding=body_encoding,
                transaction_type=notice.transaction_type,
                status=notice.status,
                ecommerce_id=notice.ecommerce_id,
                reference_number=notice.reference_number,
                amount=notice.amount,
                idempotency_key=notice.idempotency_key,
                outcome=Outcome.IGNORED if ignored else Outcome.PENDING,
                reason=f"{notice.transaction_type} events are not acted on" if ignored else "",
                processed_at=clock.now() if ignored else None,
                processing_until=None if ignored else claim_until,
            )

    try:
        return database.run_locked(create), True
    except IntegrityError:
        existing = WebhookEvent.objects.filter(idempotency_key=notice.idempotency_key)
        database.run_locked(lambda: existing.update(deliveries=F("deliveries") + 1))
        return existing.get(), False


def storable_body(body: bytes) -> tuple[str, str]:
    """``body`` as text a database column keeps byte for byte, and its encoding
    (:class:`~athm_sync.models.WebhookEvent.BodyEncoding`).

    A UTF-8 body (every body ATH Móvil is known to send) is kept as the text it is: its
    spacing, key order, number spellings, escapes and byte order mark included. Other bytes
    (a JSON body in UTF-16 or UTF-32, which :func:`read_body` accepts) are kept as base64,
    since a text column cannot hold them. Either way
    :meth:`~athm_sync.models.WebhookEvent.body_bytes` gives back the very bytes.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:  # PostgreSQL's text refuses NUL
        return base64.b64encode(body).decode("ascii"), WebhookEvent.BodyEncoding.BASE64
    return text, WebhookEvent.BodyEncoding.UTF8


def _ip_or_none(value: str | None) -> str | None:
    try:
        return str(ip_address((value or "").strip()))
    except ValueError:
        return None


# -- verifying and applying ----------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    """What :func:`process` made of one event; ``result`` is the reconciler's, when it ran."""

    event: WebhookEvent
    result: reconcile.Outcome | None = None
    credentials_error: AuthenticationError | None = None
    unreachable: bool = False  # ATH Móvil could not be asked: the events behind would wait too


def receive(
    notice: Notice,
    remote_addr: str | None = None,
    *,
    client: ATHMovilClient | None = None,
    conf: AthmSyncSettings | None = None,
) -> tuple[WebhookEvent, bool]:
    """Store a webhook and, unless it is a duplicate already settled, verify and apply it.

    Returns ``(event, duplicate)``. Verification is bounded by ``WEBHOOK_VERIFY_TIMEOUT``: when
    ATH Móvil cannot answer in time the event stays ``pending`` for the next run. Raises only
    when the event could not be stored; once it is stored, any failure leaves it ``pending``.
    """
    conf = conf or get_settings()
    event, created = record(notice, remote_addr, claim_until=clock.now() + _lease(conf))
    if created and event.outcome == Outcome.PENDING:
        options = {"claimed": True}
    elif not created and event.outcome in (Outcome.PENDING, Outcome.REJECTED):
        options = {"retry_rejected": True}
    else:
        return event, not created
    try:
        # All of the verification, however many payments it asks about, within the budget.
        with deadlines.budget(conf.webhook_verify_timeout):
            processed = process(event, client or verification_client(conf), conf=conf, **options)
    except Exception:
        logger.exception("Webhook event %s stored but not processed; it stays pending", event.pk)
        event.refresh_from_db()
        return event, not created
    return (processed.event if processed is not None else event), not created


def _lease(conf: AthmSyncSettings) -> timedelta:
    """How long one process may hold an event it is verifying before another may take it."""
    return timedelta(seconds=conf.retry_deadline + conf.connect_timeout) + PROCESSING_MARGIN


def process(
    event: WebhookEvent,
    client: ATHMovilClient,
    *,
    conf: AthmSyncSettings | None = None,
    retry_rejected: bool = False,
    claimed: bool = False,
) -> Processed | None:
    """Verify one stored event with ATH Móvil and apply it; returns ``None`` when another
    process holds it or it is already settled.

    The event is claimed first (a lease in ``processing_until``), so two deliveries of one
    event arriving together are verified once; ``claimed`` says the caller stored it claimed.
    """
    conf = conf or get_settings()
    if not claimed:
        now = clock.now()
        takeable = [Outcome.PENDING, Outcome.REJECTED] if retry_rejected else [Outcome.PENDING]
        taken = database.run_locked(
            lambda: WebhookEvent.objects.filter(
                Q(processing_until__isnull=True) | Q(processing_until__lt=now),
                pk=event.pk,
                outcome__in=takeable,
            ).update(processing_until=now + _lease(conf))
        )
        if not taken:
            return None
        event.refresh_from_db()
    credentials_error = None
    try:
        if event.transaction_type == ECOMMERCE:
            verdict = _process_ecommerce(event, client, conf)
        else:
            verdict = _process_refund(event, client, conf)
    except AuthenticationError as error:
        logger.error("Cannot verify webhook event %s: %s", event.pk, error)
        verdict = _Verdict(Outcome.PENDING, f"credentials rejected: {error}", unreachable=True)
        credentials_error = error
    except Exception as error:
        if isinstance(error, DatabaseError) and database.connection_lost(error):
            raise  # every event would fail alike: the run says it once, the event waits
        # A database error while storing what ATH Móvil said, or anything unforeseen: this
        # event alone waits (with backoff); the events and payments behind it go on.
        logger.exception("Webhook event %s could not be processed; it stays pending", event.pk)
        reason = normalize.text(f"could not be processed: {type(error).__name__}: {error}")
        verdict = _Verdict(Outcome.PENDING, reason)
    except BaseException:
        _release(event)
        raise
    event.outcome = verdict.outcome
    event.reason = verdict.reason[:1000]
    if verdict.payment is not None:
        event.payment = verdict.payment
    event.attempts += 1
    event.processed_at = clock.now()
    event.processing_until = None
    # ATH Móvil being unreachable is no fault of this event: it keeps its place in line.
    event.next_attempt_at = (
        event.processed_at + retry_delay(event.attempts)
        if verdict.outcome == Outcome.PENDING and not verdict.unreachable
        else None
    )
    database.run_locked(
        lambda: event.save(
            update_fields=[
                "outcome",
                "reason",
                "payment",
                "attempts",
                "processed_at",
                "processing_until",
                "next_attempt_at",
            ]
        )
    )
    log = logger.warning if verdict.outcome == Outcome.REJECTED else logger.info
    log("Webhook event %s (%s): %s %s", event.pk, event.idempotency_key, *verdict[:2])
    return Processed(event, verdict.result, credentials_error, verdict.unreachable)


def retry_delay(attempts: int) -> timedelta:
    """How long a pending event waits after its ``attempts``-th failed verification.

    None after the first (usually the view's, within its short ``WEBHOOK_VERIFY_TIMEOUT``):
    the next run tries it at once, with the full retry budget. Then 10 s, 20 s, 40 s... up to
    ``MAX_RETRY_DELAY``.
    """
    if attempts <= 1:
        return timedelta(0)
    return min(MAX_RETRY_DELAY, reconcile.FIRST_RETRY * 2 ** min(attempts - 2, 20))


def _release(event: WebhookEvent) -> None:
    database.run_locked(
        lambda: WebhookEvent.objects.filter(pk=event.pk).update(processing_until=None)
    )


class _Verdict(NamedTuple):
    """What one verification concluded; ``unreachable``: ATH Móvil could not be asked."""

    outcome: str
    reason: str
    payment: Payment | None = None
    result: reconcile.Outcome | None = None
    unreachable: bool = False


def _ask(
    client: ATHMovilClient, ecommerce_id: Any, payment: Payment | None = None
) -> tuple[reconcile.Observation, _Verdict | None]:
    """findPayment for an event: the observation, and the verdict when it cannot verify it
    (ATH Móvil failed: pending; ATH Móvil does not know the payment: rejected)."""
    observation = reconcile.observe(client, ecommerce_id, capture=False)
    if observation.error is not None:
        reason = f"could not verify: {observation.error}"
        unreachable = isinstance(observation.error, TransientError)
        return observation, _Verdict(Outcome.PENDING, reason, payment, None, unreachable)
    if observation.snapshot is None:
        return observation, _Verdict(
            Outcome.REJECTED, "ATH Móvil does not know this payment", payment
        )
    return observation, None


def _process_ecommerce(
    event: WebhookEvent,
    client: ATHMovilClient,
    conf: AthmSyncSettings,
    ecommerce_id: uuid.UUID | None = None,
) -> _Verdict:
    """Verify an eCommerce event on its ``ecommerceId`` (or ``ecommerce_id``, the payment an
    event without one was found to be), and apply it; one without either goes to
    :func:`_process_unidentified`."""
    ecommerce_id = ecommerce_id or event.ecommerce_id
    if ecommerce_id is None:
        return _process_unidentified(event, client, conf)
    observation, unsettled = _ask(client, ecommerce_id)
    if unsettled is not None:
        return unsettled
    snapshot = observation.snapshot
    claimed_terminal = (
        (Payment.Status.COMPLETED,)
        if event.status == "completed"
        else (Payment.Status.CANCEL, Payment.Status.EXPIRED)
    )
    if snapshot.status not in claimed_terminal:
        reason = f"the webhook says {event.status} but ATH Móvil says {snapshot.status}"
        payment = None
        if snapshot.status in Payment.ACTIVE_STATUSES:
            # A real payment of this business that can still change: follow it, so that a
            # webhook arriving ahead of findPayment loses nothing (the poll fires the signal).
            payment, adopted = _adopt(snapshot)
            if adopted:
                reason += "; now tracked, the poll will follow it"
        return _Verdict(Outcome.REJECTED, reason, payment)
    hint = event.status if event.status in reconcile.HINTS else None
    payment, adopted = _adopt(snapshot)
    if payment is None:
        return _Verdict(Outcome.REJECTED, "ATH Móvil describes a payment that cannot be stored")
    result = reconcile.apply(observation, hint, source="webhook", conf=conf)
    return _verdict_of(result, "created from the verified webhook" if adopted else "")


# -- eCommerce events without an ecommerceId -----------------------------------------------

# The most findPayment calls one eCommerce webhook without an ecommerceId makes: its most
# recent candidates are checked, the others are made due for the next run.
MAX_CANDIDATE_CHECKS = 5
# How far outside a payment's life (created_at to created_at + the longest timeout) the
# webhook's date may fall: the clocks of ATH Móvil and this server differ a little.
CANDIDATE_DATE_MARGIN = timedelta(minutes=5)


def candidates(event: WebhookEvent) -> QuerySet[Payment]:
    """The stored payments an eCommerce event without an ``ecommerceId`` can be about, the
    most recent first.

    Those ATH Móvil may still change (OPEN or CONFIRM, not given up) with the event's total,
    whose stored metadata (each one the shop stored: blank matches anything) equals the
    event's, and, when the event is dated, created no later than that date and no earlier than
    the longest timeout before it (``CANDIDATE_DATE_MARGIN`` either side). A stored CANCEL or
    EXPIRED payment is never one: ATH Móvil said CANCEL for it (or never knew it), and it
    does not complete a payment it cancelled.
    """
    payload = event.payload
    found = Payment.objects.filter(
        StatusIn(Payment.ACTIVE_STATUSES), given_up_at__isnull=True, total=event.amount
    )
    for name, key in (("metadata_1", "metadata1"), ("metadata_2", "metadata2")):
        value = normalize.text(payload.get(key), key)
        found = found.filter(Q(**{name: ""}) | Q(**{name: value}))
    window = _created_window(payload)
    if window is not None:
        found = found.filter(created_at__range=window)
    return found.order_by("-created_at", "-pk")


def _created_window(payload: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    """When a payment the event is about was created, by the webhook's date; ``None`` when it
    is not dated (or not readably: the date only narrows the candidates)."""
    longest = timedelta(seconds=MAX_PAYMENT_TIMEOUT)
    try:
        moment = normalize.local_datetime(normalize.pick(payload, "date", "transactionDate"))
        if moment is None:
            return None
        return (moment - longest - CANDIDATE_DATE_MARGIN, moment + CANDIDATE_DATE_MARGIN)
    except ValueError:
        return None


def _describe(event: WebhookEvent) -> str:
    """The event's total and metadata, as a reason quotes them."""
    payload = event.payload
    parts = [f"total {event.amount}"]
    for key in ("metadata1", "metadata2"):
        value = normalize.text(payload.get(key), key)
        if value:
            parts.append(f"{key} {value[:40]!r}")
    return ", ".join(parts)


def _process_unidentified(
    event: WebhookEvent, client: ATHMovilClient, conf: AthmSyncSettings
) -> _Verdict:
    """An eCommerce event without an ``ecommerceId``: a "look now" for the payments it can be.

    A completion whose reference number one stored payment holds is that payment's, verified
    as if the event named it. Otherwise the ``MAX_CANDIDATE_CHECKS`` most recent
    :func:`candidates` are checked (:func:`_look`) and what ATH Móvil says of each is applied
    (:func:`_apply_looks`); the other candidates are made due now. The outcome is about the
    event's claim: ``applied`` (or ``unchanged``) when a payment checked is in the state it
    claims, ``rejected`` when none is, ``pending`` when ATH Móvil could not tell, ``ignored``
    when no stored payment can be it.
    """
    if event.status == "completed" and event.reference_number:
        known = list(Payment.objects.filter(reference_number=event.reference_number)[:2])
        if len(known) == 1:
            return _process_ecommerce(event, client, conf, ecommerce_id=known[0].pk)
    found = candidates(event)
    checked = list(found[:MAX_CANDIDATE_CHECKS])
    if not checked:
        return _Verdict(
            Outcome.IGNORED,
            f"no OPEN or CONFIRM payment can be it ({_describe(event)}): the poll may have "
            "settled it already, or the shop never tracked it",
        )
    made_due = 0
    if len(checked) == MAX_CANDIDATE_CHECKS:
        now = clock.now()
        rest = found.exclude(pk__in=[payment.pk for payment in checked])
        made_due = database.run_locked(lambda: rest.make_due(now))
    observations, failure, asked = _look(event, checked, client)
    confirmed, transitions, failure = _apply_looks(event, observations, failure, conf)
    checks = f"checked {asked} of the {len(checked)} payments it can be"
    if asked == len(checked):
        checks = f"checked {asked} payment{'s' if asked != 1 else ''} it can be"
    if made_due:
        checks += f"; {made_due} more made due for the next run"
    done = ", ".join(transitions)
    if confirmed:
        first = next((result for result in confirmed if result.events), confirmed[0])
        outcome = Outcome.APPLIED if first.events else Outcome.UNCHANGED
        return _Verdict(outcome, f"{done or 'already known'}; {checks}", first.payment, first)
    recorded = f"; recorded: {done}" if done else ""
    if failure is not None:
        reason = f"could not verify: {failure}; {checks}{recorded}"
        return _Verdict(Outcome.PENDING, reason, unreachable=isinstance(failure, TransientError))
    said = " or ".join(
        sorted({o.snapshot.status if o.snapshot else "not found" for o in observations})
    )
    reason = f"the webhook says {event.status} but ATH Móvil says {said}; {checks}{recorded}"
    return _Verdict(Outcome.REJECTED, reason, checked[0] if len(checked) == 1 else None)


_CANCELS = (Payment.Status.CANCEL, Payment.Status.EXPIRED)


def _look(
    event: WebhookEvent, payments: list[Payment], client: ATHMovilClient
) -> tuple[list[reconcile.Observation], Any, int]:
    """findPayment for each of ``payments`` in turn: the answers, the first error and how
    many were asked.

    Stops at an error ATH Móvil may get over (the next calls would wait out the same), and
    after the completion under the event's reference number (that one is the event's).
    """
    observations: list[reconcile.Observation] = []
    failure: Any = None
    asked = 0
    for payment in payments:
        asked += 1
        observation = reconcile.observe(client, payment.pk, capture=False)
        if observation.error is not None:
            failure = failure or observation.error
            if isinstance(observation.error, TransientError):
                break
            continue
        observations.append(observation)
        if _is_the_completion(event, observation):
            break
    return observations, failure, asked


def _is_the_completion(event: WebhookEvent, observation: reconcile.Observation) -> bool:
    """Whether ATH Móvil completed this payment under the completed event's reference number."""
    snapshot = observation.snapshot
    return (
        event.status == "completed"
        and bool(event.reference_number)
        and snapshot is not None
        and snapshot.status == Payment.Status.COMPLETED
        and snapshot.reference_number == event.reference_number
    )


def _apply_looks(
    event: WebhookEvent,
    observations: list[reconcile.Observation],
    failure: Any,
    conf: AthmSyncSettings,
) -> tuple[list[reconcile.Outcome], list[str], Any]:
    """Apply each answer, as a poll would; returns the results in the state the event claims,
    the transitions recorded and the first error (``failure``, or one storing an answer).

    The event's cancelled/expired breaks findPayment's CANCEL tie only for a payment ATH
    Móvil says CANCEL for when it is the only one: of two, the event cannot say which.
    """
    said_cancel = [o for o in observations if o.snapshot and o.snapshot.status in _CANCELS]
    claimed = (Payment.Status.COMPLETED,) if event.status == "completed" else _CANCELS
    confirmed: list[reconcile.Outcome] = []
    transitions: list[str] = []
    for observation in observations:
        hint = None
        if event.status in reconcile.HINTS and said_cancel == [observation]:
            hint = event.status
        try:
            result = reconcile.apply(observation, hint, source="webhook", conf=conf)
        except Payment.DoesNotExist:  # deleted meanwhile: nothing of it to follow
            continue
        transitions += [f"{each.kind} ({observation.ecommerce_id})" for each in result.events]
        if result.error:
            failure = failure or result.error
        elif observation.snapshot is not None and observation.snapshot.status in claimed:
            confirmed.append(result)
    return confirmed, transitions, failure


def _adopt(snapshot: Any) -> tuple[Payment | None, bool]:
    """The stored payment, created from ATH Móvil's answer if the shop never registered it."""
    try:
        return Payment.objects.adopt(snapshot)
    except ValueError as error:
        logger.warning("Cannot store payment %s: %s", snapshot.ecommerce_id, error)
        return None, False


def _process_refund(
    event: WebhookEvent, client: ATHMovilClient, conf: AthmSyncSettings
) -> _Verdict:
    payments = list(Payment.objects.filter(reference_number=event.reference_number)[:2])
    if len(payments) != 1:
        found = "no stored payment has" if not payments else "several stored payments have"
        return _link_refund(event, client, conf, f"{found} its reference number")
    payment = payments[0]
    observation, unsettled = _ask(client, payment.pk, payment)
    if unsettled is not None:
        return unsettled
    snapshot = observation.snapshot
    if snapshot.total_refunded_amount < (event.amount or 0):
        reason = (
            f"the webhook says {event.amount} was refunded but ATH Móvil shows "
            f"{snapshot.total_refunded_amount} refunded in all"
        )
        return _Verdict(Outcome.REJECTED, reason, payment)
    observation = dataclasses.replace(observation, refunds=_refund_details(event))
    result = reconcile.apply(observation, source="webhook", conf=conf)
    return _verdict_of(result, "")


def _link_refund(
    event: WebhookEvent, client: ATHMovilClient, conf: AthmSyncSettings, reason: str
) -> _Verdict:
    """A refund webhook whose reference number names no single stored payment: linked by the
    customer's phone, the amount and the date, or listed for a person (athm_sync.unmatched)."""
    details = _refund_details(event)
    if not details:
        return _Verdict(Outcome.IGNORED, f"{reason}, and its record cannot be read")
    detail = details[0]
    try:
        phone = normalize.digits(event.payload.get("phoneNumber"))
        name = normalize.text(event.payload.get("name"), "name")
    except ValueError:  # only what links it: without them it is listed
        phone = name = ""
    foreign = unmatched.ForeignRefund(
        amount=event.amount or Decimal("0.00"),
        reference_number=event.reference_number,
        daily_transaction_id=detail.daily_transaction_id,
        date=detail.transaction_date,
        phone=phone,
        name=name,
        message=detail.message,
        source="webhook",
    )
    linked = unmatched.link(client, conf, foreign, reason=reason)
    if linked.listed is not None:
        return _Verdict(Outcome.IGNORED, f"listed for review: {linked.reason}")
    if linked.payment is None:  # ATH Móvil could not be asked: verified again later
        return _Verdict(Outcome.PENDING, f"could not verify: {linked.reason}")
    for result in linked.outcomes:
        return _verdict_of(result, "linked by the customer's phone and the amount")
    return _Verdict(Outcome.UNCHANGED, "already known", linked.payment)


def _refund_details(event: WebhookEvent) -> tuple[reconcile.RefundDetail, ...]:
    """The refund's own amount, daily id, date and message, as the refund webhook carries them."""
    payload = event.payload
    try:
        detail = reconcile.RefundDetail(
            amount=event.amount,
            daily_transaction_id=normalize.daily_transaction_id(
                normalize.pick(payload, "dailyTransactionID", "dailyTransactionId")
            ),
            transaction_date=normalize.local_datetime(
                normalize.pick(payload, "date", "transactionDate")
            ),
            message=normalize.text(payload.get("message"), "message"),
        )
    except ValueError:  # details only: the refund itself is ATH Móvil's refunded amount
        return ()
    return (detail,)


def _verdict_of(result: reconcile.Outcome, note: str) -> _Verdict:
    if result.error:
        reason = f"could not be applied: {result.error}"
        return _Verdict(Outcome.PENDING, reason, result.payment, result)
    if result.events:
        kinds = ", ".join(str(event.kind) for event in result.events)
        reason = f"{kinds}; {note}" if note else kinds
        return _Verdict(Outcome.APPLIED, reason, result.payment, result)
    return _Verdict(Outcome.UNCHANGED, "already known", result.payment, result)


# -- the run's share -----------------------------------------------------------------------


def process_pending(
    client: ATHMovilClient,
    conf: AthmSyncSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Processed]:
    """Verify and apply every pending event, oldest first (the start of each ``athm_sync`` run).

    An event that failed before waits out its backoff (``next_attempt_at``). One that cannot
    be verified or applied (an invalid answer, a database error) stays pending with a longer
    backoff, and the others go on. The loop stops at the first event ATH Móvil cannot be asked
    about at all (it is down, or the credentials are rejected): the others would wait out the
    same retries one by one. They stay pending for the next run, as do those left when
    ``should_stop`` (asked before each event) says the run is stopping.
    """
    conf = conf or get_settings()
    now = clock.now()
    processed: list[Processed] = []
    # The ids first: rows change while the loop runs, which an open cursor must not see.
    pending = list(
        WebhookEvent.objects.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
            outcome=Outcome.PENDING,
        )
        .order_by("received_at", "pk")
        .values_list("pk", flat=True)
    )
    for pk in pending:
        if should_stop is not None and should_stop():
            break
        done = process(WebhookEvent(pk=pk), client, conf=conf)
        if done is None:
            continue
        processed.append(done)
        if done.unreachable:
            break
    return processed


def count_pending() -> int:
    """How many webhook events are waiting to be verified."""
    return WebhookEvent.objects.filter(outcome=Outcome.PENDING).count()


# -- the view's client ---------------------------------------------------------------------

_clients: dict[AthmSyncSettings, ATHMovilClient] = {}
_clients_lock = threading.Lock()


def verification_client(conf: AthmSyncSettings) -> ATHMovilClient:
    """A client whose every call, retries included, ends within ``WEBHOOK_VERIFY_TIMEOUT``.

    Shared by the requests a process serves (it keeps its connection to ATH Móvil open), and
    replaced when the settings change.
    """
    with _clients_lock:
        client = _clients.get(conf)
        if client is None:
            for old in _clients.values():
                old.close()
            _clients.clear()
            budget = conf.webhook_verify_timeout
            client = ATHMovilClient.from_settings(
                connect_timeout=min(conf.connect_timeout, budget / 2),
                read_timeout=min(conf.read_timeout, budget),
                retry_deadline=budget,
                pool_size=max(4, conf.pool_size),
            )
            _clients[conf] = client
        return client
