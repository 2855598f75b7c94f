"""The shop's order page and its two ways to take a payment: the server-side checkout (the
form posts the phone to :func:`checkout`, which calls the app's ``start``) and ATH Móvil's
JavaScript button (``{% athm_button %}`` on the page; its callback is the app's own
``athm_sync:checkout_button`` view, so the shop writes none)."""

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from athm_sync.checkout import InvalidPhoneNumber, start
from orders.models import Order


def _order_page(request, order, error="", status=200):
    context = {
        "order": order,
        "error": error,
        "paid_url": reverse("paid", args=[order.pk]),
        "order_url": reverse("order", args=[order.pk]),
    }
    return render(request, "orders/order.html", context, status=status)


def order(request, pk):
    """The order's page: its total, the phone form and ATH Móvil's button."""
    return _order_page(request, get_object_or_404(Order, pk=pk))


@require_POST
def checkout(request, pk):
    """The order's "Pay with ATH Móvil" form posts the customer's phone here."""
    order = get_object_or_404(Order, pk=pk)
    try:
        return start(
            request,
            total=order.total,
            metadata_1=order.reference,
            phone_number=request.POST.get("phone_number", ""),
            success_url=reverse("paid", args=[order.pk]),
            cancel_url=reverse("order", args=[order.pk]),
        )
    except InvalidPhoneNumber as error:
        return _order_page(request, order, error=error.message, status=400)


def paid(request, pk):
    """Where the waiting page sends the customer once the payment completed."""
    order = get_object_or_404(Order, pk=pk)
    return HttpResponse(f"Order {order.reference}: {order.status}")
