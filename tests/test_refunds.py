"""Refunding from the shop (``athm_sync.refund``), against the sandbox, on the real database.

Every refusal is checked against the sandbox's request counts: nothing is sent. A refund
reaches ATH Móvil at most once, and every door that sees it later adds nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

import pytest

import athm_sync
from athm_sync.models import Payment, PaymentEvent, Refund
from athm_sync.normalize import local_datetime
from athm_sync.refunds import RefundError, RefundUncertain
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

S = Payment.Status
SECRET = "w" * 40  # tests/settings.py


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def completed(sandbox, total: str = "10.00", tracked_total: str | None = None) -> Payment:
    """A payment the customer paid at ATH Móvil, tracked and synced (COMPLETED, or held)."""
    ecommerce_id, _ = sandbox.create_payment(total)
    sandbox.complete(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=tracked_total or total)
    return athm_sync.sync_payment(ecommerce_id).payment


def refund_calls(sandbox) -> int:
    return sandbox.counts()["refund"]


def test_a_full_refund_records_it_and_fires_refund_sent_once(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()

    made = athm_sync.refund(payment, message="out of stock")

    assert isinstance(made, Refund) and made.amount == Decimal("10.00")
    assert made.payment_id == payment.pk and made.message == "out of stock"
    assert made.daily_transaction_id and made.transaction_date is not None
    assert made.reference_number == payment.reference_number
    assert refund_calls(sandbox) == 1
    assert sandbox.payment(str(payment.pk))["totalRefundedAmount"] == "10.00"
    assert Payment.objects.get().total_refunded_amount == Decimal("10.00")
    assert names(received) == ["refund_sent"]
    _, sender, kwargs = received[0]
    assert sender is Refund and kwargs["refund"].pk == made.pk
    assert PaymentEvent.objects.get(kind="refund_sent").source == "refund"


def test_the_documented_refund_answer_is_stored_in_full_without_asking_again(
    athm_settings, received, caplog
):
    # The sandbox answers as Evertec documents: no ecommerceId in originalTransaction, dates
    # as epoch milliseconds. The refund's own daily id, date and message come from it.
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    finds = sandbox.counts().get("findPayment", 0)
    caplog.set_level("WARNING", logger="athm_sync")

    made = athm_sync.refund(payment, "4.00", "damaged")

    assert sandbox.counts().get("findPayment", 0) == finds, "the answer was enough"
    [remote] = sandbox.payment(str(payment.pk))["refunds"]
    assert made.daily_transaction_id == remote["dailyTransactionId"]
    assert made.transaction_date == local_datetime(remote["date"])
    assert made.message == "damaged" and made.amount == Decimal("4.00")
    assert [r.getMessage() for r in caplog.records] == []


def test_partial_refunds_accumulate_and_no_later_door_adds_one(athm_settings, client, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()

    first = athm_sync.refund(payment.pk, "3.00")
    second = athm_sync.refund(str(payment.pk), Decimal("2.5"))

    assert (first.amount, second.amount) == (Decimal("3.00"), Decimal("2.50"))
    assert first.reference_number == second.reference_number  # shared, still two refunds
    assert names(received) == ["refund_sent", "refund_sent"]
    # The same refund seen again by each other door: a webhook, sync_payment, a named run.
    webhook = json.dumps(sandbox.refund_webhook_payload(str(payment.pk)))
    url = f"/athm/webhook/{SECRET}/"
    answer = client.post(url, webhook, content_type="application/json").json()
    assert answer["outcome"] == "unchanged"
    athm_sync.sync_payment(payment.pk)
    assert call("athm_sync", "--ecommerce-id", str(payment.pk))[0] == 0
    assert Refund.objects.count() == 2 and names(received) == ["refund_sent", "refund_sent"]
    assert Payment.objects.get().total_refunded_amount == Decimal("5.50")
    assert refund_calls(sandbox) == 2


@pytest.mark.parametrize(
    ("amount", "message", "error"),
    [
        (0, "", "more than 0"),
        ("-1.00", "", "more than 0"),
        ("1.005", "", "at most two decimals"),
        (1.5, "", "not float"),
        ("abc", "", "an amount like 5.00"),
        ("10.01", "", "has 10.00 left to refund"),
        ("1.00", "x" * 51, "at most 50 characters"),
        ("1.00", 7, "must be text"),
    ],
)
def test_a_bad_refund_sends_nothing(athm_settings, received, amount, message, error):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.reset_counts()

    with pytest.raises(RefundError, match=error):
        athm_sync.refund(payment, amount, message)

    assert refund_calls(sandbox) == 0 and sandbox.counts()["findPayment"] == 0
    assert not Refund.objects.exists() and received == []


@pytest.mark.parametrize("act", ["open", "cancelled", "refunded", "unknown"])
def test_a_payment_that_cannot_be_refunded_sends_nothing(athm_settings, act):
    sandbox = athm_settings
    if act == "unknown":
        target, message = uuid.uuid4(), "no stored payment"
    elif act == "refunded":
        target = completed(sandbox, "4.00")
        athm_sync.refund(target)
        message = "already refunded in full"
    else:
        ecommerce_id, _ = sandbox.create_payment("4.00")
        if act == "cancelled":
            sandbox.cancel(ecommerce_id)
        Payment.objects.track(ecommerce_id, total="4.00")
        target = athm_sync.sync_payment(ecommerce_id).payment
        message = "only a COMPLETED or MISMATCHED payment"
    sandbox.reset_counts()

    with pytest.raises(RefundError, match=message):
        athm_sync.refund(target)

    assert refund_calls(sandbox) == 0


def test_a_held_payment_is_refunded_for_what_was_paid(athm_settings, received):
    """$1 paid for a $100 order: the shop returns the $1."""
    sandbox = athm_settings
    payment = completed(sandbox, "1.00", tracked_total="100.00")
    assert payment.status == S.MISMATCHED

    made = athm_sync.refund(payment)

    assert made.amount == Decimal("1.00") and refund_calls(sandbox) == 1
    assert names(received) == ["payment_mismatched", "refund_sent"]
    assert Payment.objects.get().status == S.MISMATCHED


def test_a_refund_whose_answer_is_lost_is_not_sent_again_and_is_found(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.inject_fault("lost", "refund")  # carried out, then no answer

    made = athm_sync.refund(payment, "4.00")

    assert refund_calls(sandbox) == 1  # never re-sent
    assert made.amount == Decimal("4.00")  # found through the refunded amount
    assert names(received) == ["refund_sent"]


def test_a_refund_that_never_arrived_is_not_sent_again_and_says_so(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.inject_fault("drop", "refund")  # the connection ends before ATH Móvil acts

    with pytest.raises(RefundUncertain, match="is not sent again"):
        athm_sync.refund(payment, "4.00")

    assert refund_calls(sandbox) == 1
    assert Decimal(sandbox.payment(str(payment.pk))["totalRefundedAmount"]) == 0
    assert not Refund.objects.exists() and received == []


def test_ath_movil_refusing_the_refund_records_nothing(athm_settings, received):
    """The shop does not know of a refund made in the ATH Business app: ATH Móvil refuses."""
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    sandbox.refund(str(payment.pk), "9.00")  # in the app; not seen locally yet
    received.clear()

    with pytest.raises(RefundError, match="ATH Móvil refused the refund"):
        athm_sync.refund(payment, "5.00")

    assert refund_calls(sandbox) == 1
    assert not Refund.objects.exists() and received == []


def test_two_refunds_at_once_for_the_last_dollars_make_one(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    athm_sync.refund(payment, "8.00")
    received.clear()
    sandbox.reset_counts()
    sandbox.set_latency(0.2)  # the first call is in flight while the second starts
    start = threading.Barrier(2)
    results: list[object] = []

    def refund_two() -> None:
        start.wait()
        try:
            results.append(athm_sync.refund(payment.pk, "2.00"))
        except RefundError as error:
            results.append(error)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=refund_two) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    made = [r for r in results if isinstance(r, Refund)]
    refused = [r for r in results if isinstance(r, RefundError)]
    assert len(made) == 1 and len(refused) == 1, results
    assert "already refunded in full" in str(refused[0])
    assert refund_calls(sandbox) == 1
    assert Payment.objects.get().total_refunded_amount == Decimal("10.00")
    assert names(received) == ["refund_sent"]


# -- the admin's "Refund" action ---------------------------------------------------------------


@pytest.fixture
def admin_web(client):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


CHANGELIST = "/admin/athm_sync/payment/"


def test_the_admin_refund_action_asks_then_refunds(athm_settings, admin_web, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    selected = {"action": "refund_action", "_selected_action": [str(payment.pk)]}

    page = admin_web.post(CHANGELIST, selected)

    html = page.content.decode()
    assert page.status_code == 200 and "Left to refund" in html and "$10.00" in html
    assert refund_calls(sandbox) == 0  # asking sends nothing
    done = admin_web.post(
        CHANGELIST, {**selected, "confirm": "yes", "amount": "2.50", "message": "late"}, follow=True
    )
    assert "Refunded $2.50 of payment" in done.content.decode()
    assert Refund.objects.get().amount == Decimal("2.50") and refund_calls(sandbox) == 1
    too_much = admin_web.post(
        CHANGELIST, {**selected, "confirm": "yes", "amount": "9.00"}, follow=True
    )
    assert "Not refunded: payment" in too_much.content.decode()
    assert "has 7.50 left to refund" in too_much.content.decode()
    assert refund_calls(sandbox) == 1 and names(received) == ["refund_sent"]


def test_the_admin_refund_action_needs_its_permission(athm_settings, client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    staff = get_user_model().objects.create_user("clerk", "clerk@example.com", "pw")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(Permission.objects.get(codename="view_payment"))
    client.force_login(staff)
    selected = {"action": "refund_action", "_selected_action": [str(payment.pk)]}

    listing = client.get(CHANGELIST).content.decode()
    client.post(CHANGELIST, {**selected, "confirm": "yes", "amount": "1.00"})

    assert "refund_action" not in listing
    assert refund_calls(sandbox) == 0 and not Refund.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="refund_payment"))
    assert "refund_action" in client.get(CHANGELIST).content.decode()
