"""The admin, through the Django test client: as a staff user with the view permissions only
(``staff``: looks, does nothing), one with the change permissions too (``operator``: runs the
actions) and a superuser (refunds too)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

import athm_sync
from athm_sync.models import (
    Payment,
    PaymentEvent,
    ReceiverDelivery,
    Refund,
    SyncRun,
    WebhookEvent,
)
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


def broken(sender, payment, **kwargs):
    raise RuntimeError("the shop's mailer is down")


@contextmanager
def failing_receiver(receiver=broken) -> Iterator[None]:
    """``receiver`` connected to payment_completed while the block runs."""
    from athm_sync import signals

    signals.payment_completed.connect(receiver, weak=False)
    try:
        yield
    finally:
        signals.payment_completed.disconnect(receiver)


def test_a_receiver_error_is_shown_on_its_event(athm_settings, staff):
    with failing_receiver():
        settle(athm_settings, 1)
    event = PaymentEvent.objects.get(kind="completed")

    page = staff.get(f"/admin/athm_sync/paymentevent/{event.pk}/change/").content.decode()

    assert "the shop&#x27;s mailer is down" in page and "broken" in page


def connect_to_mailer(password: str) -> None:
    raise ConnectionError(f"the mailer refused the login {password}")


def leaky(sender, payment, **kwargs):
    """A receiver whose failure names a secret of the app's, in a chain of two exceptions."""
    from django.conf import settings

    try:
        connect_to_mailer(settings.ATHM_SYNC["PRIVATE_TOKEN"])
    except ConnectionError as error:
        raise RuntimeError("could not e-mail the receipt") from error


def test_a_failed_receiver_s_traceback_is_shown_in_full_with_secrets_masked(athm_settings, staff):
    from django.conf import settings

    from athm_sync import outbox

    token = settings.ATHM_SYNC["PRIVATE_TOKEN"]
    with failing_receiver(leaky):
        settle(athm_settings, 1)
        event = PaymentEvent.objects.get(kind="completed")
        delivery = ReceiverDelivery.objects.get()
        ReceiverDelivery.objects.update(last_traceback="")
        outbox.redeliver([delivery.pk])  # fails again: the traceback shown is the retry's

    pages = {
        "event": staff.get(f"/admin/athm_sync/paymentevent/{event.pk}/change/"),
        "failed receiver": staff.get(f"/admin/athm_sync/receiverdelivery/{delivery.pk}/change/"),
    }
    for name, response in pages.items():
        page = response.content.decode()
        assert page.count("Traceback (most recent call last):") == 2, name  # the chain
        assert ", in leaky" in page and ", in connect_to_mailer" in page, name
        assert "direct cause of the following exception" in page, name
        assert "RuntimeError: could not e-mail the receipt" in page, name
        assert "ConnectionError: the mailer refused the login ****" in page, name
        assert token not in page, name
    assert ReceiverDelivery.objects.get().attempts == 2


def test_an_error_recorded_before_tracebacks_were_kept_says_so(athm_settings, staff):
    payment = Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5.00"))
    event = PaymentEvent.objects.create(
        payment=payment,
        kind="completed",
        receiver_errors=1,
        errors=[{"receiver": "shop.receivers.mail", "error": "RuntimeError: boom"}],
    )

    page = staff.get(f"/admin/athm_sync/paymentevent/{event.pk}/change/").content.decode()

    assert "shop.receivers.mail</strong>: RuntimeError: boom" in page
    assert "No traceback: recorded before tracebacks were kept" in page


def test_check_now_asks_ath_movil_through_sync_payment(athm_settings, operator, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    payment = Payment.objects.track(ecommerce_id, total="10.00")
    sandbox.complete(ecommerce_id)

    done = operator.post(
        "/admin/athm_sync/payment/",
        {"action": "check_now", "_selected_action": [str(payment.pk)]},
        follow=True,
    )

    assert "Checked 1 payment(s); 1 changed." in done.content.decode()
    assert Payment.objects.get().status == "COMPLETED"
    assert [name for name, _, _ in received] == ["payment_completed"]
    assert PaymentEvent.objects.get().source == "admin"


def offered_actions(client, name: str) -> set[str]:
    """The actions the list page of ``name`` offers its user."""
    page = client.get(f"/admin/athm_sync/{name}/").content.decode()
    if 'name="action"' not in page:
        return set()
    menu = page.split('name="action"', 1)[1].split("</select>", 1)[0]
    return set(re.findall(r'<option value="(\w+)"', menu))


@pytest.mark.parametrize(
    ("permissions", "payment_actions", "acts"),
    [
        (None, {"check_now", "refund_action"}, True),  # a superuser
        (("view", "change"), {"check_now"}, True),
        (("view",), set(), False),
    ],
    ids=["superuser", "change", "view only"],
)
def test_each_user_is_offered_the_actions_their_permissions_allow(
    athm_settings, login, permissions, payment_actions, acts
):
    with failing_receiver():
        settle(athm_settings, 1)  # a row in each list: the admin offers no action on none
    client = login(*permissions) if permissions else login(superuser=True)

    assert offered_actions(client, "payment") == payment_actions
    assert offered_actions(client, "webhookevent") == ({"reprocess"} if acts else set())
    assert offered_actions(client, "paymentevent") == ({"redeliver_action"} if acts else set())
    assert offered_actions(client, "receiverdelivery") == (
        {"redeliver_action", "acknowledge_action"} if acts else set()
    )


def test_a_view_only_user_cannot_check_now_or_reprocess(athm_settings, staff, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    payment = Payment.objects.track(ecommerce_id, total="10.00")
    Client().post(
        WEBHOOK,
        json.dumps(sandbox.webhook_payload(ecommerce_id, "completed")),
        content_type="application/json",
    )
    sandbox.complete(ecommerce_id)
    sandbox.reset_counts()
    event = WebhookEvent.objects.get()

    staff.post(
        "/admin/athm_sync/payment/",
        {"action": "check_now", "_selected_action": [str(payment.pk)]},
    )
    staff.post(
        "/admin/athm_sync/webhookevent/",
        {"action": "reprocess", "_selected_action": [str(event.pk)]},
    )

    assert sandbox.counts().get("findPayment", 0) == 0
    assert Payment.objects.get().status == "OPEN" and received == []
    assert WebhookEvent.objects.get().outcome == "rejected"


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_reprocess_reports_every_event_it_was_given(athm_settings, operator, received):
    sandbox = athm_settings

    def webhook(status: str | None = None) -> WebhookEvent:
        ecommerce_id, _ = sandbox.create_payment("10.00")
        Payment.objects.track(ecommerce_id, total="10.00")
        if status is None:
            sandbox.complete(ecommerce_id)
        body = json.dumps(sandbox.webhook_payload(ecommerce_id, status or "completed"))
        Client().post(WEBHOOK, body, content_type="application/json")
        return WebhookEvent.objects.get(ecommerce_id=ecommerce_id)

    caught_up = webhook("completed")  # rejected: ATH Móvil still said OPEN...
    sandbox.complete(str(caught_up.ecommerce_id))  # ...and now says COMPLETED
    forged = webhook("completed")  # rejected, and ATH Móvil still says OPEN
    settled = webhook()  # applied at once
    assert [caught_up.outcome, forged.outcome, settled.outcome] == ["rejected"] * 2 + ["applied"]
    received.clear()

    done = operator.post(
        "/admin/athm_sync/webhookevent/",
        {
            "action": "reprocess",
            "_selected_action": [str(e.pk) for e in (caught_up, forged, settled)],
        },
        follow=True,
    )

    assert messages_of(done) == [
        "Reprocessed 3 selected event(s): 1 applied, 1 still rejected, 1 skipped.",
        f"Webhook event {caught_up.pk} applied: completed",
        f"Webhook event {forged.pk} still rejected: the webhook says completed but ATH Móvil "
        "says OPEN",
        f"Webhook event {settled.pk} skipped: it was applied already; only pending or rejected "
        "events are verified again.",
    ]
    assert [name for name, _, _ in received] == ["payment_completed"]
    outcomes = dict(WebhookEvent.objects.values_list("pk", "outcome"))
    assert outcomes == {caught_up.pk: "applied", forged.pk: "rejected", settled.pk: "applied"}


def test_check_now_refuses_too_many_at_once(athm_settings, operator):
    for _ in range(21):
        Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5.00"))
    athm_settings.reset_counts()

    done = operator.post(
        "/admin/athm_sync/payment/",
        {"action": "check_now", "select_across": "1", "_selected_action": ["x"], "index": "0"},
        follow=True,
    )

    assert "Select at most 20 payments" in done.content.decode()
    assert athm_settings.counts()["findPayment"] == 0
    assert Payment.objects.filter(check_count=0).count() == 21


# -- the refund page: what it will do, before it does it -------------------------------------

CHANGELIST = "/admin/athm_sync/payment/"


def synced(sandbox, total: str, then=None) -> Payment:
    """A payment of ``total`` at ATH Móvil, tracked, ``then(ecommerce_id)`` done to it there
    (default: completed), and synced."""
    ecommerce_id, _ = sandbox.create_payment(total)
    (then or sandbox.complete)(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=total)
    return athm_sync.sync_payment(ecommerce_id).payment


def refund_page(client, *payments: Payment) -> str:
    selected = {"action": "refund_action", "_selected_action": [str(p.pk) for p in payments]}
    response = client.post(CHANGELIST, selected)
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def refusable(athm_settings):
    """One payment of each kind the refund API would refuse: cancelled, refunded in full, and
    completed without a reference number (as ATH Móvil may answer for a moment)."""
    sandbox = athm_settings
    cancelled = synced(sandbox, "8.00", then=sandbox.cancel)
    refunded = synced(sandbox, "5.00")
    athm_sync.refund(refunded)
    unreferenced = Payment.objects.create(
        ecommerce_id=uuid.uuid4(), total=Decimal("3.00"), status="COMPLETED"
    )
    return {"cancelled": cancelled, "refunded": refunded, "unreferenced": unreferenced}


def test_the_refund_page_offers_only_what_can_be_refunded_and_says_why_not(
    athm_settings, login, refusable, received
):
    sandbox = athm_settings
    refundable = synced(sandbox, "10.00")
    sandbox.reset_counts()
    received.clear()
    admin_web = login(superuser=True)

    page = refund_page(admin_web, refundable, *refusable.values())

    assert page.count('name="amount"') == 1 and page.count('name="confirm"') == 1
    assert f'name="_selected_action" value="{refundable.pk}"' in page
    assert "Left to refund:" in page and "<strong>$10.00</strong>" in page
    cancelled, refunded, unreferenced = refusable.values()
    assert "Cannot be refunded" in page
    assert (
        f"payment {cancelled.pk} is CANCEL: only a COMPLETED or MISMATCHED payment can be "
        "refunded" in page
    )
    assert f"payment {refunded.pk} is already refunded in full" in page
    assert f"payment {unreferenced.pk} has no reference number from ATH Móvil yet" in page
    assert sandbox.counts().get("refund", 0) == 0 and received == []


def test_the_refund_page_offers_no_form_when_nothing_can_be_refunded(
    athm_settings, login, refusable
):
    athm_settings.reset_counts()
    admin_web = login(superuser=True)

    for payment in refusable.values():
        alone = refund_page(admin_web, payment)
        assert 'name="amount"' not in alone and 'name="confirm"' not in alone
        assert "Nothing to refund: none of the selected payments can be refunded" in alone
        assert f"payment {payment.pk} " in alone and "Back to the payments" in alone
    # A confirmation posted anyway (an old page) is refused by the refund itself.
    cancelled = refusable["cancelled"]
    done = admin_web.post(
        CHANGELIST,
        {
            "action": "refund_action",
            "_selected_action": [str(cancelled.pk)],
            "confirm": "yes",
            "refunded_so_far": "0.00",
        },
        follow=True,
    )
    assert f"Not refunded: payment {cancelled.pk} is CANCEL" in done.content.decode()
    assert athm_settings.counts().get("refund", 0) == 0


def test_of_several_refundable_payments_the_page_lets_one_be_chosen(athm_settings, login):
    sandbox = athm_settings
    first, second = synced(sandbox, "10.00"), synced(sandbox, "4.00")
    admin_web = login(superuser=True)

    page = refund_page(admin_web, first, second)

    assert 'name="amount"' not in page and page.count("Refund this payment…") == 2
    assert "$10.00" in page and "$4.00" in page
    chosen = refund_page(admin_web, second)  # what the button of the second posts
    assert chosen.count('name="amount"') == 1 and "<strong>$4.00</strong>" in chosen


def test_without_the_private_token_the_refund_page_says_so_and_offers_no_form(
    athm_settings, login, settings
):
    payment = synced(athm_settings, "10.00")
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PRIVATE_TOKEN": ""}

    page = refund_page(login(superuser=True), payment)

    assert (
        "No refund can be sent: the ATHM_SYNC setting cannot be used: "
        "ATHM_SYNC[&#x27;PRIVATE_TOKEN&#x27;] is missing or blank." in page
    )
    assert "no refund can be sent now (see above)" in page and 'name="amount"' not in page


# -- search and labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "search",
    [
        "(787) 555-0142",
        "555-0142",
        "+1 787-555-0142",
        "7875550142",
        "Ana Ríos",
        "ríos",
        "ana.rios@example.com",
        "reference",
    ],
)
def test_payments_are_found_by_the_customer_s_phone_name_e_mail_and_reference(
    athm_settings, staff, search
):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    sandbox.complete(
        ecommerce_id, name="Ana Ríos", phone="(787) 555-0142", email="ana.rios@example.com"
    )
    Payment.objects.track(ecommerce_id, total="10.00")
    found = athm_sync.sync_payment(ecommerce_id).payment
    assert found.customer_phone == "7875550142"  # stored as digits
    other = Payment.objects.create(
        ecommerce_id=uuid.uuid4(), total=Decimal("4.00"), customer_phone="7875559999"
    )
    if search == "reference":
        search = found.reference_number

    listing = staff.get("/admin/athm_sync/payment/", {"q": search}).content.decode()

    assert str(found.pk) in listing and str(other.pk) not in listing
    assert "1 result" in listing


def test_a_search_of_a_few_digits_is_no_phone_search(athm_settings, staff):
    Payment.objects.create(
        ecommerce_id=uuid.uuid4(), total=Decimal("4.00"), customer_phone="7875550142"
    )

    listing = staff.get("/admin/athm_sync/payment/", {"q": "(78)"}).content.decode()

    assert "0 results" in listing


def test_labels_are_spelled_the_way_ath_movil_spells_them(athm_settings, staff):
    settle(athm_settings, 1)
    payment, event = Payment.objects.get(), WebhookEvent.objects.get()

    pages = [
        staff.get("/admin/athm_sync/payment/"),
        staff.get(f"/admin/athm_sync/payment/{payment.pk}/change/"),
        staff.get("/admin/athm_sync/webhookevent/"),
        staff.get(f"/admin/athm_sync/webhookevent/{event.pk}/change/"),
    ]

    for response in pages:
        page = response.content.decode()
        assert "eCommerce ID" in page, response.request["PATH_INFO"]
        assert "ECommerce" not in page and "ommerce id" not in page, response.request["PATH_INFO"]
    assert "Daily transaction ID" in pages[1].content.decode()


def test_the_inbox_list_reads_no_bodies(athm_settings, staff):
    settle(athm_settings, 2)

    with CaptureQueriesContext(connection) as context:
        listing = staff.get("/admin/athm_sync/webhookevent/")

    assert listing.status_code == 200
    read = [query["sql"] for query in context.captured_queries if "webhookevent" in query["sql"]]
    assert read and not any('"body"' in sql or '"payload"' in sql for sql in read), read


def test_a_payment_with_a_refund_in_flight_is_not_offered(athm_settings, login):
    from athm_sync import clock
    from athm_sync.models import RefundIntent

    payment = synced(athm_settings, "10.00")
    RefundIntent.objects.create(
        payment=payment,
        amount=Decimal("2.00"),
        refunded_before=Decimal("0.00"),
        busy_until=clock.now() + timedelta(minutes=1),
    )

    page = refund_page(login(superuser=True), payment)

    assert f"another refund of payment {payment.pk} (2.00) is being sent since" in page
    assert 'name="amount"' not in page
