"""ATH Móvil's transaction report: finding refunds made elsewhere, and importing history.

Refunds made in the ATH Business app change nothing findPayment would be asked about (the
payment is COMPLETED, so it is no longer polled), and their webhook is not always sent. So a
run reads the report's last ``REFUND_SCAN_WINDOW`` (default 2 days), at most once every
``REFUND_SCAN_INTERVAL`` (default 15 minutes), in :func:`scan_refunds`:

- a refund row of a stored COMPLETED or MISMATCHED payment (matched by reference number) that
  no ``Refund`` row knows yet (same daily transaction id and date) makes the run ask
  findPayment about that payment, at most once per payment per scan, and apply the answer
  through :func:`athm_sync.reconcile.apply`: each newly seen increase of the refunded amount
  becomes one ``Refund`` (with the row's daily id, date and message) and one ``refund_sent``;
- a row whose refund is already recorded without those details (found by a poll) lends them
  to it, with no API call; when a poll recorded several refunds as one, that ``Refund`` is
  split, one per row (:func:`_split_details`);
- a row whose reference number names no single stored payment is linked by the customer's
  phone, the amount and the date, or listed for a person (:mod:`athm_sync.unmatched`).

The work of a scan does not grow with the payments ever stored: one report call (per 7 days
of window), at most one findPayment per payment with an unknown refund in the window, and at
most ``unmatched.MAX_CANDIDATE_CALLS`` per refund row whose reference names no payment, the
first time it is seen.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from athm_sync import database, reconcile, unmatched
from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    InvalidResponseError,
    ReportTransaction,
)
from athm_sync.conf import AthmSyncSettings
from athm_sync.models import Payment, Refund, ReportScan

logger = logging.getLogger("athm_sync.report")

REFUNDS = "refunds"
REFUND, ECOMMERCE = "REFUND", "ECOMMERCE"
# The report's longest range is not published (BTRA_0026 names it); a week has been accepted.
CHUNK = timedelta(days=7)
# After a scan fails, the next run tries again this soon.
RETRY_AFTER = timedelta(minutes=1)
_PAID = (Payment.Status.COMPLETED, Payment.Status.MISMATCHED)
# How many unmatched refunds --json names (all are counted, and listed in the admin).
UNMATCHED_LISTED = 20


@dataclass
class ScanResult:
    """What one scan of the report did (the ``refund_scan`` key of ``--json``)."""

    scanned_from: datetime
    scanned_to: datetime
    rows: int = 0
    refund_rows: int = 0
    refunds: int = 0
    checked: int = 0
    untracked: int = 0
    # Of the untracked rows: linked to a payment by phone, amount and date (athm_sync.unmatched),
    # and those linked to none, listed for a person (UnmatchedRefund).
    linked: int = 0
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)
    outcomes: list[reconcile.Outcome] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.scanned_from.isoformat(),
            "to": self.scanned_to.isoformat(),
            "rows": self.rows,
            "refund_rows": self.refund_rows,
            "refunds": self.refunds,
            "checked": self.checked,
            "untracked": self.untracked,
            "linked": self.linked,
            "unmatched": len(self.unmatched),
            "unmatched_refunds": self.unmatched[:UNMATCHED_LISTED],
            "unparsable": len(self.unparsable),
        }


def chunks(start: datetime, end: datetime, size: timedelta = CHUNK) -> Iterator[tuple]:
    """``(from, to)`` ranges of at most ``size`` that cover ``start`` to ``end`` once, in
    order. Both ends of a range are included (the report's way), so each range ends a second
    before the next begins: a row on the boundary is read once."""
    second = timedelta(seconds=1)
    while start <= end:
        stop = min(start + size - second, end)
        yield start, stop
        start = stop + second


def claim_scan(now: datetime, conf: AthmSyncSettings) -> bool:
    """Whether this run scans for refunds now; at most one run per ``REFUND_SCAN_INTERVAL``."""
    database.run_locked(
        lambda: ReportScan.objects.get_or_create(name=REFUNDS, defaults={"next_scan_at": now})
    )
    return bool(
        database.run_locked(
            lambda: ReportScan.objects.filter(name=REFUNDS, next_scan_at__lte=now).update(
                next_scan_at=now + conf.refund_scan_interval
            )
        )
    )


def scan_refunds(client: ATHMovilClient, conf: AthmSyncSettings, now: datetime) -> ScanResult:
    """Read the report's last ``REFUND_SCAN_WINDOW`` and record the refunds it shows that are
    not recorded yet. Raises :class:`ATHMovilError` when the report cannot be read (the next
    run tries again a minute later)."""
    result = ScanResult(now - conf.refund_scan_window, now)
    try:
        for start, stop in chunks(result.scanned_from, now):
            report = client.report_rows(start, stop)
            result.rows += len(report.transactions) + len(report.unparsable)
            result.unparsable += [f"row {i}: {why}" for i, why in report.unparsable]
            refund_rows = [row for row in report.transactions if row.transaction_type == REFUND]
            result.refund_rows += len(refund_rows)
            record_refunds(client, conf, refund_rows, result, source="report")
    except ATHMovilError as error:
        _finish(result, now + RETRY_AFTER, str(error))
        raise
    for problem in result.unparsable:
        logger.error("Transaction report: a row could not be read: %s", problem)
    _finish(result, None, "")
    return result


def record_refunds(
    client: ATHMovilClient,
    conf: AthmSyncSettings,
    rows: list[ReportTransaction],
    result: ScanResult,
    *,
    source: str,
    quiet: bool = False,
) -> None:
    """Record the refunds among ``rows`` that no ``Refund`` knows yet (see the module): one
    findPayment per payment with unknown refunds; its growth becomes one ``Refund`` per row
    when the rows add up to it."""
    references = {row.reference_number for row in rows if row.reference_number}
    payments: dict[str, list[Payment]] = {}
    for payment in Payment.objects.filter(reference_number__in=references, status__in=_PAID):
        payments.setdefault(payment.reference_number, []).append(payment)
    unknown: dict[Any, tuple[Payment, list[ReportTransaction]]] = {}
    foreign: list[tuple[ReportTransaction, str]] = []
    for row in sorted(rows, key=lambda row: (row.date is None, row.date)):
        matches = payments.get(row.reference_number, [])
        if len(matches) != 1:
            result.untracked += 1
            found = "no stored payment has" if not matches else "several stored payments have"
            foreign.append((row, f"{found} its reference number"))
            continue
        payment = matches[0]
        if not (_known(payment, row) or _lend_details(payment, row)):
            unknown.setdefault(payment.pk, (payment, []))[1].append(row)
    for payment, its_rows in unknown.values():
        observation = reconcile.observe(client, payment.pk, capture=False)
        if isinstance(observation.error, AuthenticationError):
            raise observation.error
        observation = dataclasses.replace(observation, refunds=details_of(its_rows))
        outcome = reconcile.apply(observation, source=source, conf=conf, quiet=quiet)
        result.checked += 1
        result.refunds += sum(1 for event in outcome.events if event.refund_id)
        result.outcomes.append(outcome)
        for row in its_rows:  # not new: part of a refund recorded before without details
            _known(payment, row) or _lend_details(payment, row) or _split_details(payment, row)
    for row, reason in foreign:
        linked = unmatched.link(
            client, conf, foreign_refund(row, source), reason=reason, quiet=quiet
        )
        result.checked += linked.calls
        for outcome in linked.outcomes:
            result.refunds += sum(1 for event in outcome.events if event.refund_id)
            result.outcomes.append(outcome)
        if linked.payment is not None:
            result.linked += not linked.known
        elif linked.listed is not None:
            result.unmatched.append(
                {
                    "reference_number": row.reference_number,
                    "daily_transaction_id": row.daily_transaction_id,
                    "date": row.date.isoformat() if row.date else None,
                    "amount": str(row.total),
                    "reason": linked.reason,
                }
            )


def foreign_refund(row: ReportTransaction, source: str) -> unmatched.ForeignRefund:
    """A refund row of the report as a refund to link by what else names it."""
    return unmatched.ForeignRefund(
        amount=row.total,
        reference_number=row.reference_number,
        daily_transaction_id=row.daily_transaction_id,
        date=row.date,
        phone=row.customer_phone,
        name=row.customer_name,
        message=row.message,
        source=source,
    )


def details_of(rows: list[ReportTransaction]) -> tuple[reconcile.RefundDetail, ...]:
    """Refund rows of the report as the records of the refunds they are."""
    return tuple(
        reconcile.RefundDetail(row.total, row.daily_transaction_id, row.date, row.message)
        for row in rows
    )


def _known(payment: Payment, row: ReportTransaction) -> bool:
    return Refund.objects.filter(
        payment=payment,
        daily_transaction_id=row.daily_transaction_id,
        transaction_date=row.date,
    ).exists()


def _lend_details(payment: Payment, row: ReportTransaction) -> bool:
    """Give a refund recorded without its details (found by a poll) the row's; True if one
    of the same amount was waiting for them."""
    bare = (
        Refund.objects.filter(payment=payment, daily_transaction_id="", amount=row.total)
        .order_by("created_at", "pk")
        .first()
    )
    if bare is None:
        return False
    bare.daily_transaction_id = row.daily_transaction_id[:32]
    bare.transaction_date = row.date
    bare.message = row.message[:255]
    database.run_locked(
        lambda: bare.save(update_fields=["daily_transaction_id", "transaction_date", "message"])
    )
    return True


def _split_details(payment: Payment, row: ReportTransaction) -> bool:
    """Give the row's record to part of a larger refund recorded without details (a poll saw
    two refunds made between two checks as one growth): that ``Refund`` keeps its id and its
    ``refund_sent``, and takes the row's amount and record; the rest becomes a ``Refund`` of
    its own without details (no signal: the money's was sent), for the next row to fill.
    True if one was split."""

    def split() -> bool:
        with transaction.atomic():
            bare = (
                Refund.objects.select_for_update()
                .filter(payment=payment, daily_transaction_id="", amount__gt=row.total)
                .order_by("created_at", "pk")
                .first()
            )
            if bare is None:
                return False
            Refund.objects.create(
                payment=payment,
                amount=bare.amount - row.total,
                reference_number=bare.reference_number,
                created_at=bare.created_at,
            )
            bare.amount = row.total
            bare.daily_transaction_id = row.daily_transaction_id[:32]
            bare.transaction_date = row.date
            bare.message = row.message[:255]
            bare.save(
                update_fields=["amount", "daily_transaction_id", "transaction_date", "message"]
            )
            return True

    return database.run_locked(split)


def _finish(result: ScanResult, retry_at: datetime | None, error: str) -> None:
    updates: dict[str, Any] = {
        "scanned_from": result.scanned_from,
        "scanned_to": result.scanned_to,
        "rows": result.rows,
        "refunds": result.refunds,
        "last_error": error[:1000],
    }
    if retry_at is not None:
        updates["next_scan_at"] = retry_at

    database.run_locked(lambda: ReportScan.objects.filter(name=REFUNDS).update(**updates))


# -- backfill: importing history -------------------------------------------------------------

# A payment the report names without an ecommerceId gets this id from its reference number,
# so a second backfill finds the same payment again.
BACKFILL_NAMESPACE = uuid.UUID("6b1d7f3e-5a0c-4d41-9a3e-7f2c9d1e4b60")


def backfill_id(row: ReportTransaction) -> uuid.UUID:
    """The payment id of an eCommerce report row: its ``ecommerceId``, or one derived from
    its reference number (uuid5) when the report gives none."""
    if row.ecommerce_id is not None:
        return row.ecommerce_id
    return uuid.uuid5(BACKFILL_NAMESPACE, row.reference_number)


@dataclass
class BackfillResult:
    """What a backfill did, chunk after chunk (the ``backfill`` key of ``--json``).

    Each completed eCommerce row names one payment, which is ``payments_created`` (new here),
    ``payments_updated`` (stored, and the report changed it) or ``payments_unchanged`` (stored
    as the report has it already); ``refunds`` are the refunds recorded.
    """

    chunks: int = 0
    rows: int = 0
    payments_created: int = 0
    payments_updated: int = 0
    payments_unchanged: int = 0
    refunds: int = 0
    skipped_types: dict[str, int] = field(default_factory=dict)
    unparsable: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "rows": self.rows,
            "payments_created": self.payments_created,
            "payments_updated": self.payments_updated,
            "payments_unchanged": self.payments_unchanged,
            "refunds": self.refunds,
            "skipped": dict(self.skipped_types),
            "unparsable": list(self.unparsable),
        }


def backfill(
    client: ATHMovilClient,
    conf: AthmSyncSettings,
    start: datetime,
    end: datetime,
    *,
    quiet: bool = False,
    on_outcome: Any = None,
    progress: Any = None,
    should_stop: Any = None,
) -> BackfillResult:
    """Import the report between ``start`` and ``end``, a week at a time (memory stays flat).

    Completed eCommerce payments missing locally are created and completed, those that differ
    are updated, and refunds recorded, all through :func:`athm_sync.reconcile.apply`, so
    their signals fire once (``quiet``: none, for history). Other types are counted and
    skipped; a row that cannot be read is named in ``unparsable`` and the others imported.
    ``on_outcome(outcome)`` sees each applied change, ``progress(done, total)`` each chunk.
    ``should_stop()`` is asked before each chunk and each row: when it says so, the backfill
    ends there; what it imported stands, and running it again imports the rest.
    """
    result = BackfillResult()
    ranges = list(chunks(start, end))
    stopping = should_stop or (lambda: False)
    for done, (chunk_start, chunk_end) in enumerate(ranges, start=1):
        if stopping():
            break
        report = client.report_rows(chunk_start, chunk_end)
        result.chunks += 1
        result.rows += len(report.transactions) + len(report.unparsable)
        result.unparsable += [
            f"{chunk_start:%Y-%m-%d} row {index}: {why}" for index, why in report.unparsable
        ]
        refunds: dict[str, list[ReportTransaction]] = {}
        for row in report.transactions:
            if row.transaction_type == REFUND:
                refunds.setdefault(row.reference_number, []).append(row)
        for row in report.transactions:
            if stopping():
                return result
            if row.transaction_type == ECOMMERCE and row.status == Payment.Status.COMPLETED:
                its_refunds = refunds.pop(row.reference_number, [])
                outcome = _import_payment(row, its_refunds, conf, quiet, result)
                if outcome is not None and on_outcome is not None:
                    on_outcome(outcome)
            elif row.transaction_type != REFUND:
                kind = row.transaction_type or "unknown"
                result.skipped_types[kind] = result.skipped_types.get(kind, 0) + 1
        # Refunds of payments not in this range: their payments are found by reference.
        scan = ScanResult(chunk_start, chunk_end)
        later = [row for rows in refunds.values() for row in rows]
        record_refunds(client, conf, later, scan, source="backfill", quiet=quiet)
        result.refunds += scan.refunds
        for outcome in scan.outcomes:
            if on_outcome is not None:
                on_outcome(outcome)
        if progress is not None:
            progress(done, len(ranges))
    return result


def _import_payment(
    row: ReportTransaction,
    refunds: list[ReportTransaction],
    conf: AthmSyncSettings,
    quiet: bool,
    result: BackfillResult,
) -> reconcile.Outcome | None:
    """Create or update the payment of one completed eCommerce row; ``refunds`` are the
    report's refund rows for it (their records go onto the ``Refund`` rows)."""
    snapshot = row.as_snapshot(backfill_id(row))
    try:
        reconcile.check_answer(snapshot.ecommerce_id, snapshot, call="transaction report")
        payment, created = Payment.objects.adopt(snapshot, by_reference=True)
    except (ValueError, InvalidResponseError) as error:
        reason = f"{row.reference_number or '-'}: {error}"
        result.unparsable.append(reason[:300])
        return None
    unknown = [refund for refund in refunds if not _known(payment, refund)]
    observation = reconcile.Observation(payment.pk, snapshot=snapshot, refunds=details_of(unknown))
    outcome = reconcile.apply(observation, source="backfill", conf=conf, quiet=quiet)
    for refund in refunds:  # already recorded by a poll: lend them their records
        _known(payment, refund) or _lend_details(payment, refund)
    if created:
        result.payments_created += 1
    elif outcome.changed:
        result.payments_updated += 1
    elif not outcome.error:
        result.payments_unchanged += 1
    result.refunds += sum(1 for event in outcome.events if event.refund_id)
    return outcome
