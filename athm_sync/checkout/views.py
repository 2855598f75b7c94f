"""The checkout's pages: the waiting page, its status endpoint (JSON), cancel and "send it to
another phone" (POST, CSRF-protected), each under ``checkout/<id>/<token>/``.

Every answer is in the customer's language: the one ``LocaleMiddleware`` chose, or, without
it, the one Django's ``get_language_from_request`` reads (the ``django_language`` cookie,
``Accept-Language``, ``LANGUAGE_CODE``). A wrong or unknown token, a malformed URL under
``checkout/`` and a finished checkout's actions each get a page of ours, never a 500. The URL
holds the token, so no answer is logged with its path, and pages send no ``Referer``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.middleware.csrf import CsrfViewMiddleware, _get_failure_view
from django.shortcuts import render
from django.urls import reverse
from django.utils import translation
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from athm_sync import clock
from athm_sync.checkout import flow
from athm_sync.checkout.models import Checkout
from athm_sync.conf import DEFAULTS, get_settings
from athm_sync.models import Payment

logger = logging.getLogger("athm_sync.checkout")

S = Payment.Status
TEMPLATES = "athm_sync/checkout/"
# Notices a redirect after a POST may name (?notice=...): only these keys, never free text.
_NOTICES = {
    "phone_sent": lambda: _("The payment request was sent to the new number."),
    "phone_same": lambda: _("The payment request was already sent to that number."),
}


class _QuietCsrf(CsrfViewMiddleware):
    """Django's own CSRF check, whose refusal (Django's 403 page) is logged without the path:
    the path holds the checkout's token."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        response = _get_failure_view()(request, reason=reason)
        logger.info("Checkout POST refused: %s", reason)
        response._has_been_logged = True
        return response


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    """Django's 403 answer when ``request`` fails the CSRF check; ``None`` when it passes."""
    check = _QuietCsrf(lambda request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, _csrf_protected, (), {})


def _csrf_protected(request: HttpRequest) -> None:  # what the CSRF check is asked about
    return None


def in_customer_language(request: HttpRequest, answer: Callable[[], HttpResponse]) -> HttpResponse:
    """``answer()`` made in the customer's language, marked private to this customer: never
    cached, varying by language, no ``Referer`` sent on, and never logged by Django with the
    token-bearing path."""
    chosen = getattr(request, "LANGUAGE_CODE", None)  # LocaleMiddleware's choice
    language = chosen or translation.get_language_from_request(request)
    with translation.override(language):
        response = answer()
    response.headers.setdefault("Content-Language", language)
    add_never_cache_headers(response)
    patch_vary_headers(response, ("Accept-Language", "Cookie"))
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    if response.status_code >= 400:
        response._has_been_logged = True  # django.request would log the token
    return response


def checkout_view(*methods: str) -> Callable[[Callable[..., HttpResponse]], Any]:
    """A checkout view answering ``methods`` only (405 otherwise), POSTs CSRF-checked,
    answered by :func:`in_customer_language` (the CSRF check is made here, not by the
    middleware, whose refusal would log the token-bearing path)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            def answer() -> HttpResponse:
                if request.method not in methods:
                    return HttpResponseNotAllowed(methods)
                if request.method == "POST" and (refused := _csrf_refusal(request)):
                    return refused
                return view(request, *args, **kwargs)

            return in_customer_language(request, answer)

        return csrf_exempt(wrapped)

    return decorate


def _find(checkout_id: str, token: str) -> Checkout | None:
    """The checkout ``checkout_id`` names when ``token`` is its token (compared in constant
    time) and the link is still good: while its payment can change, and for
    ``CHECKOUT_LINK_LIFETIME`` after the checkout started. ``None`` otherwise, saying nothing
    about which part was wrong."""
    try:
        pk = uuid.UUID(checkout_id)
    except ValueError:
        return None
    checkout = Checkout.objects.select_related("payment").filter(pk=pk).first()
    if checkout is None or not constant_time_compare(token, checkout.token):
        return None
    payment = checkout.payment
    settled = payment is None or payment.is_terminal
    if settled and clock.now() >= checkout.created_at + _setting("CHECKOUT_LINK_LIFETIME"):
        return None  # an old link (a browser history, a screenshot) opens nothing any more
    return checkout


def _not_found(request: HttpRequest, *, json: bool = False) -> HttpResponse:
    message = _("This payment page does not exist or is no longer available.")
    if json:
        return JsonResponse({"error": message}, status=404)
    return render(request, TEMPLATES + "not_found.html", {"message": message}, status=404)


@checkout_view("GET", "HEAD", "POST")
def not_found(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """Any other path under ``checkout/``: our 404 page, in the customer's language."""
    return _not_found(request)


# -- what the customer sees ----------------------------------------------------------------


def describe(checkout: Checkout, *, reached: bool = True) -> dict[str, Any]:
    """What the waiting page shows and the status endpoint answers, and nothing more."""
    payment = checkout.payment
    now = clock.now()
    if payment is None:
        failed = flow.never_started(checkout)
        return {
            "state": "failed" if failed else "starting",
            "message": _("The payment could not be started. Please go back and try again.")
            if failed
            else _("Sending the payment request to your phone…"),
            "total": "",
            "phone": flow.mask_phone(checkout.phone_number),
            "seconds_left": None,
            "deadline": None,
            "next": (checkout.cancel_url or None) if failed else None,
            "notice": "",
        }
    seconds_left = max(0, int((payment.deadline - now).total_seconds()))
    state, message, next_url = _state(checkout, payment)
    notice = ""
    if not reached and state in ("waiting", "confirmed"):
        notice = _("We could not reach ATH Móvil just now. Still waiting; trying again.")
    return {
        "state": state,
        "message": message,
        "total": f"{payment.total:.2f}",
        "phone": flow.mask_phone(checkout.phone_number),
        "seconds_left": seconds_left if state in ("waiting", "confirmed") else 0,
        "deadline": payment.deadline.isoformat(),
        "next": next_url,
        "notice": notice,
    }


def _state(checkout: Checkout, payment: Payment) -> tuple[str, str, str | None]:
    """(state, message, where the browser goes next) for a stored payment."""
    here = flow.wait_url(checkout)
    if payment.status == S.COMPLETED:
        return "completed", _("Payment received. Thank you!"), checkout.success_url
    if payment.status == S.CANCEL:
        return "cancelled", _("The payment was cancelled."), checkout.cancel_url or here
    if payment.status == S.EXPIRED:
        return "expired", _("The time to pay ran out."), here
    if payment.status == S.MISMATCHED:
        return "checking", _("We are checking your payment."), here
    if payment.status == S.CONFIRM and payment.mismatch_reason:
        # Confirmed for other amounts than the order's: never captured by us (the money check).
        return "checking", _("We are checking your payment."), here
    if payment.status == S.CONFIRM:
        return "confirmed", _("You confirmed the payment. Completing it…"), None
    return "waiting", _("Open ATH Móvil on your phone and confirm the payment."), None


def _wait_context(
    request: HttpRequest, checkout: Checkout, *, reached: bool = True, error: str = ""
) -> dict[str, Any]:
    conf_changes = _setting("CHECKOUT_MAX_PHONE_CHANGES")
    poll_interval = _setting("CHECKOUT_POLL_INTERVAL")
    kwargs = {"checkout_id": checkout.pk, "token": checkout.token}
    notice_key = request.GET.get("notice", "")
    notice = _NOTICES[notice_key]() if notice_key in _NOTICES else ""
    shown = describe(checkout, reached=reached)
    return {
        "checkout": checkout,
        "shown": shown,
        "minutes_left": (shown["seconds_left"] or 0) // 60,
        "seconds_part": f"{(shown['seconds_left'] or 0) % 60:02d}",
        "status_url": reverse("athm_sync:checkout_status", kwargs=kwargs),
        "cancel_url": reverse("athm_sync:checkout_cancel", kwargs=kwargs),
        "phone_url": reverse("athm_sync:checkout_phone", kwargs=kwargs),
        "phone_changes_left": max(0, conf_changes - checkout.phone_changes),
        "poll_ms": int(poll_interval * 1000),
        "refresh_seconds": max(3, int(poll_interval * 2)),
        "notice": notice or shown["notice"],
        "error": error,
        "offline_message": _("The connection was lost. Still waiting; trying again."),
        "not_taken": checkout.payment is not None and checkout.payment.status == S.CONFIRM,
    }


def _setting(name: str) -> Any:
    """``ATHM_SYNC[name]`` as validated, or its default when ``ATHM_SYNC`` is unusable: the
    page still renders, and the actions say why."""
    try:
        return getattr(get_settings(), name.lower())
    except ImproperlyConfigured:
        return DEFAULTS[name]


def _page(
    request: HttpRequest,
    checkout: Checkout,
    *,
    reached: bool = True,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    """The page for the checkout as stored: waiting, or its outcome (a redirect to the shop's
    success or cancel URL, or our cancelled, expired or "we are checking" page)."""
    context = _wait_context(request, checkout, reached=reached, error=error)
    state = context["shown"]["state"]
    if state == "completed" or (state == "cancelled" and checkout.cancel_url):
        return HttpResponseRedirect(context["shown"]["next"], status=303)
    template = {
        "cancelled": "cancelled.html",
        "expired": "expired.html",
        "checking": "checking.html",
    }.get(state, "wait.html")
    return render(request, TEMPLATES + template, context, status=status)


@checkout_view("GET", "HEAD")
def wait(request: HttpRequest, checkout_id: str, token: str) -> HttpResponse:
    """The waiting page: asks ATH Móvil (at most once per interval) and shows the outcome.
    Reloads, a second tab and the back button show the same page: its state is stored."""
    checkout = _find(checkout_id, token)
    if checkout is None:
        return _not_found(request)
    reached = flow.look(checkout)
    return _page(request, checkout, reached=reached)


@checkout_view("GET", "HEAD")
def status(request: HttpRequest, checkout_id: str, token: str) -> HttpResponse:
    """What the waiting page's script polls: :func:`describe` as JSON. ATH Móvil being down
    is an answer too (200, ``notice`` says "still waiting"), never an error."""
    checkout = _find(checkout_id, token)
    if checkout is None:
        return _not_found(request, json=True)
    reached = flow.look(checkout)
    shown = describe(checkout, reached=reached)
    shown["retry_after"] = _setting("CHECKOUT_POLL_INTERVAL")
    return JsonResponse(shown)


@checkout_view("POST")
def cancel(request: HttpRequest, checkout_id: str, token: str) -> HttpResponse:
    """The cancel button: cancel with ATH Móvil, then the outcome page."""
    checkout = _find(checkout_id, token)
    if checkout is None:
        return _not_found(request)
    try:
        flow.cancel(checkout)
    except flow.CheckoutError as error:
        return _page(request, checkout, error=str(error.message), status=error.status)
    return HttpResponseRedirect(flow.wait_url(checkout), status=303)


@checkout_view("POST")
def phone(request: HttpRequest, checkout_id: str, token: str) -> HttpResponse:
    """The "send it to another phone" form."""
    checkout = _find(checkout_id, token)
    if checkout is None:
        return _not_found(request)
    try:
        sent = flow.change_phone(checkout, request.POST.get("phone_number", ""))
    except flow.CheckoutError as error:
        return _page(request, checkout, error=str(error.message), status=error.status)
    notice = "phone_sent" if sent else "phone_same"
    return HttpResponseRedirect(f"{flow.wait_url(checkout)}?notice={notice}", status=303)


def unavailable_page(
    request: HttpRequest, error: flow.CheckoutError, *, back_url: str = ""
) -> HttpResponse:
    """The page :func:`athm_sync.checkout.start` answers when ATH Móvil cannot take the
    payment now (503), in the customer's language."""

    def page() -> HttpResponse:
        context = {"message": str(error.message), "back_url": back_url}
        return render(request, TEMPLATES + "unavailable.html", context, status=error.status)

    return in_customer_language(request, page)


# -- Evertec's JavaScript button -----------------------------------------------------------


@checkout_view("POST")
def button_callback(request: HttpRequest) -> HttpResponse:
    """What ``button.js`` posts from the button's callbacks: ``signed`` (the order the server
    signed), ``ecommerceId`` and ``auth_token`` from Evertec's library, and ``event``
    (``authorization``, ``cancel`` or ``expired``). Answers ``{"next": url}`` to a script
    (``Accept: application/json``), a redirect otherwise: the payment's waiting page."""
    from athm_sync.checkout import button

    wants_json = "application/json" in request.headers.get("Accept", "")
    signed = request.POST.get("signed", "")
    ecommerce_id = request.POST.get("ecommerceId", "").strip()
    try:
        if not ecommerce_id and request.POST.get("event") in ("cancel", "expired"):
            # Closed before ATH Móvil made a payment: nothing to track, back to the shop.
            next_url = button.signed_cancel_url(signed) or None
        else:
            checkout = button.accept(signed, ecommerce_id, request.POST.get("auth_token", ""))
            next_url = flow.wait_url(checkout)
    except flow.CheckoutError as error:
        message = str(error.message)
        if wants_json:
            return JsonResponse({"error": message}, status=error.status)
        context = {"message": message}
        return render(request, TEMPLATES + "button_refused.html", context, status=error.status)
    if wants_json:
        return JsonResponse({"next": next_url})
    if next_url is None:
        context = {"message": _("The payment was cancelled.")}
        return render(request, TEMPLATES + "button_refused.html", context)
    return HttpResponseRedirect(next_url, status=303)
