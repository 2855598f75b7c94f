"""Refunds whose reference number is not their payment's (the sandbox's ``own_app_references``
switch: refunds made in the ATH Business app get their own), found by the customer's phone,
the amount and the date and confirmed with findPayment, or listed for a person."""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal

import pytest
import requests

import athm_sync
from athm_sync.models import Payment, Refund, UnmatchedRefund
from athm_sync.sandbox.formats import PR_TZ
from athm_sync.unmatched import MAX_CANDIDATE_CALLS
from tests.commands import call
from tests.test_report import later, run

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "w" * 40  # tests/settings.py
PHONE = "(787) 555-0100"


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def completed(sandbox, total: str = "10.00", phone: str = PHONE, time_machine=None) -> Payment:
    if time_machine is not None:  # one a minute, so that they are ordered by their dates
        later(time_machine, 60)
    ecommerce_id, _ = sandbox.create_payment(total)
    sandbox.complete(ecommerce_id, phone=phone)
    Payment.objects.track(ecommerce_id, total=total)
    return athm_sync.sync_payment(ecommerce_id).payment


def test_the_sandbox_switch_gives_app_refunds_their_own_reference(sandbox):
    ecommerce_id, _ = sandbox.create_payment("10.00")
    sandbox.complete(ecommerce_id)
    sandbox.refund(ecommerce_id, "1.00")  # off by default: the payment's reference
    control = f"{sandbox.url}/sandbox/app-refunds"
    assert requests.get(control, timeout=5).json() == {"ownReference": False}
    assert requests.post(control, json={"ownReference": True}, timeout=5).status_code == 200
    sandbox.refund(ecommerce_id, "2.00")

    state = sandbox.payment(ecommerce_id)
    first, second = (refund["referenceNumber"] for refund in state["refunds"])
    assert first == state["referenceNumber"] and second != state["referenceNumber"]
    assert sandbox.refund_webhook_payload(ecommerce_id)["referenceNumber"] == second
    today = sandbox.now().astimezone(PR_TZ).strftime("%Y-%m-%d")
    rows = sandbox.state.report(f"{today} 00:00:00", f"{today} 23:59:59")
    assert [row["referenceNumber"] for row in rows if row["transactionType"] == "REFUND"] == [
        first,
        second,
    ]
    bad = requests.post(control, json={"ownReference": "yes"}, timeout=5)
    assert bad.status_code == 400 and "true or false" in bad.json()["error"]
    sandbox.reset()
    assert sandbox.state.own_app_references is False


def test_an_app_refund_with_its_own_reference_is_found_by_phone_and_amount(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    refunded = completed(sandbox, "10.00", time_machine=time_machine)
    newer = completed(sandbox, "8.00", time_machine=time_machine)  # paid later, not refunded
    others = [completed(sandbox, "5.00", phone=f"(787) 555-{n:04d}") for n in range(10)]
    received.clear()
    sandbox.refund(str(refunded.pk), "3.00", "damaged")
    own_reference = sandbox.payment(str(refunded.pk))["refunds"][0]["referenceNumber"]
    assert own_reference != refunded.reference_number
    sandbox.reset_counts()

    summary = run()

    scan = summary["refund_scan"]
    assert (scan["linked"], scan["unmatched"], scan["refunds"]) == (1, 0, 1)
    # Newest first: the newer payment (no growth), then the refunded one (confirmed).
    assert sandbox.counts()["findPayment"] == 2 and sandbox.counts()["transactionReport"] == 1
    refund = Refund.objects.get()
    assert (refund.payment_id, refund.amount, refund.message) == (
        refunded.pk,
        Decimal("3.00"),
        "damaged",
    )
    assert refund.reference_number == own_reference and refund.daily_transaction_id
    assert Payment.objects.get(pk=newer.pk).total_refunded_amount == 0
    assert names(received) == ["refund_sent"] and len(others) == 10
    assert not UnmatchedRefund.objects.exists()

    later(time_machine, 15 * 60)
    sandbox.reset_counts()
    again = run()["refund_scan"]

    assert again["refund_rows"] == 1 and again["refunds"] == 0 and again["linked"] == 0
    assert sandbox.counts()["findPayment"] == 0  # known by its record now
    assert Refund.objects.count() == 1 and names(received) == ["refund_sent"]


def test_a_refund_a_poll_found_gets_the_record_of_a_row_with_another_reference(
    athm_settings, received
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    payment = completed(sandbox, "10.00")
    sandbox.refund(str(payment.pk), "10.00", "all of it")
    athm_sync.sync_payment(payment.pk)  # the growth, without its record
    received.clear()
    sandbox.reset_counts()

    scan = run()["refund_scan"]

    refund = Refund.objects.get()
    assert scan["linked"] == 1 and refund.message == "all of it" and refund.daily_transaction_id
    assert sandbox.counts()["findPayment"] == 0 and received == []


def test_calls_are_bounded_and_a_refund_linked_to_nothing_is_listed_and_logged_once(
    athm_settings, received, time_machine, caplog, admin_client
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    payments = [
        completed(sandbox, time_machine=time_machine) for _ in range(MAX_CANDIDATE_CALLS + 2)
    ]
    received.clear()
    sandbox.refund(str(payments[0].pk), "4.00")  # the oldest: beyond the calls allowed
    reference = sandbox.payment(str(payments[0].pk))["refunds"][0]["referenceNumber"]
    sandbox.reset_counts()

    with caplog.at_level(logging.WARNING, logger="athm_sync.unmatched"):
        first = run()
        first_calls = sandbox.counts()["findPayment"]
        later(time_machine, 15 * 60)
        sandbox.reset_counts()
        code, out, _ = call("athm_sync")

    assert first_calls == MAX_CANDIDATE_CALLS  # the newest three of the five candidates
    assert first["refund_scan"]["unmatched"] == 1 and first["refund_scan"]["linked"] == 0
    (listed,) = first["refund_scan"]["unmatched_refunds"]
    assert listed["reference_number"] == reference and listed["amount"] == "4.00"
    assert f"none of {MAX_CANDIDATE_CALLS} of {len(payments)} candidate" in listed["reason"]
    assert code == 0 and "1 matching no payment (listed in the admin)" in out
    assert sandbox.counts()["findPayment"] == 0  # a listed refund costs no call again
    assert caplog.text.count("listed for review") == 1
    # Never the customer's phone, however written (a random reference may hold "555").
    assert not re.search(r"555\D?0100", caplog.text)
    unmatched = UnmatchedRefund.objects.get()
    assert unmatched.times_seen == 2 and unmatched.reference_number == reference
    page = admin_client.get("/admin/athm_sync/unmatchedrefund/").content.decode()
    assert reference in page and "4.00" in page
    assert not Refund.objects.exists() and received == []


def test_two_candidates_that_both_grew_record_both_and_list_the_rows(athm_settings, received):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    one, two = completed(sandbox, "10.00"), completed(sandbox, "10.00")
    sandbox.refund(str(one.pk), "2.00", "first")
    sandbox.refund(str(two.pk), "2.00", "second")
    received.clear()

    scan = run()["refund_scan"]

    # The money is ATH Móvil's truth: both growths are recorded, with a signal each...
    assert sorted(Refund.objects.values_list("payment_id", "amount")) == sorted(
        [(one.pk, Decimal("2.00")), (two.pk, Decimal("2.00"))]
    )
    assert names(received) == ["refund_sent", "refund_sent"]
    # ...but which record is whose cannot be told: neither is lent, both are listed.
    assert not Refund.objects.exclude(daily_transaction_id="").exists()
    assert scan["unmatched"] == 2 and UnmatchedRefund.objects.count() == 2
    assert "2 payments of the customer's phone grew" in scan["unmatched_refunds"][0]["reason"]


def test_a_refund_webhook_with_its_own_reference_is_linked_or_listed(
    athm_settings, client, received
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    payment = completed(sandbox, "10.00")
    received.clear()
    sandbox.refund(str(payment.pk), "3.00", "by the app")
    url = f"/athm/webhook/{SECRET}/"
    body = sandbox.refund_webhook_payload(str(payment.pk))

    answer = client.post(url, json.dumps(body), content_type="application/json").json()

    assert answer["outcome"] == "applied"
    refund = Refund.objects.get()
    assert (refund.payment_id, refund.amount, refund.message) == (
        payment.pk,
        Decimal("3.00"),
        "by the app",
    )
    assert refund.reference_number == body["referenceNumber"]
    assert names(received) == ["refund_sent"]

    stranger = {**body, "phoneNumber": "(939) 555-9999", "dailyTransactionID": "0999"}
    answer = client.post(url, json.dumps(stranger), content_type="application/json").json()

    assert answer["outcome"] == "ignored"
    listed = UnmatchedRefund.objects.get()
    assert listed.source == "webhook" and listed.daily_transaction_id == "0999"
    assert Refund.objects.count() == 1 and names(received) == ["refund_sent"]


def test_a_refund_whose_candidates_cannot_be_asked_is_not_listed_and_is_linked_later(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    payment = completed(sandbox)
    sandbox.refund(str(payment.pk), "1.00")
    received.clear()
    sandbox.inject_fault("http503", "findPayment", times=3)  # every attempt of one check

    first = run()["refund_scan"]

    assert (first["linked"], first["unmatched"]) == (0, 0)
    assert not UnmatchedRefund.objects.exists() and not Refund.objects.exists()
    later(time_machine, 15 * 60)
    assert run()["refund_scan"]["linked"] == 1
    assert Refund.objects.get().amount == Decimal("1.00") and names(received) == ["refund_sent"]


def test_a_refund_webhook_whose_candidates_cannot_be_asked_stays_pending(
    athm_settings, client, received
):
    sandbox = athm_settings
    sandbox.set_own_app_references(True)
    payment = completed(sandbox)
    sandbox.refund(str(payment.pk), "1.00")
    received.clear()
    body = json.dumps(sandbox.refund_webhook_payload(str(payment.pk)))
    sandbox.inject_fault("http503", "findPayment", times=3)

    answer = client.post(f"/athm/webhook/{SECRET}/", body, content_type="application/json")

    assert answer.json()["outcome"] == "pending" and not UnmatchedRefund.objects.exists()
    assert run()["webhooks"]["applied"] == 1  # the next run verifies it again
    assert Refund.objects.get().payment_id == payment.pk and names(received) == ["refund_sent"]
