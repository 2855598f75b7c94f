"""The admin, through the Django test client as a staff user with view permissions."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from athm_sync.models import Payment, PaymentEvent, Refund, SyncRun, WebhookEvent
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELISTS = ("payment", "refund", "paymentevent", "receiverdelivery", "syncrun", "webhookevent")
WEBHOOK = f"/athm/webhook/{'w' * 40}/"  # tests/settings.py's secret


def settle(sandbox, count: int) -> None:
    """``count`` payments completed, refunded, webhooked and run: a row in every table."""
    for _ in range(count):
        ecommerce_id, _ = sandbox.create_payment("10.00")
        sandbox.complete(ecommerce_id)
        sandbox.refund(ecommerce_id, "1.00")
        Payment.objects.track(ecommerce_id, total="10.00")
        body = json.dumps(sandbox.webhook_payload(ecommerce_id))
        Client().post(WEBHOOK, body, content_type="application/json")
    call("athm_sync")


def changelist_queries(client, name: str) -> int:
    with CaptureQueriesContext(connection) as context:
        response = client.get(f"/admin/athm_sync/{name}/")
    assert response.status_code == 200, name
    return len(context.captured_queries)


def test_every_changelist_takes_the_same_queries_however_many_rows(athm_settings, staff):
    sandbox = athm_settings
    settle(sandbox, 2)
    few = {name: changelist_queries(staff, name) for name in CHANGELISTS}
    settle(sandbox, 18)
    many = {name: changelist_queries(staff, name) for name in CHANGELISTS}

    assert Payment.objects.count() == 20 and Refund.objects.count() == 20
    assert PaymentEvent.objects.count() == 40 and WebhookEvent.objects.count() == 20
    assert many == few, (few, many)
    print(f"\nadmin changelist queries: {few}")


def test_the_pages_show_what_happened(athm_settings, staff):
    sandbox = athm_settings
    settle(sandbox, 1)
    payment = Payment.objects.get()
    event = WebhookEvent.objects.get()
    run = SyncRun.objects.first()

    listing = staff.get("/admin/athm_sync/payment/", {"q": payment.reference_number})
    assert str(payment.pk) in listing.content.decode()
    filtered = staff.get("/admin/athm_sync/payment/", {"status__exact": "COMPLETED"})
    assert str(payment.pk) in filtered.content.decode()
    page = staff.get(f"/admin/athm_sync/webhookevent/{event.pk}/change/").content.decode()
    assert "<pre>" in page and "&quot;transactionType&quot;: &quot;ecommerce&quot;" in page
    runs = staff.get("/admin/athm_sync/syncrun/").content.decode()
    assert " s</td>" in runs and str(run.checked) in runs
    events = staff.get("/admin/athm_sync/paymentevent/").content.decode()
    assert "refund_sent" in events or "Refund sent" in events
    assert staff.get("/admin/athm_sync/syncrun/add/").status_code == 403


def test_a_receiver_error_is_shown_on_its_event(athm_settings, staff):
    from athm_sync import signals

    def broken(sender, payment, **kwargs):
        raise RuntimeError("the shop's mailer is down")

    signals.payment_completed.connect(broken, weak=False)
    try:
        settle(athm_settings, 1)
    finally:
        signals.payment_completed.disconnect(broken)
    event = PaymentEvent.objects.get(kind="completed")

    page = staff.get(f"/admin/athm_sync/paymentevent/{event.pk}/change/").content.decode()

    assert "the shop&#x27;s mailer is down" in page and "broken" in page


def test_check_now_asks_ath_movil_through_sync_payment(athm_settings, staff, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    payment = Payment.objects.track(ecommerce_id, total="10.00")
    sandbox.complete(ecommerce_id)

    done = staff.post(
        "/admin/athm_sync/payment/",
        {"action": "check_now", "_selected_action": [str(payment.pk)]},
        follow=True,
    )

    assert "Checked 1 payment(s); 1 changed." in done.content.decode()
    assert Payment.objects.get().status == "COMPLETED"
    assert [name for name, _, _ in received] == ["payment_completed"]
    assert PaymentEvent.objects.get().source == "admin"


def test_reprocess_verifies_a_rejected_webhook_again(athm_settings, staff, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    Payment.objects.track(ecommerce_id, total="10.00")
    body = json.dumps(sandbox.webhook_payload(ecommerce_id, "completed"))
    Client().post(WEBHOOK, body, content_type="application/json")
    event = WebhookEvent.objects.get()
    assert event.outcome == "rejected"  # ATH Móvil still said OPEN
    sandbox.complete(ecommerce_id)

    done = staff.post(
        "/admin/athm_sync/webhookevent/",
        {"action": "reprocess", "_selected_action": [str(event.pk)]},
        follow=True,
    )

    assert "Reprocessed: 1 applied." in done.content.decode()
    assert Payment.objects.get().status == "COMPLETED"
    assert [name for name, _, _ in received] == ["payment_completed"]


def test_check_now_refuses_too_many_at_once(athm_settings, staff):
    for _ in range(21):
        Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5.00"))
    athm_settings.reset_counts()

    done = staff.post(
        "/admin/athm_sync/payment/",
        {"action": "check_now", "select_across": "1", "_selected_action": ["x"], "index": "0"},
        follow=True,
    )

    assert "Select at most 20 payments" in done.content.decode()
    assert athm_settings.counts()["findPayment"] == 0
    assert Payment.objects.filter(check_count=0).count() == 21
