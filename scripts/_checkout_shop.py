"""The throwaway shop's checkout, for ``scripts/demo --serve`` and ``scripts/bench checkout``:
the URLconf of ``_shop.throwaway_shop(..., urls=_shop.CHECKOUT_URLS)``, in this process
only (import it once Django is set up).

Three orders with their totals on the server. Each order's page offers both ways to pay: the
form a customer types a phone into, whose view calls :func:`athm_sync.checkout.start` with the
order's amount (the browser sends only the phone), and Evertec's JavaScript button through
``{% athm_button %}`` with the same amount, signed (its script is the sandbox's stand-in,
``CHECKOUT_BUTTON_SCRIPT_URL`` in ``_shop.SETTINGS``). The customer's ATH Móvil app is the
sandbox's own phone page (``SANDBOX.phone_url``), where a person approves or declines.
``/static/`` serves the app's scripts (DEBUG is off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import include, path, re_path
from django.utils.html import escape
from django.views.decorators.http import require_POST
from django.views.static import serve

STATIC = Path(__file__).resolve().parent.parent / "athm_sync" / "static"
# The shop's orders: reference -> total. The server's amounts: never read from the browser.
ORDERS = {"order-1": "12.50", "order-2": "8.00", "order-3": "149.99"}
TIMEOUT = 120  # seconds: short, so that a person sees a payment expire
# The demo customer's phone: the form's default, and given to the button because the sandbox's
# stand-in has no phone field of its own (Evertec's window asks for it); its requests are listed
# on the sandbox's phone page under this number.
PHONE = "787 555 0142"
# The sandbox the shop pays through (its phone page is linked from the home page); set by the
# caller.
SANDBOX: Any = None

# An order's page: both ways to pay, from the server's amount (a tag must fit on one line).
ORDER_PAGE = (
    "{% load athm_checkout %}<h1>Order {{ reference }}</h1>"
    "<p>Total: <strong>${{ total }}</strong></p>"
    "<h2>With your phone number</h2>"
    "<p>The shop sends the payment request to the ATH Móvil app on that phone.</p>"
    '<form method="post" action="/orders/{{ reference }}/pay/">{% csrf_token %}'
    '<label>Phone with ATH Móvil <input type="tel" name="phone_number" value="{{ phone }}">'
    '</label> <button type="submit">Pay with ATH Móvil</button></form>'
    "<h2>With ATH Móvil's button</h2>"
    "{% athm_button total=total metadata_1=reference phone_number=phone timeout=timeout "
    "success_url=paid_url cancel_url=order_url %}"
    '<p><a href="/">All orders</a> · <a href="{{ phone_url }}">The customer\'s phone</a></p>'
)

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
        "<p>The customer's phone (the ATH Móvil app, played by the sandbox): "
        f'<a href="{escape(SANDBOX.phone_url)}">{escape(SANDBOX.phone_url)}</a></p>'
    )
    return _page("Throwaway shop", body)


def order(request: HttpRequest, reference: str) -> HttpResponse:
    """An order's page: its total, the "Pay with ATH Móvil" form (the phone only) and
    Evertec's button, both for the server's total."""
    from django.template import engines

    total = _order(reference)
    if _paid(reference):
        return HttpResponseRedirect(f"/orders/{reference}/paid/")
    body = (
        engines["django"]
        .from_string(ORDER_PAGE)
        .render(
            {
                "reference": reference,
                "total": total,
                "phone": PHONE,
                "timeout": TIMEOUT,
                "paid_url": f"/orders/{reference}/paid/",
                "order_url": f"/orders/{reference}/",
                "phone_url": SANDBOX.phone_url,
            },
            request,
        )
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


urlpatterns = [
    path("", home),
    path("orders/<str:reference>/", order),
    path("orders/<str:reference>/pay/", pay),
    path("orders/<str:reference>/paid/", paid),
    path("athm/", include("athm_sync.urls")),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": str(STATIC)}),
]
