"""Old history is pruned by the sync itself, a bounded batch per run; money rows never are."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from athm_sync import clock, retention
from athm_sync.conf import get_settings
from athm_sync.models import Payment, PaymentEvent, Refund, SyncRun, WebhookEvent
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)


def history(sandbox, count: int) -> None:
    """``count`` refunded payments with their events, webhook events and runs."""
    for n in range(count):
        ecommerce_id, _ = sandbox.create_payment("10.00")
        sandbox.complete(ecommerce_id)
        sandbox.refund(ecommerce_id, "1.00")
        Payment.objects.track(ecommerce_id, total="10.00")
        WebhookEvent.objects.create(
            payload={}, transaction_type="payment", idempotency_key=f"old-{n}", outcome="ignored"
        )
    call("athm_sync")


def test_a_run_prunes_old_history_and_keeps_payments_and_refunds(athm_settings, time_machine):
    sandbox = athm_settings
    history(sandbox, 5)
    assert PaymentEvent.objects.count() == 10 and SyncRun.objects.count() == 1
    time_machine.move_to(clock.now() + timedelta(days=91), tick=False)

    code, out, _ = call("athm_sync", "--json")

    assert code == 0
    assert json.loads(out)["pruned"] == {"webhook_events": 5, "payment_events": 10, "sync_runs": 1}
    assert not WebhookEvent.objects.exists() and not PaymentEvent.objects.exists()
    assert SyncRun.objects.count() == 1  # this run's own row
    assert Payment.objects.count() == 5 and Refund.objects.count() == 5
    assert Refund.objects.filter(amount=Decimal("1.00")).count() == 5


def test_pending_and_unsent_rows_are_never_pruned(athm_settings):
    payment = Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5.00"))
    pending = WebhookEvent.objects.create(
        payload={}, transaction_type="ecommerce", idempotency_key="pending"
    )
    unsent = PaymentEvent.objects.create(payment=payment, kind="completed")
    SyncRun.objects.create()  # never finished: it died, long before the cutoff

    pruned = retention.prune(get_settings(), clock.now() + timedelta(days=365))

    assert pruned == {"webhook_events": 0, "payment_events": 0, "sync_runs": 1}
    assert WebhookEvent.objects.get() == pending and PaymentEvent.objects.get() == unsent


def test_pruning_is_bounded_per_run(athm_settings, time_machine):
    for n in range(25):
        WebhookEvent.objects.create(
            payload={}, transaction_type="donation", idempotency_key=f"d-{n}", outcome="ignored"
        )
    now = clock.now() + timedelta(days=91)
    conf = get_settings()

    first = retention.prune(conf, now, batch=10)
    second = retention.prune(conf, now, batch=10)
    third = retention.prune(conf, now, batch=10)

    assert [first["webhook_events"], second["webhook_events"], third["webhook_events"]] == [
        10,
        10,
        5,
    ]
    assert not WebhookEvent.objects.exists()
    assert retention.prune(conf, now, batch=10) == {
        "webhook_events": 0,
        "payment_events": 0,
        "sync_runs": 0,
    }


def test_nothing_younger_than_the_retention_is_pruned(athm_settings, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "HISTORY_RETENTION": timedelta(days=7)}
    history(athm_settings, 2)

    pruned = retention.prune(get_settings(), clock.now() + timedelta(days=6))

    assert pruned == {"webhook_events": 0, "payment_events": 0, "sync_runs": 0}
    assert retention.prune(get_settings(), clock.now() + timedelta(days=8))["sync_runs"] == 1


def test_pruning_webhook_events_deletes_their_bodies_without_reading_them(athm_settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(3):
        WebhookEvent.objects.create(
            payload={"message": "x" * 60_000},
            body='{"message": "' + "x" * 60_000 + '"}',
            transaction_type="payment",
            idempotency_key=f"big-{n}",
            outcome="ignored",
        )

    with CaptureQueriesContext(connection) as context:
        pruned = retention.prune(get_settings(), clock.now() + timedelta(days=91))

    assert pruned["webhook_events"] == 3 and not WebhookEvent.objects.exists()
    read = [query["sql"] for query in context.captured_queries if "webhookevent" in query["sql"]]
    assert not any('"body"' in sql or '"payload"' in sql for sql in read), read
