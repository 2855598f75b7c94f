"""Webhooks: payloads shaped like the ones ATH Móvil posts, the subscription, and posting them.

The payloads reproduce the real ones' quirks on purpose: lower-case ``transactionType`` and
``status``, ``dailyTransactionID`` with a capital D, ``subtotal`` in lower case, dates with a
``.0`` suffix, and a refund payload that names no ``ecommerceId`` (its ``total`` is the refunded
amount). Webhooks are not signed, as the real ones are not.

eCommerce webhooks come in two shapes (:attr:`Webhooks.shape`): ``"captured"`` (the default),
as payloads captured from production show them, with an ``ecommerceId``; and ``"documented"``,
as Evertec's README (github.com/evertec/athmovil-webhooks, "List of Events") shows them: no
``ecommerceId`` nor the other fields only captured payloads carry, amounts as strings with
cents, and no customer on a cancel or an expiry.

:class:`Webhooks` holds the subscription (what ``webhookSubscribe`` stored), the shape, the
automatic webhooks waiting to be posted (only when ``auto_webhooks`` is on: a test asks for
them) and the last 100 deliveries with the listener's answer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import requests

from athm_sync.sandbox.errors import SandboxError, StateConflict
from athm_sync.sandbox.formats import BUSINESS_NAME, CENT, float32, json_number, pr_local
from athm_sync.sandbox.ledger import COMPLETED, refund_parties

if TYPE_CHECKING:
    from athm_sync.sandbox.clock import SandboxClock
    from athm_sync.sandbox.ledger import Payment, Refund

logger = logging.getLogger("athm_sync.sandbox")

USER_AGENT = "athm-sandbox-webhooks/1"
# Which subscription flag allows which webhook status.
EVENT_FLAGS = {
    "completed": "ecommercePaymentReceivedEvent",
    "cancelled": "ecommercePaymentCancelledEvent",
    "expired": "ecommercePaymentExpiredEvent",
    "refund": "refundSentEvent",
}
SUBSCRIPTION_FLAGS = (
    "paymentReceivedEvent",
    "refundSentEvent",
    "donationReceivedEvent",
    "ecommercePaymentReceivedEvent",
    "ecommercePaymentCancelledEvent",
    "ecommercePaymentExpiredEvent",
)
CAPTURED, DOCUMENTED = "captured", "documented"
SHAPES = (CAPTURED, DOCUMENTED)
# Fields of captured eCommerce webhooks that Evertec's documented samples do not show.
CAPTURED_ONLY = (
    "ecommerceId",
    "transactionDate",
    "businessName",
    "isNonProfit",
    "referenceTransactionId",
)
_AMOUNTS = ("total", "tax", "subtotal", "fee", "netAmount", "totalRefundedAmount")
_CUSTOMER = ("name", "phoneNumber", "email")


def ecommerce_payload(payment: Payment, status: str, now: datetime) -> dict[str, Any]:
    """The webhook ATH Móvil posts when an eCommerce payment is completed, cancelled or expired.

    ``now`` dates events that have no transaction date of their own (cancel, expiry).
    """
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


def documented_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An eCommerce webhook (:func:`ecommerce_payload`) in the shape of Evertec's documented
    samples: without :data:`CAPTURED_ONLY`, amounts as strings (``"3.00"``), the phone number
    as text, and the customer blank on a cancel or an expiry."""
    documented = {key: value for key, value in payload.items() if key not in CAPTURED_ONLY}
    for key in _AMOUNTS:
        documented[key] = f"{Decimal(str(documented[key])).quantize(CENT)}"
    documented["phoneNumber"] = str(documented["phoneNumber"] or "")
    if documented["status"] != "completed":
        documented.update(dict.fromkeys(_CUSTOMER, ""))
    return documented


def refund_payload(payment: Payment, refund: Refund) -> dict[str, Any]:
    """The webhook ATH Móvil posts for a refund: ``total`` is the refunded amount."""
    return {
        "transactionType": "refund",
        "status": "completed",
        "date": pr_local(refund.date) + ".0",
        **refund_parties(payment, refund),
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


class Webhooks:
    """The subscription, automatic webhooks waiting to be posted, and deliveries made."""

    def __init__(self, clock: SandboxClock, lock: threading.RLock | None = None) -> None:
        """No subscription, automatic webhooks off; ``lock`` is shared with the state."""
        self._clock = clock
        self._lock = lock or threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget the subscription, queued webhooks and deliveries; automatic webhooks off."""
        with self._lock:
            self.subscription: dict[str, Any] | None = None
            self.auto_webhooks = False
            self._shape = CAPTURED
            self.deliveries: list[dict[str, Any]] = []
            self._outbox: list[dict[str, Any]] = []

    @property
    def shape(self) -> str:
        """``"captured"`` (eCommerce webhooks carry ``ecommerceId``) or ``"documented"``."""
        return self._shape

    @shape.setter
    def shape(self, value: str) -> None:
        if value not in SHAPES:
            raise ValueError(f"the webhook shape must be one of {', '.join(SHAPES)}, not {value!r}")
        with self._lock:
            self._shape = value

    def subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store the webhook subscription from the subscribe API's body."""
        url = body.get("listenerURL")
        if not isinstance(url, str) or not url.strip():
            raise SandboxError("BTRA_0003", "listenerURL is required", 400)
        if not url.startswith(("http://", "https://")):
            raise SandboxError("BTRA_0040", "listenerURL must be an http(s) URL", 400)
        subscription: dict[str, Any] = {"listenerURL": url.strip()}
        for flag in SUBSCRIPTION_FLAGS:
            value = body.get(flag, False)
            subscription[flag] = value is True or str(value).lower() == "true"
        with self._lock:
            self.subscription = subscription
        return dict(subscription)

    def payment_payload(self, payment: Payment, status: str) -> dict[str, Any]:
        """The eCommerce webhook for ``payment`` with this status, dated by the sandbox clock,
        in the current :attr:`shape`."""
        payload = ecommerce_payload(payment, status, self._clock.now())
        return documented_payload(payload) if self._shape == DOCUMENTED else payload

    def wants(self, event: str) -> bool:
        """Whether an automatic webhook is owed for ``event`` (auto on, subscribed to it)."""
        return bool(
            self.auto_webhooks and self.subscription and self.subscription[EVENT_FLAGS[event]]
        )

    def queue_payment(self, payment: Payment, status: str) -> None:
        """Queue the automatic webhook of a payment event, if one is owed.

        The caller holds the lock; the payload is a snapshot of this moment, posted later.
        """
        if self.wants(status):
            self._outbox.append(self.payment_payload(payment, status))

    def queue_refund(self, payment: Payment, refund: Refund) -> None:
        """Queue the automatic webhook of a refund, if one is owed."""
        if self.wants("refund"):
            self._outbox.append(refund_payload(payment, refund))

    def take(self) -> list[dict[str, Any]]:
        """Queued automatic webhooks, removed from the queue."""
        with self._lock:
            queued = list(self._outbox)
            self._outbox.clear()
            return queued

    def deliver(self, background: bool = False) -> None:
        """Post queued automatic webhooks to the subscribed listener.

        In-process and control actions deliver synchronously, so a test knows the webhook
        arrived when the call returns; API calls deliver in a thread, because the shop's
        client is waiting for the answer (the real service is asynchronous too).
        """
        payloads = self.take()
        if not payloads:
            return
        if background:
            threading.Thread(target=self._post_all, args=(payloads,), daemon=True).start()
        else:
            self._post_all(payloads)

    def _post_all(self, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            try:
                self.send(payload)
            except Exception:  # a shop's listener being down must not break the sandbox
                logger.warning("sandbox webhook delivery failed", exc_info=True)

    def send(
        self,
        payload: dict[str, Any],
        listener_url: str | None = None,
        sender: Callable[[dict[str, Any], str], int] | None = None,
    ) -> int:
        """POST ``payload`` to ``listener_url`` or the subscribed listener; return its status."""
        with self._lock:
            url = listener_url or (self.subscription or {}).get("listenerURL")
        if not url:
            raise StateConflict("no listener URL given and no webhook subscription")
        entry: dict[str, Any] = {"url": url, "payload": payload}
        try:
            status = (sender or send_webhook)(payload, url)
        except Exception as exc:
            entry["error"] = repr(exc)
            self._log(entry)
            raise
        entry["status"] = status
        self._log(entry)
        return status

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.deliveries.append(entry)
            del self.deliveries[:-100]  # keep memory bounded in a long demo
