"""The whole fake ATH Móvil as one object: :class:`SandboxState` composes the parts.

Each concern is a class of its own, in a module named for it, that can be read alone:

* :mod:`~athm_sync.sandbox.clock` (:class:`SandboxClock`): the sandbox's time;
* :mod:`~athm_sync.sandbox.ledger` (:class:`Ledger`): payments, refunds, their lifecycle;
* :mod:`~athm_sync.sandbox.tokens` (:class:`AuthTokens`): the payment auth tokens;
* :mod:`~athm_sync.sandbox.faults` (:class:`Faults`): failures to serve;
* :mod:`~athm_sync.sandbox.counters` (:class:`Counters`): API calls and connections;
* :mod:`~athm_sync.sandbox.report` (:class:`TransactionReport`): the transaction report;
* :mod:`~athm_sync.sandbox.webhooks` (:class:`Webhooks`): subscription, payloads, posting.

They share one re-entrant lock, so the threaded HTTP server, the tests and the demo can drive
the state at once. Nothing here speaks HTTP: :mod:`athm_sync.sandbox.server` maps requests onto
these methods and :class:`SandboxError` onto ATH Móvil's error envelope. The methods below are
the flat surface the server, the scripts and older tests use; each one delegates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from athm_sync.sandbox.clock import SandboxClock
from athm_sync.sandbox.counters import ENDPOINTS, Counters
from athm_sync.sandbox.errors import SandboxError, StateConflict, unknown_payment
from athm_sync.sandbox.faults import FAULT_KINDS, Fault, Faults
from athm_sync.sandbox.formats import (
    BUSINESS_CUSTOMER_ID,
    BUSINESS_INDUSTRY,
    BUSINESS_NAME,
    BUSINESS_PATH,
    PR_TZ,
    fee_for,
    float32,
    json_number,
    pr_local,
    to_money,
)
from athm_sync.sandbox.ledger import (
    CANCEL,
    COMPLETED,
    CONFIRM,
    DEFAULT_TIMEOUT,
    OPEN,
    Ledger,
    Payment,
    Refund,
)
from athm_sync.sandbox.report import TransactionReport
from athm_sync.sandbox.tokens import AuthTokens
from athm_sync.sandbox.webhooks import Webhooks

# Re-exported: these names lived here before the split.
__all__ = [
    "BUSINESS_CUSTOMER_ID",
    "BUSINESS_INDUSTRY",
    "BUSINESS_NAME",
    "BUSINESS_PATH",
    "CANCEL",
    "COMPLETED",
    "CONFIRM",
    "ENDPOINTS",
    "FAULT_KINDS",
    "OPEN",
    "PR_TZ",
    "Fault",
    "Payment",
    "Refund",
    "SandboxError",
    "SandboxState",
    "StateConflict",
    "fee_for",
    "float32",
    "json_number",
    "pr_local",
    "to_money",
    "unknown_payment",
]


class SandboxState:
    """The whole fake ATH Móvil: thread-safe, driven by the server and by tests directly.

    Its parts are public attributes: :attr:`sandbox_clock`, :attr:`tokens`, :attr:`ledger`,
    :attr:`faults_queue`, :attr:`counters`, :attr:`transaction_report`, :attr:`webhooks`.
    """

    def __init__(
        self,
        public_token: str = "sandbox-public-token",  # noqa: S107 - a sandbox token, not a secret
        private_token: str = "sandbox-private-token",  # noqa: S107
        latency: float = 0.0,
    ) -> None:
        """Create an empty ledger that accepts the given tokens."""
        self.public_token = public_token
        self.private_token = private_token
        self._initial_latency = float(latency)
        self.latency = self._initial_latency
        self._lock = threading.RLock()
        self.sandbox_clock = SandboxClock(self._lock)
        # Per instance (kept across resets), so a token from another sandbox run is garbled.
        self.tokens = AuthTokens(self.sandbox_clock)
        self.webhooks = Webhooks(self.sandbox_clock, self._lock)
        self.ledger = Ledger(self.sandbox_clock, self.tokens, self.webhooks, self._lock)
        self.transaction_report = TransactionReport(self.ledger, self.sandbox_clock, self._lock)
        self.faults_queue = Faults(self._lock)
        self.counters = Counters(self._lock)

    def reset(self) -> None:
        """Forget payments, faults, counts, clock offset, latency changes and the subscription."""
        with self._lock:
            self.ledger.reset()
            self.sandbox_clock.reset()
            self.faults_queue.clear()
            self.counters.reset()
            self.webhooks.reset()
            self.latency = self._initial_latency

    # -- clock ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """The sandbox's current time, an aware UTC datetime."""
        return self.sandbox_clock.now()

    def advance(self, seconds: float) -> datetime:
        """Move the sandbox clock forward; payments whose deadline passed become CANCEL.

        Expiry is otherwise lazy (applied when a payment is read), so moving real time, e.g.
        with time-machine, expires payments too. Our app's clock does not move.
        """
        with self._lock:
            self.sandbox_clock.move(seconds)
            # Sweep now rather than on the next read, so auto webhooks report expiries promptly.
            self.ledger.sweep()
            moment = self.sandbox_clock.now()
        self.webhooks.deliver()
        return moment

    def clock(self) -> dict[str, Any]:
        """The clock as the control API shows it: UTC ISO time, PR local time, offset."""
        return self.sandbox_clock.as_json()

    # -- settings, counts, faults ---------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every API call (not control calls) by ``seconds``."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            self.latency = float(seconds)

    def count(self, endpoint: str) -> None:
        """Record one API call to ``endpoint`` (faulted calls count too)."""
        self.counters.count(endpoint)

    def counts(self) -> dict[str, int]:
        """API calls per endpoint name since the last reset."""
        return self.counters.counts()

    def reset_counts(self) -> None:
        """Zero the request and connection counters."""
        self.counters.reset()

    def count_connection(self) -> None:
        """Record one TCP connection accepted by the server."""
        self.counters.count_connection()

    def connections(self) -> int:
        """TCP connections the server accepted since the last reset."""
        return self.counters.connections()

    def inject_fault(
        self,
        kind: str,
        endpoint: str = "*",
        times: int = 1,
        delay: float = 0.0,
        status: int | None = None,
    ) -> None:
        """Serve ``kind`` to the next ``times`` API calls to ``endpoint``: see :class:`Faults`."""
        self.faults_queue.inject(kind, endpoint, times, delay, status)

    def take_fault(self, endpoint: str) -> Fault | None:
        """The fault to serve for this call to ``endpoint``, if any; uses one of its ``times``."""
        return self.faults_queue.take(endpoint)

    def faults(self) -> list[dict[str, Any]]:
        """Faults still waiting to be served."""
        return self.faults_queue.pending()

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self.faults_queue.clear()

    # -- auth tokens -----------------------------------------------------------------------

    def verify_token(self, authorization: str | None) -> str:
        """The ecommerceId of a valid ``Bearer`` auth token; raise the API's token errors."""
        return self.tokens.verify(authorization)

    # -- payments --------------------------------------------------------------------------

    def create_payment(
        self,
        total: Any,
        subtotal: Any = 0,
        tax: Any = 0,
        metadata1: str = "",
        metadata2: str = "",
        items: list[Any] | None = None,
        phone_number: str | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
    ) -> tuple[str, str]:
        """Register an OPEN payment, as the payment API does; return (ecommerceId, auth_token)."""
        return self.ledger.create_payment(
            total, subtotal, tax, metadata1, metadata2, items, phone_number, timeout
        )

    def payment_data(self, ecommerce_id: str) -> dict[str, Any]:
        """The ``data`` of a findPayment answer for this payment (as misrouted or tampered)."""
        return self.ledger.payment_data(ecommerce_id)

    def misroute(self, ecommerce_id: str, answer_with: str | None) -> None:
        """Make findPayment for ``ecommerce_id`` answer with another payment's data."""
        self.ledger.misroute(ecommerce_id, answer_with)

    def tamper(self, ecommerce_id: str, **fields: Any) -> None:
        """Make findPayment for ``ecommerce_id`` answer with these ``data`` fields replaced."""
        self.ledger.tamper(ecommerce_id, **fields)

    def payment(self, ecommerce_id: str) -> dict[str, Any]:
        """The full internal state of a payment, JSON-safe (amounts as "1.00" strings)."""
        return self.ledger.payment(ecommerce_id)

    def payment_ids(self) -> list[str]:
        """Every ecommerceId the sandbox knows, oldest first."""
        return self.ledger.payment_ids()

    def phones(self) -> list[dict[str, Any]]:
        """See :meth:`Ledger.phones`."""
        return self.ledger.phones()

    def pushes(self, phone: Any) -> list[dict[str, Any]]:
        """See :meth:`Ledger.pushes`."""
        return self.ledger.pushes(phone)

    def confirm(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """The customer confirms in the app: OPEN -> CONFIRM (``name``, ``phone``, ``email``)."""
        return self.ledger.confirm(ecommerce_id, **customer)

    def capture(self, ecommerce_id: str) -> dict[str, Any]:
        """What the JS button does after CONFIRM: CONFIRM -> COMPLETED."""
        return self.ledger.capture(ecommerce_id)

    def authorize(self, ecommerce_id: str) -> dict[str, Any]:
        """The authorization API: capture and answer findPayment-shaped data."""
        return self.ledger.authorize(ecommerce_id)

    def complete(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """Confirm and capture: the whole happy path of the customer."""
        return self.ledger.complete(ecommerce_id, **customer)

    def cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The customer cancels: OPEN/CONFIRM -> CANCEL."""
        return self.ledger.cancel(ecommerce_id)

    def api_cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The business cancel API: OPEN/CONFIRM -> CANCEL, CANCEL stays, COMPLETED refused."""
        return self.ledger.api_cancel(ecommerce_id)

    def expire(self, ecommerce_id: str) -> dict[str, Any]:
        """Let this payment's time run out now: its creation moves back by the time it had
        left, OPEN/CONFIRM -> CANCEL (expired); the expiry listeners are told first. See
        :meth:`Ledger.expire`."""
        return self.ledger.expire(ecommerce_id)

    def add_expiry_listener(self, listener: Callable[[str], Any]) -> None:
        """Call ``listener(ecommerce_id)`` before :meth:`expire` expires a payment: how a shop
        in this process moves its own deadline too (``athm_sync.sandbox_expiry``)."""
        self.ledger.add_expiry_listener(listener)

    def remove_expiry_listener(self, listener: Callable[[str], Any]) -> None:
        """Stop calling ``listener`` (added with :meth:`add_expiry_listener`)."""
        self.ledger.remove_expiry_listener(listener)

    def update_phone_number(self, ecommerce_id: str, phone_number: Any) -> dict[str, Any]:
        """The updatePhoneNumber API: change the phone the payment request goes to."""
        return self.ledger.update_phone_number(ecommerce_id, phone_number)

    def refund(self, ecommerce_id: str, amount: Any, message: str = "") -> dict[str, Any]:
        """A refund made in the ATH Business app (the shop makes no API call)."""
        return self.ledger.refund(ecommerce_id, amount, message)

    def api_refund(self, reference_number: Any, amount: Any, message: Any) -> dict[str, Any]:
        """The refund API: refund by the payment's referenceNumber; answer the API's data."""
        return self.ledger.api_refund(reference_number, amount, message)

    @property
    def own_app_references(self) -> bool:
        """Whether refunds made in the ATH Business app carry a reference number of their own
        (off by default: they repeat the payment's). Reset turns it off."""
        return self.ledger.own_app_references

    def set_own_app_references(self, own: bool) -> None:
        """Give app refunds their own reference number (``True``) or the payment's."""
        self.ledger.set_own_app_references(own)

    # -- report ----------------------------------------------------------------------------

    def report(self, from_date: Any, to_date: Any) -> list[dict[str, Any]]:
        """The transaction report between two PR-local "YYYY-MM-DD HH:MM:SS" dates, inclusive."""
        return self.transaction_report.rows(from_date, to_date)

    # -- webhooks --------------------------------------------------------------------------

    @property
    def subscription(self) -> dict[str, Any] | None:
        """The webhook subscription (what ``webhookSubscribe`` stored), or None."""
        return self.webhooks.subscription

    @subscription.setter
    def subscription(self, value: dict[str, Any] | None) -> None:
        self.webhooks.subscription = value

    @property
    def auto_webhooks(self) -> bool:
        """Whether state changes post webhooks to the subscribed listener (off by default)."""
        return self.webhooks.auto_webhooks

    @auto_webhooks.setter
    def auto_webhooks(self, value: bool) -> None:
        self.webhooks.auto_webhooks = bool(value)

    @property
    def webhook_shape(self) -> str:
        """``"captured"`` (the default: eCommerce webhooks carry ``ecommerceId``, as payloads
        captured from production do) or ``"documented"`` (as Evertec's README shows them,
        without it)."""
        return self.webhooks.shape

    @webhook_shape.setter
    def webhook_shape(self, value: str) -> None:
        self.webhooks.shape = value

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """The last 100 webhooks posted: url, payload, and the listener's status or error."""
        return self.webhooks.deliveries

    def subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store the webhook subscription from the subscribe API's body."""
        return self.webhooks.subscribe(body)

    def webhook_payload(
        self, ecommerce_id: str, status: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A real-shaped eCommerce webhook for this payment; ``overrides`` replace keys."""
        return self.ledger.webhook_payload(ecommerce_id, status, **overrides)

    def refund_webhook_payload(self, ecommerce_id: str, refund_index: int = -1) -> dict[str, Any]:
        """A real-shaped refund webhook for one refund of this payment (the last by default)."""
        return self.ledger.refund_webhook_payload(ecommerce_id, refund_index)

    def take_webhooks(self) -> list[dict[str, Any]]:
        """Queued automatic webhooks (auto_webhooks on), removed from the queue."""
        return self.webhooks.take()

    def deliver_webhooks(self, background: bool = False) -> None:
        """Post queued automatic webhooks to the subscribed listener."""
        self.webhooks.deliver(background)

    def send_webhook(
        self, payload: dict[str, Any], listener_url: str | None = None, sender: Any = None
    ) -> int:
        """POST ``payload`` to ``listener_url`` or the subscribed listener; return its status."""
        return self.webhooks.send(payload, listener_url, sender)
