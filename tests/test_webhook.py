"""The webhook view and its inbox (athm_sync.views, athm_sync.inbox), through Django's test client.

Every webhook is verified against the real sandbox ATH Móvil over loopback, and every
transaction commits (``transaction=True``) so that signals fire after commit as in production.
The same flows over real HTTP, posted by the sandbox itself, are in ``test_webhook_live.py``.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError
from django.test import Client
from django.urls import reverse
from django.utils.html import escape
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from athm_sync import clock, inbox, reconcile, views
from athm_sync.models import Payment, PaymentEvent, Refund, WebhookEvent
from athm_sync.normalize import local_datetime
from tests import documented_webhooks as documented
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

S = Payment.Status
SECRET = "w" * 40  # tests/settings.py
URL = reverse("athm_sync:webhook", kwargs={"token": SECRET})


@pytest.fixture
def athm(athm_settings):
    return athm_settings


@pytest.fixture
def web() -> Client:
    return Client()


def post(web: Client, body, **extra):
    """POST ``body`` (a dict as JSON, or raw bytes) to the webhook URL; returns the response."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return web.post(URL, data, content_type="application/json", **extra)


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def track(sandbox, total: str = "10.00", timeout: int = 600) -> Payment:
    ecommerce_id, _ = sandbox.create_payment(total, timeout=timeout, metadata1="order-7")
    return Payment.objects.track(ecommerce_id, total=total, timeout=timeout, metadata_1="order-7")


def reload(payment: Payment) -> Payment:
    return Payment.objects.get(pk=payment.pk)


def later(seconds: float):
    return clock.now() + timedelta(seconds=seconds)


def find_calls(sandbox) -> int:
    return sandbox.counts().get("findPayment", 0)


# -- verified, then applied ----------------------------------------------------------------


def test_a_genuine_completion_fires_payment_completed_once_without_a_poll(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk), name="Ana Ríos")
    sandbox.reset_counts()

    response = post(web, sandbox.webhook_payload(str(payment.pk)), REMOTE_ADDR="10.1.2.3")

    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert response.json() == {"outcome": "applied", "event": event.pk, "duplicate": False}
    assert names(received) == ["payment_completed"]
    stored = reload(payment)
    assert stored.status == S.COMPLETED
    assert stored.reference_number and stored.customer_name == "Ana Ríos"
    assert received[0][2]["payment"].status == S.COMPLETED
    assert PaymentEvent.objects.get().source == "webhook"
    assert find_calls(sandbox) == 1  # verified with exactly one findPayment
    assert (event.transaction_type, event.status, event.outcome) == (
        "ecommerce",
        "completed",
        "applied",
    )
    assert event.ecommerce_id == payment.pk and event.payment_id == payment.pk
    assert event.remote_addr == "10.1.2.3"
    assert event.amount == Decimal("10.00")
    assert event.payload["ecommerceId"] == str(payment.pk)  # the body, parsed
    assert event.idempotency_key == f"ecommerce:{payment.pk}:completed"


def test_a_duplicate_delivery_is_answered_200_and_does_nothing_more(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    body = sandbox.webhook_payload(str(payment.pk))
    post(web, body)
    sandbox.reset_counts()

    again = post(web, body)

    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["outcome"] == "applied"
    assert names(received) == ["payment_completed"]
    assert find_calls(sandbox) == 0
    event = WebhookEvent.objects.get()
    assert event.deliveries == 2 and event.attempts == 1


def test_a_forged_completion_changes_nothing_and_is_rejected(athm, web, received):
    sandbox = athm
    payment = track(sandbox)  # ATH Móvil says OPEN

    response = post(web, sandbox.webhook_payload(str(payment.pk), "completed"))

    assert response.status_code == 200 and response.json()["outcome"] == "rejected"
    assert names(received) == []
    assert reload(payment).status == S.OPEN
    assert not PaymentEvent.objects.exists()
    event = WebhookEvent.objects.get()
    assert event.outcome == "rejected"
    assert event.reason == "the webhook says completed but ATH Móvil says OPEN"


def test_a_rejected_event_delivered_again_is_verified_again(athm, web, received):
    """ATH Móvil may answer findPayment a moment behind its own webhook: the second delivery
    of a rejected event is checked afresh and applied once it is true."""
    sandbox = athm
    payment = track(sandbox)
    body = sandbox.webhook_payload(str(payment.pk), "completed")
    assert post(web, body).json()["outcome"] == "rejected"

    sandbox.complete(str(payment.pk))
    assert post(web, body).json()["outcome"] == "applied"

    assert names(received) == ["payment_completed"]
    assert WebhookEvent.objects.get().attempts == 2


@pytest.mark.parametrize(
    ("hint", "seen_at", "status", "signal"),
    [
        # Near the deadline the webhook breaks findPayment's CANCEL tie: ATH Móvil's clock ran
        # 20 s ahead of ours...
        ("expired", -20, S.EXPIRED, "payment_expired"),
        # ...or a cancel 1 s before the deadline is verified 20 s after it.
        ("cancelled", 20, S.CANCEL, "payment_cancelled"),
        # Elsewhere the deadline decides: a forged "expired" 1 s into a 600 s payment...
        ("expired", -599, S.CANCEL, "payment_cancelled"),
        # ...and a forged "cancelled" five minutes after the payment expired.
        ("cancelled", 300, S.EXPIRED, "payment_expired"),
    ],
)
def test_a_webhook_tells_cancel_from_expiry_only_near_the_deadline(
    athm, web, received, time_machine, hint, seen_at, status, signal
):
    sandbox = athm
    payment = track(sandbox, timeout=600)
    sandbox.cancel(str(payment.pk))  # findPayment says CANCEL, as it does for an expiry
    time_machine.move_to(payment.expires_at + timedelta(seconds=seen_at), tick=False)

    response = post(web, sandbox.webhook_payload(str(payment.pk), hint))

    assert response.json()["outcome"] == "applied"
    assert reload(payment).status == status
    assert names(received) == [signal]


def test_a_cancel_webhook_for_a_completed_payment_is_rejected(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))

    response = post(web, sandbox.webhook_payload(str(payment.pk), "cancelled"))

    assert response.json()["outcome"] == "rejected"
    assert reload(payment).status == S.OPEN  # nothing applied; the poller will see COMPLETED
    assert names(received) == []


def test_an_unregistered_payment_is_created_from_the_verified_snapshot(athm, web, received):
    """The browser died before it told the shop's server: the webhook brings the payment in."""
    sandbox = athm
    ecommerce_id, _ = sandbox.create_payment("25.50", metadata1="cart-9", tax="1.50")
    sandbox.complete(ecommerce_id)

    response = post(web, sandbox.webhook_payload(ecommerce_id))

    assert response.json()["outcome"] == "applied"
    payment = Payment.objects.get(pk=ecommerce_id)
    assert payment.status == S.COMPLETED
    assert payment.total == Decimal("25.50") and payment.tax == Decimal("1.50")
    assert payment.metadata_1 == "cart-9" and payment.reference_number
    assert payment.auth_token == "" and not Payment.objects.due(later(86400)).exists()
    assert names(received) == ["payment_completed"]
    assert received[0][2]["payment"].pk == payment.pk
    assert "created" in WebhookEvent.objects.get().reason


def test_an_id_ath_movil_does_not_know_is_rejected_and_stores_no_payment(athm, web, received):
    body = {"transactionType": "ecommerce", "status": "completed", "ecommerceId": str(uuid.uuid4())}

    response = post(web, body)

    assert response.status_code == 200 and response.json()["outcome"] == "rejected"
    assert not Payment.objects.exists()
    assert WebhookEvent.objects.get().reason == "ATH Móvil does not know this payment"


# -- refunds and other event types ---------------------------------------------------------


@pytest.fixture
def completed(athm, web, received) -> Payment:
    """A tracked payment completed through its webhook (signals cleared)."""
    payment = track(athm)
    athm.complete(str(payment.pk))
    post(web, athm.webhook_payload(str(payment.pk)))
    received.clear()
    return reload(payment)


def test_a_refund_webhook_is_matched_by_reference_number_and_verified(
    athm, web, received, completed
):
    sandbox = athm
    sandbox.refund(str(completed.pk), "4.00", "damaged")
    body = sandbox.refund_webhook_payload(str(completed.pk))
    assert body.get("ecommerceId") is None

    response = post(web, body)

    assert response.json()["outcome"] == "applied"
    refund = Refund.objects.get()
    assert refund.payment_id == completed.pk and refund.amount == Decimal("4.00")
    # The webhook's own record of the refund is copied onto the Refund.
    remote = sandbox.payment(str(completed.pk))["refunds"][0]
    assert refund.message == "damaged"
    assert refund.daily_transaction_id == remote["dailyTransactionId"]
    assert refund.transaction_date == local_datetime(remote["date"])
    assert reload(completed).total_refunded_amount == Decimal("4.00")
    assert names(received) == ["refund_sent"]
    again = post(web, body).json()
    assert again["outcome"] == "applied" and again["duplicate"] is True
    assert names(received) == ["refund_sent"]


def test_a_refund_ath_movil_does_not_show_is_rejected(athm, web, received, completed):
    body = {
        "transactionType": "refund",
        "status": "completed",
        "referenceNumber": completed.reference_number,
        "total": "3.00",
    }

    response = post(web, body)

    assert response.json()["outcome"] == "rejected"
    assert not Refund.objects.exists() and names(received) == []
    assert "0.00 refunded" in WebhookEvent.objects.get(transaction_type="refund").reason


def test_a_refund_of_a_payment_the_shop_does_not_track_is_ignored(athm, web, received):
    body = {"transactionType": "refund", "referenceNumber": "999-abc", "total": 3}
    sandbox = athm
    sandbox.reset_counts()

    response = post(web, body)

    assert response.json()["outcome"] == "ignored"
    assert find_calls(sandbox) == 0


@pytest.mark.parametrize("kind", ["payment", "donation", "simulated", "PAYMENT"])
def test_payment_donation_and_simulated_events_are_stored_and_ignored(athm, web, received, kind):
    body = {"transactionType": kind, "status": "completed", "referenceNumber": "1-2", "total": 5}
    athm.reset_counts()

    response = post(web, body)

    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    event = WebhookEvent.objects.get()
    assert event.transaction_type == kind.lower() and event.payload == body
    assert athm.counts() == {} or sum(athm.counts().values()) == 0
    assert post(web, body).json()["duplicate"] is True


# -- the captured shapes of ATHM_API.md ----------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"phoneNumber": 7875551234},
        {"phoneNumber": "(787) 555-1234"},
        {"transactionType": "ECOMMERCE", "status": "COMPLETED"},
        {"transactionType": " Ecommerce ", "status": "Completed "},
        {"dailyTransactionId": "0035", "dailyTransactionID": None},
        {"dailyTransactionID": 35},
        {"total": "10.00", "fee": 0.6000000238418579, "tax": "0.00", "subTotal": 10},
        {"total": 10},
        {"date": "2023-01-13 16:17:06.0", "transactionDate": "2023-01-13 16:17:06"},
        {"items": '[{"name": "Tee", "price": 10}]'},
    ],
    ids=lambda overrides: ",".join(overrides),
)
def test_captured_webhook_shapes_are_accepted(athm, web, received, overrides):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    body = {**sandbox.webhook_payload(str(payment.pk)), **overrides}
    body = {key: value for key, value in body.items() if value is not None}

    response = post(web, body)

    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    assert names(received) == ["payment_completed"]


def test_stray_spaces_around_the_ids_are_accepted(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    body = sandbox.webhook_payload(str(payment.pk))
    body["ecommerceId"] = f" {payment.pk} "
    body["referenceNumber"] += " "

    assert post(web, body).json()["outcome"] == "applied"
    assert WebhookEvent.objects.get().reference_number == body["referenceNumber"].strip()
    # The same event spelled differently is still the same event.
    body["ecommerceId"] = str(payment.pk).upper()
    assert post(web, body).json()["duplicate"] is True


# -- the body, byte for byte ---------------------------------------------------------------


def completion_bytes(payment: Payment, sandbox) -> bytes:
    """A completion of ``payment`` as ATH Móvil might format it: its own key order, spacing,
    line ends, ``9.00``-style amounts, an escaped and a literal accent."""
    fields = sandbox.webhook_payload(str(payment.pk), "completed")
    return (
        "{\r\n"
        f'  "total" : 10.00,  "ecommerceId": "{payment.pk}",\n'
        '\t"transactionType":"ecommerce", "status":"completed",\n'
        f'  "referenceNumber": "{fields["referenceNumber"]}",'
        '  "fee": 0.6000000238418579, "tax": 0.00, "name": "Ana R\\u00edos", "message": "¡Gracias!"'
        "\r\n}"
    ).encode()


def test_the_body_is_kept_byte_for_byte_beside_its_parsed_payload(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    body = completion_bytes(payment, sandbox)

    assert post(web, body).json()["outcome"] == "applied"

    event = WebhookEvent.objects.get()
    assert event.body_bytes() == body
    assert event.body == body.decode() and event.body_encoding == "utf-8"
    assert event.payload["total"] == 10.0 and event.payload["name"] == "Ana Ríos"  # parsed
    assert '"total" : 10.00,' in event.body and "R\\u00edos" in event.body


def test_every_stored_event_keeps_its_body_rejected_and_ignored_ones_too(athm, web, received):
    sandbox = athm
    payment = track(sandbox)  # ATH Móvil says OPEN: a completion is rejected
    forged = completion_bytes(payment, sandbox)
    donation = b'{"transactionType": "donation", "status": "completed", "total": 5.00}'

    assert post(web, forged).json()["outcome"] == "rejected"
    assert post(web, donation).json()["outcome"] == "ignored"

    bodies = {event.outcome: event.body_bytes() for event in WebhookEvent.objects.all()}
    assert bodies == {"rejected": forged, "ignored": donation}


@pytest.mark.parametrize(
    ("codec", "kept_as"),
    [("utf-8-sig", "utf-8"), ("utf-16", "base64"), ("utf-16-le", "base64"), ("utf-32", "base64")],
)
def test_a_body_in_any_encoding_json_reads_is_given_back_whole(athm, web, received, codec, kept_as):
    """A byte order mark stays in the text; bytes that are not UTF-8 are kept as base64."""
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    body = json.dumps(sandbox.webhook_payload(str(payment.pk))).encode(codec)

    assert post(web, body).json()["outcome"] == "applied"

    event = WebhookEvent.objects.get()
    assert event.body_encoding == kept_as and event.body_bytes() == body


def test_a_body_of_64_kib_is_kept_whole(athm, web):
    body = b'{"transactionType": "payment", "message": ""}'
    body = body[:-1] + b" " * (inbox.MAX_BODY_BYTES - len(body)) + b"}"
    assert len(body) == inbox.MAX_BODY_BYTES

    assert post(web, body).status_code == 200

    assert WebhookEvent.objects.get().body_bytes() == body


def test_a_duplicate_keeps_the_first_body(athm, web, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    first = completion_bytes(payment, sandbox)
    post(web, first)

    assert post(web, json.dumps(json.loads(first)).encode()).json()["duplicate"] is True

    event = WebhookEvent.objects.get()
    assert event.deliveries == 2 and event.body_bytes() == first


def test_the_admin_shows_the_body_as_received_beside_the_payload(athm, web, admin_client):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    post(web, completion_bytes(payment, sandbox))
    simulated = json.dumps({"transactionType": "simulated"}).encode("utf-32")
    assert post(web, simulated).status_code == 200
    utf8, utf32 = sorted(
        WebhookEvent.objects.all(), key=lambda event: event.body_encoding != "utf-8"
    )

    page = admin_client.get(f"/admin/athm_sync/webhookevent/{utf8.pk}/change/").content.decode()
    other = admin_client.get(f"/admin/athm_sync/webhookevent/{utf32.pk}/change/").content.decode()

    raw = page.split('<pre class="athm-raw">')[1].split("</pre>")[0]
    assert raw == escape(utf8.body)  # every space, line end and escape, HTML-escaped only
    assert "&quot;total&quot; : 10.00," in raw and "R\\u00edos" in raw
    assert "exactly as received" in page and "athm_sync/admin.css" in page
    assert "&quot;total&quot;: 10.0," in page  # the parsed payload, beside it
    assert "not UTF-8: shown as base64" in other and utf32.body in other


# -- ATH Móvil down ------------------------------------------------------------------------


@pytest.fixture
def short_budget(settings):
    """The view gives ATH Móvil 0.2 s; a "timeout" fault makes it run out."""
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_VERIFY_TIMEOUT": 0.2}


def left_pending(sandbox, web) -> Payment:
    """A payment completed at ATH Móvil whose webhook the view could not verify in time."""
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    sandbox.inject_fault("timeout", "findPayment", times=1, delay=2.0)
    assert post(web, sandbox.webhook_payload(str(payment.pk))).json()["outcome"] == "pending"
    return payment


def webhook_counts(**counts: int) -> dict[str, int]:
    """The ``webhooks`` key of ``--json``: the given counts, the others 0."""
    return {
        **dict.fromkeys(["applied", "unchanged", "rejected", "ignored", "pending"], 0),
        **counts,
    }


def test_api_down_answers_200_keeps_the_event_pending_and_the_next_run_applies_it(
    athm, web, received, short_budget
):
    sandbox = athm
    sandbox.reset_counts()

    payment = left_pending(sandbox, web)

    assert find_calls(sandbox) == 1  # the budget left no time for a retry
    assert reload(payment).status == S.OPEN and names(received) == []
    event = WebhookEvent.objects.get()
    assert event.outcome == "pending" and "could not verify" in event.reason
    assert event.processing_until is None  # free for the run to take

    # Only the inbox is due.
    Payment.objects.filter(pk=payment.pk).update(next_check_at=later(86400))
    summary = run_sync()

    assert summary["webhooks"] == webhook_counts(applied=1)
    assert summary["transitions"]["completed"] == 1 and summary["signals_sent"] == 1
    assert reload(payment).status == S.COMPLETED
    assert names(received) == ["payment_completed"]
    assert WebhookEvent.objects.get().outcome == "applied"
    assert run_sync()["webhooks"]["applied"] == 0  # processed once


def test_pending_events_come_before_the_poll_and_the_poll_adds_no_second_signal(
    athm, web, received, short_budget
):
    left_pending(athm, web)

    summary = run_sync()  # the payment is due too: the inbox goes first, the poll sees no change

    assert summary["webhooks"]["applied"] == 1 and summary["checked"] == 0
    assert names(received) == ["payment_completed"]
    assert PaymentEvent.objects.get().source == "webhook"


def run_sync() -> dict:
    """``athm_sync --json`` in this process; its summary (the run must exit 0)."""
    code, out, err = call("athm_sync", "--json")
    assert code == 0, err
    return json.loads(out)


# -- bad requests: their status codes, and nothing stored ----------------------------------


def test_a_wrong_token_is_404_and_stores_nothing(athm, web, received):
    body = {"transactionType": "ecommerce", "status": "completed", "ecommerceId": str(uuid.uuid4())}
    for token in ["x" * 40, "w" * 39, "w" * 41, SECRET.upper()]:
        url = reverse("athm_sync:webhook", kwargs={"token": token})
        assert web.post(url, json.dumps(body), content_type="application/json").status_code == 404
    assert not WebhookEvent.objects.exists()


def test_no_secret_configured_turns_the_view_off(athm, web, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_SECRET": ""}
    assert post(web, {"transactionType": "payment"}).status_code == 404
    empty = reverse("athm_sync:webhook", kwargs={"token": "-"}).replace("/-/", "//")
    assert web.post(empty, "{}", content_type="application/json").status_code == 404
    assert not WebhookEvent.objects.exists()


def test_a_bad_setting_is_404_not_500(athm, web, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_SECRET": 12}
    assert post(web, {"transactionType": "payment"}).status_code == 404


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "head", "options"])
def test_methods_other_than_post_are_405(athm, web, method):
    response = getattr(web, method)(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert not WebhookEvent.objects.exists()


def test_a_body_over_64_kib_is_413_and_stores_nothing(athm, web):
    padding = "x" * (64 * 1024)
    response = post(web, {"transactionType": "payment", "message": padding})
    assert response.status_code == 413
    assert response.json() == {"error": "the body is over 64 KiB"}
    # Just under the limit is fine.
    body = {"transactionType": "payment", "message": ""}
    body["message"] = "x" * (64 * 1024 - len(json.dumps(body)))
    assert post(web, body).status_code == 200
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is not JSON"),
        (b"status=completed", "the body is not JSON"),
        (b"\xff\xfe{}", "the body is not JSON"),
        (b'{"transactionType": "ecommerce",', "the body is not JSON"),
        (b"[]", "the body is not a JSON object"),
        (b'"ecommerce"', "the body is not a JSON object"),
        (b"null", "the body is not a JSON object"),
        (b'{"total": NaN, "transactionType": "payment"}', "NaN"),
        (b'{"total": -Infinity, "transactionType": "payment"}', "-Infinity"),
        (b'{"total": 1e999, "transactionType": "payment"}', "too large to store"),
        (b'{"transactionType": "payment", "name": "a\\u0000b"}', "NUL"),
        (b'{"transactionType": "payment", "name": "\\ud800"}', "surrogate"),
        (b'{"transactionType": "payment", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        (b"[" * 100000 + b"]" * 100000, "over 64 KiB"),
        (b"{}", "transactionType is missing"),
        (b'{"transactionType": "transfer"}', "transactionType 'transfer' is not one of"),
        (b'{"transactionType": {"a": 1}}', "transactionType must be text"),
        (b'{"transactionType": "ecommerce", "status": "completed"}', "ecommerceId is missing"),
        (
            b'{"transactionType": "ecommerce", "status": "completed", "total": 0}',
            "total must be more than 0",
        ),
        (b'{"transactionType": "ecommerce", "total": 3}', "status is missing"),
        (
            b'{"transactionType": "ecommerce", "status": "completed", "ecommerceId": "42"}',
            "ecommerceId must be a UUID",
        ),
        (
            b'{"transactionType": "ecommerce", "ecommerceId": "%s"}' % str(uuid.uuid4()).encode(),
            "status is missing",
        ),
        (
            b'{"transactionType": "ecommerce", "status": "OPEN", "ecommerceId": "%s"}'
            % str(uuid.uuid4()).encode(),
            "status 'OPEN' is not completed, cancelled or expired",
        ),
        (
            b'{"transactionType": "ecommerce", "status": "done", "ecommerceId": "%s"}'
            % str(uuid.uuid4()).encode(),
            "is not a known ATH Móvil status",
        ),
        (
            b'{"transactionType": "ecommerce", "status": "completed", "ecommerceId": "%s",'
            b' "total": "ten"}' % str(uuid.uuid4()).encode(),
            "total must be an amount",
        ),
        (
            b'{"transactionType": "ecommerce", "status": "completed", "ecommerceId": "%s",'
            b' "total": 1e20}' % str(uuid.uuid4()).encode(),
            "more than any payment can hold",
        ),
        (
            b'{"transactionType": "refund", "referenceNumber": "1", "total": "1e400"}',
            "more than any payment can hold",
        ),
        (b'{"transactionType": "refund", "total": 3}', "referenceNumber is missing"),
        (b'{"transactionType": "refund", "referenceNumber": "1-2"}', "must be more than 0"),
        (b'{"transactionType": "refund", "referenceNumber": ["1"], "total": 1}', "must be text"),
        (
            b'{"transactionType": "refund", "referenceNumber": "1", "total": "%s"}' % (b"9" * 40,),
            "more than any payment can hold",
        ),
    ],
)
def test_bodies_of_the_wrong_shape_are_400_with_a_reason_and_store_nothing(athm, web, body, reason):
    response = post(web, body)

    expected = 413 if reason == "over 64 KiB" else 400
    assert response.status_code == expected
    assert reason in response.json()["error"]
    assert len(response.json()["error"]) < 120  # short: it is for a person reading a log
    assert not WebhookEvent.objects.exists()


# -- no body ever gets a 500 ---------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_known_keys = st.sampled_from(
    [
        "transactionType",
        "status",
        "ecommerceId",
        "referenceNumber",
        "total",
        "dailyTransactionID",
        "date",
        "phoneNumber",
        "items",
    ]
)
_field_values = (
    _json
    | st.sampled_from(["ecommerce", "ECOMMERCE", "refund", "payment", "completed", "CANCEL"])
    | st.uuids().map(str)
    | st.decimals(allow_nan=True).map(str)
)
_webhook_like = st.dictionaries(_known_keys, _field_values, max_size=9)
_numbers = (
    st.integers()
    | st.floats()
    | st.decimals(allow_nan=False).map(str)
    | st.sampled_from(["1e400", "-0", "3.005", "$1,500.00", " 12 ", "0x10", "1_000"])
)
# Well-formed but for one or two fields, which get anything: deep in the parser, not at its door.
_nearly_right = st.fixed_dictionaries(
    {
        "transactionType": st.sampled_from(["ecommerce", "ECOMMERCE", "refund", "payment"]),
        "status": st.sampled_from(["completed", "CANCEL", "expired", "Completed "]) | _json,
        "ecommerceId": st.uuids().map(str) | _json,
        "referenceNumber": st.just("215070443-402894c1 ") | _json,
        "total": _numbers | _json,
    },
    optional={
        "dailyTransactionID": _numbers | _json,
        "date": st.just("2023-01-13 16:17:06.0") | _json,
        "phoneNumber": _numbers | _json,
        "items": st.just('[{"name": "Tee"}]') | _json,
    },
)


_hypothesis = hypothesis_settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_answered_without_a_crash(web: Client, body) -> None:
    """Django's test client re-raises any exception a view lets escape, so a crash fails."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = post(web, data)
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["error"]


@pytest.mark.django_db(transaction=False)
@_hypothesis
@given(body=_webhook_like | _json | st.binary(max_size=64))
def test_no_body_ever_gets_a_500(athm, web, body):
    assert_answered_without_a_crash(web, body)


@pytest.mark.django_db(transaction=False)
@_hypothesis
@given(body=_nearly_right)
def test_no_nearly_right_webhook_gets_a_500(athm, web, body):
    """Bodies that pass the first checks, so the odd values reach the parser's depths."""
    assert_answered_without_a_crash(web, body)


def test_parse_reads_every_quirk_into_one_notice():
    ecommerce_id = uuid.uuid4()
    notice = inbox.parse(
        {
            "transactionType": "ECOMMERCE",
            "status": "CANCEL",
            "ecommerceId": f" {str(ecommerce_id).upper()} ",
            "referenceNumber": "215070443-abc ",
            "total": "3.005",
        }
    )
    assert notice.transaction_type == "ecommerce" and notice.status == "cancelled"
    assert notice.ecommerce_id == ecommerce_id and notice.reference_number == "215070443-abc"
    assert notice.amount == Decimal("3.01")
    assert notice.idempotency_key == f"ecommerce:{ecommerce_id}:cancelled"


def test_the_admin_shows_the_inbox_read_only(athm, web, received, admin_client):
    sandbox = athm
    payment = track(sandbox)
    post(web, sandbox.webhook_payload(str(payment.pk), "completed"))  # forged: rejected
    event = WebhookEvent.objects.get()

    listing = admin_client.get("/admin/athm_sync/webhookevent/", {"outcome__exact": "rejected"})
    page = admin_client.get(f"/admin/athm_sync/webhookevent/{event.pk}/change/")

    assert listing.status_code == 200 and str(payment.pk) in listing.content.decode()
    assert page.status_code == 200
    assert "ATH Móvil says OPEN" in page.content.decode()
    assert admin_client.get("/admin/athm_sync/webhookevent/add/").status_code == 403


def test_an_unexpected_failure_after_storing_answers_200_and_the_run_finishes_it(
    athm, web, received, monkeypatch, caplog
):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    real_apply = reconcile.apply

    def broken_apply(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reconcile, "apply", broken_apply)
    response = post(web, sandbox.webhook_payload(str(payment.pk)))

    event = WebhookEvent.objects.get()
    assert response.status_code == 200
    assert response.json() == {"outcome": "pending", "event": event.pk, "duplicate": False}
    assert "could not be processed; it stays pending" in caplog.text
    assert event.outcome == "pending" and event.processing_until is None  # released
    assert names(received) == []

    monkeypatch.setattr(reconcile, "apply", real_apply)
    assert run_sync()["webhooks"]["applied"] == 1
    assert names(received) == ["payment_completed"]


def test_an_event_held_by_a_verifier_that_died_waits_for_its_lease(athm, web, received):
    """A process killed mid-verification leaves its claim; the run takes the event only once
    the lease has run out, so a slow verifier still alive is never doubled."""
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    notice = inbox.parse(sandbox.webhook_payload(str(payment.pk)))
    inbox.record(notice, claim_until=clock.now() + timedelta(minutes=1))  # then "killed"
    Payment.objects.filter(pk=payment.pk).update(next_check_at=later(86400))

    assert run_sync()["webhooks"]["applied"] == 0
    WebhookEvent.objects.update(processing_until=clock.now() - timedelta(seconds=1))
    assert run_sync()["webhooks"]["applied"] == 1
    assert names(received) == ["payment_completed"]


def test_a_webhook_ahead_of_find_payment_for_an_untracked_payment_loses_nothing(
    athm, web, received
):
    """Rejected (ATH Móvil still says OPEN), but the payment is real and ours: it is tracked,
    and the poll fires its signal once ATH Móvil catches up."""
    sandbox = athm
    ecommerce_id, _ = sandbox.create_payment("12.00", metadata1="order-88")

    response = post(web, sandbox.webhook_payload(ecommerce_id, "completed"))

    assert response.json()["outcome"] == "rejected"
    payment = Payment.objects.get(pk=ecommerce_id)
    assert payment.status == S.OPEN and payment.metadata_1 == "order-88"
    assert "now tracked" in WebhookEvent.objects.get().reason
    assert names(received) == []

    sandbox.complete(ecommerce_id)
    assert run_sync()["transitions"]["completed"] == 1
    assert names(received) == ["payment_completed"]


def test_a_run_with_ath_movil_still_down_tries_one_pending_event_not_all(
    athm, web, received, short_budget
):
    sandbox = athm
    for _ in range(3):
        left_pending(sandbox, web)
    Payment.objects.update(next_check_at=later(86400))  # only the inbox is due
    sandbox.inject_fault("http503", "findPayment", times=100)
    sandbox.reset_counts()

    summary = run_sync()

    assert summary["webhooks"] == webhook_counts(pending=3)
    assert find_calls(sandbox) <= 3  # MAX_ATTEMPTS for the first event, none for the others
    sandbox.clear_faults()
    assert run_sync()["webhooks"] == webhook_counts(applied=3)
    assert names(received) == ["payment_completed"] * 3


def test_a_sender_that_hangs_up_mid_body_gets_400_and_stores_nothing(athm, rf):
    class HungUp:
        def read(self, *args):
            raise OSError("connection reset by peer")

    request = rf.post(URL, b"{}", content_type="application/json")
    request._stream = HungUp()

    response = views.webhook(request, SECRET)

    assert response.status_code == 400
    assert json.loads(response.content) == {"error": "the body could not be read"}
    assert not WebhookEvent.objects.exists()


def test_a_database_that_cannot_store_the_event_is_503_not_500(athm, web, monkeypatch):
    def database_down(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(WebhookEvent.objects, "create", database_down)

    response = post(web, {"transactionType": "payment", "referenceNumber": "1-2"})

    assert response.status_code == 503
    assert response.json() == {"error": "the event could not be stored; send it again later"}


# -- eCommerce webhooks without an ecommerceId (Evertec's documented shape) ----------------


@pytest.mark.parametrize("name", documented.ECOMMERCE)
def test_each_documented_ecommerce_sample_checks_and_transitions_its_payment(
    athm, web, received, time_machine, name
):
    """Evertec's samples, verbatim: no ecommerceId, so their total and metadata find the
    payment, which findPayment verifies before anything changes."""
    sandbox = athm
    payment = documented.arrange_ecommerce(sandbox, name, time_machine)
    other = track(sandbox, total="3.00")  # same total, other metadata: not the sample's
    sandbox.reset_counts()

    response = post(web, documented.sample(name))

    _, status, signal = documented.OUTCOMES[name]
    event = WebhookEvent.objects.get()
    assert response.status_code == 200
    assert response.json() == {"outcome": "applied", "event": event.pk, "duplicate": False}
    assert reload(payment).status == status
    assert names(received) == [signal]
    assert received[0][2]["payment"].pk == payment.pk
    assert find_calls(sandbox) == 1  # the one payment the sample can be
    assert reload(other).status == S.OPEN and reload(other).check_count == 0
    assert event.ecommerce_id is None and event.payment_id == payment.pk
    assert event.payload == documented.sample(name)  # stored as received
    assert PaymentEvent.objects.get().source == "webhook"


def test_the_documented_refund_sample_takes_the_refund_path(athm, web, received):
    sandbox = athm
    payment = documented.arrange_refund(sandbox)
    received.clear()

    response = post(web, documented.sample("refund"))

    assert response.json()["outcome"] == "applied"
    assert names(received) == ["refund_sent"]
    refund = Refund.objects.get()
    assert refund.payment_id == payment.pk and refund.amount == Decimal("1.00")
    assert WebhookEvent.objects.get().payment_id == payment.pk


@pytest.mark.parametrize("name", documented.IGNORED)
def test_the_documented_payment_donation_and_simulated_samples_are_ignored(
    athm, web, received, name
):
    sandbox = athm
    track(sandbox, total="1.00")
    sandbox.reset_counts()

    response = post(web, documented.sample(name))

    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert sum(sandbox.counts().values()) == 0 and names(received) == []


def documented_webhook(sandbox, payment: Payment, status: str | None = None) -> dict:
    """The sandbox's webhook for ``payment`` in Evertec's documented shape (no ecommerceId)."""
    sandbox.state.webhook_shape = "documented"
    body = sandbox.webhook_payload(str(payment.pk), status)
    assert "ecommerceId" not in body
    return body


def open_payment(sandbox, total: str = "10.00", metadata_1: str = "", **created) -> Payment:
    ecommerce_id, _ = sandbox.create_payment(total, metadata1=metadata_1)
    return Payment.objects.track(ecommerce_id, total=total, metadata_1=metadata_1, **created)


def test_only_the_payment_whose_stored_metadata_matches_is_checked(athm, web, received):
    sandbox = athm
    ours = open_payment(sandbox, metadata_1="order-1")
    theirs = open_payment(sandbox, metadata_1="order-2")  # same total, newer
    sandbox.complete(str(ours.pk))
    body = documented_webhook(sandbox, ours)
    sandbox.reset_counts()

    assert post(web, body).json()["outcome"] == "applied"

    assert find_calls(sandbox) == 1
    assert reload(ours).status == S.COMPLETED and names(received) == ["payment_completed"]
    assert reload(theirs).check_count == 0


def test_the_candidates_are_the_open_payments_it_can_be_most_recent_first(athm, time_machine):
    sandbox = athm
    time_machine.move_to(documented.MOMENT - timedelta(minutes=30), tick=False)
    too_old = open_payment(sandbox, total="3.00")  # created 30 minutes before the date
    time_machine.move_to(documented.MOMENT - timedelta(minutes=2), tick=False)
    blank = open_payment(sandbox, total="3.00")  # no metadata stored: it can be any
    time_machine.move_to(documented.MOMENT - timedelta(minutes=1), tick=False)
    matching = open_payment(sandbox, total="3.00", metadata_1="This is metadata1")
    open_payment(sandbox, total="3.00", metadata_1="another order")
    open_payment(sandbox, total="4.00", metadata_1="This is metadata1")
    cancelled = open_payment(sandbox, total="3.00")
    Payment.objects.filter(pk=cancelled.pk).update(status=S.CANCEL)
    given_up = open_payment(sandbox, total="3.00")
    Payment.objects.filter(pk=given_up.pk).update(given_up_at=clock.now())
    event, _ = inbox.record(inbox.parse(documented.sample("ecommerce_completed")))

    assert list(inbox.candidates(event)) == [matching, blank]

    # Undated, or dated where no clock goes: the date narrows nothing.
    for date in ["", "9999-12-31 23:59:59"]:
        undated = {**documented.sample("ecommerce_completed"), "date": date}
        event, _ = inbox.record(inbox.parse(undated))
        assert list(inbox.candidates(event)) == [matching, blank, too_old]


def test_more_candidates_than_the_bound_are_checked_up_to_it_and_the_rest_made_due(
    athm, web, received
):
    sandbox = athm
    payments = [open_payment(sandbox, created_at=later(-60 + i)) for i in range(8)]
    oldest = payments[0]  # the one ATH Móvil completed: the last in line
    sandbox.complete(str(oldest.pk))
    Payment.objects.update(next_check_at=later(86400))  # none due for the poll
    body = documented_webhook(sandbox, oldest)
    sandbox.reset_counts()

    response = post(web, body)

    assert find_calls(sandbox) == inbox.MAX_CANDIDATE_CHECKS == 5
    assert response.json()["outcome"] == "rejected"  # none of those checked has completed
    assert WebhookEvent.objects.get().reason == (
        "the webhook says completed but ATH Móvil says OPEN; "
        "checked 5 payments it can be; 3 more made due for the next run"
    )
    assert set(Payment.objects.due(later(1))) == set(payments[:3])  # the oldest three
    assert names(received) == []

    summary = run_sync()  # the poll checks what was made due, and finds the completion

    assert summary["checked"] == 3 and summary["transitions"]["completed"] == 1
    assert reload(oldest).status == S.COMPLETED and names(received) == ["payment_completed"]


def test_a_completion_found_under_its_reference_number_ends_the_look(athm, web, received):
    sandbox = athm
    oldest, paid, newest = (open_payment(sandbox, created_at=later(-60 + i)) for i in range(3))
    sandbox.complete(str(paid.pk))
    body = documented_webhook(sandbox, paid)
    sandbox.reset_counts()

    assert post(web, body).json()["outcome"] == "applied"

    assert find_calls(sandbox) == 2  # the newest (still OPEN), then the one it is about
    assert reload(paid).status == S.COMPLETED and names(received) == ["payment_completed"]
    assert reload(newest).check_count == 1 and reload(oldest).check_count == 0
    assert WebhookEvent.objects.get().reason == (
        f"completed ({paid.pk}); checked 2 of the 3 payments it can be"
    )


def test_a_forged_webhook_without_an_id_changes_nothing(athm, web, received):
    sandbox = athm
    payment = open_payment(sandbox, metadata_1="order-7")  # ATH Móvil says OPEN
    body = documented_webhook(sandbox, payment, "completed")

    response = post(web, body)

    assert response.status_code == 200 and response.json()["outcome"] == "rejected"
    assert reload(payment).status == S.OPEN
    assert not PaymentEvent.objects.exists() and names(received) == []
    assert WebhookEvent.objects.get().reason == (
        "the webhook says completed but ATH Móvil says OPEN; checked 1 payment it can be"
    )


def test_the_same_webhook_without_an_id_twice_fires_once(athm, web, received):
    sandbox = athm
    payment = open_payment(sandbox, metadata_1="order-7")
    sandbox.complete(str(payment.pk))
    body = documented_webhook(sandbox, payment)
    assert post(web, body).json()["outcome"] == "applied"
    sandbox.reset_counts()

    again = post(web, body).json()

    assert again["duplicate"] is True and again["outcome"] == "applied"
    assert names(received) == ["payment_completed"]
    assert find_calls(sandbox) == 0
    assert WebhookEvent.objects.get().deliveries == 2


def test_a_webhook_without_an_id_that_no_payment_can_be_is_recorded_as_ignored(
    athm, web, received, admin_client
):
    sandbox = athm
    open_payment(sandbox, total="3.00", metadata_1="another order")
    sandbox.reset_counts()

    response = post(web, documented.sample("ecommerce_completed"))

    event = WebhookEvent.objects.get()
    assert response.status_code == 200
    assert response.json() == {"outcome": "ignored", "event": event.pk, "duplicate": False}
    assert find_calls(sandbox) == 0
    assert event.reason.startswith(
        "no OPEN or CONFIRM payment can be it (total 3.00, metadata1 'This is metadata1', "
        "metadata2 'This is metadata2')"
    )
    listing = admin_client.get("/admin/athm_sync/webhookevent/", {"outcome__exact": "ignored"})
    page = admin_client.get(f"/admin/athm_sync/webhookevent/{event.pk}/change/")
    assert listing.status_code == 200 and "Ignored" in listing.content.decode()
    assert "no OPEN or CONFIRM payment can be it" in page.content.decode()


def test_a_completion_the_poll_already_stored_is_found_by_its_reference_number(athm, web, received):
    sandbox = athm
    payment = open_payment(sandbox)
    sandbox.complete(str(payment.pk))
    reconcile.check_payment(payment.pk, source="poll")
    open_payment(sandbox)  # same total, still open: not what the webhook is about
    received.clear()
    body = documented_webhook(sandbox, payment)
    sandbox.reset_counts()

    response = post(web, body)

    assert response.json()["outcome"] == "unchanged"
    assert find_calls(sandbox) == 1  # the completed payment, not the open one
    assert WebhookEvent.objects.get().payment_id == payment.pk
    assert names(received) == []


def test_a_webhook_without_an_id_breaks_the_cancel_tie_only_for_the_one_cancel_seen(
    athm, web, received, time_machine
):
    """An "expired" 20 s before the deadline: believed when one payment it can be says
    CANCEL; when two do, it cannot say which, and the deadline decides for both."""
    sandbox = athm
    alone = open_payment(sandbox, total="5.00")
    first, second = open_payment(sandbox, total="7.00"), open_payment(sandbox, total="7.00")
    for payment in (alone, first, second):
        sandbox.cancel(str(payment.pk))
    time_machine.move_to(alone.expires_at - timedelta(seconds=20), tick=False)

    assert post(web, documented_webhook(sandbox, alone, "expired")).json()["outcome"] == "applied"
    assert post(web, documented_webhook(sandbox, first, "expired")).json()["outcome"] == "applied"

    assert reload(alone).status == S.EXPIRED
    assert (reload(first).status, reload(second).status) == (S.CANCEL, S.CANCEL)
    assert sorted(names(received)) == ["payment_cancelled"] * 2 + ["payment_expired"]


def test_a_webhook_without_an_id_waits_pending_while_ath_movil_is_down(
    athm, web, received, short_budget
):
    sandbox = athm
    payment = open_payment(sandbox, metadata_1="order-7")
    sandbox.complete(str(payment.pk))
    sandbox.inject_fault("http503", "findPayment", times=100)

    assert post(web, documented_webhook(sandbox, payment)).json()["outcome"] == "pending"
    assert reload(payment).status == S.OPEN and names(received) == []

    sandbox.clear_faults()
    Payment.objects.filter(pk=payment.pk).update(next_check_at=later(86400))
    assert run_sync()["webhooks"] == webhook_counts(applied=1)
    assert reload(payment).status == S.COMPLETED and names(received) == ["payment_completed"]
