"""The shop's two ways to take a payment: the server-side checkout (the app's pages), and the
view the JavaScript Payment Button's callback posts to (the shop starts following it)."""

import json

from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from athm_sync.checkout import InvalidPhoneNumber, start
from athm_sync.models import Payment
from orders.models import Order


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
            success_url=f"/orders/{order.pk}/paid/",
            cancel_url=f"/orders/{order.pk}/",
        )
    except InvalidPhoneNumber as error:
        return HttpResponse(str(error.message), status=400)


def paid(request, pk):
    """Where the waiting page sends the customer once the payment completed."""
    order = get_object_or_404(Order, pk=pk)
    return HttpResponse(f"Order {order.reference}: {order.status}")


@require_POST
def paying(request, pk):
    order = get_object_or_404(Order, pk=pk)
    ecommerce_id = json.loads(request.body)["ecommerceId"]
    Payment.objects.track(ecommerce_id, total=order.total, metadata_1=order.reference)
    return JsonResponse({"ok": True})
