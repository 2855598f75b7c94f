"""The answer types of the ATH Móvil client and their parsing.

Answers are frozen dataclasses with every quirk normalised (:mod:`athm_sync.normalize`) and
the raw answer kept in ``raw``. Each ``from_api`` raises ``ValueError`` naming a bad field; the
client turns that into ``InvalidResponseError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from athm_sync import normalize

__all__ = [
    "CreatedPayment",
    "PaymentSnapshot",
    "RefundResult",
    "Report",
    "ReportTransaction",
]


@dataclass(frozen=True, kw_only=True)
class _Transaction:
    """The fields findPayment answers and report rows share (see ``_transaction_fields``);
    ``raw`` is the answer exactly as ATH Móvil sent it."""

    reference_number: str
    daily_transaction_id: str
    total: Decimal
    subtotal: Decimal
    tax: Decimal
    fee: Decimal
    net_amount: Decimal
    total_refunded_amount: Decimal
    metadata_1: str
    metadata_2: str
    customer_name: str
    customer_phone: str
    customer_email: str
    items: tuple[Any, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class PaymentSnapshot(_Transaction):
    """What ATH Móvil says about one eCommerce payment right now (findPayment's answer).

    ``status`` is OPEN, CONFIRM, COMPLETED or CANCEL: findPayment says CANCEL both for a
    payment the customer cancelled and for one that expired.
    """

    ecommerce_id: uuid.UUID
    status: str
    transaction_date: datetime | None
    business_name: str

    @classmethod
    def from_api(
        cls, data: Mapping[str, Any], ecommerce_id: uuid.UUID | None = None
    ) -> PaymentSnapshot:
        """Parse findPayment's ``data`` object; raises ``ValueError`` naming a bad field.

        ``ecommerce_id`` is the payment's id when the answer does not name it (the refund
        answer's ``originalTransaction``); an id in the answer always wins.
        """
        return cls(
            ecommerce_id=normalize.ecommerce_id(data.get("ecommerceId") or ecommerce_id),
            status=normalize.status(
                normalize.pick(data, "ecommerceStatus", "status"), "ecommerceStatus"
            ),
            transaction_date=normalize.local_datetime(
                normalize.pick(data, "transactionDate", "date"), "transactionDate"
            ),
            business_name=normalize.text(data.get("businessName"), "businessName"),
            **_transaction_fields(data),
        )


@dataclass(frozen=True)
class CreatedPayment:
    """The answer to create payment: the new payment's id and the auth token to capture it."""

    ecommerce_id: uuid.UUID
    auth_token: str = field(repr=False)
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class RefundResult:
    """The answer to a refund: the refund itself and, when sent, the refunded payment."""

    amount: Decimal
    status: str
    reference_number: str
    daily_transaction_id: str
    transaction_date: datetime | None
    message: str
    payment: PaymentSnapshot | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class ReportTransaction(_Transaction):
    """One row of the transaction report: a payment (of any kind) or a refund.

    ``transaction_type`` is upper-cased (``ECOMMERCE``, ``REFUND``, ``PAYMENT``...);
    ``ecommerce_id`` is ``None`` for rows that are not eCommerce payments.
    """

    transaction_type: str
    status: str
    ecommerce_id: uuid.UUID | None
    date: datetime | None
    message: str

    def as_snapshot(self, ecommerce_id: uuid.UUID) -> PaymentSnapshot:
        """This completed eCommerce row as the findPayment answer it stands for."""
        common = {f.name: getattr(self, f.name) for f in fields(_Transaction)}
        return PaymentSnapshot(
            **common,
            ecommerce_id=ecommerce_id,
            status=self.status or "COMPLETED",
            transaction_date=self.date,
            business_name="",
        )

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> ReportTransaction:
        """Parse one report row; raises ``ValueError`` naming a bad field."""
        raw_id = normalize.text(row.get("ecommerceId"), "ecommerceId")
        raw_status = normalize.text(row.get("status"), "status")
        return cls(
            transaction_type=normalize.text(row.get("transactionType"), "transactionType").upper(),
            status=normalize.status(raw_status) if raw_status else "",
            ecommerce_id=normalize.ecommerce_id(raw_id) if raw_id else None,
            date=normalize.local_datetime(normalize.pick(row, "date", "transactionDate")),
            message=normalize.text(row.get("message"), "message"),
            **_transaction_fields(row),
        )


@dataclass
class Report:
    """The transaction report, parsed row by row: the rows that parsed, and each row that did
    not as ``(index, reason)``."""

    transactions: list[ReportTransaction] = field(default_factory=list)
    unparsable: list[tuple[int, str]] = field(default_factory=list)


def _transaction_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields findPayment answers and report rows share, under either spelling."""
    return {
        "reference_number": normalize.text(data.get("referenceNumber"), "referenceNumber"),
        "daily_transaction_id": normalize.daily_transaction_id(
            normalize.pick(data, "dailyTransactionId", "dailyTransactionID")
        ),
        "total": normalize.money(data.get("total"), "total"),
        "subtotal": normalize.money(normalize.pick(data, "subTotal", "subtotal"), "subTotal"),
        "tax": normalize.money(data.get("tax"), "tax"),
        "fee": normalize.money(data.get("fee"), "fee"),
        "net_amount": normalize.money(data.get("netAmount"), "netAmount"),
        "total_refunded_amount": normalize.money(
            normalize.pick(data, "totalRefundedAmount", "totalRefundAmount"),
            "totalRefundedAmount",
        ),
        "metadata_1": normalize.text(data.get("metadata1"), "metadata1"),
        "metadata_2": normalize.text(data.get("metadata2"), "metadata2"),
        "customer_name": normalize.text(data.get("name"), "name"),
        "customer_phone": normalize.digits(data.get("phoneNumber")),
        "customer_email": normalize.text(data.get("email"), "email"),
        "items": tuple(normalize.items(data.get("items"))),
        "raw": dict(data),
    }


def refund_result(
    data: Mapping[str, Any], reference_number: str, ecommerce_id: uuid.UUID | None
) -> RefundResult:
    """The refund answer's ``data``. Its ``originalTransaction`` carries no ``ecommerceId`` in
    Evertec's documented answer: it is taken as ``ecommerce_id``'s only when it names the
    reference number that was refunded."""
    refund = data.get("refund", data)
    if not isinstance(refund, dict):
        raise ValueError("refund must be an object")
    original = data.get("originalTransaction")
    payment = None
    if isinstance(original, dict):
        if original.get("ecommerceId"):
            payment = PaymentSnapshot.from_api(original)
        elif ecommerce_id is not None and normalize.text(
            original.get("referenceNumber"), "referenceNumber"
        ) == normalize.text(reference_number):
            payment = PaymentSnapshot.from_api(original, ecommerce_id)
    return RefundResult(
        amount=normalize.money(
            normalize.pick(refund, "refundedAmount", "amount", "total"), "refundedAmount"
        ),
        status=normalize.status(refund.get("status") or "COMPLETED"),
        reference_number=normalize.text(refund.get("referenceNumber"), "referenceNumber"),
        daily_transaction_id=normalize.daily_transaction_id(
            normalize.pick(refund, "dailyTransactionID", "dailyTransactionId")
        ),
        transaction_date=normalize.local_datetime(refund.get("date"), "date"),
        message=normalize.text(refund.get("message"), "message"),
        payment=payment,
        raw=dict(data),
    )


def required_text(data: Mapping[str, Any], name: str) -> str:
    value = normalize.text(data.get(name), name)
    if not value:
        raise ValueError(f"{name} is missing")
    return value
