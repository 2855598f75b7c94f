"""Refunding from the shop (``athm_sync.refund``), against the sandbox, on the real database.

Every refusal is checked against the sandbox's request counts: nothing is sent. A refund
reaches ATH Móvil at most once, and every door that sees it later adds nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

import athm_sync
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment, PaymentEvent, Refund, RefundIntent
from athm_sync.normalize import local_datetime
from athm_sync.refunds import RefundError, RefundUncertain, settle_intents
from tests.commands import call
from tests.test_overlap import child_env

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


class Watched(ATHMovilClient):
    """The app's client, telling the test when the refund call leaves and when it is answered."""

    def __init__(self, *args, events: list[str], sending: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events, self.sending = events, sending

    def refund(self, *args, **kwargs):
        self.events.append("refund sent")
        self.sending.set()
        try:
            return super().refund(*args, **kwargs)
        finally:
            self.events.append("refund answered")


def watched(events: list[str], sending: threading.Event | None = None) -> Watched:
    return Watched.from_settings(events=events, sending=sending or threading.Event())


def test_no_lock_is_held_during_the_refund_call_and_a_second_refund_is_refused(
    athm_settings, received
):
    """While ATH Móvil is slow to answer one refund: a second refund of the same payment is
    refused at once with one line (no second call), and another writer locks that payment's
    row and writes another one, and commits, before the refund is answered."""
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    other = completed(sandbox, "5.00")
    received.clear()
    sandbox.reset_counts()
    sandbox.inject_fault("latency", "refund", delay=1.5)
    events: list[str] = []
    sending = threading.Event()
    results: list[object] = []

    def first() -> None:
        try:
            results.append(athm_sync.refund(payment.pk, "2.00", client=watched(events, sending)))
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert sending.wait(timeout=10)
    with pytest.raises(RefundError) as refused:
        athm_sync.refund(payment.pk, "2.00")
    events.append("second refused")
    with transaction.atomic():
        Payment.objects.select_for_update().get(pk=payment.pk)
        Payment.objects.filter(pk=other.pk).update(metadata_2="written meanwhile")
    events.append("other write committed")
    thread.join(timeout=30)

    assert events == ["refund sent", "second refused", "other write committed", "refund answered"]
    assert "is being sent" in str(refused.value) and "\n" not in str(refused.value)
    assert [r.amount for r in results] == [Decimal("2.00")]  # type: ignore[attr-defined]
    assert refund_calls(sandbox) == 1 and Refund.objects.count() == 1
    assert not RefundIntent.objects.exists()
    assert Payment.objects.get(pk=other.pk).metadata_2 == "written meanwhile"
    assert names(received) == ["refund_sent"]


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
            connection.close()

    threads = [threading.Thread(target=refund_two) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    made = [r for r in results if isinstance(r, Refund)]
    refused = [r for r in results if isinstance(r, RefundError)]
    assert len(made) == 1 and len(refused) == 1, results
    # Refused while the first is in flight, or after it, with nothing left: one line either way.
    reason = str(refused[0])
    assert (
        "is being sent" in reason or "already refunded in full" in reason
    ) and "\n" not in reason
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
    assert 'name="refunded_so_far" value="0.00"' in html
    shown = {**selected, "confirm": "yes", "refunded_so_far": "0.00"}
    done = admin_web.post(CHANGELIST, {**shown, "amount": "2.50", "message": "late"}, follow=True)
    assert "Refunded $2.50 of payment" in done.content.decode()
    assert Refund.objects.get().amount == Decimal("2.50") and refund_calls(sandbox) == 1
    again = admin_web.post(CHANGELIST, selected)  # a fresh page shows what is refunded now
    assert 'name="refunded_so_far" value="2.50"' in again.content.decode()
    too_much = admin_web.post(
        CHANGELIST, {**shown, "refunded_so_far": "2.50", "amount": "9.00"}, follow=True
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
    client.post(
        CHANGELIST, {**selected, "confirm": "yes", "amount": "1.00", "refunded_so_far": "0.00"}
    )

    assert "refund_action" not in listing
    assert refund_calls(sandbox) == 0 and not Refund.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="refund_payment"))
    assert "refund_action" in client.get(CHANGELIST).content.decode()


def test_the_same_admin_page_submitted_twice_refunds_once(athm_settings, admin_web, received):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    selected = {"action": "refund_action", "_selected_action": [str(payment.pk)]}
    page = admin_web.post(CHANGELIST, selected).content.decode()
    assert 'name="refunded_so_far" value="0.00"' in page
    submitted = {**selected, "confirm": "yes", "refunded_so_far": "0.00", "amount": "3.00"}

    first = admin_web.post(CHANGELIST, submitted, follow=True).content.decode()
    second = admin_web.post(CHANGELIST, submitted, follow=True).content.decode()

    assert "Refunded $3.00 of payment" in first
    assert "Not refunded: payment" in second
    assert "was refunded 3.00 so far, not the 0.00 the page showed" in second
    assert refund_calls(sandbox) == 1 and Refund.objects.count() == 1
    assert Payment.objects.get().total_refunded_amount == Decimal("3.00")
    assert sandbox.payment(str(payment.pk))["totalRefundedAmount"] == "3.00"
    assert names(received) == ["refund_sent"]


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_locked_sqlite_database_is_a_refund_error_and_nothing_is_sent(athm_settings, received):
    import sqlite3

    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.reset_counts()
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds SQLite's one write lock
    connection.ensure_connection()
    connection.connection.execute("PRAGMA busy_timeout = 50")  # give up soon, not in 5 s
    try:
        with pytest.raises(RefundError) as refused:
            athm_sync.refund(payment, "1.00")
    finally:
        holder.rollback()
        holder.close()
        connection.close()

    assert "database is locked" in str(refused.value) and "\n" not in str(refused.value)
    assert "was not sent" in str(refused.value)
    assert refund_calls(sandbox) == 0 and sandbox.counts()["findPayment"] == 0
    assert not RefundIntent.objects.exists() and not Refund.objects.exists()


def test_a_refund_after_an_unseen_app_refund_is_two_refunds_with_their_details(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    sandbox.refund(str(payment.pk), "2.00", "made in the app")  # not seen here yet
    received.clear()

    made = athm_sync.refund(payment, "1.00", "made by the shop")

    # ATH Móvil's answer says 3.00 was refunded: the shop's 1.00 and 2.00 nobody told of.
    assert (made.amount, made.message) == (Decimal("1.00"), "made by the shop")
    assert made.daily_transaction_id
    unseen = Refund.objects.exclude(pk=made.pk).get()
    assert unseen.amount == Decimal("2.00") and unseen.daily_transaction_id == ""
    assert Payment.objects.get().total_refunded_amount == Decimal("3.00")
    assert names(received) == ["refund_sent", "refund_sent"]
    sandbox.reset_counts()

    code, out, _ = call("athm_sync", "--json")  # the scan lends the app refund its details

    assert code == 0 and json.loads(out)["refund_scan"]["refunds"] == 0
    app = sandbox.payment(str(payment.pk))["refunds"][0]
    unseen.refresh_from_db()
    assert (unseen.message, unseen.daily_transaction_id) == (
        "made in the app",
        app["dailyTransactionId"],
    )
    assert sandbox.counts()["findPayment"] == 0 and Refund.objects.count() == 2
    assert names(received) == ["refund_sent", "refund_sent"]


# A real process that dies (as if killed) right after ATH Móvil answered its refund.
DIES_AFTER_THE_ANSWER = """
import os, sys
import django

django.setup()
import athm_sync
from athm_sync.client import ATHMovilClient


class Dies(ATHMovilClient):
    def refund(self, *args, **kwargs):
        super().refund(*args, **kwargs)
        os._exit(9)


athm_sync.refund(sys.argv[1], "4.00", "crashed", client=Dies.from_settings())
"""


def test_a_crash_between_the_reservation_and_the_answer_is_settled_by_the_next_run(
    athm_settings, received, time_machine, tmp_path
):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.reset_counts()

    child = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", DIES_AFTER_THE_ANSWER, str(payment.pk)],
        env=child_env(sandbox, tmp_path / "signals.log"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 9, child.stderr

    # ATH Móvil refunded it; nothing is recorded, the intent stays.
    assert sandbox.payment(str(payment.pk))["totalRefundedAmount"] == "4.00"
    intent = RefundIntent.objects.get()
    assert intent.amount == Decimal("4.00") and not Refund.objects.exists()
    with pytest.raises(RefundError, match="is being sent"):  # its process may still be waiting
        athm_sync.refund(payment, "1.00")
    with ATHMovilClient.from_settings() as client:  # not while its process may be waiting
        assert settle_intents(client) == []
    assert RefundIntent.objects.exists() and not Refund.objects.exists()

    time_machine.move_to(intent.busy_until + timedelta(seconds=1), tick=False)
    code, out, _ = call("athm_sync", "--json")

    assert code == 0 and json.loads(out)["transitions"]["refund_sent"] == 1
    refund = Refund.objects.get()
    assert (refund.amount, refund.message) == (Decimal("4.00"), "crashed")
    assert refund.daily_transaction_id  # the report scan of the same run lent its record
    assert not RefundIntent.objects.exists()
    assert refund_calls(sandbox) == 1  # never sent again
    assert names(received) == ["refund_sent"]
    athm_sync.refund(payment, "1.00")  # the payment takes refunds again
    assert refund_calls(sandbox) == 2 and Refund.objects.count() == 2


def test_a_refund_whose_answer_is_lost_blocks_a_second_until_it_is_settled(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.inject_fault("drop", "refund")  # never reached ATH Móvil

    with pytest.raises(RefundUncertain):
        athm_sync.refund(payment, "4.00")
    with pytest.raises(RefundError, match="is being sent"):
        athm_sync.refund(payment, "4.00")

    assert refund_calls(sandbox) == 1  # the dropped call; the refused one sent nothing
    time_machine.move_to(RefundIntent.objects.get().busy_until, tick=False)
    sandbox.reset_counts()

    # Its process is done with it: the next refund settles it first (findPayment: nothing
    # went through), then is sent.
    made = athm_sync.refund(payment, "4.00")

    assert made.amount == Decimal("4.00") and names(received) == ["refund_sent"]
    assert sandbox.counts()["findPayment"] == 1 and refund_calls(sandbox) == 1
    assert not RefundIntent.objects.exists() and Refund.objects.get() == made


def test_refund_inside_a_transaction_is_refused(athm_settings):
    sandbox = athm_settings
    payment = completed(sandbox, "10.00")
    sandbox.reset_counts()

    with transaction.atomic(), pytest.raises(RefundError, match="outside a database transaction"):
        athm_sync.refund(payment, "1.00")

    assert refund_calls(sandbox) == 0
