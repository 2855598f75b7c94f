"""The server-side checkout, as a customer and a shop see it: ``start()`` in the shop's view, the
waiting page, its status endpoint, cancel and "send it to another phone", in English and Spanish.

Everything talks to the real sandbox ATH Móvil on loopback through Django's test client; time
moves with time-machine (``athm_clock``), never by sleeping.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from athm_sync.checkout import flow, start
from athm_sync.checkout.models import Checkout
from athm_sync.models import Payment, PaymentEvent

pytestmark = pytest.mark.django_db(transaction=True)  # signals fire on commit

S = Payment.Status
PHONE = "787-555-0142"
SUCCESS = "/orders/7/paid/"
CANCELLED = "/orders/7/"


def begin(rf, total="12.50", order="order-7", **kwargs):
    """The shop's view calls start(); returns its response."""
    kwargs.setdefault("phone_number", PHONE)
    kwargs.setdefault("success_url", SUCCESS)
    return start(rf.post("/orders/7/pay/"), total=total, metadata_1=order, **kwargs)


def the_checkout() -> Checkout:
    return Checkout.objects.select_related("payment").get()


def status_url(checkout: Checkout) -> str:
    kwargs = {"checkout_id": checkout.pk, "token": checkout.token}
    return reverse("athm_sync:checkout_status", kwargs=kwargs)


def action_url(checkout: Checkout, name: str) -> str:
    kwargs = {"checkout_id": checkout.pk, "token": checkout.token}
    return reverse(f"athm_sync:checkout_{name}", kwargs=kwargs)


def poll(client: Client, checkout: Checkout, **headers) -> dict:
    response = client.get(status_url(checkout), **headers)
    assert response.status_code == 200, response.content
    return response.json()


# -- start ---------------------------------------------------------------------------------


def test_start_creates_the_payment_from_the_servers_amounts_and_redirects_to_its_page(
    rf, athm_settings
):
    response = begin(rf, total="12.50", metadata_2="web", items=[{"name": "Mofongo"}])

    checkout = the_checkout()
    assert response.status_code == 302
    assert response["Location"] == flow.wait_url(checkout)
    assert checkout.token in response["Location"]
    assert athm_settings.counts()["payment"] == 1
    seen = athm_settings.payment(str(checkout.payment.pk))
    assert (seen["total"], seen["metadata1"], seen["metadata2"]) == ("12.50", "order-7", "web")
    assert seen["phoneNumber"] == "7875550142"
    assert checkout.payment.status == S.OPEN
    assert checkout.payment.auth_token  # kept, to capture when the customer confirms
    assert checkout.phone_number == "7875550142"


def test_a_second_start_for_the_same_order_returns_the_same_page_and_creates_nothing(
    rf, athm_settings
):
    first = begin(rf)
    second = begin(rf)  # double submit, or the back button and submit again

    assert second["Location"] == first["Location"]
    assert athm_settings.counts()["payment"] == 1
    assert Payment.objects.count() == 1


def test_concurrent_starts_for_one_order_create_one_payment(rf, athm_settings):
    athm_settings.set_latency(0.2)  # the first call is still at ATH Móvil when the others come
    barrier = threading.Barrier(4)
    locations: list[str] = []

    def shop_view():
        try:
            barrier.wait()
            locations.append(begin(rf)["Location"])
        finally:
            connection.close()

    threads = [threading.Thread(target=shop_view) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert athm_settings.counts()["payment"] == 1
    assert Payment.objects.count() == 1
    assert len(set(locations)) == 1 and len(locations) == 4


def test_an_order_whose_payment_was_cancelled_gets_a_new_one(rf, athm_customer):
    begin(rf)
    athm_customer.cancel(str(the_checkout().payment.pk))
    Client().get(flow.wait_url(the_checkout()))  # the page learns it was cancelled

    begin(rf)

    assert athm_customer.sandbox.counts()["payment"] == 2
    assert Checkout.objects.filter(order_open=True).count() == 1


def test_an_order_whose_cart_changed_cancels_the_open_payment_and_starts_another(
    rf, athm_customer, athm_signals
):
    begin(rf, total="12.50")
    old = the_checkout().payment

    begin(rf, total="15.00")

    old.refresh_from_db()
    assert old.status == S.CANCEL
    assert athm_customer.sandbox.payment(str(old.pk))["status"] == "CANCEL"
    new = Checkout.objects.get(order_open=True).payment
    assert new.total == Decimal("15.00") and new.status == S.OPEN
    assert athm_signals.names == ["payment_cancelled"]


def test_a_paid_order_is_never_charged_again(rf, athm_customer):
    begin(rf)
    checkout = the_checkout()
    athm_customer.complete(str(checkout.payment.pk))
    Client().get(flow.wait_url(checkout))

    again = begin(rf, total="99.00")

    assert again["Location"] == flow.wait_url(checkout)
    assert athm_customer.sandbox.counts()["payment"] == 1


def test_start_refuses_a_bad_phone_number_before_asking_ath_movil(rf, athm_settings):
    from athm_sync.checkout import InvalidPhoneNumber

    with pytest.raises(InvalidPhoneNumber) as error:
        begin(rf, phone_number="555-12")

    assert "10-digit" in str(error.value.message)
    assert athm_settings.counts()["payment"] == 0
    assert not Checkout.objects.exists()


def test_start_when_ath_movil_is_down_answers_a_try_again_page_and_stores_no_payment(
    rf, athm_settings
):
    athm_settings.inject_fault("http503", endpoint="payment")

    response = begin(rf, cancel_url=CANCELLED)

    assert response.status_code == 503
    assert b"try again" in response.content.lower()
    assert CANCELLED.encode() in response.content
    assert not Payment.objects.exists()
    failed = Checkout.objects.get()
    assert not failed.order_open  # not the order's checkout: the next try starts afresh
    answer = poll(Client(), failed)  # where a concurrent start() sent its customer
    assert answer["state"] == "failed" and answer["next"] == CANCELLED

    begin(rf)

    assert Checkout.objects.get(order_open=True).payment.status == S.OPEN


# -- the waiting page ----------------------------------------------------------------------


def test_the_waiting_page_shows_the_total_the_masked_phone_a_countdown_and_refreshes_itself(
    rf, athm_settings
):
    response = Client().get(begin(rf, total="12.50")["Location"])

    page = response.content.decode()
    assert response.status_code == 200
    assert "$12.50" in page
    assert "(•••) •••-0142" in page and "5550142" not in page and "555-0142" not in page
    assert re.search(r"data-countdown>(9|10):\d\d<", page)
    assert '<noscript><meta http-equiv="refresh"' in page
    assert "checkout.js" in page
    assert 'lang="en' in page
    assert "Open ATH Móvil on your phone" in page
    assert response["Cache-Control"].startswith("max-age=0")
    assert response["Referrer-Policy"] == "no-referrer"


def test_the_waiting_page_speaks_spanish_to_a_browser_that_asks_for_it(rf, athm_settings):
    location = begin(rf, total="12.50")["Location"]

    page = Client().get(location, HTTP_ACCEPT_LANGUAGE="es-PR,es;q=0.9,en;q=0.5")
    chose_spanish = Client()
    chose_spanish.cookies["django_language"] = "es"  # the shop's language switcher set it
    by_cookie = chose_spanish.get(location, HTTP_ACCEPT_LANGUAGE="en")

    for response in (page, by_cookie):
        text = response.content.decode()
        assert 'lang="es' in text
        assert "Abre ATH Móvil en tu teléfono" in text
        assert "Cancelar el pago" in text
        assert "$12.50" in text
        assert response["Content-Language"] == "es"


def test_a_reload_and_a_second_tab_show_the_same_stored_payment(rf, athm_settings):
    location = begin(rf)["Location"]

    first, second = Client().get(location), Client().get(location)

    assert first.status_code == second.status_code == 200
    assert athm_settings.counts()["payment"] == 1


# -- the status endpoint -------------------------------------------------------------------


def test_a_wrong_token_gets_404_and_reveals_nothing(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    wrong = {"checkout_id": checkout.pk, "token": "x" * len(checkout.token)}
    client = Client()

    for name in ("wait", "status"):
        response = client.get(reverse(f"athm_sync:checkout_{name}", kwargs=wrong))
        assert response.status_code == 404
        assert b"12.50" not in response.content and b"0142" not in response.content
    spanish = client.get(
        reverse("athm_sync:checkout_status", kwargs=wrong), HTTP_ACCEPT_LANGUAGE="es"
    )
    assert spanish.json() == {"error": "Esta página de pago no existe o ya no está disponible."}
    assert client.get("/athm/checkout/not-a-uuid/x/").status_code == 404
    assert client.get("/athm/checkout/").status_code == 404
    assert athm_settings.counts()["findPayment"] == 0


def test_an_old_link_opens_nothing_once_its_payment_is_settled(
    rf, athm_customer, athm_clock, settings
):
    """The URL holds the page's token, and URLs outlive their use (browser histories, shared
    screenshots): ``CHECKOUT_LINK_LIFETIME`` (a day) after the checkout started, its pages
    answer 404 once its payment is settled; a payment still waiting keeps its page."""
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "CHECKOUT_LINK_LIFETIME": 60}
    begin(rf)
    checkout = the_checkout()
    athm_clock.advance(120)  # the link's minute is over, but the payment is still open
    assert poll(Client(), checkout)["state"] == "waiting"

    athm_customer.let_expire(str(checkout.payment.pk))
    assert poll(Client(), checkout)["state"] == "expired"  # what the open page learns
    page = Client().get(flow.wait_url(checkout), HTTP_ACCEPT_LANGUAGE="es")
    answer = Client().get(status_url(checkout))
    cancelled = Client().post(action_url(checkout, "cancel"))

    assert page.status_code == answer.status_code == cancelled.status_code == 404
    assert "ya no está disponible" in page.content.decode()
    assert answer.json() == {"error": "This payment page does not exist or is no longer available."}
    assert Payment.objects.get().status == S.EXPIRED  # settled before; nothing changed since


def test_the_status_answer_holds_only_what_the_page_shows(rf, athm_settings):
    begin(rf)

    answer = poll(Client(), the_checkout())

    assert set(answer) == {
        "state",
        "message",
        "total",
        "phone",
        "seconds_left",
        "deadline",
        "next",
        "notice",
        "retry_after",
    }
    assert answer["state"] == "waiting" and answer["total"] == "12.50"
    assert answer["phone"] == "(•••) •••-0142" and answer["next"] is None


def test_many_polls_within_the_interval_ask_ath_movil_once(rf, athm_settings, athm_clock):
    begin(rf)
    checkout = the_checkout()
    athm_clock.advance(0)  # time-machine from here on
    tabs = [Client() for _ in range(5)]

    for _ in range(4):
        for tab in tabs:
            poll(tab, checkout)
    assert athm_settings.counts()["findPayment"] == 1

    athm_clock.advance(2.1)
    for tab in tabs:
        poll(tab, checkout)
    assert athm_settings.counts()["findPayment"] == 2


def test_a_confirmed_payment_is_captured_by_the_next_poll_and_leads_to_success(
    rf, athm_customer, athm_signals
):
    begin(rf)
    checkout = the_checkout()
    athm_customer.confirm(str(checkout.payment.pk))

    answer = poll(Client(), checkout)

    assert answer["state"] == "completed" and answer["next"] == SUCCESS
    assert athm_customer.sandbox.counts()["authorization"] == 1
    assert Payment.objects.get().status == S.COMPLETED
    assert athm_signals.names == ["payment_completed"]
    assert PaymentEvent.objects.get().source == "checkout"
    athm_customer.clock.advance(3)
    page = Client().get(flow.wait_url(checkout))
    assert page.status_code == 303 and page["Location"] == SUCCESS
    assert athm_customer.sandbox.counts()["authorization"] == 1
    assert athm_signals.names == ["payment_completed"]


@pytest.mark.parametrize("door", ["webhook", "scheduled run"])
def test_when_another_door_saw_the_completion_first_the_signal_still_fires_once(
    rf, athm_customer, athm_signals, athm_sync_now, door
):
    begin(rf)
    checkout = the_checkout()
    ecommerce_id = str(checkout.payment.pk)
    athm_customer.confirm(ecommerce_id)
    if door == "webhook":  # captured elsewhere (the JS button, another server), then posted
        athm_customer.sandbox.capture(ecommerce_id)
        athm_customer.send_webhook(ecommerce_id)
    else:  # the scheduled run captured it
        athm_sync_now(ecommerce_id)
    captures = athm_customer.sandbox.counts()["authorization"]

    answer = poll(Client(), checkout)

    assert answer["state"] == "completed" and answer["next"] == SUCCESS
    assert athm_signals.names == ["payment_completed"]
    assert athm_customer.sandbox.counts()["authorization"] == captures  # none by the page


def test_a_declined_payment_leads_to_the_cancel_url(rf, athm_customer, athm_signals):
    begin(rf, cancel_url=CANCELLED)
    checkout = the_checkout()
    athm_customer.cancel(str(checkout.payment.pk))

    answer = poll(Client(), checkout)

    assert answer["state"] == "cancelled" and answer["next"] == CANCELLED
    assert athm_signals.names == ["payment_cancelled"]


def test_without_a_cancel_url_a_declined_payment_shows_our_cancelled_page(rf, athm_customer):
    begin(rf)
    checkout = the_checkout()
    athm_customer.cancel(str(checkout.payment.pk))

    page = Client().get(flow.wait_url(checkout), HTTP_ACCEPT_LANGUAGE="es")

    assert page.status_code == 200
    assert "Pago cancelado" in page.content.decode()


def test_a_payment_left_past_its_deadline_shows_the_expired_page(rf, athm_customer, athm_signals):
    begin(rf)
    checkout = the_checkout()

    athm_customer.let_expire(str(checkout.payment.pk))
    answer = poll(Client(), checkout)
    page = Client().get(flow.wait_url(checkout))

    assert answer["state"] == "expired" and answer["next"] == flow.wait_url(checkout)
    assert Payment.objects.get().status == S.EXPIRED
    assert athm_signals.names == ["payment_expired"]
    assert "Time ran out" in page.content.decode()


def test_a_payment_completed_for_another_amount_shows_we_are_checking(
    rf, athm_customer, athm_signals
):
    begin(rf, total="12.50")
    checkout = the_checkout()
    ecommerce_id = str(checkout.payment.pk)
    athm_customer.complete(ecommerce_id)
    athm_customer.sandbox.tamper(ecommerce_id, total=1)

    answer = poll(Client(), checkout)
    page = Client().get(flow.wait_url(checkout))

    assert answer["state"] == "checking"
    assert athm_signals.names == ["payment_mismatched"]
    assert "We are checking your payment" in page.content.decode()


def test_a_payment_confirmed_for_another_amount_is_never_captured_and_says_we_are_checking(
    rf, athm_customer, athm_signals, caplog
):
    """The customer confirmed, but ATH Móvil's answer is not the order's total: the page stops
    saying "completing" at once, nothing is captured, and the refusal is logged once, not at
    every look."""
    begin(rf, total="12.50")
    checkout = the_checkout()
    ecommerce_id = str(checkout.payment.pk)
    athm_customer.confirm(ecommerce_id)
    athm_customer.sandbox.tamper(ecommerce_id, total=1)
    caplog.set_level("DEBUG", logger="athm_sync")

    answers = []
    for _ in range(4):
        answers.append(poll(Client(), checkout))
        athm_customer.clock.advance(3)
    page = Client().get(flow.wait_url(checkout), HTTP_ACCEPT_LANGUAGE="es")

    assert [answer["state"] for answer in answers] == ["checking"] * 4
    assert answers[0]["next"] == flow.wait_url(checkout)
    assert athm_customer.sandbox.counts()["findPayment"] >= 4  # it kept looking
    assert athm_customer.sandbox.counts()["authorization"] == 0
    assert athm_customer.sandbox.payment(ecommerce_id)["status"] == "CONFIRM"
    payment = Payment.objects.get()
    assert payment.status == S.CONFIRM and payment.remote_total == Decimal("1.00")
    assert "total" in payment.mismatch_reason
    assert athm_signals.names == []
    refusals = [r for r in caplog.records if "not captured" in r.getMessage()]
    assert [r.levelname for r in refusals if r.levelname == "ERROR"] == ["ERROR"]
    text = page.content.decode()
    assert "Estamos verificando tu pago" in text and "no se completó" in text
    assert "data-countdown" not in text  # no deadline to count down to

    athm_customer.let_expire(ecommerce_id)  # it was never taken: it runs out
    assert poll(Client(), checkout)["state"] == "expired"
    assert athm_signals.names == ["payment_expired"]


def test_while_ath_movil_is_down_the_status_says_still_waiting_and_nothing_changes(
    rf, athm_settings, athm_clock
):
    begin(rf)
    checkout = the_checkout()
    before = Payment.objects.values().get()
    athm_settings.inject_fault("http503", endpoint="findPayment")

    answer = poll(Client(), checkout, HTTP_ACCEPT_LANGUAGE="es")

    assert answer["state"] == "waiting"
    assert "No pudimos comunicarnos con ATH Móvil" in answer["notice"]
    assert Payment.objects.values().get() == before
    athm_clock.advance(2.1)
    assert poll(Client(), checkout)["notice"] == ""  # ATH Móvil is back


# -- cancel and another phone --------------------------------------------------------------


def test_the_cancel_button_cancels_with_ath_movil_once_and_a_replay_changes_nothing(
    rf, athm_customer, athm_signals
):
    begin(rf)
    checkout = the_checkout()
    client = Client()

    first = client.post(action_url(checkout, "cancel"))
    replay = client.post(action_url(checkout, "cancel"))

    assert first.status_code == replay.status_code == 303
    assert athm_customer.sandbox.counts()["cancel"] == 1
    assert Payment.objects.get().status == S.CANCEL
    assert athm_signals.names == ["payment_cancelled"]
    assert "Payment cancelled" in client.get(first["Location"]).content.decode()


def test_posts_without_a_csrf_token_are_refused(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    client = Client(enforce_csrf_checks=True)

    for name in ("cancel", "phone"):
        assert (
            client.post(action_url(checkout, name), {"phone_number": "7875550199"}).status_code
            == 403
        )
    assert athm_settings.counts()["cancel"] == athm_settings.counts()["updatePhoneNumber"] == 0
    assert Payment.objects.get().status == S.OPEN


def test_the_forms_carry_a_csrf_token_that_works(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    client = Client(enforce_csrf_checks=True)
    page = client.get(flow.wait_url(checkout)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = client.post(action_url(checkout, "cancel"), {"csrfmiddlewaretoken": token})

    assert response.status_code == 303
    assert Payment.objects.get().status == S.CANCEL


def test_the_push_goes_to_another_phone_a_bounded_number_of_times(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    client = Client()
    ecommerce_id = str(checkout.payment.pk)

    for n, phone in enumerate(("7875550101", "(787) 555-0102", "1-787-555-0103"), start=1):
        response = client.post(action_url(checkout, "phone"), {"phone_number": phone})
        assert response.status_code == 303
        assert athm_settings.payment(ecommerce_id)["phoneNumber"] == f"787555010{n}"
    page = client.get(response["Location"]).content.decode()
    assert "sent to the new number" in page and "(•••) •••-0103" in page

    refused = client.post(action_url(checkout, "phone"), {"phone_number": "7875550104"})

    assert refused.status_code == 429
    assert "cannot be sent to another phone again" in refused.content.decode()
    assert athm_settings.counts()["updatePhoneNumber"] == 3
    assert the_checkout().phone_number == "7875550103"


def test_a_bad_or_repeated_phone_number_changes_nothing(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    client = Client()

    bad = client.post(
        action_url(checkout, "phone"), {"phone_number": "12"}, HTTP_ACCEPT_LANGUAGE="es"
    )
    same = client.post(action_url(checkout, "phone"), {"phone_number": PHONE})

    assert bad.status_code == 400
    assert "Escribe un número de teléfono de 10 dígitos" in bad.content.decode()
    assert same.status_code == 303 and same["Location"].endswith("?notice=phone_same")
    assert athm_settings.counts()["updatePhoneNumber"] == 0
    assert the_checkout().phone_changes == 0


def test_a_phone_change_while_ath_movil_is_down_is_not_counted(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    athm_settings.inject_fault("http503", endpoint="updatePhoneNumber")

    response = Client().post(action_url(checkout, "phone"), {"phone_number": "7875550199"})

    assert response.status_code == 503
    assert "cannot be reached right now" in response.content.decode()
    stored = the_checkout()
    assert stored.phone_changes == 0 and stored.phone_number == "7875550142"


def test_a_finished_payment_takes_no_phone_change(rf, athm_customer):
    begin(rf)
    checkout = the_checkout()
    athm_customer.cancel(str(checkout.payment.pk))
    Client().get(flow.wait_url(checkout))

    response = Client().post(action_url(checkout, "phone"), {"phone_number": "7875550199"})

    assert response.status_code == 409
    assert athm_customer.sandbox.counts()["updatePhoneNumber"] == 0


def test_a_get_on_an_action_is_refused(rf, athm_settings):
    begin(rf)

    assert Client().get(action_url(the_checkout(), "cancel")).status_code == 405
    assert Payment.objects.get().status == S.OPEN


def test_no_answer_is_logged_with_the_token(rf, athm_settings, caplog):
    begin(rf)
    checkout = the_checkout()
    wrong = {"checkout_id": checkout.pk, "token": checkout.token[:-1] + "x"}
    client = Client(enforce_csrf_checks=True)

    with caplog.at_level("DEBUG"):
        client.get(reverse("athm_sync:checkout_wait", kwargs=wrong))
        client.post(action_url(checkout, "cancel"))  # no CSRF token: 403
        client.get(action_url(checkout, "phone"))  # 405
        client.get(flow.wait_url(checkout))

    assert caplog.records
    assert not [r for r in caplog.records if checkout.token[:20] in r.getMessage()]


def test_with_locale_middleware_the_page_follows_its_choice(rf, athm_settings, settings):
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.locale.LocaleMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ]
    location = begin(rf)["Location"]

    spanish = Client().get(location, HTTP_ACCEPT_LANGUAGE="es")
    english = Client().get(location, HTTP_ACCEPT_LANGUAGE="en-US")

    assert "Cancelar el pago" in spanish.content.decode()
    assert "Cancel payment" in english.content.decode()


def test_a_minute_of_three_tabs_polling_twice_a_second_costs_30_calls(
    rf, athm_settings, time_machine
):
    """The issue's budget: at most 30 ATH Móvil calls per waiting customer per minute."""
    from datetime import timedelta

    from athm_sync import clock

    begin(rf)
    checkout = the_checkout()
    started = clock.now()
    tabs = [Client() for _ in range(3)]

    for half_second in range(120):
        time_machine.move_to(started + timedelta(seconds=half_second / 2), tick=False)
        for tab in tabs:
            poll(tab, checkout)

    assert athm_settings.counts()["findPayment"] == 30


def test_a_poll_that_does_not_ask_ath_movil_costs_two_queries(rf, athm_settings):
    from django.test.utils import CaptureQueriesContext

    begin(rf)
    checkout = the_checkout()
    client = Client()
    with CaptureQueriesContext(connection) as asking:
        poll(client, checkout)
    with CaptureQueriesContext(connection) as answering:
        poll(client, checkout)

    assert len(answering) == 2  # read the checkout and its payment; lose the election
    assert len([q for q in asking if not q["sql"].startswith(("BEGIN", "COMMIT"))]) <= 6
    assert athm_settings.counts()["findPayment"] == 1


def test_with_unusable_settings_the_customer_gets_try_again_never_a_500(
    rf, athm_settings, settings
):
    begin(rf)
    checkout = the_checkout()
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": ""}

    started = begin(rf, order="order-8")
    page = Client().get(flow.wait_url(checkout))
    answer = poll(Client(), checkout)

    assert started.status_code == 503
    assert page.status_code == 200
    assert answer["state"] == "waiting" and "could not reach ATH Móvil" in answer["notice"]
    assert athm_settings.counts()["findPayment"] == 0


def test_cancel_while_ath_movil_is_down_says_try_again_and_changes_nothing(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    athm_settings.inject_fault("http503", endpoint="cancel")

    response = Client().post(action_url(checkout, "cancel"), HTTP_ACCEPT_LANGUAGE="es")

    assert response.status_code == 503
    assert "No es posible comunicarse con ATH Móvil" in response.content.decode()
    assert Payment.objects.get().status == S.OPEN
    assert athm_settings.payment(str(checkout.payment.pk))["status"] == "OPEN"


def test_tabs_polling_at_the_same_moment_elect_one_asker(rf, athm_settings):
    begin(rf)
    checkout = the_checkout()
    athm_settings.set_latency(0.2)  # the asker's call is still out when the others arrive
    barrier = threading.Barrier(6)
    answers: list[dict] = []

    def tab():
        try:
            barrier.wait()
            answers.append(poll(Client(), checkout))
        finally:
            connection.close()

    threads = [threading.Thread(target=tab) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 6 and {a["state"] for a in answers} == {"waiting"}
    assert athm_settings.counts()["findPayment"] == 1


def test_start_in_a_project_without_the_apps_urls_says_what_to_add_and_creates_nothing(
    rf, athm_settings, settings
):
    from django.core.exceptions import ImproperlyConfigured

    settings.ROOT_URLCONF = "tests.urls_without_athm"

    with pytest.raises(ImproperlyConfigured, match=r'include\("athm_sync.urls"\)'):
        begin(rf)
    assert athm_settings.counts()["payment"] == 0
    assert not Checkout.objects.exists()
