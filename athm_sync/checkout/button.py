"""Evertec's JavaScript button, made safe: the page's ``ATHM_Checkout`` config comes from
values the server signed, and the callback view tracks the payment the browser made against
those signed values, never against what the browser says.

:func:`render_context` is what ``{% athm_button %}`` renders; :func:`accept` is what the
callback view does with a posted ``ecommerceId``. A browser that pays another amount (a
tampered config) gets its payment held as ``MISMATCHED`` by the reconciler's money check.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

from django.core import signing
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from athm_sync.checkout import flow
from athm_sync.checkout.models import Checkout
from athm_sync.conf import get_settings
from athm_sync.managers import validate_ecommerce_id, validate_new_payment
from athm_sync.models import Payment

logger = logging.getLogger("athm_sync.checkout.button")

S = Payment.Status
SALT = "athm_sync.checkout.button"
# How long a rendered button may be used: the customer reads the page, then pays within the
# payment's timeout (at most 10 minutes).
SIGNATURE_MAX_AGE = 3600
THEMES = ("btn", "btn-dark", "btn-light")


def script_url() -> str:
    """Where Evertec's button library is loaded from (``CHECKOUT_BUTTON_SCRIPT_URL``)."""
    return get_settings().checkout_button_script_url


def _money(value: Decimal) -> float:
    # Evertec's config takes JSON numbers; the amount the server trusts is the signed string.
    return float(value)


def render_context(
    *,
    total: Decimal | int | str,
    success_url: str,
    cancel_url: str = "",
    metadata_1: str = "",
    metadata_2: str = "",
    subtotal: Decimal | int | str | None = None,
    tax: Decimal | int | str | None = None,
    items: list[dict[str, Any]] | None = None,
    timeout: int | None = None,
    order_key: str | None = None,
    phone_number: str | int | None = None,
    theme: str = "btn",
) -> dict[str, Any]:
    """The button's config for Evertec's script and the signed order our view trusts.

    Arguments are those of :func:`athm_sync.checkout.start` (``phone_number`` optional: the
    customer types it in Evertec's window otherwise) plus ``theme``. Raises ``ValueError``
    naming the argument for bad amounts, URLs or theme.
    """
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)}.")
    order = flow._clean_order(
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
        phone_required=False,
    )
    amounts = order.amounts
    phone = order.phone
    conf = get_settings()
    # Items as JSON has them (Decimal prices as strings): what is signed is what is shown.
    items_shown = json.loads(json.dumps(amounts.items, cls=DjangoJSONEncoder))
    signed = signing.dumps(
        {
            "order_key": order.key,
            "total": str(amounts.total),
            "subtotal": str(amounts.subtotal),
            "tax": str(amounts.tax),
            "metadata_1": amounts.metadata_1,
            "metadata_2": amounts.metadata_2,
            "items": items_shown,
            "timeout": amounts.timeout,
            "phone": phone,
            "success_url": order.success_url,
            "cancel_url": order.cancel_url,
        },
        salt=SALT,
        compress=True,
    )
    config = {
        "env": "production",
        "publicToken": conf.public_token,
        "timeout": amounts.timeout,
        "orderType": "",
        "theme": theme,
        "lang": "es" if (get_language() or "").startswith("es") else "en",
        "total": _money(amounts.total),
        "subtotal": _money(amounts.subtotal),
        "tax": _money(amounts.tax),
        "metadata1": amounts.metadata_1,
        "metadata2": amounts.metadata_2,
        "items": items_shown,
    }
    if phone:
        config["phoneNumber"] = int(phone)
    return {"config": config, "signed": signed, "script_url": script_url()}


def _unsign(signed: Any) -> dict[str, Any]:
    if not isinstance(signed, str) or not signed:
        raise flow.CheckoutError(_("This payment button is not valid. Reload the page."))
    try:
        return signing.loads(signed, salt=SALT, max_age=SIGNATURE_MAX_AGE)
    except signing.SignatureExpired:
        raise flow.CheckoutError(
            _("This payment button has expired. Reload the page and pay again.")
        ) from None
    except signing.BadSignature:
        raise flow.CheckoutError(_("This payment button is not valid. Reload the page.")) from None


def signed_cancel_url(signed: Any) -> str:
    """The shop's cancel URL the signed order names ('' when none); raises
    :class:`~athm_sync.checkout.flow.CheckoutError` for a bad or expired signature."""
    return _unsign(signed)["cancel_url"]


def accept(signed: Any, ecommerce_id: Any, auth_token: Any = "") -> Checkout:
    """The checkout of the payment the browser's button made for the signed order.

    Verifies ``signed``, tracks ``ecommerce_id`` with the signed amounts (the money check holds
    it when ATH Móvil's differ) and makes its :class:`Checkout` row; asks ATH Móvil once. The
    same ``ecommerce_id`` again returns the same checkout; another one for an order already
    paid (or held) is refused. An open payment the order had is cancelled first (the customer
    opened the button again). Raises :class:`~athm_sync.checkout.flow.CheckoutError`;
    nothing is stored then.
    """
    order = _unsign(signed)
    try:
        payment_id = validate_ecommerce_id(ecommerce_id)
    except ValueError:
        raise flow.CheckoutError(
            _("ATH Móvil's answer named no payment. Please try again.")
        ) from None
    token = auth_token if isinstance(auth_token, str) else ""
    for _round in range(flow._START_ROUNDS):
        existing = Payment.objects.filter(pk=payment_id).select_related("checkout").first()
        if existing is not None:
            checkout = getattr(existing, "checkout", None)
            if checkout is None or checkout.order_key != order["order_key"]:
                raise _refused()
            return _look(checkout)  # a replayed POST: the same page
        current = (
            Checkout.objects.filter(order_key=order["order_key"], order_open=True)
            .select_related("payment")
            .first()
        )
        if current is not None:
            _make_way(current)
        try:
            checkout = _store(order, payment_id, token)
        except IntegrityError:
            continue  # another POST for the order came first: look again
        logger.info("Checkout %s tracks button payment %s", checkout.pk, payment_id)
        return _look(checkout)
    raise flow.Unavailable()


def _refused() -> flow.CheckoutError:
    return flow.CheckoutError(_("This payment does not belong to this order."), 409)


def _make_way(current: Checkout) -> None:
    """Close the order's checkout ``current`` for a new button payment; raises
    :class:`~athm_sync.checkout.flow.CheckoutError` (409) when it is paid (or held), or its
    payment is still being created, so the order must not be paid again."""
    payment = current.payment
    if payment is None:
        if not flow.never_started(current):
            raise flow.CheckoutError(
                _("The payment request is still being sent. Try again in a moment."), 409
            )
    elif payment.status in (S.COMPLETED, S.MISMATCHED):
        raise flow.CheckoutError(_("This order is already paid."), 409)
    elif not payment.is_terminal:
        flow.cancel(current)  # raises Unavailable when ATH Móvil cannot be asked
        payment.refresh_from_db(fields=["status"])
        if payment.status in (S.COMPLETED, S.MISMATCHED):
            raise flow.CheckoutError(_("This order is already paid."), 409)
    flow._close(current)


def _store(order: dict[str, Any], payment_id: Any, auth_token: str) -> Checkout:
    amounts = validate_new_payment(
        total=order["total"],
        subtotal=order["subtotal"],
        tax=order["tax"],
        metadata_1=order["metadata_1"],
        metadata_2=order["metadata_2"],
        items=order["items"],
        timeout=order["timeout"],
    )
    with transaction.atomic():
        try:
            payment = Payment.objects.track(
                payment_id,
                total=amounts.total,
                subtotal=amounts.subtotal,
                tax=amounts.tax,
                metadata_1=amounts.metadata_1,
                metadata_2=amounts.metadata_2,
                items=amounts.items,
                timeout=amounts.timeout,
                auth_token=auth_token,
            )
        except ValueError as error:
            logger.warning("Button payment %s not tracked: %s", payment_id, error)
            raise flow.CheckoutError(
                _("This payment button is not valid. Reload the page.")
            ) from None
        return Checkout.objects.create(
            payment=payment,
            order_key=order["order_key"],
            phone_number=order["phone"],
            success_url=order["success_url"],
            cancel_url=order["cancel_url"],
        )


def _look(checkout: Checkout) -> Checkout:
    checkout = Checkout.objects.select_related("payment").get(pk=checkout.pk)
    flow.look(checkout)
    return checkout
