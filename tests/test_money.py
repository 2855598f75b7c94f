"""Money safety end to end: a payment completes only for the money ATH Móvil holds for it, every
open row is followed however it was stored, and one bad answer never stops the rest.

Real components throughout: the sandbox ATH Móvil over HTTP (with its ``misroute`` and
``tamper`` controls for hostile answers), the real database (SQLite, or PostgreSQL with
DATABASE_URL), the real command, the webhook view over a live server. Time moves with
time-machine; nothing sleeps.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

import athm_sync
from athm_sync import clock
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment, PaymentEvent, WebhookEvent
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

S = Payment.Status
SECRET = "w" * 40  # tests/settings.py


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def reload(payment: Payment) -> Payment:
    return Payment.objects.get(pk=payment.pk)


def run(*args: str) -> tuple[int, dict, str]:
    """``athm_sync --json`` in this process: (exit code, summary, stderr)."""
    code, out, err = call("athm_sync", "--json", *args)
    return code, json.loads(out), err


def paid_at_ath(sandbox, total: str, metadata1: str = "") -> str:
    """A payment the customer paid at ATH Móvil (the browser chose ``total``)."""
    ecommerce_id, _ = sandbox.create_payment(total, metadata1=metadata1)
    sandbox.complete(ecommerce_id)
    return ecommerce_id


def later(seconds: float):
    return clock.now() + timedelta(seconds=seconds)


# -- 1. the answer is about this payment ---------------------------------------------------


def test_an_answer_about_another_payment_changes_nothing(athm_settings, received, caplog):
    sandbox = athm_settings
    asked, _ = sandbox.create_payment("100.00")  # the $100 order, never paid
    payment = Payment.objects.track(asked, total="100.00", metadata_1="order-100")
    sandbox.misroute(asked, paid_at_ath(sandbox, "100.00", "order-100"))  # a paid lookalike

    with caplog.at_level(logging.ERROR, logger="athm_sync.reconcile"):
        code, summary, _ = run()

    stored = reload(payment)
    assert code == 1
    assert summary["checked"] == 0 and summary["transitions"]["completed"] == 0
    (error,) = summary["errors"]
    assert error["ecommerce_id"] == asked and "is about payment" in error["reason"]
    assert stored.status == S.OPEN and names(received) == []
    assert "is about payment" in stored.last_error and stored.failures == 1
    assert stored.next_check_at >= later(9)  # rescheduled with backoff, not first in line
    assert asked in caplog.text and "not used" in caplog.text
    assert not PaymentEvent.objects.exists()

    outcome = athm_sync.sync_payment(asked)  # the shop's own door: same verdict
    assert "is about payment" in outcome.error and reload(payment).status == S.OPEN
    assert names(received) == []


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"total": -100}, "total is negative"),
        ({"fee": -0.5}, "fee is negative"),
        ({"netAmount": "-1.00"}, "net_amount is negative"),
        ({"totalRefundedAmount": -1}, "total_refunded_amount is negative"),
        ({"totalRefundedAmount": 150}, "exceeds the total"),
    ],
)
def test_an_answer_with_impossible_amounts_is_an_error(athm_settings, received, fields, problem):
    sandbox = athm_settings
    ecommerce_id = paid_at_ath(sandbox, "100.00")
    payment = Payment.objects.track(ecommerce_id, total="100.00")
    sandbox.tamper(ecommerce_id, **fields)

    code, summary, _ = run()

    assert code == 1 and problem in summary["errors"][0]["reason"]
    stored = reload(payment)
    assert stored.status == S.OPEN and problem in stored.last_error
    assert (stored.total_refunded_amount, stored.reference_number) == (Decimal("0.00"), "")
    assert names(received) == []


# -- 2. the money matches --------------------------------------------------------------------


def test_a_one_dollar_payment_tracked_as_a_hundred_is_held_not_completed(
    athm_settings, received, caplog
):
    """The customer pays $1.00 and hands its id to a $100 order."""
    sandbox = athm_settings
    ecommerce_id = paid_at_ath(sandbox, "1.00", "order-100")
    payment = Payment.objects.track(ecommerce_id, total="100.00", metadata_1="order-100")

    with caplog.at_level(logging.ERROR, logger="athm_sync.reconcile"):
        code, summary, _ = call("athm_sync", "-v", "2")

    stored = reload(payment)
    assert code == 0
    assert stored.status == S.MISMATCHED and stored.is_held and stored.is_terminal
    assert (stored.total, stored.remote_total) == (Decimal("100.00"), Decimal("1.00"))
    assert "total: ATH Móvil says 1.00, the shop stored 100.00" in stored.mismatch_reason
    assert stored.reference_number  # what ATH Móvil knows is kept, for a refund
    assert names(received) == ["payment_mismatched"]
    _, sender, kwargs = received[0]
    assert sender is Payment
    assert set(kwargs) == {"payment", "expected_total", "remote_total", "reason"}
    assert (kwargs["expected_total"], kwargs["remote_total"]) == (
        Decimal("100.00"),
        Decimal("1.00"),
    )
    assert kwargs["reason"] == stored.mismatch_reason
    assert f"HELD       {ecommerce_id}" in summary and "payment_mismatched" in summary
    assert "held (mismatched): 1" in summary
    assert "ATH Móvil completed it for 1.00, the shop expected 100.00" in caplog.text

    # It stays held: not due, and no later door completes it.
    code, summary, _ = run()
    assert code == 0 and summary["checked"] == 0
    athm_sync.sync_payment(ecommerce_id)
    code, summary, _ = run("--ecommerce-id", ecommerce_id)
    assert code == 0 and summary["transitions"]["mismatched"] == 0
    assert reload(payment).status == S.MISMATCHED
    assert names(received) == ["payment_mismatched"]
    assert PaymentEvent.objects.get().kind == "mismatched"


def test_the_json_summary_counts_held_payments(athm_settings, received):
    sandbox = athm_settings
    Payment.objects.track(paid_at_ath(sandbox, "1.00"), total="100.00")
    Payment.objects.track(paid_at_ath(sandbox, "5.00"), total="5.00")

    code, summary, _ = run()

    assert code == 0
    assert summary["mismatched"] == summary["transitions"]["mismatched"] == 1
    assert summary["transitions"]["completed"] == 1
    assert sorted(names(received)) == ["payment_completed", "payment_mismatched"]


def test_the_metadata_the_shop_stored_must_match(athm_settings, received):
    sandbox = athm_settings
    other_order = Payment.objects.track(
        paid_at_ath(sandbox, "20.00", "order-1"), total="20.00", metadata_1="order-2"
    )
    spaces = Payment.objects.track(  # ATH Móvil's stray spaces are no mismatch
        paid_at_ath(sandbox, "20.00", "  order-3 "), total="20.00", metadata_1="order-3"
    )
    unstored = Payment.objects.track(paid_at_ath(sandbox, "20.00", "anything"), total="20.00")

    run()

    assert reload(other_order).status == S.MISMATCHED
    assert "metadata_1: ATH Móvil says 'order-1', the shop stored 'order-2'" in (
        reload(other_order).mismatch_reason
    )
    assert reload(other_order).remote_metadata_1 == "order-1"
    assert reload(spaces).status == reload(unstored).status == S.COMPLETED
    assert sorted(names(received)) == ["payment_completed"] * 2 + ["payment_mismatched"]


def test_sync_payment_holds_it_too(athm_settings, received):
    sandbox = athm_settings
    ecommerce_id = paid_at_ath(sandbox, "1.00")
    Payment.objects.track(ecommerce_id, total="100.00")

    outcome = athm_sync.sync_payment(ecommerce_id)

    assert outcome.payment.status == S.MISMATCHED != S.COMPLETED
    assert names(received) == ["payment_mismatched"]


def test_a_payment_is_never_captured_for_another_amount(athm_settings, received, caplog):
    """A confirmed payment whose answer differs from what was stored is left uncaptured: the
    customer is not charged, and it expires. The refusal is recorded and logged once."""
    sandbox = athm_settings
    payment = Payment.objects.create_via_api(total="10.00")
    sandbox.confirm(str(payment.pk))
    sandbox.tamper(str(payment.pk), total=1)
    sandbox.reset_counts()

    code, summary, _ = run()
    Payment.objects.filter(pk=payment.pk).update(next_check_at=clock.now())  # due again now
    again, _, _ = run()

    assert code == again == 0 and summary["captured"] == 0
    assert sandbox.counts()["findPayment"] == 2 and sandbox.counts()["authorization"] == 0
    assert sandbox.payment(str(payment.pk))["status"] == "CONFIRM"
    assert reload(payment).status == S.CONFIRM and names(received) == []
    assert reload(payment).remote_total == Decimal("1.00")
    assert reload(payment).mismatch_reason == "total: ATH Móvil says 1.00, the shop stored 10.00"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"Payment {payment.pk} not captured: total: ATH Móvil says 1.00, the shop stored 10.00"
    ]


def test_a_webhook_over_real_http_holds_a_mismatched_payment(athm_settings, live_server, received):
    sandbox = athm_settings
    listener = live_server.url + reverse("athm_sync:webhook", kwargs={"token": SECRET})
    with ATHMovilClient.from_settings() as client:
        client.subscribe_webhooks(listener)
    sandbox.state.auto_webhooks = True
    ecommerce_id, _ = sandbox.create_payment("1.00", metadata1="order-100")
    payment = Payment.objects.track(ecommerce_id, total="100.00", metadata_1="order-100")

    sandbox.complete(ecommerce_id)  # ATH Móvil posts its "completed" webhook at once

    assert sandbox.state.deliveries[-1]["status"] == 200
    assert reload(payment).status == S.MISMATCHED
    assert names(received) == ["payment_mismatched"]
    event = WebhookEvent.objects.get()
    assert event.outcome == "applied" and event.reason == "mismatched"
    sandbox.state.send_webhook(sandbox.webhook_payload(ecommerce_id))  # a second delivery
    assert reload(payment).status == S.MISMATCHED
    assert names(received) == ["payment_mismatched"]


def test_tracking_again_with_other_metadata_raises(athm_settings):
    ecommerce_id = uuid.uuid4()
    Payment.objects.track(ecommerce_id, total="10.00", metadata_1="order-1")
    with pytest.raises(ValueError, match="already tracked with metadata_1 'order-1'"):
        Payment.objects.track(ecommerce_id, total="10.00", metadata_1="order-2")
    with pytest.raises(ValueError, match="metadata_2"):
        Payment.objects.track(ecommerce_id, total="10.00", metadata_1="order-1", metadata_2="x")
    assert reload(Payment(pk=ecommerce_id)).metadata_1 == "order-1"


# -- 3. every open payment is followed, however it got into the table -----------------------


def _historical_payment_model():
    """``Payment`` as a data migration (``RunPython``) sees it: from the migration state."""
    executor = MigrationExecutor(connection)
    leaf = executor.loader.graph.leaf_nodes("athm_sync")
    return executor.loader.project_state(leaf).apps.get_model("athm_sync", "Payment")


def _raw_insert(ecommerce_id: str, total: str, metadata_1: str) -> None:
    """An INSERT naming only three columns, as an import script might write it."""
    pk = Payment._meta.pk.get_db_prep_value(uuid.UUID(ecommerce_id), connection)
    table = connection.ops.quote_name(Payment._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (ecommerce_id, total, metadata_1) VALUES (%s, %s, %s)",  # noqa: S608
            [pk, Decimal(total), metadata_1],
        )


def test_rows_stored_every_ordinary_way_are_polled_at_once(athm_settings, received):
    sandbox = athm_settings
    ids = [paid_at_ath(sandbox, "10.00", f"order-{n}") for n in range(5)]
    Payment.objects.create(ecommerce_id=ids[0], total=Decimal("10.00"), metadata_1="order-0")
    Payment.objects.bulk_create(
        [Payment(ecommerce_id=ids[1], total=Decimal("10.00"), metadata_1="order-1")]
    )
    Historical = _historical_payment_model()
    Historical.objects.bulk_create(
        [Historical(ecommerce_id=ids[2], total=Decimal("10.00"), metadata_1="order-2")]
    )
    Historical.objects.create(ecommerce_id=ids[3], total=Decimal("10.00"), metadata_1="order-3")
    _raw_insert(ids[4], "10.00", "order-4")
    assert Payment.objects.due().count() == 5

    code, summary, _ = run()

    assert code == 0 and summary["checked"] == 5
    assert summary["transitions"]["completed"] == 5
    assert set(Payment.objects.values_list("status", flat=True)) == {S.COMPLETED}
    assert names(received) == ["payment_completed"] * 5


def test_a_row_without_expires_at_expires_by_created_at_plus_timeout(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00", timeout=120)
    Payment.objects.bulk_create([Payment(ecommerce_id=ecommerce_id, total=Decimal("10.00"))])
    payment = Payment.objects.get()
    assert payment.expires_at is None and payment.timeout == 600  # the shop left it out
    Payment.objects.filter(pk=payment.pk).update(timeout=120)
    time_machine.move_to(payment.created_at + timedelta(seconds=121), tick=False)

    assert run()[0] == 0

    stored = reload(payment)
    assert stored.status == S.EXPIRED and names(received) == ["payment_expired"]
    assert stored.expires_at == stored.created_at + timedelta(seconds=120)


def test_given_up_is_explicit_and_never_the_schedule_of_a_new_row(
    athm_settings, settings, time_machine
):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    payment = Payment.objects.track(ecommerce_id, total="10.00")
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "MAX_AGE": timedelta(minutes=1)}
    time_machine.move_to(later(61), tick=False)

    code, summary, _ = run()

    stored = reload(payment)
    assert code == 0 and summary["given_up"] == 1
    assert stored.given_up_at == clock.now() and stored.next_check_at is not None
    assert list(Payment.objects.given_up()) == [stored]
    assert run()[1]["checked"] == 0


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (timedelta(minutes=6), "is in the future"),
        (timedelta(hours=1), "is in the future"),
        (-timedelta(hours=49), "more than MAX_AGE"),
    ],
)
def test_track_refuses_a_creation_time_no_clock_could_give(athm_settings, offset, message):
    with pytest.raises(ValueError, match=message):
        Payment.objects.track(uuid.uuid4(), total="10.00", created_at=clock.now() + offset)
    assert not Payment.objects.exists()


def test_track_accepts_a_browser_clock_a_little_ahead(athm_settings):
    created = clock.now() + timedelta(minutes=4)
    payment = Payment.objects.track(uuid.uuid4(), total="10.00", created_at=created)
    assert payment.created_at == created


@pytest.mark.parametrize("store", ["save", "create", "bulk_create", "update"])
def test_a_float_never_reaches_a_money_column(athm_settings, store):
    payment = Payment.objects.track(uuid.uuid4(), total="10.00")
    with pytest.raises(ValueError, match=r"Payment\.total must be a Decimal, not the float 12\.5"):
        if store == "save":
            payment.total = 12.5
            payment.save()
        elif store == "create":
            Payment.objects.create(ecommerce_id=uuid.uuid4(), total=12.5)
        elif store == "bulk_create":
            Payment.objects.bulk_create([Payment(ecommerce_id=uuid.uuid4(), total=12.5)])
        else:
            Payment.objects.filter(pk=payment.pk).update(total=12.5)
    assert list(Payment.objects.values_list("total", flat=True)) == [Decimal("10.00")]


# -- 4. one bad answer never stops the rest ----------------------------------------------------


def test_an_answer_no_column_can_hold_never_stops_the_payments_behind_it(
    athm_settings, received, time_machine
):
    """A 300-character NUL-led reference number first in line, 40 good payments behind it."""
    sandbox = athm_settings
    bad_id = paid_at_ath(sandbox, "10.00")
    bad = Payment.objects.track(bad_id, total="10.00", created_at=later(-30))  # first in line
    sandbox.tamper(bad_id, referenceNumber="\x00" + "9" * 299, name="\x00" + "N" * 299)
    good = [Payment.objects.track(paid_at_ath(sandbox, "5.00"), total="5.00") for _ in range(40)]

    code, summary, _ = run("--workers", "4")

    assert code == 1
    assert summary["checked"] == 40 and summary["transitions"]["completed"] == 40
    assert [error["ecommerce_id"] for error in summary["errors"]] == [bad_id]
    assert "referenceNumber" not in summary["errors"][0]["reason"]  # our field name
    assert "reference_number is longer than 100 characters" in summary["errors"][0]["reason"]
    assert all(reload(payment).status == S.COMPLETED for payment in good)
    stored = reload(bad)
    assert stored.status == S.OPEN and stored.reference_number == "" and stored.failures == 1

    # A long name alone is cut to its column, NUL removed; the payment completes.
    sandbox.tamper(bad_id, name="\x00" + "N" * 299)
    time_machine.move_to(stored.next_check_at, tick=False)
    assert run()[0] == 0
    stored = reload(bad)
    assert stored.status == S.COMPLETED and stored.customer_name == "N" * 255
    assert names(received) == ["payment_completed"] * 41


@pytest.fixture
def refuse_completing(db):
    """A trigger that makes the database refuse to complete one payment: a database error in
    the middle of applying it, of the kind a full disk or a shop's own constraint gives."""
    table = Payment._meta.db_table
    created = []

    def install(payment: Payment) -> None:
        pk = Payment._meta.pk.get_db_prep_value(payment.pk, connection)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "CREATE FUNCTION athm_test_refuse() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'could not extend file: No space left on device'; "
                    "END $$ LANGUAGE plpgsql"
                )
                cursor.execute(
                    f"CREATE TRIGGER athm_test_refuse BEFORE UPDATE ON {table} FOR EACH ROW "
                    f"WHEN (NEW.status = 'COMPLETED' AND NEW.ecommerce_id = '{pk}') "
                    "EXECUTE FUNCTION athm_test_refuse()"
                )
            else:
                cursor.execute(
                    f"CREATE TRIGGER athm_test_refuse BEFORE UPDATE ON {table} "
                    f"WHEN NEW.status = 'COMPLETED' AND NEW.ecommerce_id = '{pk}' "
                    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                )
        created.append(pk)

    yield install
    if created:
        with connection.cursor() as cursor:
            cursor.execute(
                f"DROP TRIGGER IF EXISTS athm_test_refuse"
                f"{' ON ' + table if connection.vendor == 'postgresql' else ''}"
            )
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS athm_test_refuse()")


def test_a_database_error_is_recorded_on_that_payment_and_the_run_goes_on(
    athm_settings, received, refuse_completing, time_machine, caplog
):
    sandbox = athm_settings
    bad = Payment.objects.track(paid_at_ath(sandbox, "10.00"), total="10.00", created_at=later(-9))
    good = [Payment.objects.track(paid_at_ath(sandbox, "5.00"), total="5.00") for _ in range(5)]
    refuse_completing(bad)

    with caplog.at_level(logging.ERROR, logger="athm_sync.reconcile"):
        code, summary, err = run()

    assert code == 1 and "Traceback" not in err
    assert summary["transitions"]["completed"] == 5 and summary["checked"] == 5
    (error,) = summary["errors"]
    assert error["ecommerce_id"] == str(bad.pk) and "could not store" in error["reason"]
    stored = reload(bad)
    assert stored.status == S.OPEN and stored.failures == 1 and stored.check_count == 1
    assert "could not store ATH Móvil's answer" in stored.last_error
    assert not PaymentEvent.objects.filter(payment=bad).exists()  # rolled back whole
    assert all(reload(payment).status == S.COMPLETED for payment in good)
    assert str(bad.pk) in caplog.text

    # Backoff: not first in line at the next run; then 10 s, 20 s...
    assert run()[1]["checked"] == 0
    waits = []
    for _ in range(3):
        before = reload(bad).next_check_at
        time_machine.move_to(before, tick=False)
        assert run()[0] == 1
        waits.append((reload(bad).next_check_at - before).total_seconds())
    assert waits == [20, 40, 80] and reload(bad).failures == 4
    assert names(received) == ["payment_completed"] * 5


def test_a_pending_webhook_that_cannot_be_applied_never_blocks_the_rest(
    athm_settings, client, received, refuse_completing, time_machine
):
    sandbox = athm_settings
    url = reverse("athm_sync:webhook", kwargs={"token": SECRET})
    bad = Payment.objects.track(paid_at_ath(sandbox, "10.00"), total="10.00")
    behind = [Payment.objects.track(paid_at_ath(sandbox, "5.00"), total="5.00") for _ in range(3)]
    refuse_completing(bad)
    payload = json.dumps(sandbox.webhook_payload(str(bad.pk)))

    answer = client.post(url, payload, content_type="application/json").json()

    event = WebhookEvent.objects.get()
    assert answer["outcome"] == "pending" and "could not be applied" in event.reason
    for payment in behind:  # their webhooks arrive after it
        body = json.dumps(sandbox.webhook_payload(str(payment.pk)))
        sandbox.inject_fault("http503", "findPayment", times=3)  # left pending by the view
        assert client.post(url, body, content_type="application/json").json()["outcome"] == (
            "pending"
        )
    sandbox.clear_faults()

    code, summary, _ = run()

    assert code == 1  # the bad payment could not be checked
    assert summary["webhooks"]["applied"] == 3 and summary["webhooks"]["pending"] == 1
    assert all(reload(payment).status == S.COMPLETED for payment in behind)
    event.refresh_from_db()
    assert event.outcome == "pending" and event.attempts == 2
    assert event.next_attempt_at >= later(9)  # backoff: the next run goes past it
    assert run()[1]["webhooks"] == dict.fromkeys(
        ["applied", "unchanged", "rejected", "ignored", "pending"], 0
    )
    assert names(received) == ["payment_completed"] * 3
