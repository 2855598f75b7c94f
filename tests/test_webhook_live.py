"""The webhook fast path end to end: the sandbox ATH Móvil POSTs real-shaped webhooks over HTTP
to the shop's view served by a live server (pytest-django's ``live_server``).

Nothing here runs ``athm_sync``: a signal that fires was brought by the webhook alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.urls import reverse

from athm_sync import reconcile
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment, PaymentEvent, WebhookEvent
from tests import documented_webhooks as documented

S = Payment.Status
SECRET = "w" * 40  # tests/settings.py


@pytest.fixture
def listener(live_server) -> str:
    return live_server.url + reverse("athm_sync:webhook", kwargs={"token": SECRET})


@pytest.fixture
def subscribed(athm_settings, listener):
    """The sandbox, with the listener subscribed through the real subscribe call and automatic
    webhooks on: completing a payment in the sandbox posts its webhook before returning."""
    sandbox = athm_settings
    with ATHMovilClient.from_settings() as client:
        client.subscribe_webhooks(listener)
    sandbox.state.auto_webhooks = True
    return sandbox


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def track(sandbox, total: str = "10.00") -> Payment:
    ecommerce_id, _ = sandbox.create_payment(total)
    return Payment.objects.track(ecommerce_id, total=total)


def last_delivery(sandbox) -> dict:
    return sandbox.state.deliveries[-1]


def test_a_genuine_completion_fires_once_without_any_poll(subscribed, received):
    sandbox = subscribed
    payment = track(sandbox)

    sandbox.complete(str(payment.pk))  # ATH Móvil posts its webhook

    assert last_delivery(sandbox)["status"] == 200
    assert names(received) == ["payment_completed"]
    assert Payment.objects.get(pk=payment.pk).status == S.COMPLETED
    assert WebhookEvent.objects.get().outcome == "applied"
    assert PaymentEvent.objects.get().source == "webhook"


def test_cancel_and_expiry_webhooks_are_told_apart(subscribed, received, time_machine):
    sandbox = subscribed
    cancelled, expired = track(sandbox), track(sandbox)

    sandbox.cancel(str(cancelled.pk))
    time_machine.move_to(expired.expires_at, tick=False)
    sandbox.advance(0)  # ATH Móvil notices the deadline and posts its webhook

    assert names(received) == ["payment_cancelled", "payment_expired"]
    assert Payment.objects.get(pk=cancelled.pk).status == S.CANCEL
    assert Payment.objects.get(pk=expired.pk).status == S.EXPIRED


def test_a_refund_webhook_fires_refund_sent(subscribed, received):
    sandbox = subscribed
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))

    sandbox.refund(str(payment.pk), "3.00")

    assert names(received) == ["payment_completed", "refund_sent"]
    assert received[1][2]["refund"].amount == 3


def test_a_forged_completion_fires_nothing(athm_settings, listener, received):
    sandbox = athm_settings
    payment = track(sandbox)  # the sandbox still says OPEN
    forged = sandbox.webhook_payload(str(payment.pk), "completed")

    assert sandbox.send_webhook(forged, listener) == 200

    assert names(received) == []
    assert Payment.objects.get(pk=payment.pk).status == S.OPEN
    assert WebhookEvent.objects.get().outcome == "rejected"


def test_a_duplicate_delivery_fires_nothing_more(subscribed, listener, received):
    sandbox = subscribed
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    sandbox.reset_counts()

    assert sandbox.send_webhook(last_delivery(sandbox)["payload"], listener) == 200

    assert names(received) == ["payment_completed"]
    assert sandbox.counts().get("findPayment", 0) == 0
    assert WebhookEvent.objects.get().deliveries == 2


def test_an_unregistered_payment_arrives_through_its_webhook(subscribed, received):
    sandbox = subscribed
    ecommerce_id, _ = sandbox.create_payment("42.00", metadata1="lost-browser")

    sandbox.complete(ecommerce_id)

    payment = Payment.objects.get(pk=ecommerce_id)
    assert payment.status == S.COMPLETED and payment.metadata_1 == "lost-browser"
    assert names(received) == ["payment_completed"]


def test_bad_requests_over_http_get_their_codes_and_store_nothing(athm_settings, listener):
    import requests

    wrong = listener.replace(SECRET, "x" * 40)
    with requests.Session() as http:
        assert http.post(wrong, json={"transactionType": "payment"}).status_code == 404
        assert http.get(listener).status_code == 405
        assert http.post(listener, data=b"not json").status_code == 400
        assert http.post(listener, data=b"[1]").status_code == 400
        assert http.post(listener, data=b"{" + b" " * (65 * 1024) + b"}").status_code == 413
    assert not WebhookEvent.objects.exists()


def test_a_webhook_and_a_poll_racing_on_each_payment_fire_once(athm_settings, listener, received):
    """For each payment, the webhook POST and a poll of the same payment start together; the
    row lock in ``apply`` lets exactly one of them record the transition."""
    sandbox = athm_settings
    payments = [track(sandbox) for _ in range(20)]
    for payment in payments:
        sandbox.complete(str(payment.pk))
    bodies = {payment.pk: sandbox.webhook_payload(str(payment.pk)) for payment in payments}

    def webhook(payment: Payment, start: threading.Barrier) -> None:
        start.wait()
        assert sandbox.send_webhook(bodies[payment.pk], listener) == 200

    def poll(payment: Payment, start: threading.Barrier) -> None:
        try:
            start.wait()
            reconcile.check_payment(payment.pk, source="poll")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for payment in payments:
            start = threading.Barrier(2)
            futures = [pool.submit(webhook, payment, start), pool.submit(poll, payment, start)]
            for future in futures:
                future.result()

    assert names(received) == ["payment_completed"] * len(payments)
    assert sorted(str(call[2]["payment"].pk) for call in received) == sorted(
        str(payment.pk) for payment in payments
    )
    assert PaymentEvent.objects.count() == len(payments)
    sources = set(PaymentEvent.objects.values_list("source", flat=True))
    assert sources <= {"webhook", "poll"}
    assert set(WebhookEvent.objects.values_list("outcome", flat=True)) <= {"applied", "unchanged"}


def test_the_same_webhook_delivered_twice_at_once_fires_once(athm_settings, listener, received):
    sandbox = athm_settings
    payments = [track(sandbox) for _ in range(15)]
    for payment in payments:
        sandbox.complete(str(payment.pk))

    def deliver(body: dict, start: threading.Barrier) -> None:
        start.wait()
        assert sandbox.send_webhook(body, listener) == 200

    with ThreadPoolExecutor(max_workers=2) as pool:
        for payment in payments:
            body, start = sandbox.webhook_payload(str(payment.pk)), threading.Barrier(2)
            for future in [pool.submit(deliver, body, start) for _ in range(2)]:
                future.result()

    assert names(received) == ["payment_completed"] * len(payments)
    assert WebhookEvent.objects.count() == len(payments)
    assert set(WebhookEvent.objects.values_list("deliveries", flat=True)) == {2}


# -- eCommerce webhooks without an ecommerceId, as Evertec documents them ------------------


@pytest.fixture
def documented_shape(subscribed):
    """The sandbox posting its eCommerce webhooks as Evertec's README shows them."""
    subscribed.state.webhook_shape = "documented"
    return subscribed


def test_a_completion_without_an_id_is_found_checked_and_fires_once(documented_shape, received):
    sandbox = documented_shape
    other = track(sandbox, total="25.00")  # another total: never checked
    payment = track(sandbox)
    sandbox.reset_counts()

    sandbox.complete(str(payment.pk))  # ATH Móvil posts its webhook, without the id

    delivery = last_delivery(sandbox)
    assert delivery["status"] == 200 and "ecommerceId" not in delivery["payload"]
    assert names(received) == ["payment_completed"]
    assert received[0][2]["payment"].pk == payment.pk
    assert Payment.objects.get(pk=payment.pk).status == S.COMPLETED
    event = WebhookEvent.objects.get()
    assert (event.outcome, event.ecommerce_id, event.payment_id) == ("applied", None, payment.pk)
    assert sandbox.counts()["findPayment"] == 1
    assert Payment.objects.get(pk=other.pk).check_count == 0


def test_cancel_and_expiry_without_an_id_are_told_apart(documented_shape, received, time_machine):
    sandbox = documented_shape
    cancelled, expired = track(sandbox), track(sandbox)  # the same total: both candidates

    sandbox.cancel(str(cancelled.pk))
    time_machine.move_to(expired.expires_at, tick=False)
    sandbox.advance(0)

    assert names(received) == ["payment_cancelled", "payment_expired"]
    assert Payment.objects.get(pk=cancelled.pk).status == S.CANCEL
    assert Payment.objects.get(pk=expired.pk).status == S.EXPIRED
    assert set(WebhookEvent.objects.values_list("outcome", flat=True)) == {"applied"}


@pytest.mark.parametrize("name", documented.NAMES)
def test_each_documented_sample_posted_over_http(
    athm_settings, listener, received, time_machine, name
):
    """Evertec's samples verbatim, posted by the sandbox to the live view."""
    sandbox = athm_settings
    payment = None
    if name in documented.ECOMMERCE:
        payment = documented.arrange_ecommerce(sandbox, name, time_machine)
    elif name == "refund":
        payment = documented.arrange_refund(sandbox)
        received.clear()

    assert sandbox.send_webhook(documented.sample(name), listener) == 200

    event = WebhookEvent.objects.get(transaction_type=documented.sample(name)["transactionType"])
    if name in documented.IGNORED:
        assert event.outcome == "ignored" and names(received) == []
        return
    assert event.outcome == "applied" and event.payment_id == payment.pk
    if name == "refund":
        assert names(received) == ["refund_sent"]
    else:
        _, status, signal = documented.OUTCOMES[name]
        assert names(received) == [signal]
        assert Payment.objects.get(pk=payment.pk).status == status
