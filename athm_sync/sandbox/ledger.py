"""The ledger: payments and refunds, and every change of state a payment can go through.

A payment is ``OPEN`` when created (the Payment Button's first call, or ``create_payment``),
``CONFIRM`` once the customer confirms in the app, ``COMPLETED`` once captured (the button's
``authorization`` call) and ``CANCEL`` when cancelled or expired (``cancel_reason`` says which).
Only a ``COMPLETED`` payment takes refunds, up to its total.

Expiry is lazy: a payment past its deadline (``created + timeout``) becomes ``CANCEL`` the
first time it is read, so moving real time (time-machine) expires payments too;
:meth:`Ledger.sweep` applies it to all. :meth:`Ledger.expire` lets one payment's time run out
at once by moving its creation back, and tells its expiry listeners (a shop in the same
process, whose own deadline must pass too) before the expiry's webhook is posted.
Customer actions (:meth:`Ledger.confirm`, :meth:`Ledger.complete`...) post the automatic
webhooks they owe before they return; API calls leave that to the server.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from athm_sync.sandbox.clock import SandboxClock
from athm_sync.sandbox.errors import (
    ListenerFailed,
    SandboxError,
    StateConflict,
    unknown_payment,
)
from athm_sync.sandbox.formats import (
    BUSINESS_CUSTOMER_ID,
    BUSINESS_INDUSTRY,
    BUSINESS_NAME,
    BUSINESS_PATH,
    PR_TZ,
    fee_for,
    float32,
    json_number,
    phone_digits,
    pr_local,
    to_money,
)
from athm_sync.sandbox.tokens import AuthTokens

if TYPE_CHECKING:
    from athm_sync.sandbox.webhooks import Webhooks

OPEN, CONFIRM, COMPLETED, CANCEL = "OPEN", "CONFIRM", "COMPLETED", "CANCEL"
MIN_TOTAL, MAX_TOTAL = Decimal("1.00"), Decimal("1500.00")
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 120, 600, 600
METADATA_MAX, MESSAGE_MAX = 40, 50


@dataclass
class Refund:
    """One refund of a completed payment, made through the API or the ATH Business app."""

    amount: Decimal
    date: datetime
    daily_transaction_id: str
    message: str
    source: str  # "api" or "app"
    # Its own reference number; empty: it reuses the payment's (see Ledger.own_app_references).
    reference_number: str = ""


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
    created: float  # sandbox epoch seconds; expire() moves it back
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
    # The digits of every phone the payment request was pushed to, in order: the one it was
    # created with, then each updatePhoneNumber (the phone pages list it under each).
    pushed_to: list[str] = field(default_factory=list)

    @property
    def total_refunded(self) -> Decimal:
        """The sum of this payment's refunds."""
        return sum((r.amount for r in self.refunds), Decimal("0"))

    @property
    def deadline(self) -> float:
        """When ATH Móvil expires the payment (sandbox epoch seconds): created + timeout."""
        return self.created + self.timeout


def _parse_timeout(timeout: Any) -> int:
    if timeout in (None, ""):
        return DEFAULT_TIMEOUT
    if isinstance(timeout, bool):
        raise SandboxError("BTRA_0006", "timeout must be between 120 and 600 seconds", 400)
    try:
        seconds = int(str(timeout).strip())
    except ValueError:
        raise SandboxError("BTRA_0006", "timeout must be a whole number of seconds", 400) from None
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        raise SandboxError("BTRA_0006", "timeout must be between 120 and 600 seconds", 400)
    return seconds


def new_reference_number() -> str:
    """A reference number as ATH Móvil writes them: digits, a dash, 32 hex digits."""
    return f"{secrets.randbelow(900_000_000) + 100_000_000}-{uuid.uuid4().hex}"


def state_error(p: Payment, action: str) -> SandboxError:
    """The error ATH Móvil answers when ``action`` does not fit the payment's status."""
    if p.status == CANCEL and p.cancel_reason == "expired":
        return SandboxError("BTRA_0039", f"Cannot {action}: the payment time expired", 400)
    if p.status == CANCEL:
        return SandboxError("BTRA_0037", f"Cannot {action}: the payment was cancelled", 400)
    if p.status == OPEN:
        return SandboxError("BTRA_0032", f"Cannot {action}: the payment is not confirmed", 400)
    return SandboxError("BTRA_0037", f"Cannot {action}: the payment is {p.status}", 400)


def refund_parties(p: Payment, refund: Refund) -> dict[str, Any]:
    """The fields every description of a refund carries (API answer, report row, webhook)."""
    return {
        # The real API's quirk: a refund reuses the original payment's reference number (one
        # made in the Business app may carry its own: Ledger.own_app_references).
        "referenceNumber": refund.reference_number or p.reference_number,
        "dailyTransactionID": refund.daily_transaction_id,
        "name": p.customer_name,
        "phoneNumber": p.customer_phone,
        "email": p.customer_email,
        "message": refund.message,
    }


def epoch_milliseconds(moment: datetime) -> str:
    """An instant as the refund API writes its dates: epoch milliseconds, as text.

    Evertec's documented refund answer shows ``"date": "123412341234", // timestamp``; the
    unit is not stated, and milliseconds is what its Java backend's timestamps count.
    """
    return str(int(moment.timestamp() * 1000))


def refund_record(p: Payment, refund: Refund) -> dict[str, Any]:
    """The ``refund`` part of the refund API's answer."""
    return {
        "transactionType": "REFUND",
        "status": "COMPLETED",
        "refundedAmount": str(refund.amount),
        "date": epoch_milliseconds(refund.date),
        **refund_parties(p, refund),
    }


def original_record(p: Payment) -> dict[str, Any]:
    """The ``originalTransaction`` part of the refund API's answer, as Evertec documents it:
    the payment as a ``PAYMENT`` transaction, without its ``ecommerceId``."""
    assert p.transaction_date is not None
    return {
        "transactionType": "PAYMENT",
        "status": "COMPLETED",
        "date": epoch_milliseconds(p.transaction_date),
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
        "totalRefundedAmount": json_number(p.total_refunded),
        "metadata1": p.metadata1,
        "metadata2": p.metadata2,
        "items": p.items,
    }


class Ledger:
    """Every payment the sandbox knows, with the API's and the customer's actions on them."""

    def __init__(
        self,
        clock: SandboxClock,
        tokens: AuthTokens,
        webhooks: Webhooks,
        lock: threading.RLock | None = None,
    ) -> None:
        """An empty ledger; ``webhooks`` is told of every event, ``lock`` is the state's."""
        self._clock = clock
        self._tokens = tokens
        self._webhooks = webhooks
        self._lock = lock or threading.RLock()
        # Told of every payment expire() is about to expire; wiring, not state: reset keeps them.
        self._expiry_listeners: list[Callable[[str], Any]] = []
        self.reset()

    def reset(self) -> None:
        """Forget every payment, daily transaction counter, misroute and tampering."""
        with self._lock:
            self._payments: dict[str, Payment] = {}
            self._daily: dict[str, int] = {}
            # Hostile answers: findPayment for a key answers with another payment's data, or
            # with some fields replaced (see misroute() and tamper()).
            self._misroutes: dict[str, str] = {}
            self._tampered: dict[str, dict[str, Any]] = {}
            # Whether a refund made in the ATH Business app gets a reference number of its own
            # instead of repeating the payment's (which ATH Móvil does is not published).
            self.own_app_references = False

    # -- reading ---------------------------------------------------------------------------

    def get(self, ecommerce_id: str) -> Payment:
        """The payment, with its expiry applied; the caller holds the lock."""
        payment = self._payments.get(str(ecommerce_id).strip())
        if payment is None:
            raise unknown_payment(ecommerce_id)
        self.refresh(payment)
        return payment

    def refresh(self, payment: Payment) -> None:
        """Expire ``payment`` if its deadline passed (the caller holds the lock)."""
        if payment.status in (OPEN, CONFIRM) and payment.deadline <= self._clock.timestamp():
            payment.status = CANCEL
            payment.cancel_reason = "expired"
            self._webhooks.queue_payment(payment, "expired")

    def sweep(self) -> None:
        """Expire every payment whose deadline passed (after the clock moved)."""
        with self._lock:
            for payment in self._payments.values():
                self.refresh(payment)

    def all(self) -> Iterator[Payment]:
        """Every payment, expiry applied, oldest first; the caller holds the lock."""
        for payment in self._payments.values():
            self.refresh(payment)
            yield payment

    def payment_ids(self) -> list[str]:
        """Every ecommerceId the sandbox knows, oldest first."""
        with self._lock:
            return list(self._payments)

    def data(self, p: Payment) -> dict[str, Any]:
        """The ``data`` of a findPayment answer for ``p``, as ATH Móvil writes it."""
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

    def payment_data(self, ecommerce_id: str) -> dict[str, Any]:
        """The ``data`` of a findPayment answer for this payment (as misrouted or tampered)."""
        with self._lock:
            key = str(ecommerce_id).strip()
            data = self.data(self.get(self._misroutes.get(key, key)))
            data.update(self._tampered.get(key, {}))
            return data

    def payment(self, ecommerce_id: str) -> dict[str, Any]:
        """The full internal state of a payment, JSON-safe (amounts as "1.00" strings)."""
        with self._lock:
            p = self.get(ecommerce_id)
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
                        "referenceNumber": r.reference_number or p.reference_number,
                        "message": r.message,
                        "source": r.source,
                    }
                    for r in p.refunds
                ],
            }

    # -- hostile answers -------------------------------------------------------------------

    def misroute(self, ecommerce_id: str, answer_with: str | None) -> None:
        """Make findPayment for ``ecommerce_id`` answer with the data of payment
        ``answer_with`` (a proxy's cache or a backend mix-up); ``None`` puts it right."""
        with self._lock:
            self.get(ecommerce_id)
            if answer_with is None:
                self._misroutes.pop(str(ecommerce_id), None)
                return
            self.get(answer_with)
            self._misroutes[str(ecommerce_id)] = str(answer_with)

    def tamper(self, ecommerce_id: str, **fields: Any) -> None:
        """Make findPayment for ``ecommerce_id`` answer with these ``data`` fields replaced
        (``referenceNumber="\\x00" + "9" * 299``, ``total=-1``...); no fields puts it right."""
        with self._lock:
            self.get(ecommerce_id)
            if fields:
                self._tampered[str(ecommerce_id)] = dict(fields)
            else:
                self._tampered.pop(str(ecommerce_id), None)

    # -- creating ----------------------------------------------------------------------------

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
        seconds = _parse_timeout(timeout)
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
            created = self._clock.timestamp()
            self._payments[ecommerce_id] = Payment(
                ecommerce_id=ecommerce_id,
                auth_token=self._tokens.issue(ecommerce_id, created),
                total=amount,
                subtotal=sub,
                tax=tax_amount,
                metadata1=metadata1 or "",
                metadata2=metadata2 or "",
                items=items,
                phone_number="" if phone_number is None else str(phone_number),
                timeout=seconds,
                created=created,
            )
            self._push(self._payments[ecommerce_id])
            return ecommerce_id, self._payments[ecommerce_id].auth_token

    def _push(self, p: Payment) -> None:
        """Send the payment request to the payment's phone (the caller holds the lock)."""
        digits = phone_digits(p.phone_number)
        if digits and (not p.pushed_to or p.pushed_to[-1] != digits):
            p.pushed_to.append(digits)

    # -- the customer's phone --------------------------------------------------------------

    def phones(self) -> list[dict[str, Any]]:
        """Every phone that received a payment request: its digits, how many, how many OPEN."""
        with self._lock:
            seen: dict[str, dict[str, Any]] = {}
            for p in self.all():
                for digits in dict.fromkeys(p.pushed_to):
                    entry = seen.setdefault(digits, {"phone": digits, "pushes": 0, "open": 0})
                    entry["pushes"] += 1
                    if p.status == OPEN and phone_digits(p.phone_number) == digits:
                        entry["open"] += 1
            return sorted(seen.values(), key=lambda entry: entry["phone"])

    def pushes(self, phone: Any) -> list[dict[str, Any]]:
        """The payment requests ``phone`` received, newest first, as its phone page shows them.

        ``current`` is False for one since sent to another phone (updatePhoneNumber): only the
        phone it went to last can approve or decline it.
        """
        digits = phone_digits(phone)
        with self._lock:
            now = self._clock.timestamp()
            found = [p for p in self.all() if digits and digits in p.pushed_to]
            return [
                {
                    "ecommerceId": p.ecommerce_id,
                    "businessName": BUSINESS_NAME,
                    "status": p.status,
                    "cancelReason": p.cancel_reason,
                    "total": str(p.total),
                    "subtotal": str(p.subtotal),
                    "tax": str(p.tax),
                    "metadata1": p.metadata1,
                    "metadata2": p.metadata2,
                    "items": p.items,
                    "secondsLeft": max(0, int(p.deadline - now))
                    if p.status in (OPEN, CONFIRM)
                    else 0,
                    "current": phone_digits(p.phone_number) == digits,
                }
                for p in reversed(found)  # the ledger keeps them oldest first
            ]

    def _next_daily_id(self, moment: datetime) -> str:
        day = moment.astimezone(PR_TZ).date().isoformat()
        self._daily[day] = self._daily.get(day, 0) + 1
        return f"{self._daily[day]:04d}"

    # -- the customer's actions ------------------------------------------------------------

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
            p = self.get(ecommerce_id)
            if p.status not in allowed:
                raise state_error(p, action)
            change(p)
        self._webhooks.deliver()
        return self.payment(ecommerce_id)

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

    def _capture(self, p: Payment) -> None:
        # Idempotent, as the authorization API is: capturing a COMPLETED payment changes nothing.
        if p.status == COMPLETED:
            return
        if p.status != CONFIRM:
            raise state_error(p, "authorize")
        # ATH Móvil dates have whole seconds; keeping them so makes report ranges exact.
        moment = datetime.fromtimestamp(int(self._clock.timestamp()), UTC)
        p.status = COMPLETED
        p.transaction_date = moment
        p.daily_transaction_id = self._next_daily_id(moment)
        p.reference_number = new_reference_number()
        p.fee = fee_for(p.total)
        p.net_amount = p.total - p.fee
        self._webhooks.queue_payment(p, "completed")

    def capture(self, ecommerce_id: str) -> dict[str, Any]:
        """What the JS button does after CONFIRM: CONFIRM -> COMPLETED. Returns :meth:`payment`."""
        return self._customer_action(ecommerce_id, "authorize", (CONFIRM, COMPLETED), self._capture)

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

    def _cancel(self, p: Payment) -> None:
        p.status = CANCEL
        p.cancel_reason = "cancelled"
        self._webhooks.queue_payment(p, "cancelled")

    def cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The customer cancels: OPEN/CONFIRM -> CANCEL. Returns :meth:`payment`."""
        return self._customer_action(ecommerce_id, "cancel", (OPEN, CONFIRM), self._cancel)

    def add_expiry_listener(self, listener: Callable[[str], Any]) -> None:
        """Call ``listener(ecommerce_id)`` whenever :meth:`expire` is about to expire a payment
        (kept across resets; see :meth:`expire`)."""
        with self._lock:
            if listener not in self._expiry_listeners:
                self._expiry_listeners.append(listener)

    def remove_expiry_listener(self, listener: Callable[[str], Any]) -> None:
        """Stop calling ``listener``; nothing happens if it was not added."""
        with self._lock:
            if listener in self._expiry_listeners:
                self._expiry_listeners.remove(listener)

    def expire(self, ecommerce_id: str) -> dict[str, Any]:
        """Let this payment's time run out now, as if nobody had acted for its whole timeout:
        OPEN/CONFIRM -> CANCEL (expired). Returns :meth:`payment`.

        Its creation moves back by the time it had left, so ``createdAt + timeout`` is now, as
        it is for a payment that really timed out (findPayment then says CANCEL, the expiry's
        webhook is dated now). ATH Móvil's answers carry no creation time, so a shop learns of
        this only from its own clock: the expiry listeners (``athm_sync.sandbox_expiry`` for a
        shop in this process) are called first, outside the lock, so that the shop's deadline
        has passed too before the ``expired`` webhook is posted. A listener that raises stops
        the expiry (:class:`ListenerFailed`): the payment is left as it was.
        """
        with self._lock:
            p = self.get(ecommerce_id)
            if p.status not in (OPEN, CONFIRM):
                raise state_error(p, "expire")
            listeners = list(self._expiry_listeners)
        for listener in listeners:
            try:
                listener(p.ecommerce_id)
            except Exception as error:
                raise ListenerFailed(
                    f"payment {p.ecommerce_id} was not expired: its expiry listener "
                    f"{getattr(listener, '__qualname__', listener)!s} raised "
                    f"{type(error).__name__}: {error}"
                ) from error

        def expire(p: Payment) -> None:
            p.created -= max(0.0, p.deadline - self._clock.timestamp())
            self.refresh(p)

        return self._customer_action(ecommerce_id, "expire", (OPEN, CONFIRM), expire)

    def set_own_app_references(self, own: bool) -> None:
        """Give refunds made in the ATH Business app (:meth:`refund`) a reference number of
        their own (``True``) or the payment's (``False``, the default); API refunds always
        repeat the payment's, as Evertec's documented answer does."""
        with self._lock:
            self.own_app_references = bool(own)

    def refund(self, ecommerce_id: str, amount: Any, message: str = "") -> dict[str, Any]:
        """A refund made in the ATH Business app (the shop makes no API call)."""
        with self._lock:
            self._refund(self.get(ecommerce_id), amount, message, "app")
        self._webhooks.deliver()
        return self.payment(ecommerce_id)

    def _refund(self, p: Payment, amount: Any, message: str, source: str) -> Refund:
        value = to_money(amount, "amount")
        if value <= 0:
            raise SandboxError("BTRA_0004", "amount must be greater than 0", 400)
        if not isinstance(message, str) or len(message) > MESSAGE_MAX:
            raise SandboxError("BTRA_0040", "message must be a string of up to 50 characters", 400)
        if p.status != COMPLETED:
            raise state_error(p, "refund")
        if p.total_refunded + value > p.total:
            raise SandboxError(
                "BTRA_0013",
                f"amount exceeds what is left to refund ({p.total - p.total_refunded})",
                400,
            )
        moment = datetime.fromtimestamp(int(self._clock.timestamp()), UTC)
        refund = Refund(value, moment, self._next_daily_id(moment), message, source)
        if source == "app" and self.own_app_references:
            refund.reference_number = new_reference_number()
        p.refunds.append(refund)
        self._webhooks.queue_refund(p, refund)
        return refund

    # -- the shop's API calls --------------------------------------------------------------

    def authorize(self, ecommerce_id: str) -> dict[str, Any]:
        """The authorization API: capture and answer findPayment-shaped data."""
        with self._lock:
            p = self.get(ecommerce_id)
            self._capture(p)
            return self.data(p)

    def api_cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The business cancel API: OPEN/CONFIRM -> CANCEL, CANCEL stays, COMPLETED refused."""
        with self._lock:
            p = self.get(ecommerce_id)
            if p.status == COMPLETED:
                raise SandboxError("BTRA_0037", "A completed payment cannot be cancelled", 400)
            if p.status != CANCEL:
                self._cancel(p)
            return self.data(p)

    def update_phone_number(self, ecommerce_id: str, phone_number: Any) -> dict[str, Any]:
        """The updatePhoneNumber API: change the phone the payment request goes to."""
        if not isinstance(phone_number, str | int) or isinstance(phone_number, bool):
            raise SandboxError("BTRA_0003", "phoneNumber is required", 400)
        with self._lock:
            p = self.get(ecommerce_id)
            if p.status not in (OPEN, CONFIRM):
                raise state_error(p, "update the phone number")
            p.phone_number = str(phone_number)
            self._push(p)
            return self.data(p)

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
            return {"refund": refund_record(p, refund), "originalTransaction": original_record(p)}

    # -- webhook payloads --------------------------------------------------------------------

    def webhook_payload(
        self, ecommerce_id: str, status: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A real-shaped eCommerce webhook for this payment; ``overrides`` replace keys.

        ``status`` is "completed", "cancelled" or "expired"; by default it follows the payment
        (an OPEN/CONFIRM payment has no event, so a status must be given for it).
        """
        with self._lock:
            p = self.get(ecommerce_id)
            if status is None:
                if p.status == COMPLETED:
                    status = "completed"
                elif p.status == CANCEL:
                    status = p.cancel_reason or "cancelled"
                else:
                    raise StateConflict(f"payment {ecommerce_id} is {p.status}: give a status")
            if status not in ("completed", "cancelled", "expired"):
                raise ValueError("status must be completed, cancelled or expired")
            payload = self._webhooks.payment_payload(p, status)
        payload.update(overrides)
        return payload

    def refund_webhook_payload(self, ecommerce_id: str, refund_index: int = -1) -> dict[str, Any]:
        """A real-shaped refund webhook for one refund of this payment (the last by default)."""
        from athm_sync.sandbox.webhooks import refund_payload

        with self._lock:
            p = self.get(ecommerce_id)
            try:
                refund = p.refunds[refund_index]
            except IndexError:
                raise StateConflict(
                    f"payment {ecommerce_id} has no refund {refund_index}"
                ) from None
            return refund_payload(p, refund)
