"""The view the Payment Button's callback posts to: the shop starts following the payment."""

import json

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from athm_sync.models import Payment
from orders.models import Order


@require_POST
def paying(request, pk):
    order = get_object_or_404(Order, pk=pk)
    ecommerce_id = json.loads(request.body)["ecommerceId"]
    Payment.objects.track(ecommerce_id, total=order.total, metadata_1=order.reference)
    return JsonResponse({"ok": True})
