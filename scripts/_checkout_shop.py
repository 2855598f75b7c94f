"""The throwaway shop's checkout, for ``scripts/demo --serve`` and ``scripts/bench checkout``:
the URLconf of ``_shop.throwaway_shop(..., urls=_shop.CHECKOUT_URLS)``, in this process
only (import it once Django is set up).

Three orders with their totals on the server; each order's page has the form a customer types
a phone into, whose view calls :func:`athm_sync.checkout.start` with the order's amount (the
browser sends only the phone). ``/phone/`` plays the customer's ATH Móvil app: it lists the
payments the sandbox holds and approves or declines one (through the sandbox's Python API,
:data:`SANDBOX`, which the caller sets). ``/static/`` serves the app's script (DEBUG is off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.urls import include, path, re_path
from django.utils.html import escape
from django.views.decorators.http import require_POST
from django.views.static import serve

STATIC = Path(__file__).resolve().parent.parent / "athm_sync" / "static"
# The shop's orders: reference -> total. The server's amounts: never read from the browser.
ORDERS = {"order-1": "12.50", "order-2": "8.00", "order-3": "149.99"}
TIMEOUT = 120  # seconds: short, so that a person sees a payment expire
# The sandbox whose payments /phone/ approves or declines; set by the caller.
SANDBOX: Any = None

PAGE = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="viewport" '
    'content="width=device-width, initial-scale=1"><title>{title}</title></head>'
    '<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto">'
    "{body}</body></html>"
)


def _page(title: str, body: str) -> HttpResponse:
    return HttpResponse(PAGE.format(title=escape(title), body=body))


def _order(reference: str) -> str:
    if reference not in ORDERS:
        raise Http404("no such order")
    return ORDERS[reference]


def _paid(reference: str) -> bool:
    from athm_sync.models import Payment

    return Payment.objects.filter(metadata_1=reference, status=Payment.Status.COMPLETED).exists()


def home(request: HttpRequest) -> HttpResponse:
    """The shop's orders, each linked to its page."""
    rows = "".join(
        f'<li><a href="/orders/{ref}/">{ref}</a>: ${total}{" (paid)" if _paid(ref) else ""}</li>'
        for ref, total in ORDERS.items()
    )
    body = (
        f"<h1>Throwaway shop</h1><ul>{rows}</ul>"
        '<p>The customer\'s phone (ATH Móvil app): <a href="/phone/">/phone/</a></p>'
    )
    return _page("Throwaway shop", body)


def order(request: HttpRequest, reference: str) -> HttpResponse:
    """An order's page: its total and the "Pay with ATH Móvil" form (the phone only)."""
    total = _order(reference)
    if _paid(reference):
        return HttpResponseRedirect(f"/orders/{reference}/paid/")
    body = (
        f"<h1>Order {reference}</h1><p>Total: <strong>${total}</strong></p>"
        f'<form method="post" action="/orders/{reference}/pay/">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{escape(get_token(request))}">'
        '<label>Phone with ATH Móvil <input type="tel" name="phone_number" '
        'value="787 555 0142"></label> <button type="submit">Pay with ATH Móvil</button></form>'
        '<p><a href="/">All orders</a></p>'
    )
    return _page(f"Order {reference}", body)


@require_POST
def pay(request: HttpRequest, reference: str) -> HttpResponse:
    """The shop's view: the order's total is the server's; the form gives only the phone."""
    from athm_sync.checkout import InvalidPhoneNumber, start

    total = _order(reference)
    try:
        return start(
            request,
            total=total,
            metadata_1=reference,
            phone_number=request.POST.get("phone_number", ""),
            timeout=TIMEOUT,
            success_url=f"/orders/{reference}/paid/",
            cancel_url=f"/orders/{reference}/",
        )
    except InvalidPhoneNumber as error:
        return _page("Order", f"<p>{escape(str(error.message))}</p>")


def paid(request: HttpRequest, reference: str) -> HttpResponse:
    """Where the waiting page sends the customer once the payment completed."""
    _order(reference)
    state = "paid" if _paid(reference) else "not paid"
    return _page(
        "Thank you", f'<h1>Order {reference}: {state}</h1><p><a href="/">All orders</a></p>'
    )


def phone(request: HttpRequest) -> HttpResponse:
    """The customer's ATH Móvil app: the payment requests still open, to approve or decline."""
    token = escape(get_token(request))
    rows = []
    for ecommerce_id in SANDBOX.state.payment_ids():
        seen = SANDBOX.state.payment(ecommerce_id)
        if seen["status"] != "OPEN":
            continue
        buttons = "".join(
            f'<form method="post" action="/phone/{ecommerce_id}/{action}/" style="display:inline">'
            f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
            f'<button type="submit">{label}</button></form> '
            for action, label in (("approve", "Approve"), ("decline", "Decline"))
        )
        rows.append(
            f"<li>${escape(seen['total'])} for {escape(seen['metadata1'])}, to "
            f"{escape(seen.get('phoneNumber') or '?')} {buttons}</li>"
        )
    body = (
        "<h1>The customer's phone</h1><p>Payment requests waiting for the customer:</p>"
        f"<ul>{''.join(rows) or '<li>none</li>'}</ul>"
        '<p><a href="/phone/">Refresh</a> · <a href="/">The shop</a></p>'
    )
    return _page("ATH Móvil (sandbox phone)", body)


@require_POST
def answer(request: HttpRequest, ecommerce_id: str, action: str) -> HttpResponse:
    """Approve (confirm: the waiting page then captures) or decline a payment request."""
    if ecommerce_id not in SANDBOX.state.payment_ids():
        raise Http404("no such payment")
    (SANDBOX.confirm if action == "approve" else SANDBOX.cancel)(ecommerce_id)
    return HttpResponseRedirect("/phone/")


urlpatterns = [
    path("", home),
    path("orders/<str:reference>/", order),
    path("orders/<str:reference>/pay/", pay),
    path("orders/<str:reference>/paid/", paid),
    path("phone/", phone),
    re_path(r"^phone/(?P<ecommerce_id>[0-9a-f-]+)/(?P<action>approve|decline)/$", answer),
    path("athm/", include("athm_sync.urls")),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": str(STATIC)}),
]
