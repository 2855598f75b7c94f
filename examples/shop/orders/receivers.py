"""The shop's business: an order is paid when its payment completes, expired when it expires."""

from django.dispatch import receiver

from athm_sync.signals import payment_completed, payment_expired
from orders.models import Order


def _order(payment):
    return Order.objects.get(pk=payment.metadata_1.removeprefix("order-"))


@receiver(payment_completed)
def mark_paid(sender, payment, **kwargs):
    order = _order(payment)
    order.status = Order.Status.PAID
    order.save(update_fields=["status"])


@receiver(payment_expired)
def mark_expired(sender, payment, **kwargs):
    order = _order(payment)
    order.status = Order.Status.EXPIRED
    order.save(update_fields=["status"])
