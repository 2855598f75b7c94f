"""The sandbox's in-memory ledger: payments, refunds, the clock, faults and request counts.

Everything lives behind one lock, so the threaded HTTP server, the tests and the demo can drive
it at once. Nothing here speaks HTTP; :mod:`athm_sync.sandbox.server` maps requests onto these
methods and :class:`SandboxError` onto ATH Móvil's error envelope.

Fee rule (documented because tests and the benchmark compare against it): 2.5 % of the total,
rounded half-up to cents, plus $0.10. ``netAmount`` is ``total - fee``. findPayment reports the
fee through a float32, as the real API does (``0.13`` comes back as ``0.12999999523162842``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

logger = logging.getLogger("athm_sync.sandbox")

CENT = Decimal("0.01")
FEE_RATE = Decimal("0.025")
FEE_FIXED = Decimal("0.10")
MIN_TOTAL, MAX_TOTAL = Decimal("1.00"), Decimal("1500.00")
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 120, 600, 600
METADATA_MAX, MESSAGE_MAX = 40, 50
AUTH_TOKEN_LIFETIME = timedelta(minutes=15)
REPORT_MAX_RANGE = timedelta(days=31)
# Puerto Rico keeps Atlantic Standard Time all year; ATH Móvil's dates are local to it.
PR_TZ = timezone(timedelta(hours=-4), "AST")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

BUSINESS_NAME = "Sandbox Shop"
BUSINESS_PATH = "sandboxshop"
BUSINESS_INDUSTRY = "RETAIL"
BUSINESS_CUSTOMER_ID = "402894c185ab1be40185acfe61c20000"

OPEN, CONFIRM, COMPLETED, CANCEL = "OPEN", "CONFIRM", "COMPLETED", "CANCEL"

ENDPOINTS = (
    "payment",
    "findPayment",
    "updatePhoneNumber",
    "authorization",
    "cancel",
    "refund",
    "transactionReport",
    "webhookSubscribe",
)
FAULT_KINDS = (
    "http500",
    "http503",
    "http429",
    "btra9998",
    "btra9999",
    "latency",
    "timeout",
    "drop",
    "auth",
    "html",
    "garbage",
    "lost",
)
# Which subscription flag allows which webhook status.
_EVENT_FLAGS = {
    "completed": "ecommercePaymentReceivedEvent",
    "cancelled": "ecommercePaymentCancelledEvent",
    "expired": "ecommercePaymentExpiredEvent",
    "refund": "refundSentEvent",
}


class SandboxError(Exception):
    """An ATH Móvil error: ``errorcode`` and ``message`` go in the envelope, with ``http_status``.

    The control API maps the same errors to its own statuses (404 unknown, 409 wrong state).
    """

    def __init__(self, errorcode: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{errorcode}: {message}")
        self.errorcode = errorcode
        self.message = message
        self.http_status = http_status


class StateConflict(ValueError):
    """A control action that does not fit the payment's state (the control API answers 409)."""


def unknown_payment(ecommerce_id: str) -> SandboxError:
    """The error ATH Móvil answers for an ecommerceId it does not know."""
    return SandboxError("BTRA_0031", f"ecommerceId {ecommerce_id} does not exist", 400)


@dataclass
class Refund:
    """One refund of a completed payment, made through the API or the ATH Business app."""

    amount: Decimal
    date: datetime
    daily_transaction_id: str
    message: str
    source: str  # "api" or "app"


@dataclass
class Payment:
    """One eCommerce payment as ATH Móvil keeps it."""

    ecommerce_id: str
    auth_token: str
    total: Decimal
    subtotal: Decimal
    tax: Decimal
    metadata1: str
    metadata2: str
    items: list[Any]
    phone_number: str
    timeout: int
    created: float  # sandbox epoch seconds
    deadline: float  # created + timeout, unless expire() pulled it in
    status: str = OPEN
    cancel_reason: str = ""  # "cancelled" or "expired" once status is CANCEL
    customer_name: str = ""
    customer_phone: str = ""
    customer_email: str = ""
    confirmed: bool = False
    reference_number: str = ""
    daily_transaction_id: str = ""
    transaction_date: datetime | None = None
    fee: Decimal = Decimal("0")
    net_amount: Decimal = Decimal("0")
    refunds: list[Refund] = field(default_factory=list)

    @property
    def total_refunded(self) -> Decimal:
        return sum((r.amount for r in self.refunds), Decimal("0"))


@dataclass
class Fault:
    """A failure to serve instead of (or before) the next ``remaining`` calls to ``endpoint``."""

    kind: str
    endpoint: str
    remaining: int
    delay: float
    status: int | None


def to_money(value: Any, name: str, errorcode: str = "BTRA_0004") -> Decimal:
    """Parse an amount given as a number or a string into cents, or raise an invalid request."""
    if isinstance(value, bool) or value is None:
        raise SandboxError(errorcode, f"{name} must be a number", 400)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise SandboxError(errorcode, f"{name} must be a number", 400) from None
    if not amount.is_finite():
        raise SandboxError(errorcode, f"{name} must be a number", 400)
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def json_number(amount: Decimal) -> int | float:
    """An amount as ATH Móvil writes it in JSON: ``1`` for whole amounts, ``0.4`` otherwise."""
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


def float32(amount: Decimal) -> float:
    """The amount after a trip through a float32, the noise the real fee carries."""
    return struct.unpack("f", struct.pack("f", float(amount)))[0]


def pr_local(moment: datetime) -> str:
    """A UTC instant as ATH Móvil's Puerto Rico local date string."""
    return moment.astimezone(PR_TZ).strftime(DATE_FORMAT)


def fee_for(total: Decimal) -> Decimal:
    """The sandbox's fee rule: 2.5 % of the total rounded half-up to cents, plus $0.10."""
    return (total * FEE_RATE).quantize(CENT, rounding=ROUND_HALF_UP) + FEE_FIXED


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SandboxState:
    """The whole fake ATH Móvil: thread-safe, driven by the server and by tests directly."""

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
        # Per instance, so an auth token from another sandbox run is rejected as garbled.
        self._jwt_secret = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self._payments: dict[str, Payment] = {}
        self._offset = 0.0
        self._faults: list[Fault] = []
        self._counts: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self._connections = 0
        self._daily: dict[str, int] = {}
        self.latency = self._initial_latency
        self.subscription: dict[str, Any] | None = None
        self.auto_webhooks = False
        self.deliveries: list[dict[str, Any]] = []
        self._outbox: list[dict[str, Any]] = []  # automatic webhooks waiting to be posted
        # Hostile answers: findPayment for a key answers with another payment's data, or with
        # some fields replaced (see misroute() and tamper()).
        self._misroutes: dict[str, str] = {}
        self._tampered: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        """Forget payments, faults, counts, clock offset, latency changes and the subscription."""
        with self._lock:
            self._clear()

    # -- clock ---------------------------------------------------------------------------

    def _now_ts(self) -> float:
        # time.time() rather than monotonic so time-machine in tests moves the sandbox too.
        return time.time() + self._offset

    def now(self) -> datetime:
        """The sandbox's current time, an aware UTC datetime."""
        with self._lock:
            return datetime.fromtimestamp(self._now_ts(), UTC)

    def advance(self, seconds: float) -> datetime:
        """Move the sandbox clock forward; payments whose deadline passed become CANCEL.

        Expiry is otherwise lazy (applied when a payment is read), so moving real time, e.g.
        with time-machine, expires payments too.
        """
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += float(seconds)
            # Sweep now rather than on the next read, so auto webhooks report expiries promptly.
            for payment in self._payments.values():
                self._refresh(payment)
            moment = datetime.fromtimestamp(self._now_ts(), UTC)
        self.deliver_webhooks()
        return moment

    def clock(self) -> dict[str, Any]:
        """The clock as the control API shows it: UTC ISO time, PR local time, offset."""
        with self._lock:
            moment = datetime.fromtimestamp(self._now_ts(), UTC)
            return {"now": moment.isoformat(), "local": pr_local(moment), "offset": self._offset}

    # -- settings, counts, faults ---------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every API call (not control calls) by ``seconds``."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            self.latency = float(seconds)

    def count(self, endpoint: str) -> None:
        """Record one API call to ``endpoint`` (faulted calls count too)."""
        with self._lock:
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def counts(self) -> dict[str, int]:
        """API calls per endpoint name since the last reset."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        """Zero the request and connection counters."""
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)
            self._connections = 0

    def count_connection(self) -> None:
        """Record one TCP connection accepted by the server."""
        with self._lock:
            self._connections += 1

    def connections(self) -> int:
        """TCP connections the server accepted since the last reset."""
        with self._lock:
            return self._connections

    def inject_fault(
        self,
        kind: str,
        endpoint: str = "*",
        times: int = 1,
        delay: float = 0.0,
        status: int | None = None,
    ) -> None:
        """Serve ``kind`` to the next ``times`` API calls to ``endpoint`` ("*" = any endpoint).

        ``delay`` is the wait for "latency" and "timeout"; ``status`` overrides the HTTP status
        of "btra9998" (default 200, as the real API sometimes does) and "btra9999" (default 500).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of *, {', '.join(ENDPOINTS)}")
        if int(times) < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay cannot be negative")
        if status is not None and not 100 <= int(status) <= 599:
            raise ValueError("status must be an HTTP status code")
        with self._lock:
            self._faults.append(
                Fault(
                    kind,
                    endpoint,
                    int(times),
                    float(delay),
                    None if status is None else int(status),
                )
            )

    def take_fault(self, endpoint: str) -> Fault | None:
        """The fault to serve for this call to ``endpoint``, if any; uses one of its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in ("*", endpoint) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def faults(self) -> list[dict[str, Any]]:
        """Faults still waiting to be served."""
        with self._lock:
            return [
                {"kind": f.kind, "endpoint": f.endpoint, "times": f.remaining, "delay": f.delay}
                for f in self._faults
            ]

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    # -- auth tokens -----------------------------------------------------------------------

    def _make_token(self, ecommerce_id: str, issued: float) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        exp = int(issued + AUTH_TOKEN_LIFETIME.total_seconds())
        claims = {
            "iss": "athm-sandbox",
            "ecommerceId": ecommerce_id,
            "iat": int(issued),
            "exp": exp,
        }
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64url(signature.digest())}"

    def verify_token(self, authorization: str | None) -> str:
        """The ecommerceId of a valid ``Bearer`` auth token; raise the API's token errors."""
        garbled = SandboxError(
            "token.invalid.header", "Invalid or missing authorization header", 401
        )
        if not authorization or not authorization.startswith("Bearer "):
            raise garbled
        token = authorization[len("Bearer ") :].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise garbled
        expected = hmac.new(self._jwt_secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
        try:
            signature = _b64url_decode(parts[2])
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            raise garbled from None
        if not hmac.compare_digest(signature, expected.digest()) or not isinstance(claims, dict):
            raise garbled
        with self._lock:
            if claims.get("exp", 0) <= self._now_ts():
                raise SandboxError("token.expired", "The authorization token has expired", 401)
        return str(claims.get("ecommerceId", ""))

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
        """Register an OPEN payment, as the payment API does; return (ecommerceId, auth_token).

        Validation follows the API: total 1.00..1500.00 (BTRA_0004), timeout 120..600
        (BTRA_0006), metadata up to 40 characters (BTRA_0038), items a list (BTRA_0040).
        """
        amount = to_money(total, "total")
        if not MIN_TOTAL <= amount <= MAX_TOTAL:
            raise SandboxError("BTRA_0004", "total must be between 1.00 and 1500.00", 400)
        sub = to_money(subtotal if subtotal not in (None, "") else 0, "subtotal")
        tax_amount = to_money(tax if tax not in (None, "") else 0, "tax")
        if sub < 0 or tax_amount < 0:
            raise SandboxError("BTRA_0004", "subtotal and tax cannot be negative", 400)
        seconds = self._parse_timeout(timeout)
        for name, value in (("metadata1", metadata1), ("metadata2", metadata2)):
            if value is not None and not isinstance(value, str):
                raise SandboxError("BTRA_0038", f"{name} must be a string", 400)
            if value and len(value) > METADATA_MAX:
                raise SandboxError("BTRA_0038", f"{name} is longer than 40 characters", 400)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise SandboxError("BTRA_0040", "items must be a list", 400)
        if phone_number is not None and not isinstance(phone_number, str | int):
            raise SandboxError("BTRA_0040", "phoneNumber must be a string", 400)
        ecommerce_id = str(uuid.uuid4())
        with self._lock:
            created = self._now_ts()
            self._payments[ecommerce_id] = Payment(
                ecommerce_id=ecommerce_id,
                auth_token=self._make_token(ecommerce_id, created),
                total=amount,
                subtotal=sub,
                tax=tax_amount,
                metadata1=metadata1 or "",
                metadata2=metadata2 or "",
                items=items,
                phone_number="" if phone_number is None else str(phone_number),
                timeout=seconds,
                created=created,
                deadline=created + seconds,
            )
            return ecommerce_id, self._payments[ecommerce_id].auth_token

    @staticmethod
    def _parse_timeout(timeout: Any) -> int:
        if timeout in (None, ""):
            return DEFAULT_TIMEOUT
        if isinstance(timeout, bool):
            raise SandboxError("BTRA_0006", "timeout must be between 120 and 600 seconds", 400)
        try:
            seconds = int(str(timeout).strip())
        except ValueError:
            raise SandboxError(
                "BTRA_0006", "timeout must be a whole number of seconds", 400
            ) from None
        if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
            raise SandboxError("BTRA_0006", "timeout must be between 120 and 600 seconds", 400)
        return seconds

    def _get(self, ecommerce_id: str) -> Payment:
        """The payment, with its expiry applied; caller holds the lock."""
        payment = self._payments.get(str(ecommerce_id).strip())
        if payment is None:
            raise unknown_payment(ecommerce_id)
        self._refresh(payment)
        return payment

    def _refresh(self, payment: Payment) -> None:
        # Expiry is lazy: a payment past its deadline becomes CANCEL the first time it is read.
        if payment.status in (OPEN, CONFIRM) and payment.deadline <= self._now_ts():
            payment.status = CANCEL
            payment.cancel_reason = "expired"
            self._queue_webhook(payment, "expired")

    def _next_daily_id(self, moment: datetime) -> str:
        day = moment.astimezone(PR_TZ).date().isoformat()
        self._daily[day] = self._daily.get(day, 0) + 1
        return f"{self._daily[day]:04d}"

    def payment_data(self, ecommerce_id: str) -> dict[str, Any]:
        """The ``data`` of a findPayment answer for this payment (as misrouted or tampered)."""
        with self._lock:
            key = str(ecommerce_id).strip()
            data = self._data(self._get(self._misroutes.get(key, key)))
            data.update(self._tampered.get(key, {}))
            return data

    def misroute(self, ecommerce_id: str, answer_with: str | None) -> None:
        """Make findPayment for ``ecommerce_id`` answer with the data of payment
        ``answer_with`` (a proxy's cache or a backend mix-up); ``None`` puts it right."""
        with self._lock:
            self._get(ecommerce_id)
            if answer_with is None:
                self._misroutes.pop(str(ecommerce_id), None)
                return
            self._get(answer_with)
            self._misroutes[str(ecommerce_id)] = str(answer_with)

    def tamper(self, ecommerce_id: str, **fields: Any) -> None:
        """Make findPayment for ``ecommerce_id`` answer with these ``data`` fields replaced
        (``referenceNumber="\\x00" + "9" * 299``, ``total=-1``...); no fields puts it right."""
        with self._lock:
            self._get(ecommerce_id)
            if fields:
                self._tampered[str(ecommerce_id)] = dict(fields)
            else:
                self._tampered.pop(str(ecommerce_id), None)

    def _data(self, p: Payment) -> dict[str, Any]:
        completed = p.status == COMPLETED
        data: dict[str, Any] = {
            "ecommerceStatus": p.status,
            "ecommerceId": p.ecommerce_id,
            "referenceNumber": p.reference_number,
            "businessCustomerId": BUSINESS_CUSTOMER_ID,
            "transactionDate": pr_local(p.transaction_date) if p.transaction_date else "",
            "dailyTransactionId": p.daily_transaction_id,
            "businessName": BUSINESS_NAME,
            "businessPath": BUSINESS_PATH,
            "industry": BUSINESS_INDUSTRY,
            "subTotal": json_number(p.subtotal),
            "tax": json_number(p.tax),
            "total": json_number(p.total),
            "fee": float32(p.fee) if completed else 0,
            "netAmount": json_number(p.net_amount) if completed else 0,
            "totalRefundedAmount": json_number(p.total_refunded),
            "metadata1": p.metadata1,
            "metadata2": p.metadata2,
            "items": p.items,
            "isNonProfit": False,
        }
        if p.confirmed:
            data.update(name=p.customer_name, phoneNumber=p.customer_phone, email=p.customer_email)
        return data

    def payment(self, ecommerce_id: str) -> dict[str, Any]:
        """The full internal state of a payment, JSON-safe (amounts as "1.00" strings)."""
        with self._lock:
            p = self._get(ecommerce_id)
            return {
                "ecommerceId": p.ecommerce_id,
                "status": p.status,
                "cancelReason": p.cancel_reason,
                "total": str(p.total),
                "subtotal": str(p.subtotal),
                "tax": str(p.tax),
                "fee": str(p.fee),
                "netAmount": str(p.net_amount),
                "totalRefundedAmount": str(p.total_refunded),
                "metadata1": p.metadata1,
                "metadata2": p.metadata2,
                "items": p.items,
                "phoneNumber": p.phone_number,
                "timeout": p.timeout,
                "createdAt": datetime.fromtimestamp(p.created, UTC).isoformat(),
                "deadline": datetime.fromtimestamp(p.deadline, UTC).isoformat(),
                "authToken": p.auth_token,
                "referenceNumber": p.reference_number,
                "dailyTransactionId": p.daily_transaction_id,
                "transactionDate": pr_local(p.transaction_date) if p.transaction_date else "",
                "customer": {
                    "name": p.customer_name,
                    "phone": p.customer_phone,
                    "email": p.customer_email,
                },
                "refunds": [
                    {
                        "amount": str(r.amount),
                        "date": pr_local(r.date),
                        "dailyTransactionId": r.daily_transaction_id,
                        "referenceNumber": p.reference_number,
                        "message": r.message,
                        "source": r.source,
                    }
                    for r in p.refunds
                ],
            }

    def payment_ids(self) -> list[str]:
        """Every ecommerceId the sandbox knows, oldest first."""
        with self._lock:
            return list(self._payments)

    # -- state changes -----------------------------------------------------------------------

    def _state_error(self, p: Payment, action: str) -> SandboxError:
        if p.status == CANCEL and p.cancel_reason == "expired":
            return SandboxError("BTRA_0039", f"Cannot {action}: the payment time expired", 400)
        if p.status == CANCEL:
            return SandboxError("BTRA_0037", f"Cannot {action}: the payment was cancelled", 400)
        if p.status == OPEN:
            return SandboxError("BTRA_0032", f"Cannot {action}: the payment is not confirmed", 400)
        return SandboxError("BTRA_0037", f"Cannot {action}: the payment is {p.status}", 400)

    def confirm(
        self,
        ecommerce_id: str,
        name: str = "Sandbox Customer",
        phone: str = "(787) 555-1234",
        email: str = "customer@example.com",
    ) -> dict[str, Any]:
        """The customer confirms in the app: OPEN -> CONFIRM. Returns :meth:`payment`."""

        def confirm(p: Payment) -> None:
            p.status = CONFIRM
            p.confirmed = True
            p.customer_name, p.customer_phone, p.customer_email = name, phone, email

        return self._customer_action(ecommerce_id, "confirm", (OPEN,), confirm)

    def _customer_action(
        self,
        ecommerce_id: str,
        action: str,
        allowed: tuple[str, ...],
        change: Callable[[Payment], None],
    ) -> dict[str, Any]:
        """Apply ``change`` to a payment in one of the ``allowed`` statuses, under the lock;
        then post the webhooks it queued. Returns :meth:`payment`."""
        with self._lock:
            p = self._get(ecommerce_id)
            if p.status not in allowed:
                raise self._state_error(p, action)
            change(p)
        self.deliver_webhooks()
        return self.payment(ecommerce_id)

    def _capture(self, p: Payment) -> None:
        # Idempotent, as the authorization API is: capturing a COMPLETED payment changes nothing.
        if p.status == COMPLETED:
            return
        if p.status != CONFIRM:
            raise self._state_error(p, "authorize")
        # ATH Móvil dates have whole seconds; keeping them so makes report ranges exact.
        moment = datetime.fromtimestamp(int(self._now_ts()), UTC)
        p.status = COMPLETED
        p.transaction_date = moment
        p.daily_transaction_id = self._next_daily_id(moment)
        p.reference_number = f"{secrets.randbelow(900_000_000) + 100_000_000}-{uuid.uuid4().hex}"
        p.fee = fee_for(p.total)
        p.net_amount = p.total - p.fee
        self._queue_webhook(p, "completed")

    def capture(self, ecommerce_id: str) -> dict[str, Any]:
        """What the JS button does after CONFIRM: CONFIRM -> COMPLETED. Returns :meth:`payment`."""
        return self._customer_action(ecommerce_id, "authorize", (CONFIRM, COMPLETED), self._capture)

    def authorize(self, ecommerce_id: str) -> dict[str, Any]:
        """The authorization API: capture and answer findPayment-shaped data."""
        with self._lock:
            p = self._get(ecommerce_id)
            self._capture(p)
            return self._data(p)

    def complete(
        self,
        ecommerce_id: str,
        name: str = "Sandbox Customer",
        phone: str = "(787) 555-1234",
        email: str = "customer@example.com",
    ) -> dict[str, Any]:
        """Confirm and capture: the whole happy path of the customer. Returns :meth:`payment`."""
        self.confirm(ecommerce_id, name=name, phone=phone, email=email)
        return self.capture(ecommerce_id)

    def cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The customer cancels: OPEN/CONFIRM -> CANCEL. Returns :meth:`payment`."""
        return self._customer_action(ecommerce_id, "cancel", (OPEN, CONFIRM), self._cancel)

    def _cancel(self, p: Payment) -> None:
        p.status = CANCEL
        p.cancel_reason = "cancelled"
        self._queue_webhook(p, "cancelled")

    def api_cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The business cancel API: OPEN/CONFIRM -> CANCEL, CANCEL stays, COMPLETED refused."""
        with self._lock:
            p = self._get(ecommerce_id)
            if p.status == COMPLETED:
                raise SandboxError("BTRA_0037", "A completed payment cannot be cancelled", 400)
            if p.status != CANCEL:
                self._cancel(p)
            return self._data(p)

    def expire(self, ecommerce_id: str) -> dict[str, Any]:
        """Make this payment's deadline pass now: OPEN/CONFIRM -> CANCEL (expired)."""

        def expire(p: Payment) -> None:
            p.deadline = self._now_ts()
            self._refresh(p)

        return self._customer_action(ecommerce_id, "expire", (OPEN, CONFIRM), expire)

    def update_phone_number(self, ecommerce_id: str, phone_number: Any) -> dict[str, Any]:
        """The updatePhoneNumber API: change the phone the payment request goes to."""
        if not isinstance(phone_number, str | int) or isinstance(phone_number, bool):
            raise SandboxError("BTRA_0003", "phoneNumber is required", 400)
        with self._lock:
            p = self._get(ecommerce_id)
            if p.status not in (OPEN, CONFIRM):
                raise self._state_error(p, "update the phone number")
            p.phone_number = str(phone_number)
            return self._data(p)

    def _refund(self, p: Payment, amount: Any, message: str, source: str) -> Refund:
        value = to_money(amount, "amount")
        if value <= 0:
            raise SandboxError("BTRA_0004", "amount must be greater than 0", 400)
        if not isinstance(message, str) or len(message) > MESSAGE_MAX:
            raise SandboxError("BTRA_0040", "message must be a string of up to 50 characters", 400)
        if p.status != COMPLETED:
            raise self._state_error(p, "refund")
        if p.total_refunded + value > p.total:
            raise SandboxError(
                "BTRA_0013",
                f"amount exceeds what is left to refund ({p.total - p.total_refunded})",
                400,
            )
        moment = datetime.fromtimestamp(int(self._now_ts()), UTC)
        refund = Refund(value, moment, self._next_daily_id(moment), message, source)
        p.refunds.append(refund)
        self._queue_refund_webhook(p, len(p.refunds) - 1)
        return refund

    def refund(self, ecommerce_id: str, amount: Any, message: str = "") -> dict[str, Any]:
        """A refund made in the ATH Business app (the shop makes no API call)."""
        with self._lock:
            self._refund(self._get(ecommerce_id), amount, message, "app")
        self.deliver_webhooks()
        return self.payment(ecommerce_id)

    def api_refund(self, reference_number: Any, amount: Any, message: Any) -> dict[str, Any]:
        """The refund API: refund by the payment's referenceNumber; answer the API's data."""
        if not isinstance(reference_number, str) or not reference_number.strip():
            raise SandboxError("BTRA_0003", "referenceNumber is required", 400)
        with self._lock:
            matches = [
                p
                for p in self._payments.values()
                if p.reference_number and p.reference_number == reference_number.strip()
            ]
            if not matches:
                raise SandboxError(
                    "BTRA_0007", f"Transaction {reference_number} does not exist", 400
                )
            p = matches[0]
            refund = self._refund(p, amount, message or "", "api")
            return {
                "refund": self._refund_record(p, refund),
                "originalTransaction": self._data(p),
            }

    def _refund_record(self, p: Payment, refund: Refund) -> dict[str, Any]:
        return {
            "transactionType": "REFUND",
            "status": "COMPLETED",
            "refundedAmount": str(refund.amount),
            "date": pr_local(refund.date),
            # The real API's quirk: a refund reuses the original payment's reference number.
            "referenceNumber": p.reference_number,
            "dailyTransactionID": refund.daily_transaction_id,
            "name": p.customer_name,
            "phoneNumber": p.customer_phone,
            "email": p.customer_email,
            "message": refund.message,
        }

    # -- report ----------------------------------------------------------------------------

    def report(self, from_date: Any, to_date: Any) -> list[dict[str, Any]]:
        """The transaction report between two PR-local "YYYY-MM-DD HH:MM:SS" dates, inclusive."""
        start = self._parse_report_date(from_date, "fromDate")
        end = self._parse_report_date(to_date, "toDate")
        if start > end:
            raise SandboxError("BTRA_0025", "fromDate must not be after toDate", 400)
        with self._lock:
            now_local = datetime.fromtimestamp(self._now_ts(), UTC).astimezone(PR_TZ)
            if start > now_local:
                raise SandboxError("BTRA_0047", "The date range is in the future", 400)
            if end - start > REPORT_MAX_RANGE:
                raise SandboxError("BTRA_0026", "The date range is longer than 31 days", 400)
            rows: list[tuple[datetime, dict[str, Any]]] = []
            for p in self._payments.values():
                self._refresh(p)
                if p.status != COMPLETED or p.transaction_date is None:
                    continue
                if start <= p.transaction_date <= end:
                    rows.append((p.transaction_date, self._report_payment(p)))
                for refund in p.refunds:
                    if start <= refund.date <= end:
                        rows.append((refund.date, self._report_refund(p, refund)))
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

    @staticmethod
    def _parse_report_date(value: Any, name: str) -> datetime:
        if not isinstance(value, str):
            raise SandboxError("BTRA_0003", f"{name} is required", 400)
        text = value.strip().removesuffix(".0")
        try:
            return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=PR_TZ)
        except ValueError:
            raise SandboxError(
                "BTRA_0001", f"{name} must look like YYYY-MM-DD HH:MM:SS", 400
            ) from None

    def _report_payment(self, p: Payment) -> dict[str, Any]:
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

    def _report_refund(self, p: Payment, refund: Refund) -> dict[str, Any]:
        return {
            "transactionType": "REFUND",
            "status": "COMPLETED",
            "date": pr_local(refund.date),
            "referenceNumber": p.reference_number,
            "dailyTransactionID": refund.daily_transaction_id,
            "name": p.customer_name,
            "phoneNumber": p.customer_phone,
            "email": p.customer_email,
            "message": refund.message,
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

    # -- webhooks --------------------------------------------------------------------------

    def subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store the webhook subscription from the subscribe API's body."""
        url = body.get("listenerURL")
        if not isinstance(url, str) or not url.strip():
            raise SandboxError("BTRA_0003", "listenerURL is required", 400)
        if not url.startswith(("http://", "https://")):
            raise SandboxError("BTRA_0040", "listenerURL must be an http(s) URL", 400)
        subscription: dict[str, Any] = {"listenerURL": url.strip()}
        for flag in (
            "paymentReceivedEvent",
            "refundSentEvent",
            "donationReceivedEvent",
            "ecommercePaymentReceivedEvent",
            "ecommercePaymentCancelledEvent",
            "ecommercePaymentExpiredEvent",
        ):
            value = body.get(flag, False)
            subscription[flag] = value is True or str(value).lower() == "true"
        with self._lock:
            self.subscription = subscription
        return dict(subscription)

    def webhook_payload(
        self, ecommerce_id: str, status: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A real-shaped eCommerce webhook for this payment; ``overrides`` replace keys.

        ``status`` is "completed", "cancelled" or "expired"; by default it follows the payment
        (an OPEN/CONFIRM payment has no event, so a status must be given for it).
        """
        with self._lock:
            p = self._get(ecommerce_id)
            if status is None:
                if p.status == COMPLETED:
                    status = "completed"
                elif p.status == CANCEL:
                    status = p.cancel_reason or "cancelled"
                else:
                    raise StateConflict(f"payment {ecommerce_id} is {p.status}: give a status")
            if status not in ("completed", "cancelled", "expired"):
                raise ValueError("status must be completed, cancelled or expired")
            payload = self._webhook_payload(p, status)
        payload.update(overrides)
        return payload

    def _webhook_payload(self, p: Payment, status: str) -> dict[str, Any]:
        from athm_sync.sandbox.webhooks import ecommerce_payload

        return ecommerce_payload(p, status, datetime.fromtimestamp(self._now_ts(), UTC))

    def refund_webhook_payload(self, ecommerce_id: str, refund_index: int = -1) -> dict[str, Any]:
        """A real-shaped refund webhook for one refund of this payment (the last by default)."""
        with self._lock:
            p = self._get(ecommerce_id)
            try:
                p.refunds[refund_index]
            except IndexError:
                raise StateConflict(
                    f"payment {ecommerce_id} has no refund {refund_index}"
                ) from None
            return self._refund_payload(p, refund_index)

    def _refund_payload(self, p: Payment, index: int) -> dict[str, Any]:
        from athm_sync.sandbox.webhooks import refund_payload

        return refund_payload(p, p.refunds[index])

    def _queue_webhook(self, p: Payment, status: str) -> None:
        # Caller holds the lock; the payload is a snapshot of this moment, posted later.
        if self._wants(status):
            self._outbox.append(self._webhook_payload(p, status))

    def _queue_refund_webhook(self, p: Payment, index: int) -> None:
        if self._wants("refund"):
            self._outbox.append(self._refund_payload(p, index))

    def _wants(self, event: str) -> bool:
        return bool(
            self.auto_webhooks and self.subscription and self.subscription[_EVENT_FLAGS[event]]
        )

    def take_webhooks(self) -> list[dict[str, Any]]:
        """Queued automatic webhooks (auto_webhooks on), removed from the queue."""
        with self._lock:
            queued = list(self._outbox)
            self._outbox.clear()
            return queued

    def deliver_webhooks(self, background: bool = False) -> None:
        """Post queued automatic webhooks to the subscribed listener.

        In-process and control actions deliver synchronously, so a test knows the webhook
        arrived when the call returns; API calls deliver in a thread, because the shop's
        client is waiting for the answer (the real service is asynchronous too).
        """
        payloads = self.take_webhooks()
        if not payloads:
            return
        if background:
            threading.Thread(target=self._post_all, args=(payloads,), daemon=True).start()
        else:
            self._post_all(payloads)

    def _post_all(self, payloads: list[dict[str, Any]]) -> None:
        from athm_sync.sandbox.webhooks import send_webhook

        for payload in payloads:
            try:
                self.send_webhook(payload, sender=send_webhook)
            except Exception:  # a shop's listener being down must not break the sandbox
                logger.warning("sandbox webhook delivery failed", exc_info=True)

    def send_webhook(
        self, payload: dict[str, Any], listener_url: str | None = None, sender: Any = None
    ) -> int:
        """POST ``payload`` to ``listener_url`` or the subscribed listener; return its status."""
        from athm_sync.sandbox.webhooks import send_webhook

        with self._lock:
            url = listener_url or (self.subscription or {}).get("listenerURL")
        if not url:
            raise StateConflict("no listener URL given and no webhook subscription")
        entry: dict[str, Any] = {"url": url, "payload": payload}
        try:
            status = (sender or send_webhook)(payload, url)
        except Exception as exc:
            entry["error"] = repr(exc)
            self._log_delivery(entry)
            raise
        entry["status"] = status
        self._log_delivery(entry)
        return status

    def _log_delivery(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.deliveries.append(entry)
            del self.deliveries[:-100]  # keep memory bounded in a long demo
