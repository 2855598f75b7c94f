"""The shop's own tests: a customer pays, and the order is paid; one lets it expire."""

import json
import re
from decimal import Decimal

import pytest
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)  # signals fire on commit


def json_in(page, element_id):
    """A ``json_script`` block of the order's page, as its scripts read it."""
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    return json.loads(found.group(1))


def start_paying(client, athm_customer, order):
    """The customer presses ATH Móvil's button on the order's page: Evertec's script makes
    the payment from the page's config, and the page posts it with the signed order to the
    app's callback view, which starts following it."""
    page = client.get(f"/orders/{order.pk}/").content.decode()
    config = json_in(page, "athm-checkout-config")
    callback = json_in(page, "athm-checkout-callback")
    ecommerce_id = athm_customer.start(f"{config['total']:.2f}", metadata_1=config["metadata1"])
    posted = {
        "event": "authorization",
        "signed": callback["signed"],
        "ecommerceId": ecommerce_id,
        "auth_token": athm_customer.sandbox.payment(ecommerce_id)["authToken"],
    }
    response = client.post(
        callback["url"],
        posted,
        HTTP_ACCEPT="application/json",
        HTTP_X_CSRFTOKEN=callback["csrf_token"],
    )
    assert response.status_code == 200
    return ecommerce_id


def test_a_completed_payment_pays_the_order(client, athm_customer, athm_sync_now, athm_signals):
    order = Order.objects.create(total=Decimal("25.00"))
    ecommerce_id = start_paying(client, athm_customer, order)

    athm_customer.complete(ecommerce_id)  # confirmed in the app, and captured
    athm_customer.clock.advance(60)  # cron's next run, a minute later
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
