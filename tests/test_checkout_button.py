"""Evertec's JavaScript button, made safe: ``{% athm_button %}`` on a shop's page and the
callback view ``button.js`` posts to, as a customer and a shop see them.

A shop page of this module renders the tag; the sandbox's own create payment plays the
browser's library (the payment it makes, for the page's total or a tampered one); Django's test
client posts what ``button.js`` posts, with the page's CSRF token. Time moves with time-machine
(``athm_clock``), never by sleeping. Browser runs are tests/test_checkout_browser.py's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.http import HttpResponse
from django.template import engines
from django.test import Client
from django.urls import include, path, reverse
from django.utils import translation

from athm_sync.checkout import button, flow
from athm_sync.checkout.models import Checkout
from athm_sync.models import Payment

pytestmark = [
    pytest.mark.django_db(transaction=True),  # signals fire on commit
    pytest.mark.urls(__name__),
]

S = Payment.Status
SUCCESS = "/orders/7/paid/"
CANCELLED = "/orders/7/"
HOSTILE = '</script><script>alert("x")</script><!--'

SHOP_PAGE = (
    "{% load athm_checkout %}<!DOCTYPE html><html><body><h1>Order 7</h1>\n"
    "{% athm_button total=total metadata_1=order metadata_2=note items=items"
    " success_url=success cancel_url=cancel %}\n</body></html>"
)


def shop_page(request):
    """The shop's own checkout page: its order's amounts, never the browser's."""
    language = translation.get_language_from_request(request)
    with translation.override(language):
        html = (
            engines["django"]
            .from_string(SHOP_PAGE)
            .render(
                {
                    "total": Decimal(request.GET.get("total", "12.50")),
                    "order": request.GET.get("order", "order-7"),
                    "note": request.GET.get("note", "web"),
                    "items": [{"name": request.GET.get("item", "Mofongo"), "price": "12.50"}],
                    "success": SUCCESS,
                    "cancel": CANCELLED,
                },
                request,
            )
        )
    return HttpResponse(html)


urlpatterns = [
    path("orders/7/pay/", shop_page),
    path("athm/", include("athm_sync.urls")),
]


def json_in(page: str, element_id: str):
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    assert found, f"no {element_id} in the page"
    return json.loads(found.group(1))


class Shopper:
    """One customer's browser: loads the shop's page, then posts what button.js posts."""

    def __init__(self, **page_query: str) -> None:
        self.client = Client(enforce_csrf_checks=True)
        response = self.client.get("/orders/7/pay/", page_query)
        assert response.status_code == 200
        self.page = response.content.decode()
        self.config = json_in(self.page, "athm-checkout-config")
        self.callback = json_in(self.page, "athm-checkout-callback")

    def post(self, ecommerce_id: str = "", auth_token: str = "", *, event="authorization", **kw):
        fields = {
            "event": event,
            "signed": kw.pop("signed", self.callback["signed"]),
            "ecommerceId": ecommerce_id,
            "auth_token": auth_token,
        }
        headers = {"HTTP_ACCEPT": "application/json", **kw}
        headers.setdefault("HTTP_X_CSRFTOKEN", self.callback["csrf_token"])
        return self.client.post(self.callback["url"], fields, **headers)


def browser_pays(customer, total: str, order: str = "order-7") -> tuple[str, str]:
    """What Evertec's library does in the browser: create the payment at ATH Móvil for the
    total the page's config says (or a tampered one); returns (ecommerceId, auth_token)."""
    ecommerce_id = customer.start(total, metadata_1=order, metadata_2="web")
    return ecommerce_id, customer.sandbox.payment(ecommerce_id)["authToken"]


def status(checkout: Checkout) -> dict:
    kwargs = {"checkout_id": checkout.pk, "token": checkout.token}
    response = Client().get(reverse("athm_sync:checkout_status", kwargs=kwargs))
    assert response.status_code == 200
    return response.json()


def nothing_stored() -> bool:
    return not Payment.objects.exists() and not Checkout.objects.exists()


# -- the tag -------------------------------------------------------------------------------


def test_the_tag_renders_evertecs_div_its_script_and_the_servers_config(athm_settings):
    shopper = Shopper(total="12.50")

    assert '<div id="ATHMovil_Checkout_Button_payment"></div>' in shopper.page
    assert f'<script src="{athm_settings.button_script_url}"></script>' in shopper.page
    assert '<script src="/static/athm_sync/button.js"></script>' in shopper.page
    # our callbacks are defined before Evertec's script looks for them
    assert shopper.page.index("button.js") < shopper.page.index("athmovil_base.js")
    config = shopper.config
    assert (config["total"], config["metadata1"], config["metadata2"]) == (12.5, "order-7", "web")
    assert config["publicToken"] == athm_settings.state.public_token
    assert config["lang"] == "en" and config["timeout"] == 600
    assert config["items"] == [{"name": "Mofongo", "price": "12.50"}]
    assert shopper.callback["url"] == reverse("athm_sync:checkout_button")
    assert "phoneNumber" not in config  # the customer types it in Evertec's window


def test_the_button_speaks_the_customers_language(athm_settings):
    page = Client().get("/orders/7/pay/", HTTP_ACCEPT_LANGUAGE="es-PR,es;q=0.9").content.decode()

    assert json_in(page, "athm-checkout-config")["lang"] == "es"


def test_hostile_metadata_and_item_names_cannot_break_out_of_the_page(athm_settings):
    shopper = Shopper(note=HOSTILE, item='<img src=x onerror="alert(1)">')

    assert HOSTILE not in shopper.page
    assert "<img src=x" not in shopper.page
    assert shopper.page.count("<script") == 4  # the two JSON blocks and the two scripts
    assert shopper.config["metadata2"] == HOSTILE  # what Evertec's script gets, unchanged
    assert shopper.config["items"][0]["name"] == '<img src=x onerror="alert(1)">'


def test_with_unusable_settings_the_page_says_try_again_and_shows_no_button(
    athm_settings, settings
):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": ""}

    response = Client().get("/orders/7/pay/", HTTP_ACCEPT_LANGUAGE="es")

    page = response.content.decode()
    assert response.status_code == 200
    assert "ATHMovil_Checkout_Button_payment" not in page
    assert "No es posible comunicarse con ATH Móvil en este momento." in page


def test_bad_arguments_name_the_argument_before_anything_is_signed(athm_settings):
    with pytest.raises(ValueError, match="total"):
        button.render_context(total="-1", metadata_1="order-7", success_url=SUCCESS)
    with pytest.raises(ValueError, match="theme"):
        button.render_context(total="1", metadata_1="o", success_url=SUCCESS, theme="pink")
    with pytest.raises(ValueError, match="success_url"):
        button.render_context(total="1", metadata_1="o", success_url="javascript:alert(1)")


# -- the callback --------------------------------------------------------------------------


def test_a_signed_callback_tracks_the_payment_and_the_waiting_page_completes_it(
    athm_customer, athm_signals
):
    shopper = Shopper(total="12.50")
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")
    athm_customer.clock.advance(0)
    athm_customer.sandbox.reset_counts()

    answer = shopper.post(ecommerce_id, auth_token)

    checkout = Checkout.objects.select_related("payment").get()
    assert answer.status_code == 200
    assert answer.json() == {"next": flow.wait_url(checkout)}
    payment = checkout.payment
    assert str(payment.pk) == ecommerce_id and payment.status == S.OPEN
    assert (payment.total, payment.metadata_1, payment.metadata_2) == (
        Decimal("12.50"),
        "order-7",
        "web",
    )
    assert payment.auth_token == auth_token
    calls = {name: n for name, n in athm_customer.sandbox.counts().items() if n}
    assert calls == {"findPayment": 1}  # ATH Móvil asked once
    assert shopper.client.get(answer.json()["next"]).status_code == 200  # the waiting page

    athm_customer.confirm(ecommerce_id)  # the library did not capture: the server does
    athm_customer.clock.advance(3)
    shown = status(checkout)

    assert shown["state"] == "completed" and shown["next"] == SUCCESS
    assert Payment.objects.get().status == S.COMPLETED
    assert athm_customer.sandbox.counts()["authorization"] == 1
    assert athm_signals.names == ["payment_completed"]


def test_a_payment_the_browser_already_completed_leads_straight_to_success(
    athm_customer, athm_signals
):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")
    athm_customer.complete(ecommerce_id)  # authorization() in the browser captured it

    next_url = shopper.post(ecommerce_id, auth_token).json()["next"]
    response = shopper.client.get(next_url)

    assert response.status_code == 303 and response["Location"] == SUCCESS
    assert athm_signals.names == ["payment_completed"]


def test_a_tampered_amount_is_held_and_never_completed(athm_customer, athm_signals):
    shopper = Shopper(total="12.50")
    # The browser's config was edited to 1.00: ATH Móvil charged what the browser said.
    ecommerce_id, auth_token = browser_pays(athm_customer, "1.00")
    athm_customer.complete(ecommerce_id)

    answer = shopper.post(ecommerce_id, auth_token)

    payment = Payment.objects.get()
    assert payment.total == Decimal("12.50")  # tracked against the server's amount
    assert payment.status == S.MISMATCHED
    page = shopper.client.get(answer.json()["next"])
    assert (
        page.status_code == 200 and "<h1>We are checking your payment</h1>" in page.content.decode()
    )
    athm_customer.clock.advance(3)
    assert status(Checkout.objects.get())["state"] == "checking"
    assert athm_signals.names == ["payment_mismatched"]


def test_tampered_metadata_is_held_too(athm_customer, athm_signals):
    shopper = Shopper(order="order-7")
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50", order="order-8")
    athm_customer.complete(ecommerce_id)

    shopper.post(ecommerce_id, auth_token)

    assert Payment.objects.get().status == S.MISMATCHED
    assert athm_signals.names == ["payment_mismatched"]


def test_a_tampered_signature_is_refused_and_nothing_is_stored(athm_customer):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "1.00")
    signed = shopper.callback["signed"]
    forged = signed[:10] + ("A" if signed[10] != "A" else "B") + signed[11:]

    for bad in (forged, "", "not-signed", button.signing.dumps({"total": "1.00"})):
        answer = shopper.post(ecommerce_id, auth_token, signed=bad)
        assert answer.status_code == 400
        assert answer.json() == {"error": "This payment button is not valid. Reload the page."}
    assert nothing_stored()


def test_an_expired_signature_is_refused_in_the_customers_language(athm_customer):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")
    athm_customer.clock.advance(button.SIGNATURE_MAX_AGE + 1)

    answer = shopper.post(ecommerce_id, auth_token, HTTP_ACCEPT_LANGUAGE="es")

    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "Este botón de pago venció. Vuelve a cargar la página y paga otra vez."
    )
    assert answer["Content-Language"] == "es"
    assert nothing_stored()


def test_a_refusal_without_javascript_is_a_page(athm_customer):
    shopper = Shopper()
    ecommerce_id, _token = browser_pays(athm_customer, "12.50")

    answer = shopper.post(ecommerce_id, signed="forged", HTTP_ACCEPT="text/html")

    assert answer.status_code == 400
    assert "This payment button is not valid." in answer.content.decode()


def test_a_post_without_a_payment_id_is_refused(athm_settings):
    answer = Shopper().post("not-a-uuid")

    assert answer.status_code == 400
    assert nothing_stored()


def test_a_replayed_post_returns_the_same_waiting_page_and_one_payment(athm_customer):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")

    first = shopper.post(ecommerce_id, auth_token).json()["next"]
    again = shopper.post(ecommerce_id, auth_token).json()["next"]
    from_another_tab = Shopper().post(ecommerce_id, "").json()["next"]

    assert first == again == from_another_tab
    assert Payment.objects.count() == 1 and Checkout.objects.count() == 1


def test_concurrent_posts_of_one_payment_store_it_once(athm_customer):
    athm_customer.sandbox.set_latency(0.2)  # the first POST is still asking when the others come
    shoppers = [Shopper() for _ in range(4)]  # the library called back in four tabs at once
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")
    barrier = threading.Barrier(len(shoppers))
    answers: list = []

    def post(shopper):
        try:
            barrier.wait()
            answers.append(shopper.post(ecommerce_id, auth_token))
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(shopper,)) for shopper in shoppers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [answer.status_code for answer in answers] == [200] * 4
    assert len({answer.json()["next"] for answer in answers}) == 1
    assert Payment.objects.count() == 1 and Checkout.objects.count() == 1


def test_ath_movil_down_after_the_callback_still_shows_the_waiting_page(athm_customer):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")
    athm_customer.sandbox.inject_fault("http503", endpoint="findPayment")

    answer = shopper.post(ecommerce_id, auth_token)

    assert answer.status_code == 200
    page = shopper.client.get(answer.json()["next"])
    assert page.status_code == 200
    assert Payment.objects.get().status == S.OPEN  # tracked; the next poll asks again


def test_another_payment_for_an_order_already_paid_is_refused(athm_customer, athm_signals):
    shopper = Shopper()
    paid, token = browser_pays(athm_customer, "12.50")
    athm_customer.complete(paid)
    shopper.post(paid, token)
    second, second_token = browser_pays(athm_customer, "12.50")

    answer = Shopper().post(second, second_token)

    assert answer.status_code == 409
    assert answer.json() == {"error": "This order is already paid."}
    assert list(Payment.objects.values_list("pk", flat=True)) == [Payment.objects.get().pk]
    assert str(Payment.objects.get().pk) == paid
    assert athm_signals.names == ["payment_completed"]


def test_a_payment_of_another_order_cannot_be_claimed_for_this_one(athm_customer):
    ecommerce_id, token = browser_pays(athm_customer, "12.50", order="order-8")
    Shopper(order="order-8").post(ecommerce_id, token)

    answer = Shopper(order="order-7").post(ecommerce_id, token)

    assert answer.status_code == 409
    assert Checkout.objects.get().order_key == "order-8"


def test_opening_the_button_again_cancels_the_orders_open_payment(athm_customer, athm_signals):
    shopper = Shopper()
    first, first_token = browser_pays(athm_customer, "12.50")
    shopper.post(first, first_token)
    second, second_token = browser_pays(athm_customer, "12.50")

    answer = shopper.post(second, second_token)

    assert answer.status_code == 200
    assert athm_customer.sandbox.payment(first)["status"] == "CANCEL"
    assert Payment.objects.get(pk=first).status == S.CANCEL
    assert Checkout.objects.get(order_open=True).payment_id == Payment.objects.get(pk=second).pk
    assert athm_signals.names == ["payment_cancelled"]


def test_a_post_without_a_csrf_token_is_refused(athm_customer):
    shopper = Shopper()
    ecommerce_id, auth_token = browser_pays(athm_customer, "12.50")

    answer = shopper.post(ecommerce_id, auth_token, HTTP_X_CSRFTOKEN="")

    assert answer.status_code == 403
    assert nothing_stored()


def test_only_post_is_answered(athm_settings):
    assert Client().get(reverse("athm_sync:checkout_button")).status_code == 405


def test_cancelling_in_evertecs_window_shows_the_cancelled_payment(athm_customer, athm_signals):
    shopper = Shopper()
    ecommerce_id, _token = browser_pays(athm_customer, "12.50")
    athm_customer.cancel(ecommerce_id)

    answer = shopper.post(ecommerce_id, event="cancel")
    page = shopper.client.get(answer.json()["next"])

    assert page.status_code == 303 and page["Location"] == CANCELLED
    assert Payment.objects.get().status == S.CANCEL
    assert athm_signals.names == ["payment_cancelled"]


def test_closing_the_window_before_a_payment_was_made_goes_back_to_the_shop(athm_settings):
    answer = Shopper().post("", event="cancel")

    assert answer.status_code == 200 and answer.json() == {"next": CANCELLED}
    assert nothing_stored()


# -- button.js, run by Node against a stand-in page, fetch and Evertec library ------------

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "athm_sync" / "static" / "athm_sync" / "button.js"
RUNNER = ROOT / "tests" / "js" / "run_callback_script.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="needs Node.js")
PAID = {"ecommerceId": "8c5b3a70-0f3e-11f1-9a4e-0242ac120002", "auth_token": "the-jwt"}
NEXT = {"status": 200, "body": {"next": "/athm/checkout/1/token/"}}


def run_script(callback: str, answer=NEXT, **library) -> dict:
    scenario = {"callback": callback, "answer": answer, **library}
    result = subprocess.run(  # noqa: S603 - our own runner
        [NODE, str(RUNNER), str(SCRIPT), json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


@needs_node
@pytest.mark.django_db(transaction=False)
def test_the_script_defines_the_callbacks_and_the_config_evertecs_library_reads():
    seen = run_script("cancelATHM", findPaymentATHM={})

    assert seen["callbacks"] == ["authorizationATHM", "cancelATHM", "expiredATHM"]
    assert seen["config"] == {"total": 12.5, "metadata1": "order-7"}


@needs_node
@pytest.mark.django_db(transaction=False)
def test_authorization_posts_the_payment_and_the_signed_order_then_goes_to_the_waiting_page():
    seen = run_script("authorizationATHM", authorization={"status": "success", "data": PAID})

    [post] = seen["posts"]
    assert post["url"] == "/athm/checkout/button/" and post["method"] == "POST"
    assert post["credentials"] == "same-origin"
    assert post["headers"] == {"Accept": "application/json", "X-CSRFToken": "the-csrf-token"}
    assert post["fields"] == {
        "event": "authorization",
        "signed": "the-signed-order",
        "ecommerceId": PAID["ecommerceId"],
        "auth_token": "the-jwt",
    }
    assert "total" not in post["fields"]  # the amount is the server's, never posted
    assert seen["went"] == ["/athm/checkout/1/token/"]


@needs_node
@pytest.mark.django_db(transaction=False)
def test_a_failed_authorization_still_posts_the_payment_findpayment_names():
    seen = run_script(
        "authorizationATHM",
        authorization="throws",
        findPaymentATHM={"ecommerceId": PAID["ecommerceId"], "authToken": "the-jwt"},
    )

    [post] = seen["posts"]
    assert post["fields"]["ecommerceId"] == PAID["ecommerceId"]
    assert post["fields"]["auth_token"] == "the-jwt"
    assert seen["went"] == ["/athm/checkout/1/token/"]


@needs_node
@pytest.mark.django_db(transaction=False)
def test_cancel_and_expired_post_their_event_and_go_where_the_server_says():
    for callback, event in (("cancelATHM", "cancel"), ("expiredATHM", "expired")):
        seen = run_script(callback, findPaymentATHM={"data": PAID})
        [post] = seen["posts"]
        assert post["fields"]["event"] == event
        assert post["fields"]["ecommerceId"] == PAID["ecommerceId"]
        assert seen["went"] == ["/athm/checkout/1/token/"]

    closed = run_script("cancelATHM", {"status": 200, "body": {"next": None}})  # no library call
    assert closed["posts"][0]["fields"]["ecommerceId"] == ""
    assert closed["went"] == ["(reload)"]


@needs_node
@pytest.mark.django_db(transaction=False)
def test_the_library_calling_back_twice_posts_once():
    seen = run_script("authorizationATHM", authorization={"data": PAID}, twice=True)

    assert len(seen["posts"]) == 1


@needs_node
@pytest.mark.django_db(transaction=False)
def test_a_refusal_or_a_lost_connection_is_shown_to_the_customer():
    refused = {"status": 400, "body": {"error": "Este botón de pago venció."}}
    seen = run_script("authorizationATHM", refused, authorization={"data": PAID})
    assert seen["error"] == "Este botón de pago venció." and seen["went"] == []

    lost = run_script("authorizationATHM", "network error", authorization={"data": PAID})
    assert lost["error"] == "Connection lost" and lost["went"] == []
