"""Webhook payloads shaped like the ones ATH Móvil posts, and posting them to a listener.

The payloads reproduce the real ones' quirks on purpose: lower-case ``transactionType`` and
``status``, ``dailyTransactionID`` with a capital D, ``subtotal`` in lower case, dates with a
``.0`` suffix, and a refund payload that names no ``ecommerceId`` (its ``total`` is the refunded
amount). Webhooks are not signed, as the real ones are not.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import requests

from athm_sync.sandbox.state import COMPLETED, float32, json_number, pr_local

if TYPE_CHECKING:
    from athm_sync.sandbox.state import Payment, Refund

USER_AGENT = "athm-sandbox-webhooks/1"


def ecommerce_payload(payment: Payment, status: str, now: datetime) -> dict[str, Any]:
    """The webhook ATH Móvil posts when an eCommerce payment is completed, cancelled or expired.

    ``now`` dates events that have no transaction date of their own (cancel, expiry).
    """
    from athm_sync.sandbox.state import BUSINESS_NAME

    done = status == "completed" and payment.status == COMPLETED
    moment = payment.transaction_date if done and payment.transaction_date else now
    return {
        "transactionType": "ecommerce",
        "status": status,
        "date": pr_local(moment) + ".0",
        "referenceNumber": payment.reference_number if done else "",
        "dailyTransactionID": payment.daily_transaction_id if done else "",
        "name": payment.customer_name,
        "phoneNumber": payment.customer_phone,
        "email": payment.customer_email,
        "message": "",
        "total": json_number(payment.total),
        "tax": json_number(payment.tax),
        "subtotal": json_number(payment.subtotal),
        "fee": float32(payment.fee) if done else 0,
        "netAmount": json_number(payment.net_amount) if done else 0,
        "totalRefundedAmount": json_number(payment.total_refunded),
        "metadata1": payment.metadata1,
        "metadata2": payment.metadata2,
        "items": payment.items,
        "ecommerceId": payment.ecommerce_id,
        "transactionDate": pr_local(moment),
        "businessName": BUSINESS_NAME,
        "isNonProfit": False,
        "referenceTransactionId": payment.reference_number if done else "",
    }


def refund_payload(payment: Payment, refund: Refund) -> dict[str, Any]:
    """The webhook ATH Móvil posts for a refund: ``total`` is the refunded amount."""
    return {
        "transactionType": "refund",
        "status": "completed",
        "date": pr_local(refund.date) + ".0",
        # As in the API, the refund carries the original payment's reference number.
        "referenceNumber": payment.reference_number,
        "dailyTransactionID": refund.daily_transaction_id,
        "name": payment.customer_name,
        "phoneNumber": payment.customer_phone,
        "email": payment.customer_email,
        "message": refund.message,
        "total": json_number(refund.amount),
        "tax": 0,
        "subtotal": 0,
        "fee": 0,
        "netAmount": json_number(refund.amount),
        "totalRefundedAmount": json_number(payment.total_refunded),
        "metadata1": payment.metadata1,
        "metadata2": payment.metadata2,
        "items": [],
    }


def send_webhook(payload: dict[str, Any], listener_url: str, timeout: float = 5.0) -> int:
    """POST ``payload`` as JSON to ``listener_url``; return the listener's HTTP status.

    Connection errors propagate (``requests.RequestException``): the caller decides whether a
    listener being down matters.
    """
    response = requests.post(
        listener_url,
        data=json.dumps(payload),
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        timeout=timeout,
    )
    return response.status_code
