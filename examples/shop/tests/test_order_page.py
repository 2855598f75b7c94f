"""The order's page and ATH Móvil's JavaScript button: the page offers both ways to pay for
the server's total, and the app's callback view pays the order only when ATH Móvil charged
that total. Evertec's script is played by the sandbox (the payment it makes for the page's
config, or for an amount someone rewrote in the browser); the test client posts what the
page's ``button.js`` posts, with the page's CSRF token."""

import json
import re
from decimal import Decimal

import pytest
from django.test import Client
from orders.models import Order

from athm_sync.models import Payment

pytestmark = pytest.mark.django_db(transaction=True)  # signals fire on commit


def json_in(page, element_id):
    """A ``json_script`` block of the page, as its scripts read it."""
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    assert found, f"no {element_id} on the page"
    return json.loads(found.group(1))


class Browser:
    """One customer's browser on the order's page (CSRF checked, as in production)."""

    def __init__(self, order):
        self.client = Client(enforce_csrf_checks=True)
        response = self.client.get(f"/orders/{order.pk}/")
        assert response.status_code == 200
        self.page = response.content.decode()
        self.config = json_in(self.page, "athm-checkout-config")
        self.callback = json_in(self.page, "athm-checkout-callback")

    def pays_with_the_button(self, athm_customer, total=None):
        """Evertec's script makes the payment for the config's total (or ``total``, rewritten in
        the browser), the customer approves it in the app and the script captures it; then
        ``button.js`` posts it with the signed order. Returns the callback's answer."""
        amount = total or f"{self.config['total']:.2f}"
        ecommerce_id = athm_customer.start(amount, metadata_1=self.config["metadata1"])
        athm_customer.complete(ecommerce_id)
        auth_token = athm_customer.sandbox.payment(ecommerce_id)["authToken"]
        return self.client.post(
            self.callback["url"],
            {
                "event": "authorization",
                "signed": self.callback["signed"],
                "ecommerceId": ecommerce_id,
                "auth_token": auth_token,
            },
            HTTP_ACCEPT="application/json",
            HTTP_X_CSRFTOKEN=self.callback["csrf_token"],
        )


def test_the_order_page_offers_the_phone_form_and_the_button_for_the_servers_total(
    athm_settings,
):
    order = Order.objects.create(total=Decimal("25.00"))

    browser = Browser(order)

    assert '<strong id="total">$25.00</strong>' in browser.page
    assert f'action="/orders/{order.pk}/checkout/"' in browser.page
    assert 'name="csrfmiddlewaretoken"' in browser.page
    assert '<div id="ATHMovil_Checkout_Button_payment"></div>' in browser.page
    assert f'<script src="{athm_settings.button_script_url}"></script>' in browser.page
    assert (browser.config["total"], browser.config["metadata1"]) == (25.0, order.reference)
    assert browser.callback["url"] == "/athm/checkout/button/"


def test_a_paid_order_shows_no_way_to_pay_again(athm_settings):
    order = Order.objects.create(total=Decimal("25.00"), status=Order.Status.PAID)

    page = Client().get(f"/orders/{order.pk}/").content.decode()

    assert "Paid. Thank you!" in page
    assert "ATHMovil_Checkout_Button_payment" not in page and "<form" not in page


def test_a_phone_number_that_is_not_ten_digits_shows_the_order_page_again(athm_settings):
    order = Order.objects.create(total=Decimal("25.00"))

    response = Client().post(f"/orders/{order.pk}/checkout/", {"phone_number": "555-01"})

    assert response.status_code == 400
    page = response.content.decode()
    assert '<p id="error" role="alert">' in page and "$25.00" in page
    assert not Payment.objects.exists()


def test_a_button_payment_for_the_orders_total_pays_the_order(athm_customer, athm_signals):
    order = Order.objects.create(total=Decimal("25.00"))
    browser = Browser(order)

    answer = browser.pays_with_the_button(athm_customer)

    assert answer.status_code == 200
    landing = browser.client.get(answer.json()["next"])  # the waiting page, already settled
    assert landing.status_code == 303 and landing["Location"] == f"/orders/{order.pk}/paid/"
    assert athm_signals.names == ["payment_completed"]
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    paid = browser.client.get(landing["Location"]).content.decode()
    assert paid == f"Order {order.reference}: paid"


def test_a_button_payment_for_less_than_the_total_is_held_and_the_order_not_paid(
    athm_customer, athm_signals
):
    order = Order.objects.create(total=Decimal("25.00"))
    browser = Browser(order)

    # Someone rewrote the page's config to 1.00: ATH Móvil charged what the browser said.
    answer = browser.pays_with_the_button(athm_customer, total="1.00")

    assert answer.status_code == 200
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.MISMATCHED
    assert (payment.total, payment.remote_total) == (Decimal("25.00"), Decimal("1.00"))
    assert athm_signals.names == ["payment_mismatched"]
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING
    page = browser.client.get(answer.json()["next"]).content.decode()
    assert "We are checking your payment" in page
