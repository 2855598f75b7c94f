"""What the checkout does: start a payment for an order, look at it now (one asker per
interval), cancel it, and send its push to another phone. The views are thin callers.

Nothing here writes a payment's status: every look at ATH Móvil goes through
:func:`athm_sync.reconcile.observe` and :func:`athm_sync.reconcile.apply`, the same path as the
scheduled run and the webhook view, so a signal fires once whichever door sees a change first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from athm_sync import clock, reconcile
from athm_sync.checkout.models import Checkout
from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    InvalidStateError,
    NotFoundError,
    TransientError,
)
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.managers import _validate_phone_number, validate_new_payment
from athm_sync.models import Payment

logger = logging.getLogger("athm_sync.checkout")

S = Payment.Status
MAX_ORDER_KEY_LENGTH = Checkout._meta.get_field("order_key").max_length
# How many times start() looks again after losing a race for an order's open checkout.
_START_ROUNDS = 4


class CheckoutError(Exception):
    """A customer's action that was not done; ``message`` is for the customer (translated
    when shown), ``status`` the HTTP status to answer with. Nothing stored changed."""

    def __init__(self, message: Any, status: int = 400) -> None:
        self.message = message
        self.status = status
        super().__init__(str(message))


class InvalidPhoneNumber(CheckoutError, ValueError):
    """The phone number is not one ATH Móvil can send a push to (ten digits)."""

    def __init__(self) -> None:
        super().__init__(_("Enter a 10-digit phone number, like 787 555 1234."))


class Unavailable(CheckoutError):
    """ATH Móvil could not be reached or refused for now; trying again later may work."""

    def __init__(self, message: Any = None) -> None:
        super().__init__(
            message or _("ATH Móvil cannot be reached right now. Please try again in a moment."),
            status=503,
        )


def clean_phone(value: Any) -> str:
    """``value`` as ten digits (a leading 1 dropped); raises :class:`InvalidPhoneNumber`."""
    try:
        digits = _validate_phone_number("" if value is None else value)
    except ValueError:
        raise InvalidPhoneNumber() from None
    if digits is None:
        raise InvalidPhoneNumber()
    return digits


def mask_phone(digits: str) -> str:
    """A phone number with all but its last four digits hidden: ``(•••) •••-1234``."""
    return f"(•••) •••-{digits[-4:]}" if len(digits) >= 4 else ""


def _client() -> ATHMovilClient:
    # One attempt: a customer is waiting on this call, and the next poll tries again.
    return ATHMovilClient.from_settings(max_attempts=1)


def _reservation_lifetime(conf: AthmSyncSettings) -> timedelta:
    """How long a checkout may wait for its payment to be created: create payment is sent
    once (never retried), so a reservation older than this belongs to a start() that died."""
    return timedelta(seconds=2 * (conf.connect_timeout + conf.read_timeout) + 10)


def _check_url(name: str, value: Any, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is required: where the customer goes next.")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, not {type(value).__name__}.")
    parts = urlsplit(value)
    relative = not parts.scheme and not parts.netloc and value.startswith("/")
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not (relative or absolute) or value.startswith("//"):
        raise ValueError(f"{name} must be a path like /orders/7/paid/ or an http(s) URL.")
    if len(value) > 2000:
        raise ValueError(f"{name} must be at most 2000 characters.")
    return value


@dataclass(frozen=True)
class _Order:
    """start()'s cleaned arguments."""

    key: str
    amounts: Any  # athm_sync.managers.NewPayment
    phone: str
    success_url: str
    cancel_url: str


def start(
    request: Any,
    *,
    total: Decimal | int | str,
    phone_number: str | int,
    success_url: str,
    cancel_url: str = "",
    metadata_1: str = "",
    metadata_2: str = "",
    subtotal: Decimal | int | str | None = None,
    tax: Decimal | int | str | None = None,
    items: list[dict[str, Any]] | None = None,
    timeout: int | None = None,
    order_key: str | None = None,
) -> Any:
    """Create the payment with ATH Móvil from these amounts and redirect to its waiting page.

    Call it from the shop's own view with the order's amounts: nothing is read from the
    browser's request (``request`` only picks the language of an error page). The order is
    ``order_key`` (``metadata_1`` when not given); while that order has a payment that can
    still be paid (or was paid, or is held), calling this again returns the same waiting page
    and creates nothing, also when two calls race. A cancelled or expired one makes way for a
    new payment; an open one for other amounts is cancelled first (the cart changed).

    Raises ``ValueError`` naming the argument for bad amounts or URLs (before anything is
    sent), and :class:`InvalidPhoneNumber` (a ``ValueError`` with a message for the customer,
    ``error.message``) for a phone number that is not ten digits. When ATH Móvil cannot take
    the payment now, returns the "try again" page (HTTP 503) in the customer's language.
    """
    from django.http import HttpResponseRedirect

    from athm_sync.checkout.views import unavailable_page

    try:
        get_settings()
    except ImproperlyConfigured as error:  # the shop's to fix (manage.py check says how)
        logger.error("Checkout not started: %s", error)
        return unavailable_page(request, Unavailable())
    _require_urls()
    order = _clean_order(
        order_key=order_key,
        total=total,
        subtotal=subtotal,
        tax=tax,
        metadata_1=metadata_1,
        metadata_2=metadata_2,
        items=items,
        timeout=timeout,
        phone_number=phone_number,
        success_url=success_url,
        cancel_url=cancel_url,
    )
    try:
        checkout = begin(order)
    except Unavailable as error:
        return unavailable_page(request, error, back_url=order.cancel_url)
    return HttpResponseRedirect(wait_url(checkout))


def _clean_order(
    *,
    order_key: Any,
    phone_number: Any,
    success_url: Any,
    cancel_url: Any,
    phone_required: bool = True,
    **amounts: Any,
) -> _Order:
    key = amounts["metadata_1"] if order_key is None else order_key
    if not isinstance(key, str) or not key.strip():
        raise ValueError(
            "order_key (or metadata_1) must name the order, so that a second call for the same "
            "order finds its payment instead of creating another."
        )
    if len(key) > MAX_ORDER_KEY_LENGTH:
        raise ValueError(f"order_key must be at most {MAX_ORDER_KEY_LENGTH} characters.")
    cleaned = validate_new_payment(**amounts)
    return _Order(
        key=key.strip(),
        amounts=cleaned,
        # The JavaScript button may leave the phone to the customer, in Evertec's window.
        phone=clean_phone(phone_number) if phone_required or phone_number not in (None, "") else "",
        success_url=_check_url("success_url", success_url, required=True),
        cancel_url=_check_url("cancel_url", cancel_url, required=False),
    )


def _require_urls() -> None:
    """Refuse to start a payment whose page could not be linked to (a project bug)."""
    from django.urls import NoReverseMatch, reverse

    try:
        reverse("athm_sync:checkout_wait", kwargs={"checkout_id": "x", "token": "x"})
    except NoReverseMatch:
        raise ImproperlyConfigured(
            'The checkout\'s pages have no URL: add path("athm/", include("athm_sync.urls")) '
            "to your urlpatterns."
        ) from None


def wait_url(checkout: Checkout) -> str:
    """The waiting page of ``checkout``: the one URL its customer needs (it holds the token)."""
    from django.urls import reverse

    return reverse(
        "athm_sync:checkout_wait", kwargs={"checkout_id": checkout.pk, "token": checkout.token}
    )


def begin(order: _Order) -> Checkout:
    """The order's checkout: the open one, or a new one whose payment ATH Móvil just created.

    A new checkout row is inserted first (the order's one open row: a unique index), then ATH
    Móvil is asked; so of two concurrent calls one inserts and creates the payment, and the
    other finds that row and returns it (its page says "sending" until the payment is there).
    Raises :class:`Unavailable` when ATH Móvil cannot create the payment (or ``ATHM_SYNC``
    is unusable); no payment is stored then, and the new row is closed.
    """
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        logger.error("Checkout of order %s not started: %s", order.key, error)
        raise Unavailable() from error
    checkout = None
    for _round in range(_START_ROUNDS):
        existing = (
            Checkout.objects.filter(order_key=order.key, order_open=True)
            .select_related("payment")
            .first()
        )
        if existing is not None:
            if _reuse(existing, order, conf):
                return existing
            _close(existing)
            continue
        try:
            with transaction.atomic():
                checkout = Checkout.objects.create(
                    order_key=order.key,
                    phone_number=order.phone,
                    success_url=order.success_url,
                    cancel_url=order.cancel_url,
                )
        except IntegrityError:
            continue  # another call reserved this order first: the next round finds it
        break
    if checkout is None:
        raise Unavailable()
    return _create_payment(checkout, order)


def _reuse(existing: Checkout, order: _Order, conf: AthmSyncSettings) -> bool:
    """Whether ``existing`` is the order's checkout still (else it is closed and replaced)."""
    now = clock.now()
    payment = existing.payment
    if payment is None:  # being created by another call, unless that call died
        return now < existing.created_at + _reservation_lifetime(conf)
    if payment.status in (S.COMPLETED, S.MISMATCHED):
        return True  # paid (or held for review): never charge the order twice
    if payment.is_terminal or now >= payment.deadline:
        return False
    amounts = order.amounts
    same = (payment.total, payment.metadata_1, payment.metadata_2) == (
        amounts.total,
        amounts.metadata_1,
        amounts.metadata_2,
    )
    if same:
        return True
    logger.info("Checkout %s: the order's amounts changed; cancelling its payment", existing.pk)
    cancel(existing)  # raises Unavailable when ATH Móvil cannot be asked
    payment.refresh_from_db(fields=["status"])
    return payment.status in (S.COMPLETED, S.MISMATCHED)  # paid meanwhile: keep it


def _close(checkout: Checkout) -> None:
    Checkout.objects.filter(pk=checkout.pk, order_open=True).update(order_open=False)
    checkout.order_open = False


def never_started(checkout: Checkout) -> bool:
    """Whether the checkout's payment was never created (ATH Móvil refused or failed, or its
    start() died), so its page can only send the customer back."""
    if checkout.payment_id is not None:
        return False
    if not checkout.order_open:
        return True
    try:
        lifetime = _reservation_lifetime(get_settings())
    except ImproperlyConfigured:  # nothing can be started then either
        return True
    return clock.now() >= checkout.created_at + lifetime


def _create_payment(checkout: Checkout, order: _Order) -> Checkout:
    amounts = order.amounts
    try:
        payment = Payment.objects.create_via_api(
            total=amounts.total,
            subtotal=amounts.subtotal,
            tax=amounts.tax,
            metadata_1=amounts.metadata_1,
            metadata_2=amounts.metadata_2,
            items=amounts.items,
            phone_number=order.phone,
            timeout=amounts.timeout,
        )
    except BaseException as error:
        # Closed, not deleted: a concurrent start() may have sent its customer to this page,
        # which now says the payment could not be started.
        _close(checkout)
        if isinstance(error, ATHMovilError | ImproperlyConfigured):
            logger.warning("Checkout of order %s not started: %s", order.key, error)
            raise Unavailable() from error
        raise
    attached = Checkout.objects.filter(
        pk=checkout.pk, payment__isnull=True, order_open=True
    ).update(payment=payment)
    if not attached:
        # Declared dead while ATH Móvil took longer than any call may: a newer checkout of the
        # order exists. This payment is withdrawn, and the customer goes to the newer one.
        logger.warning("Checkout %s started too late; cancelling payment %s", checkout.pk, payment)
        _cancel_payment(payment)
        newer = Checkout.objects.filter(order_key=order.key, order_open=True).first()
        if newer is None:
            raise Unavailable()
        return newer
    checkout.payment = payment
    logger.info("Checkout %s started payment %s", checkout.pk, payment.pk)
    return checkout


# -- looking at ATH Móvil ------------------------------------------------------------------


def look(checkout: Checkout) -> bool:
    """Ask ATH Móvil about the checkout's payment now, unless someone asked within
    ``CHECKOUT_POLL_INTERVAL``; apply what changed (a confirmed payment is captured at once).

    Returns False when ATH Móvil could not be asked (the payment is as stored), True
    otherwise. The asker is elected by a conditional ``UPDATE`` of ``asked_at``, so however
    many tabs, processes and hosts poll, one call goes out per interval per payment.
    """
    payment = checkout.payment
    if payment is None or payment.is_terminal:
        return True
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        logger.error("Checkout %s cannot ask ATH Móvil: %s", checkout.pk, error)
        return False
    now = clock.now()
    since = now - timedelta(seconds=conf.checkout_poll_interval)
    # While the call is out, nobody else is elected: the mark is put after its longest wait.
    in_flight = now + timedelta(seconds=conf.connect_timeout + conf.read_timeout)
    elected = Checkout.objects.filter(
        Q(asked_at__isnull=True) | Q(asked_at__lte=since), pk=checkout.pk
    ).update(asked_at=in_flight)
    if not elected:
        return True
    try:
        with _client() as client:
            observation = reconcile.observe(
                client, payment.pk, payment.auth_token, capture=True, expected=payment
            )
    except (AuthenticationError, ImproperlyConfigured) as error:
        logger.error("Checkout %s could not ask ATH Móvil: %s", checkout.pk, error)
        observation = None
    finally:
        Checkout.objects.filter(pk=checkout.pk).update(asked_at=clock.now())
    if observation is None or observation.error is not None:
        if observation is not None:
            logger.warning("Checkout %s: %s", checkout.pk, observation.error)
        return False
    reconcile.apply(observation, source="checkout")
    checkout.payment = Payment.objects.get(pk=payment.pk)
    return True


# -- the customer's actions ----------------------------------------------------------------


def cancel(checkout: Checkout) -> None:
    """Cancel the checkout's payment with ATH Móvil, and apply what ATH Móvil then says.

    A payment already finished is left as it is (a replayed POST changes nothing); one the
    customer paid meanwhile completes instead. Raises :class:`Unavailable` when ATH Móvil
    cannot be asked, and :class:`CheckoutError` while the payment is still being created.
    """
    payment = checkout.payment
    if payment is None:
        raise CheckoutError(_("The payment request is still being sent. Try again in a moment."))
    if payment.is_terminal:
        return
    _cancel_payment(payment)
    checkout.payment = Payment.objects.get(pk=payment.pk)


def _cancel_payment(payment: Payment) -> None:
    try:
        with _client() as client:
            try:
                client.cancel(payment.pk)
            except (InvalidStateError, NotFoundError) as error:
                # Completed, cancelled or expired meanwhile: what findPayment says decides.
                logger.info("Payment %s not cancelled: %s", payment.pk, error)
            observation = reconcile.observe(client, payment.pk, capture=False, expected=payment)
    except (ATHMovilError, ImproperlyConfigured) as error:
        logger.warning("Payment %s could not be cancelled now: %s", payment.pk, error)
        raise Unavailable() from error
    if observation.error is not None:
        raise Unavailable()
    reconcile.apply(observation, source="checkout")


def change_phone(checkout: Checkout, phone_number: Any) -> bool:
    """Send the payment's push to another phone; False when it went there already.

    At most ``CHECKOUT_MAX_PHONE_CHANGES`` times per payment (the count is taken before ATH
    Móvil is asked, with a conditional ``UPDATE``, and given back when the call fails), and
    only while the payment is open. Raises :class:`InvalidPhoneNumber`,
    :class:`CheckoutError` (too many changes, too late, refused by ATH Móvil) or
    :class:`Unavailable`; nothing stored changes then.
    """
    phone = clean_phone(phone_number)
    payment = checkout.payment
    if payment is None or payment.status != S.OPEN or clock.now() >= payment.deadline:
        raise CheckoutError(_("This payment can no longer be sent to another phone."), 409)
    if phone == checkout.phone_number:
        return False
    conf = get_settings()
    taken = Checkout.objects.filter(
        pk=checkout.pk, phone_changes__lt=conf.checkout_max_phone_changes
    ).update(phone_changes=F("phone_changes") + 1)
    if not taken:
        raise CheckoutError(
            _("The payment request cannot be sent to another phone again. Cancel and start over."),
            429,
        )
    try:
        with _client() as client:
            client.update_phone_number(payment.pk, phone, payment.auth_token)
    except (ATHMovilError, ImproperlyConfigured) as error:
        Checkout.objects.filter(pk=checkout.pk).update(phone_changes=F("phone_changes") - 1)
        logger.warning("Checkout %s: phone not changed: %s", checkout.pk, error)
        if isinstance(error, TransientError | ImproperlyConfigured):
            raise Unavailable() from error
        raise CheckoutError(
            _("ATH Móvil could not send the payment request to that number."), 400
        ) from error
    Checkout.objects.filter(pk=checkout.pk).update(phone_number=phone)
    checkout.phone_number = phone
    checkout.phone_changes += 1
    return True
