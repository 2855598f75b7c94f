"""The pytest plugin shops use (``athm_sync.testing``): the example shop's own tests pass with
it (and fail when its receiver is broken), and each fixture and helper does what it says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from athm_sync import testing
from athm_sync.models import Payment
from athm_sync.sandbox import StateConflict
from tests.commands import run_python

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "shop"


def run_example_tests(where: Path) -> subprocess.CompletedProcess[str]:
    """``pytest`` in the example shop, as its developer runs it (its own pytest.ini)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # it would win over the example's pytest.ini
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_example_shops_tests_pass():
    result = run_example_tests(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout


def test_the_example_shops_tests_fail_when_its_receiver_is_broken(tmp_path):
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    receivers = shop / "orders" / "receivers.py"
    source = receivers.read_text()
    assert "order.status = Order.Status.PAID" in source
    receivers.write_text(source.replace("Order.Status.PAID", "Order.Status.PENDING"))

    result = run_example_tests(shop)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 failed, 5 passed" in result.stdout
    assert "test_a_completed_payment_pays_the_order" in result.stdout


# -- the fixtures, one by one -----------------------------------------------------------------


def test_athm_settings_points_at_the_sandbox_and_keeps_the_shops_other_keys(
    settings, athm_settings
):
    conf = settings.ATHM_SYNC
    assert conf["API_BASE_URL"] == conf["REPORT_BASE_URL"] == athm_settings.url
    assert conf["PUBLIC_TOKEN"] == athm_settings.state.public_token
    assert conf["PRIVATE_TOKEN"] == athm_settings.state.private_token
    assert conf["WEBHOOK_SECRET"] == "w" * 40  # tests/settings.py's, kept
    assert athm_settings.url.startswith("http://127.0.0.1:")


def test_athm_sandbox_starts_empty(athm_sandbox):
    athm_sandbox.create_payment("5.00")
    athm_sandbox.inject_fault("http500")
    athm_sandbox.state.reset()
    assert athm_sandbox.state.payment_ids() == []
    assert athm_sandbox.state.faults() == []


@pytest.mark.django_db
def test_the_customer_starts_a_payment_the_shop_does_not_know_yet(athm_customer):
    ecommerce_id = athm_customer.start("12.50", metadata_1="order-7", timeout=120)
    seen = athm_customer.sandbox.payment(ecommerce_id)
    assert (seen["status"], seen["total"], seen["metadata1"], seen["timeout"]) == (
        "OPEN",
        "12.50",
        "order-7",
        120,
    )
    assert not Payment.objects.filter(pk=ecommerce_id).exists()
    tracked = athm_customer.track(ecommerce_id)
    assert (tracked.total, tracked.metadata_1) == (Decimal("12.50"), "order-7")


@pytest.mark.django_db(transaction=True)
def test_pay_then_sync_completes_once(athm_customer, athm_sync_now, athm_signals):
    ecommerce_id = athm_customer.pay("10.00", metadata_1="order-1")
    assert athm_customer.sandbox.payment(ecommerce_id)["status"] == "COMPLETED"

    first = athm_sync_now()
    again = athm_sync_now(ecommerce_id)

    assert (first.exit_code, first.transitions, first.summary["checked"]) == (
        0,
        {"completed": 1},
        1,
    )
    assert again.transitions == {}
    assert athm_signals.names == ["payment_completed"]
    [sent] = athm_signals.of("payment_completed")
    assert str(sent["payment"].pk) == ecommerce_id
    assert Payment.objects.get(pk=ecommerce_id).status == Payment.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_confirm_and_cancel(athm_customer, athm_sync_now, athm_signals):
    ecommerce_id = athm_customer.start("3.00")
    athm_customer.track(ecommerce_id)
    assert athm_customer.confirm(ecommerce_id, name="Ana")["status"] == "CONFIRM"
    assert athm_customer.cancel(ecommerce_id)["cancelReason"] == "cancelled"

    athm_sync_now()

    assert athm_signals.names == ["payment_cancelled"]


@pytest.mark.django_db(transaction=True)
def test_let_expire_moves_both_clocks_past_the_deadline(
    athm_customer, athm_clock, athm_sync_now, athm_signals
):
    ecommerce_id = athm_customer.start("3.00", timeout=120)
    payment = athm_customer.track(ecommerce_id)
    before = datetime.now(UTC)

    seen = athm_customer.let_expire(ecommerce_id)

    assert (seen["status"], seen["cancelReason"]) == ("CANCEL", "expired")
    assert datetime.now(UTC) > payment.deadline  # the app's clock moved too
    assert (athm_clock.now() - before).total_seconds() >= 120
    assert athm_customer.sandbox.state.clock()["offset"] == 0  # one time for both
    athm_sync_now()
    assert athm_signals.names == ["payment_expired"]
    with pytest.raises(StateConflict):
        athm_customer.let_expire(ecommerce_id)


def test_the_clock_only_moves_forward_and_stops_after_the_test(athm_clock):
    with pytest.raises(ValueError, match="forward"):
        athm_clock.advance(-1)
    moved = athm_clock.advance(3600)
    assert (moved - datetime.now(UTC)).total_seconds() < 5
    athm_clock.stop()
    assert (moved - datetime.now(UTC)).total_seconds() > 3500


@pytest.mark.django_db(transaction=True)
def test_a_refund_in_the_business_app_is_found_by_the_next_report_scan(
    athm_customer, athm_sync_now, athm_signals, athm_clock
):
    ecommerce_id = athm_customer.pay("20.00")
    athm_sync_now()  # completes it, and scans the report (nothing refunded yet)

    seen = athm_customer.refund(ecommerce_id, "5.00", message="damaged")
    athm_sync_now()
    assert athm_signals.names == ["payment_completed"]  # the scan is not due yet
    athm_clock.advance(16 * 60)  # past REFUND_SCAN_INTERVAL (15 minutes)
    athm_sync_now()

    assert seen["totalRefundedAmount"] == "5.00"
    assert athm_signals.names == ["payment_completed", "refund_sent"]
    assert athm_signals.of("refund_sent")[0]["refund"].amount == Decimal("5.00")


@pytest.mark.django_db(transaction=True)
def test_send_webhook_reaches_the_view_and_the_signal_fires(athm_customer, athm_signals):
    ecommerce_id = athm_customer.pay("7.00")

    response = athm_customer.send_webhook(ecommerce_id)

    assert response.status_code == 200
    assert athm_signals.names == ["payment_completed"]
    assert athm_customer.send_webhook(ecommerce_id).json()["duplicate"] is True


@pytest.mark.django_db(transaction=True)
def test_send_webhook_over_http_to_a_live_server(athm_customer, athm_signals, live_server):
    ecommerce_id = athm_customer.pay("7.00")

    assert athm_customer.send_webhook(ecommerce_id, live_server_url=live_server.url) == 200

    assert athm_signals.names == ["payment_completed"]
    assert athm_customer.sandbox.state.deliveries[-1]["status"] == 200


@pytest.mark.django_db
def test_send_webhook_without_a_secret_says_so(athm_customer, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_SECRET": ""}
    ecommerce_id = athm_customer.start("7.00")
    with pytest.raises(pytest.fail.Exception, match="WEBHOOK_SECRET"):
        athm_customer.send_webhook(ecommerce_id, status="cancelled")


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_fails_the_test_unless_asked_not_to(athm_sync_now, athm_sandbox, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PRIVATE_TOKEN": ""}
    result = athm_sync_now(check=False)
    assert result.exit_code == 2
    assert result.summary["exit_code"] == 2 and "PRIVATE_TOKEN" in result.summary["error"]
    assert "PRIVATE_TOKEN" in result.stderr
    with pytest.raises(pytest.fail.Exception, match="athm_sync exited 2"):
        athm_sync_now()


@pytest.mark.django_db
def test_the_sync_inside_the_tests_transaction_says_what_to_mark(athm_sync_now):
    assert connection.in_atomic_block
    with pytest.raises(pytest.fail.Exception, match=r"django_db\(transaction=True\)"):
        athm_sync_now()


def test_without_athm_sync_installed_the_error_says_so(monkeypatch):
    from django.apps import apps

    monkeypatch.setattr(apps, "is_installed", lambda name: False)
    with pytest.raises(pytest.fail.Exception, match="add 'athm_sync' to INSTALLED_APPS"):
        testing.require_app()


def test_the_plugin_imports_without_django_configured():
    code = "import athm_sync.testing as t; print(sorted(t.__all__)[0])"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Clock"


@pytest.mark.django_db(transaction=True)
def test_a_flaky_ath_movil_is_retried(athm_customer, athm_sandbox, athm_sync_now):
    # The example of docs/testing.md's "Faults".
    ecommerce_id = athm_customer.pay("10.00")
    athm_sandbox.inject_fault("http503", "findPayment")
    assert athm_sync_now().transitions == {"completed": 1}  # retried, then completed
    assert athm_sandbox.counts()["findPayment"] == 2
    assert ecommerce_id in athm_sandbox.state.payment_ids()


def test_the_docs_show_the_example_shops_test_in_full():
    docs = (ROOT / "docs" / "testing.md").read_text()
    example = (EXAMPLE / "tests" / "test_checkout.py").read_text()
    assert f"```python\n{example}```" in docs
