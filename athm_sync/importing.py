"""Copying the django-athm package's payments and refunds into athm_sync's tables.

``manage.py athm_import_django_athm`` is a thin door onto :func:`import_django_athm`. The
decisions, so that a shop knows what it gets:

- **django-athm's tables are read by name** (``athm_payment``, ``athm_refund``, and for the
  counts of what is not carried over ``athm_client`` and ``athm_webhook_event``), with plain SQL
  through Django's connection, never through django-athm's models. So the import works while
  ``django_athm`` is in ``INSTALLED_APPS`` and after it was removed but its tables were kept.
  The columns read are those of django-athm 1.0.2 (its migrations 0001 and 0002); a missing
  table or column is :class:`CannotImport` (one line, exit 2), before anything is written.
- **Ours is the newer truth.** A payment whose ``ecommerce_id`` athm_sync already stores is
  left exactly as it is, its django-athm refunds too, and counted. So a second run creates and
  changes nothing, and says so.
- **Whole rows or nothing.** A payment and its refunds are written together in a savepoint of
  their own, inside one transaction per batch of :data:`BATCH_SIZE` payments (one commit per
  batch, not per row: SQLite pays an fsync per commit). A payment athm_sync cannot hold as it is
  (metadata longer than our 40 characters, a reference number longer than 100, a refunded
  amount or refunds adding up to more than its total, a negative amount, a refund that is not
  COMPLETED or not positive) is reported with its reason and not imported, refunds included;
  the others still are. A process killed mid-batch rolls that batch back; running the
  command again imports it, as the rows before it are found already there.
- **History sends no signal.** Rows are inserted directly (no :func:`athm_sync.reconcile.apply`),
  so no :class:`~athm_sync.models.PaymentEvent` is written and nothing is left in the outbox for
  the next run to send: a shop's receivers never see a payment django-athm already handled.
- **Open payments become due.** An OPEN or CONFIRM payment is stored with ``next_check_at`` now,
  so the next ``athm_sync`` run asks ATH Móvil about it and sends the signal of whatever
  happened since (``payment_completed`` after the money checks, ``payment_expired``...), once.
  django-athm keeps a payment's auth token in the browser's session, not in its tables, so an
  imported CONFIRM payment cannot be captured by athm_sync: it completes when the customer's
  browser captures it, or expires. Its deadline is its ``created_at`` plus ATH Móvil's default
  600 seconds (django-athm never sets another timeout); one older than ``MAX_AGE`` is checked
  once and given up if still open.
- **Terminal payments stay terminal.** COMPLETED, CANCEL and EXPIRED are kept as they are and
  never polled. The refunded amount is django-athm's ``total_refunded_amount`` or the sum of its
  refund rows, whichever is larger (django-athm's refund webhook records a refund without
  adding it to the payment's total). A refund made later is found by the scheduled refund scan
  of the transaction report (``REFUND_SCAN_WINDOW``) or a refund webhook, matched by reference
  number, and only its growth beyond the imported amount becomes a ``Refund`` and a
  ``refund_sent``.
- **What is normalised.** ``NULL`` text becomes ``""``; text has stray spaces stripped and NUL
  characters removed (as athm_sync stores ATH Móvil's answers, so the money checks compare like
  with like); a phone number keeps its digits; a customer name, phone, e-mail or business name
  longer than our column is cut to it. Amounts are read as ``Decimal`` cents on every database.
- **Not carried over:** django-athm's ``Client`` rows (the customer's name, phone and e-mail are
  on each payment already), a payment's ``message``, its webhook events, and a refund's status,
  customer fields and client. They are counted in the summary.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from athm_sync import clock, database, normalize, reconcile
from athm_sync.models import Payment, Refund, fit_to_column

logger = logging.getLogger("athm_sync.importing")

PAYMENT_TABLE = "athm_payment"
REFUND_TABLE = "athm_refund"
CLIENT_TABLE = "athm_client"
WEBHOOK_TABLE = "athm_webhook_event"
# Payments read, and written in one transaction, at a time: memory stays flat.
BATCH_SIZE = 200

PAYMENT_COLUMNS = (
    "ecommerce_id",
    "status",
    "total",
    "subtotal",
    "tax",
    "fee",
    "net_amount",
    "total_refunded_amount",
    "reference_number",
    "daily_transaction_id",
    "metadata_1",
    "metadata_2",
    "customer_name",
    "customer_phone",
    "customer_email",
    "business_name",
    "transaction_date",
    "created_at",
)
REFUND_COLUMNS = (
    "payment_id",
    "amount",
    "reference_number",
    "daily_transaction_id",
    "message",
    "status",
    "transaction_date",
    "created_at",
)
_AMOUNTS = ("total", "subtotal", "tax", "fee", "net_amount", "total_refunded_amount")
# Must fit as they are: the money checks and refund matching read them.
_KEY_TEXT = ("reference_number", "daily_transaction_id", "metadata_1", "metadata_2")
_STATUSES = {choice.value for choice in Payment.Status if choice != Payment.Status.MISMATCHED}
ZERO = Decimal("0.00")


class CannotImport(Exception):
    """The import cannot start (its tables are missing): nothing was written."""


class Unimportable(ValueError):
    """One django-athm payment athm_sync cannot hold as it is; the message says why."""


@dataclass
class ImportReport:
    """What one import did, or would do with ``dry_run`` (the ``--json`` document)."""

    dry_run: bool = False
    payments_read: int = 0
    refunds_read: int = 0
    imported: int = 0
    imported_by_status: dict[str, int] = field(default_factory=dict)
    refunds_imported: int = 0
    due: int = 0
    already_present: int = 0
    refunds_left: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)
    clients_not_carried: int = 0
    webhook_events_not_carried: int = 0
    messages_not_carried: int = 0

    @property
    def exit_code(self) -> int:
        """0 when every payment is in athm_sync now (or would be); 1 when some could not be."""
        return 1 if self.refused else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "read": {"payments": self.payments_read, "refunds": self.refunds_read},
            "imported": {
                "payments": self.imported,
                "by_status": dict(sorted(self.imported_by_status.items())),
                "refunds": self.refunds_imported,
                "due": self.due,
            },
            "already_present": {"payments": self.already_present, "refunds": self.refunds_left},
            "not_imported": list(self.refused),
            "not_carried_over": {
                "clients": self.clients_not_carried,
                "webhook_events": self.webhook_events_not_carried,
                "payment_messages": self.messages_not_carried,
            },
            "signals_sent": 0,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class ImportedPayment:
    """One django-athm payment as athm_sync will store it, with its refunds."""

    payment: Payment
    refunds: tuple[Refund, ...]


# -- reading django-athm's tables ------------------------------------------------------------


def check_tables() -> None:
    """Raise :class:`CannotImport` unless django-athm 1.0.2's payment and refund tables, with
    every column the import reads, are in the default database."""
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        missing = [name for name in (PAYMENT_TABLE, REFUND_TABLE) if name not in tables]
        if missing:
            raise CannotImport(
                f"django-athm's table{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not in the database "
                f"{connection.settings_dict['NAME']!s}: run the import where django-athm's "
                "tables are (migrated with django_athm in INSTALLED_APPS)"
            )
        for table, wanted in ((PAYMENT_TABLE, PAYMENT_COLUMNS), (REFUND_TABLE, REFUND_COLUMNS)):
            have = {c.name for c in connection.introspection.get_table_description(cursor, table)}
            absent = [name for name in wanted if name not in have]
            if absent:
                raise CannotImport(
                    f"{table} has no column {', '.join(absent)}: not django-athm 1.0.2's table"
                )


def _count(table: str, where: str = "") -> int:
    with connection.cursor() as cursor:
        if table not in connection.introspection.table_names(cursor):
            return 0
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)} {where}")  # noqa: S608 - fixed names
        return int(cursor.fetchone()[0])


def _select(table: str, columns: Sequence[str]) -> str:
    quote = connection.ops.quote_name
    return f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)}"  # noqa: S608


def payment_batches(size: int = BATCH_SIZE) -> Iterator[list[tuple[dict[str, Any], list]]]:
    """django-athm's payments in ``ecommerce_id`` order, ``size`` at a time, each with its
    refund rows (oldest first), as dictionaries of the raw database values."""
    quote = connection.ops.quote_name
    key = quote("ecommerce_id")
    after: Any = None
    while True:
        with connection.cursor() as cursor:
            where = "" if after is None else f" WHERE {key} > %s"
            order = f" ORDER BY {key} LIMIT {int(size)}"
            cursor.execute(
                f"{_select(PAYMENT_TABLE, PAYMENT_COLUMNS)}{where}{order}",
                [] if after is None else [after],
            )
            rows = [dict(zip(PAYMENT_COLUMNS, row, strict=True)) for row in cursor.fetchall()]
            if not rows:
                return
            refunds: dict[Any, list[dict[str, Any]]] = {row["ecommerce_id"]: [] for row in rows}
            marks = ", ".join(["%s"] * len(rows))
            cursor.execute(
                f"{_select(REFUND_TABLE, REFUND_COLUMNS)} WHERE {quote('payment_id')} IN "
                f"({marks}) ORDER BY {quote('transaction_date')}, {quote('created_at')}",
                list(refunds),
            )
            for values in cursor.fetchall():
                refund = dict(zip(REFUND_COLUMNS, values, strict=True))
                refunds[refund["payment_id"]].append(refund)
        after = rows[-1]["ecommerce_id"]
        yield [(row, refunds[row["ecommerce_id"]]) for row in rows]


# -- converting one payment ------------------------------------------------------------------


def shown_id(value: Any) -> str:
    """An ``ecommerce_id`` as read (SQLite keeps it as 32 hex digits) in its usual form."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)[:40]


def _money(name: str, value: Any) -> Decimal:
    # SQLite hands back a DECIMAL column as int or float; its shortest repr is the stored
    # decimal (at most 10 digits), so nothing is lost going through str().
    if value is None:
        return ZERO
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = normalize.money(value, name)
    except (ValueError, InvalidOperation) as error:
        raise Unimportable(str(error)) from None
    if amount < 0:
        raise Unimportable(f"{name} is negative ({amount})")
    return amount


def _moment(name: str, value: Any, *, required: bool = False) -> datetime | None:
    """An aware datetime from what the database gives (a datetime, or SQLite's text)."""
    if value is None or value == "":
        if required:
            raise Unimportable(f"{name} is empty")
        return None
    moment = value if isinstance(value, datetime) else parse_datetime(str(value))
    if moment is None:
        raise Unimportable(f"{name} {str(value)[:40]!r} is not a date and time")
    if timezone.is_naive(moment):
        # With USE_TZ Django stores UTC; without it, the project's local time.
        zone = UTC if settings.USE_TZ else timezone.get_default_timezone()
        moment = timezone.make_aware(moment, zone)
    return moment.astimezone(UTC)


def _key_text(name: str, value: Any, limit: int) -> str:
    text = normalize.text(value, name)
    if len(text) > limit:
        raise Unimportable(f"{name} is {len(text)} characters; athm_sync holds {limit}")
    return text


def _limit(model: type, name: str) -> int:
    return model._meta.get_field(name).max_length


def convert(
    row: dict[str, Any], refund_rows: list[dict[str, Any]], now: datetime
) -> ImportedPayment:
    """The athm_sync ``Payment`` (unsaved) and ``Refund`` rows for one django-athm payment.

    Raises :class:`Unimportable` when it cannot be held as it is.
    """
    try:
        ecommerce_id = uuid.UUID(str(row["ecommerce_id"]))
    except ValueError:
        raise Unimportable(
            f"ecommerce_id {str(row['ecommerce_id'])[:40]!r} is not a UUID"
        ) from None
    status = str(row["status"] or "").strip().upper()
    if status not in _STATUSES:
        raise Unimportable(f"status {str(row['status'])[:20]!r} is not one athm_sync knows")
    values: dict[str, Any] = {name: _money(name, row[name]) for name in _AMOUNTS}
    for name in _KEY_TEXT:
        values[name] = _key_text(name, row[name], _limit(Payment, name))
    for name in reconcile.FITTED_FIELDS:  # descriptive: cut to fit, as ATH Móvil's answers are
        read = normalize.digits if name == "customer_phone" else normalize.text
        values[name] = fit_to_column(Payment, name, read(row[name], name))
    created_at = _moment("created_at", row["created_at"], required=True)
    transaction_date = _moment("transaction_date", row["transaction_date"])

    refunds = tuple(_convert_refund(ecommerce_id, refund, now) for refund in refund_rows)
    refunded = sum((refund.amount for refund in refunds), ZERO)
    total = values["total"]
    if refunds and status != Payment.Status.COMPLETED:
        raise Unimportable(f"it has {len(refunds)} refund(s) but is {status}, not COMPLETED")
    if refunded > total:
        raise Unimportable(f"its refunds add up to {refunded}, more than its total {total}")
    if values["total_refunded_amount"] > total:
        raise Unimportable(
            f"its refunded amount {values['total_refunded_amount']} is more than its total {total}"
        )
    values["total_refunded_amount"] = max(values["total_refunded_amount"], refunded)

    payment = Payment(
        ecommerce_id=ecommerce_id,
        status=status,
        transaction_date=transaction_date,
        created_at=created_at,
        next_check_at=now,
        **values,
    )
    payment.expires_at = payment.compute_expires_at()
    for refund in refunds:
        refund.reference_number = refund.reference_number or payment.reference_number
    return ImportedPayment(payment=payment, refunds=refunds)


def _convert_refund(ecommerce_id: uuid.UUID, row: dict[str, Any], now: datetime) -> Refund:
    reference = normalize.text(row["reference_number"], "refund reference_number")
    where = f"refund {reference or '-'}"
    status = normalize.text(row["status"], "refund status").upper()
    if status != "COMPLETED":
        raise Unimportable(f"{where} is {status or 'empty'}, not COMPLETED")
    amount = _money(f"{where} amount", row["amount"])
    if amount <= 0:
        raise Unimportable(f"{where} amount is {amount}, not positive")
    if len(reference) > _limit(Refund, "reference_number"):
        raise Unimportable(
            f"{where[:60]} reference_number is {len(reference)} characters; athm_sync holds "
            f"{_limit(Refund, 'reference_number')}"
        )
    return Refund(
        payment_id=ecommerce_id,
        amount=amount,
        reference_number=reference,
        daily_transaction_id=_key_text(
            f"{where} daily_transaction_id",
            row["daily_transaction_id"],
            _limit(Refund, "daily_transaction_id"),
        ),
        message=fit_to_column(Refund, "message", normalize.text(row["message"], "refund message")),
        transaction_date=_moment(f"{where} transaction_date", row["transaction_date"]),
        created_at=_moment(f"{where} created_at", row["created_at"]) or now,
    )


# -- the import ------------------------------------------------------------------------------


def import_django_athm(
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Copy django-athm's payments and refunds into athm_sync's tables; see the module.

    ``dry_run`` reads and converts everything and writes nothing. ``progress(report)`` is
    called after each batch. Raises :class:`CannotImport` when django-athm's tables are not
    there.
    """
    check_tables()
    now = now or clock.now()
    report = ImportReport(dry_run=dry_run)
    report.clients_not_carried = _count(CLIENT_TABLE)
    report.webhook_events_not_carried = _count(WEBHOOK_TABLE)
    message = connection.ops.quote_name("message")
    report.messages_not_carried = _count(
        PAYMENT_TABLE, f"WHERE {message} IS NOT NULL AND {message} <> ''"
    )
    for batch in payment_batches(batch_size):
        converted: list[ImportedPayment] = []
        for row, refund_rows in batch:
            report.payments_read += 1
            report.refunds_read += len(refund_rows)
            try:
                converted.append(convert(row, refund_rows, now))
            except ValueError as error:  # Unimportable, or text that is not text
                report.refused.append(
                    {"ecommerce_id": shown_id(row["ecommerce_id"]), "reason": str(error)[:300]}
                )
        ids = [item.payment.pk for item in converted]
        present = set(Payment.objects.filter(pk__in=ids).values_list("pk", flat=True))
        new = []
        for item in converted:
            if item.payment.pk in present:
                report.already_present += 1
                report.refunds_left += len(item.refunds)
            else:
                new.append(item)
        if dry_run:
            written, raced, failed = new, [], []
        else:
            written, raced, failed = database.run_locked(lambda new=new: _write(new))
        report.refused += failed
        for item in raced:
            report.already_present += 1
            report.refunds_left += len(item.refunds)
        for item in written:
            status = item.payment.status
            report.imported += 1
            report.imported_by_status[status] = report.imported_by_status.get(status, 0) + 1
            report.refunds_imported += len(item.refunds)
            report.due += status in Payment.ACTIVE_STATUSES
        if progress is not None:
            progress(report)
    if not dry_run:
        logger.info(
            "Imported %d payment(s) and %d refund(s) from django-athm; %d already there, "
            "%d not imported",
            report.imported,
            report.refunds_imported,
            report.already_present,
            len(report.refused),
        )
    return report


def _write(
    items: list[ImportedPayment],
) -> tuple[list[ImportedPayment], list[ImportedPayment], list[dict[str, str]]]:
    """Insert each payment with its refunds in a savepoint, all in one transaction; returns
    (written, stored by another door meanwhile, refused by the database with the reason)."""
    written, raced, failed = [], [], []
    with transaction.atomic():
        for item in items:
            try:
                with transaction.atomic():
                    item.payment.save(force_insert=True)
                    Refund.objects.bulk_create(item.refunds)
            except IntegrityError as error:
                if Payment.objects.filter(pk=item.payment.pk).exists():
                    # A webhook or a run stored it since the batch was read: ours is newer.
                    raced.append(item)
                else:
                    first_line = (str(error).strip().splitlines() or ["IntegrityError"])[0]
                    reason = f"the database refused it: {first_line}"[:300]
                    failed.append({"ecommerce_id": str(item.payment.pk), "reason": reason})
            else:
                written.append(item)
    return written, raced, failed
