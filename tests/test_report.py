"""Refunds made elsewhere, found in the transaction report by the scheduled run, against the
sandbox (which serves the report with its quirks: ``totalRefundAmount``, ``dailyTransactionID``
as text or integer, refunds that reuse the payment's reference number)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

import athm_sync
from athm_sync.models import Payment, Refund, ReportScan
from athm_sync.normalize import local_datetime
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "w" * 40  # tests/settings.py


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def completed(sandbox, total: str = "10.00") -> Payment:
    ecommerce_id, _ = sandbox.create_payment(total)
    sandbox.complete(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=total)
    return athm_sync.sync_payment(ecommerce_id).payment


def run() -> dict:
    code, out, _ = call("athm_sync", "--json")
    summary = json.loads(out)
    assert summary["exit_code"] == code
    return summary


def later(time_machine, seconds: float) -> None:
    time_machine.move_to(timezone.now() + timedelta(seconds=seconds), tick=False)


def test_a_refund_made_in_the_business_app_is_found_by_the_next_scan(
    athm_settings, received, time_machine
):
    sandbox = athm_settings
    payment = completed(sandbox)
    others = [completed(sandbox, "5.00") for _ in range(20)]  # refunded nowhere
    received.clear()
    sandbox.refund(str(payment.pk), "3.00", "damaged")  # in the app; no webhook
    sandbox.reset_counts()

    summary = run()

    assert summary["exit_code"] == 0
    assert summary["refund_scan"]["refunds"] == 1 and summary["transitions"]["refund_sent"] == 1
    # The bound: one report call, one findPayment for the one payment with a new refund.
    assert sandbox.counts()["transactionReport"] == 1 and sandbox.counts()["findPayment"] == 1
    refund = Refund.objects.get()
    remote = sandbox.payment(str(payment.pk))["refunds"][0]
    assert (refund.payment_id, refund.amount, refund.message) == (
        payment.pk,
        Decimal("3.00"),
        "damaged",
    )
    assert refund.daily_transaction_id == remote["dailyTransactionId"]
    assert refund.transaction_date == local_datetime(remote["date"])
    assert names(received) == ["refund_sent"]
    assert len(others) == 20

    sandbox.reset_counts()
    assert run()["refund_scan"] is None  # not due again before REFUND_SCAN_INTERVAL
    later(time_machine, 15 * 60)
    again = run()
    assert again["refund_scan"]["refund_rows"] == 1 and again["refund_scan"]["refunds"] == 0
    assert sandbox.counts()["transactionReport"] == 1 and sandbox.counts()["findPayment"] == 0
    assert Refund.objects.count() == 1 and names(received) == ["refund_sent"]


def test_partial_refunds_between_scans_are_one_refund_each(athm_settings, received, time_machine):
    sandbox = athm_settings
    payment = completed(sandbox)
    received.clear()
    sandbox.refund(str(payment.pk), "1.00")
    run()
    later(time_machine, 15 * 60)
    sandbox.refund(str(payment.pk), "2.00")  # shares the reference number
    run()

    amounts = sorted(Refund.objects.values_list("amount", flat=True))
    assert amounts == [Decimal("1.00"), Decimal("2.00")]
    assert len(set(Refund.objects.values_list("reference_number", flat=True))) == 1
    assert names(received) == ["refund_sent", "refund_sent"]
    assert Payment.objects.get().total_refunded_amount == Decimal("3.00")


def test_one_refund_seen_by_the_api_call_a_webhook_and_the_report_is_one_refund(
    athm_settings, client, received
):
    sandbox = athm_settings
    payment = completed(sandbox)
    received.clear()
    athm_sync.refund(payment, "4.00", "return")
    body = json.dumps(sandbox.refund_webhook_payload(str(payment.pk)))
    assert (
        client.post(f"/athm/webhook/{SECRET}/", body, content_type="application/json").json()[
            "outcome"
        ]
        == "unchanged"
    )
    sandbox.reset_counts()

    summary = run()

    assert summary["refund_scan"]["refund_rows"] == 1 and summary["refund_scan"]["refunds"] == 0
    assert sandbox.counts()["findPayment"] == 0  # known by its daily id and date
    assert Refund.objects.count() == 1 and names(received) == ["refund_sent"]


def test_a_refund_a_poll_found_gets_the_reports_details_without_a_call(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox)
    sandbox.refund(str(payment.pk), "2.00", "app refund")
    received.clear()
    athm_sync.sync_payment(payment.pk)  # findPayment shows the growth: a Refund without details
    bare = Refund.objects.get()
    assert bare.daily_transaction_id == "" and bare.message == ""
    sandbox.reset_counts()

    run()

    refund = Refund.objects.get()
    assert refund.message == "app refund" and refund.daily_transaction_id
    assert sandbox.counts()["findPayment"] == 0 and names(received) == ["refund_sent"]


def test_report_rows_with_quirks_and_a_broken_row(athm_settings, received, monkeypatch, caplog):
    """Trailing spaces in the reference number, integer daily ids (every other row of the
    sandbox's report), and one row that cannot be read: the others are still imported."""
    sandbox = athm_settings
    payments = [completed(sandbox) for _ in range(3)]
    for payment in payments:
        sandbox.refund(str(payment.pk), "1.00")
    real_report = sandbox.state.report

    def quirky_report(*args, **kwargs):
        rows = real_report(*args, **kwargs)
        for row in rows:
            row["referenceNumber"] += "  "
        return [*rows, {"transactionType": "REFUND", "total": "lots", "referenceNumber": "x"}]

    monkeypatch.setattr(sandbox.state, "report", quirky_report)
    received.clear()

    with caplog.at_level(logging.ERROR, logger="athm_sync.report"):
        summary = run()

    scan = summary["refund_scan"]
    assert scan["unparsable"] == 1 and scan["refunds"] == 3 and summary["exit_code"] == 0
    assert "row 6: total must be an amount" in caplog.text
    assert names(received) == ["refund_sent"] * 3
    assert all(r.daily_transaction_id.isdigit() for r in Refund.objects.all())


def test_a_refund_of_a_payment_the_shop_does_not_track_is_counted(athm_settings, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("6.00")
    sandbox.complete(ecommerce_id)
    sandbox.refund(ecommerce_id, "6.00")

    summary = run()

    assert summary["refund_scan"]["untracked"] == 1 and summary["refund_scan"]["refunds"] == 0
    assert not Refund.objects.exists() and received == []


def test_a_report_that_fails_is_one_error_and_is_tried_again_a_minute_later(
    athm_settings, time_machine
):
    sandbox = athm_settings
    completed(sandbox)
    sandbox.inject_fault("http503", "transactionReport", times=10)

    summary = run()

    assert summary["exit_code"] == 1
    (error,) = summary["errors"]
    assert error["reason"].startswith("refund scan: the transaction report failed")
    assert "Service Unavailable" in ReportScan.objects.get().last_error
    sandbox.clear_faults()
    assert run()["refund_scan"] is None  # waits a minute, not REFUND_SCAN_INTERVAL
    later(time_machine, 61)
    assert run()["refund_scan"]["rows"] == 1


def test_the_window_is_a_setting(athm_settings, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "REFUND_SCAN_WINDOW": timedelta(hours=1)}
    sandbox = athm_settings
    completed(sandbox)
    sandbox.reset_counts()

    scan = run()["refund_scan"]

    start, end = (timezone.datetime.fromisoformat(scan[key]) for key in ("from", "to"))
    assert end - start == timedelta(hours=1)
    assert sandbox.counts()["transactionReport"] == 1
