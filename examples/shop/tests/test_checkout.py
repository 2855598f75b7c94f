"""The shop's own tests: a customer pays, and the order is paid; one lets it expire."""

from decimal import Decimal

import pytest
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)  # signals fire on commit


def start_paying(client, athm_customer, order):
    """The customer presses the Payment Button; its callback tells the shop."""
    ecommerce_id = athm_customer.start(order.total, metadata_1=order.reference)
    response = client.post(
        f"/orders/{order.pk}/paying/",
        data={"ecommerceId": ecommerce_id},
        content_type="application/json",
    )
    assert response.status_code == 200
    return ecommerce_id


def test_a_completed_payment_pays_the_order(client, athm_customer, athm_sync_now, athm_signals):
    order = Order.objects.create(total=Decimal("25.00"))
    ecommerce_id = start_paying(client, athm_customer, order)

    athm_customer.complete(ecommerce_id)
    result = athm_sync_now()

    assert result.transitions == {"completed": 1}
    assert athm_signals.names == ["payment_completed"]
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


def test_the_webhook_pays_the_order_before_any_sync(client, athm_customer):
    order = Order.objects.create(total=Decimal("9.99"))
    ecommerce_id = start_paying(client, athm_customer, order)
    athm_customer.complete(ecommerce_id)

    response = athm_customer.send_webhook(ecommerce_id, client=client)

    assert response.status_code == 200
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


def test_a_payment_left_to_expire_expires_the_order(client, athm_customer, athm_sync_now):
    order = Order.objects.create(total=Decimal("5.00"))
    ecommerce_id = start_paying(client, athm_customer, order)

    athm_customer.let_expire(ecommerce_id)
    athm_sync_now()

    order.refresh_from_db()
    assert order.status == Order.Status.EXPIRED
