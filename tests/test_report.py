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
from athm_sync import clock
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
    time_machine.move_to(clock.now() + timedelta(seconds=seconds), tick=False)


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


def test_two_refunds_made_before_one_scan_are_two_refunds_with_their_records(
    athm_settings, received
):
    sandbox = athm_settings
    payment = completed(sandbox)
    received.clear()
    sandbox.refund(str(payment.pk), "1.25", "first")
    sandbox.refund(str(payment.pk), "2.00", "second")  # same reference number
    sandbox.reset_counts()

    summary = run()

    assert summary["refund_scan"]["refunds"] == 2 and sandbox.counts()["findPayment"] == 1
    refunds = Refund.objects.order_by("transaction_date", "amount")
    assert [(r.amount, r.message) for r in refunds] == [
        (Decimal("1.25"), "first"),
        (Decimal("2.00"), "second"),
    ]
    assert names(received) == ["refund_sent", "refund_sent"]


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


def test_one_growth_a_poll_found_is_split_into_the_reports_refunds(athm_settings, received):
    sandbox = athm_settings
    payment = completed(sandbox)
    sandbox.refund(str(payment.pk), "1.00", "first")
    sandbox.refund(str(payment.pk), "2.00", "second")
    athm_sync.sync_payment(payment.pk)  # one growth of 3.00, without records
    (bare,) = Refund.objects.all()
    assert bare.amount == Decimal("3.00") and bare.daily_transaction_id == ""
    received.clear()
    sandbox.reset_counts()

    assert run()["refund_scan"]["refunds"] == 0

    refunds = Refund.objects.order_by("amount")
    assert [(r.amount, r.message) for r in refunds] == [
        (Decimal("1.00"), "first"),
        (Decimal("2.00"), "second"),
    ]
    assert all(r.daily_transaction_id and r.transaction_date for r in refunds)
    assert refunds[0].pk == bare.pk  # the one whose refund_sent fired keeps its id
    assert Payment.objects.get().total_refunded_amount == Decimal("3.00")
    assert sandbox.counts()["findPayment"] == 1 and received == []  # the money was signalled


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


# -- backfill: --from-date / --to-date ---------------------------------------------------------


def today() -> str:
    from athm_sync.normalize import PUERTO_RICO

    return clock.now().astimezone(PUERTO_RICO).date().isoformat()


def backfill(*extra: str, start: str | None = None, end: str | None = None) -> tuple[int, dict]:
    code, out, _ = call(
        "athm_sync", "--json", "--from-date", start or today(), "--to-date", end or today(), *extra
    )
    return code, json.loads(out)


def history(sandbox) -> dict[str, str]:
    """At ATH Móvil only: two completed payments, one of them partly refunded twice, and one
    still open (not in the report)."""
    ids = {}
    for name, total in (("plain", "7.00"), ("refunded", "20.00"), ("open", "3.00")):
        ids[name], _ = sandbox.create_payment(total, metadata1=f"order-{name}")
        if name != "open":
            sandbox.complete(ids[name])
    sandbox.refund(ids["refunded"], "5.00", "one item")
    sandbox.refund(ids["refunded"], "2.50", "another")
    return ids


def test_a_backfill_imports_history_once_and_fires_its_signals_once(athm_settings, received):
    sandbox = athm_settings
    ids = history(sandbox)

    code, summary = backfill()

    assert code == 0, summary["errors"]
    done = summary["backfill"]
    assert (done["payments_created"], done["rows"], done["chunks"]) == (2, 4, 1)
    assert Payment.objects.count() == 2 and not Payment.objects.filter(pk=ids["open"]).exists()
    refunded = Payment.objects.get(pk=ids["refunded"])
    assert refunded.status == "COMPLETED" and refunded.total_refunded_amount == Decimal("7.50")
    assert refunded.metadata_1 == "order-refunded" and refunded.reference_number
    assert sorted(names(received)) == ["payment_completed"] * 2 + ["refund_sent"] * 2
    # The report's two refund rows add up to the 7.50 increase: one Refund each, with its record.
    refunds = Refund.objects.order_by("amount")
    assert [(r.amount, r.message) for r in refunds] == [
        (Decimal("2.50"), "another"),
        (Decimal("5.00"), "one item"),
    ]
    assert all(r.daily_transaction_id and r.transaction_date for r in refunds)
    received.clear()

    code, again = backfill()

    assert code == 0 and again["backfill"]["payments_created"] == 0
    assert again["backfill"]["payments_updated"] == 0 and again["backfill"]["refunds"] == 0
    assert Payment.objects.count() == 2 and Refund.objects.count() == 2 and received == []


def test_report_rows_without_an_ecommerce_id_get_a_stable_id(athm_settings, received, monkeypatch):
    sandbox = athm_settings
    history(sandbox)
    real_report = sandbox.state.report

    def anonymous_report(*args, **kwargs):
        return [{**row, "ecommerceId": ""} for row in real_report(*args, **kwargs)]

    monkeypatch.setattr(sandbox.state, "report", anonymous_report)

    assert backfill()[0] == 0
    first = set(Payment.objects.values_list("pk", flat=True))
    assert backfill()[1]["backfill"]["payments_created"] == 0
    assert set(Payment.objects.values_list("pk", flat=True)) == first and len(first) == 2


def test_a_tracked_payment_the_report_shows_completed_is_completed_with_the_money_check(
    athm_settings, received
):
    sandbox = athm_settings
    ids = history(sandbox)
    Payment.objects.track(ids["plain"], total="7.00")  # tracked, never polled
    Payment.objects.track(ids["refunded"], total="200.00")  # the browser lied

    code, summary = backfill()

    assert code == 0 and summary["backfill"]["payments_created"] == 0
    assert summary["backfill"]["payments_updated"] == 2
    assert Payment.objects.get(pk=ids["plain"]).status == "COMPLETED"
    assert Payment.objects.get(pk=ids["refunded"]).status == "MISMATCHED"
    assert sorted(names(received)) == [
        "payment_completed",
        "payment_mismatched",
        "refund_sent",
        "refund_sent",
    ]


def test_a_silent_backfill_fires_nothing_now_or_later(athm_settings, received):
    sandbox = athm_settings
    history(sandbox)

    code, summary = backfill("--no-signals")

    assert code == 0 and summary["signals_sent"] == 0 and received == []
    assert Payment.objects.count() == 2 and Refund.objects.count() == 2
    assert run()["redispatched"] == 0 and received == []


def test_other_transaction_types_are_counted_and_skipped(athm_settings, monkeypatch):
    sandbox = athm_settings
    history(sandbox)
    real_report = sandbox.state.report

    def mixed_report(*args, **kwargs):
        rows = real_report(*args, **kwargs)
        extra = [
            {**rows[0], "transactionType": kind, "ecommerceId": ""}
            for kind in ("payment", "DONATION")
        ]
        return rows + extra

    monkeypatch.setattr(sandbox.state, "report", mixed_report)

    code, summary = backfill()

    assert code == 0 and summary["backfill"]["skipped"] == {"PAYMENT": 1, "DONATION": 1}
    assert Payment.objects.count() == 2


def test_a_long_range_is_read_a_week_at_a_time(athm_settings, time_machine):
    sandbox = athm_settings
    history(sandbox)
    sandbox.reset_counts()
    start = (clock.now() - timedelta(days=20)).date().isoformat()

    code, summary = backfill(start=start)

    assert code == 0 and summary["backfill"]["chunks"] == 3
    assert sandbox.counts()["transactionReport"] == 3  # each range under ATH Móvil's limit
    assert summary["backfill"]["payments_created"] == 2


def test_an_empty_report_is_an_empty_backfill(athm_settings):
    code, summary = backfill(start="2026-01-01", end="2026-01-03")
    assert code == 0 and summary["backfill"]["rows"] == 0 and summary["errors"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-date", "2026-13-01", "--to-date", "2026-01-02"], "--from-date must be a date"),
        (["--from-date", "01/02/2026", "--to-date", "2026-01-02"], "--from-date must be a date"),
        (["--from-date", "2026-01-05", "--to-date", "2026-01-02"], "is after --to-date"),
        (["--from-date", "2026-01-05"], "needs both --from-date and --to-date"),
        (["--from-date", "2026-01-01", "--to-date", "2099-01-01"], "is in the future"),
        (["--no-signals"], "--no-signals only goes with"),
        (
            ["--from-date", "2026-01-01", "--to-date", "2026-01-02", "--dry-run"],
            "--dry-run does not go with a backfill",
        ),
    ],
)
def test_bad_backfill_options_are_one_line_and_send_nothing(athm_settings, args, message):
    sandbox = athm_settings
    sandbox.reset_counts()

    code, out, err = call("athm_sync", *args)

    assert code == 2 and out == ""
    assert err.startswith("athm_sync: error: ") and message in err and err.count("\n") <= 1
    assert sandbox.counts()["transactionReport"] == 0


def test_a_backfill_shows_progress_on_a_terminal(athm_settings):
    import io

    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    history(athm_settings)
    start = (clock.now() - timedelta(days=20)).date().isoformat()
    stderr = TTY()

    code, out, _ = call("athm_sync", "--from-date", start, "--to-date", today(), stderr=stderr)

    assert code == 0 and "1/3" in stderr.getvalue() and "3/3" in stderr.getvalue()
    assert f"backfill {start} to {today()}: 4 report row(s) in 3 range(s)" in out
    assert "payments: created 2, updated 0, already up to date 0" in out


def test_a_backfill_summary_counts_what_it_did(sandbox, tmp_path):
    """Not "checked 2 payment(s), unchanged: 0" with every transition at 0 for a backfill
    that found everything already imported: it says created, updated, already up to date."""
    from tests.commands import run_process
    from tests.test_overlap import child_env

    history(sandbox)
    env = child_env(sandbox, tmp_path / "signals.log")
    days = ["--from-date", today(), "--to-date", today()]

    first = run_process("athm_sync", *days, "--no-signals", env=env)
    again = run_process("athm_sync", *days, env=env)
    as_json = run_process("athm_sync", *days, "--json", env=env)

    assert (first.returncode, again.returncode, as_json.returncode) == (0, 0, 0), first.stderr
    assert first.stdout.splitlines()[1:] == [
        "  payments: created 2, updated 0, already up to date 0",
        "  completed: 2, held (mismatched): 0, refunds: 2",
        "  skipped: none; rows not imported: 0",
        "  no signals sent (--no-signals: history recorded quietly)",
        "  errors: 0",
    ]
    assert first.stdout.startswith(f"athm_sync: backfill {today()} to {today()}: 4 report row(s)")
    assert again.stdout.splitlines()[1:3] == [
        "  payments: created 0, updated 0, already up to date 2",
        "  completed: 0, held (mismatched): 0, refunds: 0",
    ]
    assert "unchanged: 0" not in again.stdout
    summary = json.loads(as_json.stdout)
    assert (summary["checked"], summary["unchanged"]) == (2, 2)
    assert summary["backfill"]["payments_unchanged"] == 2
