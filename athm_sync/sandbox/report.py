"""The transaction report (``transactionReport``): completed payments and refunds in a range.

Dates in and out are Puerto Rico local "YYYY-MM-DD HH:MM:SS" strings; the range is inclusive and
at most 31 days, and must not start in the future. Refund rows name no ``ecommerceId`` (the
original payment's reference number is the only link), and, as the real report does, every
other row writes ``dailyTransactionID`` and ``phoneNumber`` as numbers instead of strings.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from athm_sync.sandbox.clock import SandboxClock
from athm_sync.sandbox.errors import SandboxError
from athm_sync.sandbox.formats import DATE_FORMAT, PR_TZ, float32, json_number, pr_local
from athm_sync.sandbox.ledger import COMPLETED, Ledger, Payment, Refund, refund_parties

REPORT_MAX_RANGE = timedelta(days=31)


def parse_report_date(value: Any, name: str) -> datetime:
    """A report bound as an aware datetime, or the API's error for a malformed one."""
    if not isinstance(value, str):
        raise SandboxError("BTRA_0003", f"{name} is required", 400)
    text = value.strip().removesuffix(".0")
    try:
        return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=PR_TZ)
    except ValueError:
        raise SandboxError("BTRA_0001", f"{name} must look like YYYY-MM-DD HH:MM:SS", 400) from None


def payment_row(p: Payment) -> dict[str, Any]:
    """The report row of a completed payment."""
    assert p.transaction_date is not None
    return {
        "transactionType": "ECOMMERCE",
        "status": "COMPLETED",
        "date": pr_local(p.transaction_date),
        "referenceNumber": p.reference_number,
        "dailyTransactionID": p.daily_transaction_id,
        "name": p.customer_name,
        "phoneNumber": p.customer_phone,
        "email": p.customer_email,
        "message": "",
        "total": json_number(p.total),
        "tax": json_number(p.tax),
        "subtotal": json_number(p.subtotal),
        "fee": float32(p.fee),
        "netAmount": json_number(p.net_amount),
        "totalRefundAmount": json_number(p.total_refunded),
        "metadata1": p.metadata1,
        "metadata2": p.metadata2,
        "items": json.dumps(p.items),
        "ecommerceId": p.ecommerce_id,
    }


def refund_row(p: Payment, refund: Refund) -> dict[str, Any]:
    """The report row of one refund of ``p``."""
    return {
        "transactionType": "REFUND",
        "status": "COMPLETED",
        "date": pr_local(refund.date),
        **refund_parties(p, refund),
        "total": json_number(refund.amount),
        "tax": 0,
        "subtotal": 0,
        "fee": 0,
        "netAmount": json_number(refund.amount),
        "totalRefundAmount": json_number(refund.amount),
        "metadata1": p.metadata1,
        "metadata2": p.metadata2,
        "items": "[]",
        # Refund rows name no eCommerce payment; the reference number is the only link.
        "ecommerceId": "",
    }


class TransactionReport:
    """Builds the report from the ledger, as of the sandbox clock."""

    def __init__(self, ledger: Ledger, clock: SandboxClock, lock: Any) -> None:
        """A report over ``ledger``; ``lock`` is the state's."""
        self._ledger = ledger
        self._clock = clock
        self._lock = lock

    def rows(self, from_date: Any, to_date: Any) -> list[dict[str, Any]]:
        """The transaction report between two PR-local dates, inclusive, oldest first."""
        start = parse_report_date(from_date, "fromDate")
        end = parse_report_date(to_date, "toDate")
        if start > end:
            raise SandboxError("BTRA_0025", "fromDate must not be after toDate", 400)
        with self._lock:
            now_local = self._clock.now().astimezone(PR_TZ)
            if start > now_local:
                raise SandboxError("BTRA_0047", "The date range is in the future", 400)
            if end - start > REPORT_MAX_RANGE:
                raise SandboxError("BTRA_0026", "The date range is longer than 31 days", 400)
            rows: list[tuple[datetime, dict[str, Any]]] = []
            for p in self._ledger.all():
                if p.status != COMPLETED or p.transaction_date is None:
                    continue
                if start <= p.transaction_date <= end:
                    rows.append((p.transaction_date, payment_row(p)))
                for refund in p.refunds:
                    if start <= refund.date <= end:
                        rows.append((refund.date, refund_row(p, refund)))
        if not rows:
            raise SandboxError("BTRA_0022", "There are no transactions for the date range", 400)
        # Same-second rows keep the order ATH Móvil numbered them in (daily ids count up).
        rows.sort(key=lambda row: (row[0], int(row[1]["dailyTransactionID"])))
        report = [row for _, row in rows]
        # The real report is inconsistent about types; every other row gets the other type.
        for index, row in enumerate(report):
            if index % 2 == 1:
                row["dailyTransactionID"] = int(row["dailyTransactionID"])
                digits = "".join(ch for ch in str(row["phoneNumber"]) if ch.isdigit())
                if digits:
                    row["phoneNumber"] = int(digits)
        return report
