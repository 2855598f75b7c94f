"""The shop's checkout through the app's own pages: the customer gives a phone, confirms in the
ATH Móvil app, and the waiting page sends them to the paid page with the order paid."""

from decimal import Decimal

import pytest
from orders.models import Order

from athm_sync.models import Payment

pytestmark = pytest.mark.django_db(transaction=True)  # signals fire on commit


def test_the_checkout_pays_the_order_and_sends_the_customer_to_the_paid_page(
    client, athm_customer, athm_signals
):
    order = Order.objects.create(total=Decimal("25.00"))
    started = client.post(f"/orders/{order.pk}/checkout/", {"phone_number": "787 555 0142"})
    assert started.status_code == 302
    waiting = client.get(started["Location"], HTTP_ACCEPT_LANGUAGE="es")
    assert "Abre ATH Móvil en tu teléfono" in waiting.content.decode()

    athm_customer.confirm(str(Payment.objects.get().pk))  # in the ATH Móvil app
    athm_customer.clock.advance(2)  # the page asks ATH Móvil at most every 2 s
    status = client.get(started["Location"] + "status/").json()

    assert status["next"] == f"/orders/{order.pk}/paid/"
    assert athm_signals.names == ["payment_completed"]
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
