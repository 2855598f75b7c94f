"""``Payment.objects``: the due query the poller runs, and the two ways a payment gets tracked.

- :meth:`PaymentQuerySet.due` is the one query that decides which payments to ask ATH Móvil
  about. It filters on exactly the condition of the partial index ``athm_payment_due_idx``, so
  it never reads terminal rows, however many payments have ever been stored.
- :meth:`PaymentManager.track` registers a payment the JavaScript button created in the browser.
- :meth:`PaymentManager.create_via_api` creates the payment server-side and tracks it with the
  auth token ATH Móvil answered with.

Both validate their arguments with :func:`validate_new_payment` before anything is written or
sent, so a bad amount fails in the shop's code, not at ATH Móvil or in the database.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import F, Lookup
from django.utils import timezone

from athm_sync import clock
from athm_sync.conf import MAX_PAYMENT_TIMEOUT, MIN_PAYMENT_TIMEOUT, get_settings
from athm_sync.fields import as_aware
from athm_sync.normalize import MAX_AMOUNT

if TYPE_CHECKING:
    from athm_sync.models import Payment

CENT = Decimal("0.01")
MIN_TOTAL = Decimal("1.00")
MAX_TOTAL = Decimal("1500.00")
MAX_METADATA_LENGTH = 40
# How far ahead of this server's clock a creation time given to track() may be.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class NewPayment:
    """The cleaned arguments of a payment about to be tracked or created."""

    total: Decimal
    subtotal: Decimal
    tax: Decimal
    metadata_1: str
    metadata_2: str
    items: list[dict[str, Any]]
    timeout: int


def validate_ecommerce_id(value: Any) -> uuid.UUID:
    """``value`` as a :class:`uuid.UUID`; accepts a UUID or its string form."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise ValueError(f"ecommerce_id must be a UUID, got {value!r}")


def to_money(
    name: str, value: Any, *, minimum: Decimal = Decimal("0"), maximum: Decimal = MAX_AMOUNT
) -> Decimal:
    """``value`` as a Decimal rounded to cents (half up), checked against the bounds.

    Accepts ``Decimal``, ``int`` or a numeric ``str``; refuses ``float`` (binary floats cannot hold
    most cent amounts exactly) and ``bool``.
    """
    if isinstance(value, float):
        raise ValueError(
            f"{name} must be a Decimal, int or str amount, not the float {value!r}: "
            f'pass Decimal("{value}") or "{value}" so no cents are lost.'
        )
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValueError(
            f"{name} must be a Decimal, int or str amount, not {type(value).__name__} {value!r}."
        )
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"{name} must be an amount like 12.50, got {value!r}.") from None
    if not amount.is_finite():
        raise ValueError(f"{name} must be a finite amount, got {value!r}.")
    amount = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    if not minimum <= amount <= maximum:
        raise ValueError(f"{name} must be from {minimum} to {maximum}, got {amount}.")
    return amount


def validate_new_payment(
    *,
    total: Any,
    subtotal: Any = None,
    tax: Any = None,
    metadata_1: Any = "",
    metadata_2: Any = "",
    items: Any = None,
    timeout: Any = None,
) -> NewPayment:
    """Check and clean a new payment's arguments; raises ``ValueError`` with a readable message.

    The bounds are ATH Móvil's: total 1.00 to 1500.00, metadata up to 40 characters each,
    timeout 120 to 600 seconds (``ATHM_SYNC["PAYMENT_TIMEOUT"]`` when not given).
    """
    cleaned_total = to_money("total", total, minimum=MIN_TOTAL, maximum=MAX_TOTAL)
    cleaned_subtotal = to_money("subtotal", 0 if subtotal is None else subtotal)
    cleaned_tax = to_money("tax", 0 if tax is None else tax)
    metadata = []
    for name, value in (("metadata_1", metadata_1), ("metadata_2", metadata_2)):
        value = "" if value is None else value
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a str, not {type(value).__name__}.")
        if len(value) > MAX_METADATA_LENGTH:
            raise ValueError(
                f"{name} must be at most {MAX_METADATA_LENGTH} characters (ATH Móvil's limit), "
                f"got {len(value)}: {value!r}."
            )
        metadata.append(value)
    cleaned_items = _validate_items(items)
    if timeout is None:
        timeout = get_settings().payment_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise ValueError(f"timeout must be a whole number of seconds, got {timeout!r}.")
    if not MIN_PAYMENT_TIMEOUT <= timeout <= MAX_PAYMENT_TIMEOUT:
        raise ValueError(
            f"timeout must be from {MIN_PAYMENT_TIMEOUT} to {MAX_PAYMENT_TIMEOUT} seconds "
            f"(ATH Móvil's limits), got {timeout}."
        )
    return NewPayment(
        total=cleaned_total,
        subtotal=cleaned_subtotal,
        tax=cleaned_tax,
        metadata_1=metadata[0],
        metadata_2=metadata[1],
        items=cleaned_items,
        timeout=timeout,
    )


def _validate_items(items: Any) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list | tuple) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"items must be a list of dicts, got {items!r}.")
    try:
        json.dumps(items, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"items must be JSON-serialisable: {exc}") from None
    return [dict(item) for item in items]


def _validate_created_at(created_at: Any) -> datetime:
    """The creation time a browser reported, refused when no clock could have given it.

    A browser's clock is not trusted: a time ahead of ours by more than ``CLOCK_SKEW`` or older
    than ``MAX_AGE`` would get the payment polled every few seconds for days, or given up at
    its first check. An aware time is taken as it is; a naive one only under ``USE_TZ = False``,
    where Django means local time in ``TIME_ZONE`` (with ``USE_TZ = True`` a naive time is
    ambiguous, and refused).
    """
    now = clock.now()
    if created_at is None:
        return now
    if not isinstance(created_at, datetime):
        raise ValueError(f"created_at must be a datetime, got {created_at!r}.")
    if timezone.is_naive(created_at):
        if settings.USE_TZ:
            raise ValueError(
                f"created_at must be timezone-aware, got the naive {created_at.isoformat()}."
            )
        created_at = as_aware(created_at)
    if created_at > now + CLOCK_SKEW:
        raise ValueError(
            f"created_at {created_at.isoformat()} is in the future (more than "
            f"{CLOCK_SKEW.total_seconds():g} s ahead of this server's clock); "
            "leave it out to use the time of this call."
        )
    max_age = get_settings().max_age
    if created_at < now - max_age:
        raise ValueError(
            f"created_at {created_at.isoformat()} is more than MAX_AGE ({max_age}) ago; "
            "leave it out to use the time of this call."
        )
    return created_at


def _validate_phone_number(phone_number: Any) -> str | None:
    """Ten digits (a leading 1 dropped), or ``None`` for no phone number (``None``, ``""`` or
    only spaces): then ATH Móvil sends the payment request to no phone."""
    if phone_number is None or (isinstance(phone_number, str) and not phone_number.strip()):
        return None
    digits = "".join(ch for ch in str(phone_number) if ch.isdigit())
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    if isinstance(phone_number, bool) or len(digits) != 10:
        raise ValueError(
            f"phone_number must be a 10-digit phone number like 7875551234, got {phone_number!r}."
        )
    return digits


class StatusIn(Lookup):
    """``status IN ('OPEN', 'CONFIRM')`` with the values written into the SQL, not bound.

    A partial index serves a query only when the database can prove the query's WHERE implies
    the index's. SQLite (and PostgreSQL with server-side parameter binding) cannot see through a
    bound ``IN (?, ?)``, so the due query spells the statuses out exactly as the index does.
    Only fixed status constants are accepted, so nothing from outside reaches the SQL.

    A lookup, not a boolean function: ``filter()`` takes a lookup as the condition itself,
    where Django 6.1 compares a boolean function with ``= True``, which no index matches.
    """

    lookup_name = "athm_status_in"
    prepare_rhs = False

    def __init__(self, values: tuple[str, ...] | list[str]) -> None:
        for value in values:
            if not re.fullmatch(r"[A-Z]+", value):
                raise ValueError(f"not a status constant: {value!r}")
        super().__init__(F("status"), tuple(values))

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        column, params = compiler.compile(self.lhs)
        literals = ", ".join(f"'{value}'" for value in self.rhs)
        return f"{column} IN ({literals})", list(params)


class PaymentQuerySet(models.QuerySet):
    def active(self) -> PaymentQuerySet:
        """Payments that can still change status (OPEN or CONFIRM)."""
        return self.filter(status__in=self.model.ACTIVE_STATUSES)

    def terminal(self) -> PaymentQuerySet:
        """Payments that reached COMPLETED, CANCEL or EXPIRED."""
        return self.filter(status__in=self.model.TERMINAL_STATUSES)

    def due(self, now: datetime | None = None) -> PaymentQuerySet:
        """Active payments whose ``next_check_at`` has come, the most overdue first.

        Every active payment that is not given up is due once its time comes, however it was
        stored: ``next_check_at`` defaults to the moment the row is inserted, in Python and in
        the database. Filters on the same condition as the partial index
        ``athm_payment_due_idx``, so the database answers from the index and never reads
        terminal or given-up rows.
        """
        now = clock.now() if now is None else now
        return self.filter(
            StatusIn(self.model.ACTIVE_STATUSES),
            given_up_at__isnull=True,
            next_check_at__lte=now,
        ).order_by("next_check_at", "pk")

    def make_due(self, now: datetime | None = None) -> int:
        """Bring the next check of these payments forward to ``now``, never back; returns how
        many rows moved. For payments something says may have changed (a webhook that could
        be about them) but that were not checked then: the next run checks them first."""
        now = clock.now() if now is None else now
        return self.filter(next_check_at__gt=now).update(next_check_at=now)

    def given_up(self) -> PaymentQuerySet:
        """Payments still OPEN or CONFIRM after ``MAX_AGE``, no longer checked."""
        return self.active().filter(given_up_at__isnull=False)


class PaymentManager(models.Manager.from_queryset(PaymentQuerySet)):  # type: ignore[misc]
    def track(
        self,
        ecommerce_id: uuid.UUID | str,
        *,
        total: Decimal | int | str,
        subtotal: Decimal | int | str | None = None,
        tax: Decimal | int | str | None = None,
        metadata_1: str = "",
        metadata_2: str = "",
        items: list[dict[str, Any]] | None = None,
        timeout: int | None = None,
        created_at: datetime | None = None,
        auth_token: str = "",
    ) -> Payment:
        """Follow a payment the JavaScript button created; returns its row.

        Idempotent: tracking an ``ecommerce_id`` again returns the stored row unchanged. Tracking
        it again with a different total or metadata raises ``ValueError`` and changes nothing.
        A new row is OPEN and due for a check at once; its expiry deadline is
        ``created_at + timeout``. ``created_at`` (the time the button reported) may be at most
        ``CLOCK_SKEW`` (5 minutes) ahead of this server's clock and no older than ``MAX_AGE``.

        ATH Móvil's answer must later match what is stored here: the payment completes only
        if ATH Móvil's total equals ``total`` and, where given, its metadata equals
        ``metadata_1`` / ``metadata_2``; otherwise it is held as ``MISMATCHED``.
        """
        payment_id = validate_ecommerce_id(ecommerce_id)
        cleaned = validate_new_payment(
            total=total,
            subtotal=subtotal,
            tax=tax,
            metadata_1=metadata_1,
            metadata_2=metadata_2,
            items=items,
            timeout=timeout,
        )
        created = _validate_created_at(created_at)
        if not isinstance(auth_token, str):
            raise ValueError("auth_token must be a str.")
        return self._store(payment_id, cleaned, created_at=created, auth_token=auth_token)

    def create_via_api(
        self,
        *,
        total: Decimal | int | str,
        subtotal: Decimal | int | str = 0,
        tax: Decimal | int | str = 0,
        metadata_1: str = "",
        metadata_2: str = "",
        items: list[dict[str, Any]] | None = None,
        phone_number: str | int | None = None,
        timeout: int | None = None,
        client: Any = None,
    ) -> Payment:
        """Create the payment at ATH Móvil and track it, keeping its auth token for capture.

        ``phone_number`` is where ATH Móvil sends the payment request (a push to that phone's
        ATH Móvil app); it is optional: without one (``None`` or ``""``) no push is sent until
        the payment is sent to a phone with ``updatePhoneNumber``. Arguments are validated
        before ATH Móvil is called. If the client raises (an
        ``athm_sync.client.ATHMovilError``), the error propagates and nothing is stored.
        """
        cleaned = validate_new_payment(
            total=total,
            subtotal=subtotal,
            tax=tax,
            metadata_1=metadata_1,
            metadata_2=metadata_2,
            items=items,
            timeout=timeout,
        )
        phone = _validate_phone_number(phone_number)
        if client is None:
            from athm_sync.client import ATHMovilClient

            client = ATHMovilClient.from_settings()
        # The payment cannot have been created before we asked for it: taking the time now
        # keeps the local expiry deadline from falling after ATH Móvil's.
        asked_at = clock.now()
        created = client.create_payment(
            total=cleaned.total,
            subtotal=cleaned.subtotal,
            tax=cleaned.tax,
            metadata_1=cleaned.metadata_1,
            metadata_2=cleaned.metadata_2,
            items=cleaned.items,
            phone_number=phone,
            timeout=cleaned.timeout,
        )
        return self._store(
            validate_ecommerce_id(created.ecommerce_id),
            cleaned,
            created_at=asked_at,
            auth_token=created.auth_token or "",
        )

    def adopt(self, snapshot: Any, *, by_reference: bool = False) -> tuple[Payment, bool]:
        """Track a payment ATH Móvil knows but the shop never registered; ``(payment, created)``.

        For the button flow where the browser went away before it told the server: a verified
        webhook brings the payment in from ATH Móvil's answer (a
        :class:`~athm_sync.client.PaymentSnapshot`). The new row is OPEN, as a freshly tracked
        payment is; the caller applies the snapshot through the reconciler, which fires the
        signal. An already stored payment is returned unchanged; ``by_reference`` also finds
        one by the snapshot's reference number (a report row, which may name no ecommerceId).
        Raises ``ValueError`` when the snapshot's amounts are outside what a payment can hold.
        """
        payment_id = validate_ecommerce_id(snapshot.ecommerce_id)
        existing = self.filter(pk=payment_id).first()
        if existing is None and by_reference and snapshot.reference_number:
            existing = self.filter(reference_number=snapshot.reference_number).first()
        if existing is not None:
            return existing, False
        cleaned = validate_new_payment(
            total=snapshot.total,
            subtotal=snapshot.subtotal,
            tax=snapshot.tax,
            metadata_1=snapshot.metadata_1[:MAX_METADATA_LENGTH],
            metadata_2=snapshot.metadata_2[:MAX_METADATA_LENGTH],
            items=[item for item in snapshot.items if isinstance(item, dict)],
        )
        # When it was created is unknown; its completion time is the best bound there is.
        created_at = snapshot.transaction_date or clock.now()
        payment = self._store(payment_id, cleaned, created_at=created_at, auth_token="")
        return payment, True

    def _store(
        self, ecommerce_id: uuid.UUID, cleaned: NewPayment, *, created_at: datetime, auth_token: str
    ) -> Payment:
        with transaction.atomic(using=self.db):
            payment, created = self.get_or_create(
                ecommerce_id=ecommerce_id,
                defaults={
                    "status": self.model.Status.OPEN,
                    "total": cleaned.total,
                    "subtotal": cleaned.subtotal,
                    "tax": cleaned.tax,
                    "metadata_1": cleaned.metadata_1,
                    "metadata_2": cleaned.metadata_2,
                    "items": cleaned.items,
                    "timeout": cleaned.timeout,
                    "created_at": created_at,
                    "expires_at": created_at + timedelta(seconds=cleaned.timeout),
                    "auth_token": auth_token,
                },
            )
        if not created:
            for name, stored, given in (
                ("total", payment.total, cleaned.total),
                ("metadata_1", payment.metadata_1, cleaned.metadata_1),
                ("metadata_2", payment.metadata_2, cleaned.metadata_2),
            ):
                if stored != given:
                    raise ValueError(
                        f"Payment {ecommerce_id} is already tracked with {name} {stored!r}; "
                        f"it cannot be tracked again with {name} {given!r}."
                    )
        return payment
